"""Fuzzing the domain-name normaliser (functions/_core/platform/names.py).

The normal form ``n = normalize_domain(x)``: lowercase ASCII, no trailing dot, >= 2 labels of 1-63 LDH octets
(``xn--`` for Unicode labels), <= 253 octets, a top-level label that is not all digits, not a public suffix; a fixed
point (``normalize_domain(n) == n``) that round-trips through its U-label form (``normalize_domain(to_unicode(n))
== n``). Everything else raises ``EventInvalid`` with a reason; nothing raises anything else.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from functions._core.platform.errors import EventInvalid
from functions._core.platform.names import normalize_domain, to_unicode
from tests.fuzz.strategies import (
    PSL,
    fuzz,
    hostile_names,
    not_strings,
    odd_names,
    spelled_names,
    spoofed_names,
)

LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def assert_normal_form(name: str) -> None:
    """The documented normal form of an accepted name."""
    labels = name.split(".")
    assert name.isascii() and name == name.lower() and len(name) <= 253 and len(labels) >= 2, name
    assert all(LABEL.fullmatch(label) for label in labels), name
    assert not labels[-1].isdigit() and not PSL.is_public(name), name
    assert normalize_domain(name) == name  # a fixed point
    unicode = to_unicode(name)
    assert normalize_domain(unicode) == name  # A-label <-> U-label round trip
    for alabel, ulabel in zip(labels, unicode.split("."), strict=True):
        if alabel.startswith("xn--"):  # the U-label is what Python's own RFC 3492 codec decodes
            assert alabel[4:].encode("ascii").decode("punycode") == ulabel


def normalized_or_refused(raw: object) -> str | None:
    """The normal form, or None after checking the refusal's reason."""
    try:
        name = normalize_domain(raw)
    except EventInvalid as exc:
        reason = str(exc)
        assert reason and "\n" not in reason and len(reason) < 400, reason
        return None
    assert_normal_form(name)
    return name


def check_hostile(raw: str) -> None:
    with pytest.raises(EventInvalid) as info:
        normalize_domain(raw)
    assert str(info.value)


def check_spoof(case: tuple[str, str]) -> None:
    """A homoglyph is another name, never the one it imitates (or it is refused)."""
    name, spoof = case
    got = normalized_or_refused(spoof)
    if got is not None:
        assert got != normalized_or_refused(name) and got.split(".")[0].startswith("xn--")
        assert to_unicode(got).split(".")[0] == spoof.split(".")[0]  # operators see the look-alike as it is


# One property per expectation would double the CI time (the cost is Hypothesis' per-example overhead), so the
# classes of input share one property, each with its own expectation: (class, value).
inputs = st.one_of(
    hostile_names.map(lambda v: ("hostile", v)),
    spoofed_names.map(lambda v: ("spoof", v)),
    st.one_of(odd_names, not_strings).map(lambda v: ("any", v)),
)
CHECKS = {"hostile": check_hostile, "spoof": check_spoof, "any": normalized_or_refused}


@fuzz()
@given(inputs)
@example(("any", "1.2.3.4"))  # bug found probing: an IPv4 address was accepted as a domain (all-numeric TLD)
@example(("any", "example.com\u3002"))  # bug found probing: a trailing ideographic full stop refused, "." not
@example(("any", "a\u00adb.test"))  # soft hyphen: UTS 46 ignores it
@example(("any", "\u0661\u0662.test"))  # Arabic-Indic digits: bidi rule
@example(("any", "xn--abc-.test"))  # an A-label that decodes to ASCII
@example(("hostile", "alpha.test\x00"))
@example(("hostile", "alpha\u202e.test"))  # right-to-left override
@example(("hostile", "../../etc/passwd"))
@example(("hostile", "a" * 64 + ".test"))
@example(("hostile", ".".join(["a" * 62] * 4) + ".test"))  # 256 octets
@example(("hostile", "alpha.test.123"))
@example(("spoof", ("paypal.test", "p\u0430yp\u0430l.test")))
@example(("spoof", ("apple.com", "\u0430pple.com")))
def test_hostile_names_are_refused_homoglyphs_are_other_names_anything_else_normal_or_refused(case: Any) -> None:
    kind, value = case
    CHECKS[kind](value)


@fuzz()
@given(spelled_names)
@example(("example.com", "EXAMPLE.COM\u3002"))
@example(("xn--bcher-kva.test", "XN--BCHER-KVA\uff0eTEST."))
@example(("xn--fa-hia.test", "fa\u00adß.test"))  # IDNA 2008: ß is kept (not transitional "fass")
def test_every_spelling_of_a_valid_name_has_one_normal_form(case: tuple[str, str]) -> None:
    want, spelled = case
    assert normalize_domain(spelled) == want  # want: computed with Python's punycode codec, not the idna package
    assert_normal_form(want)
