"""PMG's custom SMTP certificate in the simulator: ``POST /nodes/{node}/certificates/custom/smtp`` through the real
PmgClient, and what the node presents on STARTTLS afterwards (read by mailplane's NodeTls and by openssl)."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from sim.pmg import PmgModel
from sim.pmg.smtp import serve_smtp

from functions._core.model import dane
from functions._core.platform.config import MxHost
from functions._core.platform.errors import PmgRejected
from functions.adapters.nodetls import NodeTls
from functions.adapters.pmg import PmgClient
from tests.fakes.pmg import fake_pmg
from tests.fakes.tls import self_signed


@pytest.fixture
def node() -> Iterator[tuple[PmgClient, PmgModel, NodeTls, int]]:
    client, model = fake_pmg()
    server = serve_smtp(model, "pmg1", "127.0.0.1", 0)
    port = server.server_address[1]
    tls = NodeTls(client, [MxHost("pmg1.faster.test", "127.0.0.1", "", smtp=f"127.0.0.1:{port}")], timeout=5)
    try:
        yield client, model, tls, port
    finally:
        server.shutdown()
        server.server_close()


def test_stock_certificate_then_the_uploaded_one_on_starttls(node: tuple[PmgClient, PmgModel, NodeTls, int]) -> None:
    client, model, tls, _ = node
    stock = tls.presented("pmg1")
    assert stock is not None and dane.subject(stock) == "CN=pmg1"
    chain, key = self_signed("pmg1.faster.test", dt.datetime.now(dt.UTC), days=90)
    tls.upload("pmg1", key, chain)
    seen = tls.presented("pmg1")
    assert seen is not None and dane.spki_sha256(seen) == dane.spki_sha256(chain)
    assert dane.subject(seen) == "CN=pmg1.faster.test"
    # a second upload replaces it (force=1), a mismatching key is refused and changes nothing
    chain2, key2 = self_signed("pmg1.faster.test", dt.datetime.now(dt.UTC), days=90)
    with pytest.raises(PmgRejected, match="do not match"):
        client.upload_smtp_certificate("pmg1", key, chain2)
    assert dane.spki_sha256(tls.presented("pmg1") or "") == dane.spki_sha256(chain)
    client.upload_smtp_certificate("pmg1", key2, chain2)
    assert dane.spki_sha256(tls.presented("pmg1") or "") == dane.spki_sha256(chain2)


def test_the_api_checks_parameters(node: tuple[PmgClient, PmgModel, NodeTls, int]) -> None:
    _, model, _, _ = node
    from sim.pmg import ApiCall

    chain, key = self_signed("pmg1.faster.test", dt.datetime.now(dt.UTC))
    ticket = model.issue_ticket(model.credentials[0])
    csrf = model._csrf_token(model.credentials[0])
    path = "/nodes/pmg1/certificates/custom/smtp"
    res = model.call(ApiCall("pmg1", "POST", path, {"certificates": chain}, ticket, csrf, has_body=True))
    assert res.status == 500 and "no key" in res.message
    res = model.call(ApiCall("pmg1", "POST", path, {"certificates": chain, "key": key}, ticket, csrf, has_body=True))
    assert res.status == 200 and res.data[0]["subject"] == "CN=pmg1.faster.test"
    res = model.call(ApiCall("pmg1", "POST", path, {"certificates": chain, "key": key}, ticket, csrf, has_body=True))
    assert res.status == 500 and "force" in res.message
    res = model.call(ApiCall("pmg1", "GET", "/nodes/pmg1/certificates/info", {}, ticket))
    assert res.status == 200 and res.data[0]["filename"] == "/etc/pmg/pmg-tls.pem"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_sees_the_uploaded_certificate(node: tuple[PmgClient, PmgModel, NodeTls, int]) -> None:
    _, _, tls, port = node
    chain, key = self_signed("pmg1.faster.test", dt.datetime.now(dt.UTC), days=90)
    tls.upload("pmg1", key, chain)
    out = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-starttls",
            "smtp",
            "-brief",
            "-dane_tlsa_domain",
            "pmg1.faster.test",
            "-dane_tlsa_rrdata",
            dane.tlsa_value(dane.spki_sha256(chain)),
            "-verify_return_error",
        ],
        input=b"QUIT\r\n",
        capture_output=True,
        timeout=20,
        check=False,
    )
    text = out.stderr.decode() + out.stdout.decode()
    assert "Verification: OK" in text and "matched EE certificate" in text, text
    wrong = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-starttls",
            "smtp",
            "-brief",
            "-dane_tlsa_domain",
            "pmg1.faster.test",
            "-dane_tlsa_rrdata",
            "3 1 1 " + "00" * 32,
            "-verify_return_error",
        ],
        input=b"QUIT\r\n",
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert "no matching DANE TLSA records" in wrong.stderr.decode() + wrong.stdout.decode()
