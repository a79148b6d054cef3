from __future__ import annotations

import pytest

from functions._core.platform.errors import EventInvalid
from functions._core.platform.names import is_within, normalize_domain, to_unicode


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("XN--BCHER-KVA.de", "xn--bcher-kva.de"),
        ("faß.de", "xn--fa-hia.de"),  # IDNA 2008, not transitional: ß stays
    ],
)
def test_accepted_names_become_lowercase_a_labels(raw: str, want: str) -> None:
    assert normalize_domain(raw) == want


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("*.example.com", "wildcard"),
        ("exa mple.com", "whitespace"),
        ("example.com\n", "whitespace"),
        ('ex"ample.com', "IDNA"),
        ("ex;ample.com", "IDNA"),
        ("ex_ample.com", "IDNA"),
        ("example.com; rm -rf /", "whitespace"),
        ("a" * 64 + ".com", "IDNA"),
        ("com", "two labels"),
        ("co.uk", "public suffix"),
        ("", "empty"),
        ("-bad.com", "IDNA"),
    ],
)
def test_refused_names_say_why(raw: str, why: str) -> None:
    with pytest.raises(EventInvalid, match=why):
        normalize_domain(raw)


def test_non_string_and_bounded_echo() -> None:
    with pytest.raises(EventInvalid, match="must be a string"):
        normalize_domain(42)
    with pytest.raises(EventInvalid) as info:
        normalize_domain("x" * 500 + " y.com")
    assert len(str(info.value)) < 200


def test_within_and_unicode() -> None:
    assert is_within("mail.faster.cz", ["faster.cz"]) == "faster.cz"
    assert is_within("faster.cz", ["faster.cz."]) == "faster.cz"
    assert is_within("notfaster.cz", ["faster.cz"]) is None
    assert to_unicode("xn--bcher-kva.de") == "bücher.de"
