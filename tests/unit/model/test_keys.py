from __future__ import annotations

import base64
import datetime as dt
import os
import re

import dkim
import pytest

from functions._core.model import keys
from functions._core.model.records import render_value, split_txt
from functions._core.platform.config import Secret
from functions._core.platform.errors import ConfigError, PermanentError

KEK = Secret(base64.b64encode(os.urandom(32)).decode())


@pytest.fixture(scope="module")
def pair() -> keys.KeyPair:
    return keys.generate("fc20261127", 2048)


def test_2048_bit_txt_splits_into_two_strings(pair: keys.KeyPair) -> None:
    assert pair.txt.startswith("v=DKIM1;k=rsa;t=s;s=email;p=")
    chunks = split_txt(pair.txt)
    assert [len(c) for c in chunks] == [255, len(pair.txt) - 255]
    assert "".join(chunks) == pair.txt
    assert render_value("TXT", pair.txt).count('"') == 4


def test_private_key_never_prints(pair: keys.KeyPair) -> None:
    assert "PRIVATE" not in repr(pair) and "PRIVATE" not in str(pair)


def test_seal_is_bound_to_domain_and_selector(pair: keys.KeyPair) -> None:
    blob = keys.seal(pair, KEK, "a.test")
    assert b"PRIVATE" not in blob
    assert keys.unseal(blob, KEK, "a.test", pair.selector).reveal() == pair.private_pem.reveal()
    with pytest.raises(PermanentError):
        keys.unseal(blob, KEK, "b.test", pair.selector)
    with pytest.raises(PermanentError):
        keys.unseal(blob, Secret(base64.b64encode(os.urandom(32)).decode()), "a.test", pair.selector)


def test_bad_kek_and_small_keys_refused(pair: keys.KeyPair) -> None:
    with pytest.raises(ConfigError):
        keys.seal(pair, Secret("short"), "a.test")
    with pytest.raises(ConfigError):
        keys.generate("x", 1024)


def test_probe_verifies_only_against_the_matching_record(pair: keys.KeyPair) -> None:
    other = keys.generate("other", 2048)
    assert keys.probe_verifies("a.test", pair.selector, pair.private_pem, lambda n: pair.txt.encode())
    assert not keys.probe_verifies("a.test", pair.selector, pair.private_pem, lambda n: other.txt.encode())
    assert not keys.probe_verifies("a.test", pair.selector, pair.private_pem, lambda n: None)


def test_probe_signature_is_the_one_dkimpy_makes(pair: keys.KeyPair, monkeypatch: pytest.MonkeyPatch) -> None:
    msg = (
        b"From: probe@a.test\r\nTo: probe@a.test\r\nSubject: mailplane DKIM probe\r\n"
        b"Date: Sat, 28 Nov 2026 03:00:00 +0000\r\n\r\nprobe\r\n"
    )
    monkeypatch.setattr("time.time", lambda: 1795000000.5)
    ours = keys._dkim_signature(msg, pair.selector, "a.test", pair.private_pem)
    theirs = dkim.sign(
        msg,
        pair.selector.encode(),
        b"a.test",
        pair.private_pem.reveal().encode(),
        include_headers=[b"from", b"to", b"subject", b"date"],
    )
    assert re.sub(rb"\s+", b"", ours) == re.sub(rb"\s+", b"", theirs)  # the same tags and b=, unfolded
    assert dkim.verify(ours + msg, dnsfunc=lambda name, timeout=5: pair.txt.encode(), minkey=2048)


def test_selectors_are_dated_and_never_reused() -> None:
    now = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    assert keys.next_selector("fc%Y%m%d", now, []) == "fc20261127"
    assert keys.next_selector("fc%Y%m%d", now, ["fc20261127", "fc20261127a"]) == "fc20261127b"
