"""The secrets scan can fail: planted secrets (plain, base64, percent-encoded, a PEM line, a JSON-escaped PEM) are
found, by name only; a public key and clean text are not hits. No stack needed."""

from __future__ import annotations

import base64
import json
import urllib.parse

from functions._core.model import keys
from tests.chaos.secrets_scan import Secrets, scan

PASSWORD = "s3cr3t-amqp/pass+word"
LOG = b'{"event_id": "e1", "outcome": "provisioned", "reason": ""}\n'


def secrets() -> tuple[Secrets, keys.KeyPair]:
    pair = keys.generate("fc20261127", 2048)
    out = Secrets()
    out.add("amqp billing", PASSWORD)
    out.add("localstack key", "test")  # too short to be a secret: skipped by name
    out.add_pem("dkim key fc20261127", pair.private_pem.reveal().encode())
    return out, pair


def test_clean_text_and_the_public_key_are_no_hits() -> None:
    found, pair = secrets()
    public = json.dumps({"lines": [f'fc20261127._domainkey IN TXT "{pair.txt}"']}).encode()
    assert scan([("log", LOG), ("outcome event", public), ("log", b"test test test")], found) == []
    assert found.skipped == ["localstack key"]


def test_planted_secrets_are_found_by_name() -> None:
    found, pair = secrets()
    pem = pair.private_pem.reveal()
    line = pem.splitlines()[5]  # one 64-character line of the private key
    planted = [
        ("log plain", LOG + f"connecting with {PASSWORD}\n".encode()),
        ("parked headers", repr({"authorization": "Basic " + base64.b64encode(PASSWORD.encode()).decode()}).encode()),
        ("amqp plain", b"\0billing\0" + PASSWORD.encode()),
        ("http basic", base64.b64encode(b"billing:" + PASSWORD.encode())),
        ("outcome url", b"https://x/?p=" + urllib.parse.quote(PASSWORD, safe="").encode()),
        ("log pem line", LOG + line.encode()),
        ("parked body json", json.dumps({"key": pem}).encode()),
    ]
    hits = scan(planted, found)
    assert {(h.where, h.secret) for h in hits} == {
        ("log plain", "amqp billing"),
        ("parked headers", "amqp billing"),
        ("outcome url", "amqp billing"),
        ("amqp plain", "amqp billing"),
        ("http basic", "amqp billing"),
        ("log pem line", "dkim key fc20261127"),
        ("parked body json", "dkim key fc20261127"),
    }
    assert all(PASSWORD not in repr(h) and line not in repr(h) for h in hits)  # a hit names, never shows
