"""The PMG simulator's data plane (sim/pmg/postfix.py, smtp.py, tls.py): what PMG's postfix really uses, as
shared/live/pmg showed it: the whole-second postmap rule, the cluster sync lag, the SMTP answers, the stock
CN-only certificate, the login delay and the trusted-network write latency.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sim.pmg import ApiCall, PmgModel
from sim.pmg.app import serve_cluster
from sim.pmg.smtp import serve_smtp
from sim.pmg.tls import fingerprint, node_certs

from tests.fakes.pmg import quick_model


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Api:
    """Admin calls straight into the model (no sockets)."""

    def __init__(self, model: PmgModel) -> None:
        self.model = model
        user, password = model.credentials
        login = model.call(ApiCall("pmg1", "POST", "/access/ticket", {"username": user, "password": password}))
        assert login.status == 200
        self.ticket, self.csrf = login.data["ticket"], login.data["CSRFPreventionToken"]

    def __call__(self, method: str, path: str, node: str = "pmg1", **params: Any) -> Any:
        return self.model.call(ApiCall(node, method, path, params, self.ticket, self.csrf))


@pytest.fixture
def clock() -> Clock:
    return Clock(1_800_000_000.2)


@pytest.fixture
def api(clock: Clock) -> Api:
    return Api(quick_model(clock=clock, sync_interval=5.0))


def relayed(model: PmgModel, node: str, domain: str) -> bool:
    return model.rcpt(node, "127.0.0.2", f"postmaster@{domain}")[0] != 554


# ---------------------------------------------------------------- the whole-second postmap rule


@pytest.mark.parametrize("kind", ["domains", "transport"])
def test_second_write_to_a_map_within_one_second_is_not_used(api: Api, clock: Clock, kind: str) -> None:
    def add(domain: str) -> None:
        body = {"domain": domain} if kind == "domains" else {"domain": domain, "host": "mx.example.net"}
        assert api("POST", f"/config/{kind}", **body).status == 200

    add("a.test")
    clock.t += 0.5  # same whole second
    add("b.test")
    listed = [r["domain"] for r in api("GET", f"/config/{kind}").data]
    assert listed == ["a.test", "b.test"]  # the API (and the file) have both
    assert api.model.effective("pmg1")[kind] == ["a.test"]  # postmap did not run: postfix lacks b.test
    assert api.model.effective("pmg1")["stale"] == [kind]
    clock.t += 0.6  # a later second: the next change to that file rebuilds the map with everything
    add("c.test")
    assert api.model.effective("pmg1")[kind] == ["a.test", "b.test", "c.test"]
    assert api.model.effective("pmg1")["stale"] == []


def test_writes_a_second_apart_are_both_used_and_maps_are_independent(api: Api, clock: Clock) -> None:
    api("POST", "/config/domains", domain="a.test")
    api("POST", "/config/transport", domain="a.test", host="mx.example.net")  # other map: its own .db
    clock.t += 1.0
    api("POST", "/config/domains", domain="b.test")
    eff = api.model.effective("pmg1")
    assert (eff["domains"], eff["transport"]) == (["a.test", "b.test"], ["a.test"])


def test_trusted_networks_take_effect_on_every_rewrite(api: Api, clock: Clock) -> None:
    api("POST", "/config/mynetworks", cidr="192.0.2.0/24")
    api("POST", "/config/mynetworks", cidr="198.51.100.0/24")  # same second: main.cf + reload, no postmap
    assert api.model.effective("pmg1")["mynetworks"] == ["192.0.2.0/24", "198.51.100.0/24"]


def test_a_lost_write_stays_lost_until_a_later_change_and_the_relay_answer_follows(api: Api, clock: Clock) -> None:
    api("POST", "/config/domains", domain="a.test")
    api("POST", "/config/domains", domain="b.test")
    clock.t += 30  # time alone rebuilds nothing on the master
    assert relayed(api.model, "pmg1", "a.test") and not relayed(api.model, "pmg1", "b.test")
    api("PUT", "/config/domains/b.test", comment="touch")  # a later change to the file, in a later second
    assert relayed(api.model, "pmg1", "b.test")


# ---------------------------------------------------------------- cluster sync


def test_other_nodes_use_a_write_only_after_their_next_sync(api: Api, clock: Clock) -> None:
    api("POST", "/config/domains", domain="a.test")
    # pmg2's API proxies to the master and shows the domain; its postfix does not relay it yet
    assert [r["domain"] for r in api("GET", "/config/domains", node="pmg2").data] == ["a.test"]
    assert not relayed(api.model, "pmg2", "a.test")
    clock.t += 5.0
    assert relayed(api.model, "pmg2", "a.test") and relayed(api.model, "pmg3", "a.test")


def test_one_node_can_lag(api: Api, clock: Clock) -> None:
    api.model.configure(node_sync_interval_s={"pmg3": 60})
    api("POST", "/config/domains", domain="a.test")
    clock.t += 5.0
    assert relayed(api.model, "pmg2", "a.test") and not relayed(api.model, "pmg3", "a.test")
    assert api.model.state()["nodes"][2]["sync_interval"] == 60
    clock.t += 55.0
    assert relayed(api.model, "pmg3", "a.test")
    api.model.configure(node_sync_interval_s={"pmg3": None})
    assert api.model.state()["nodes"][2]["sync_interval"] == 5.0


def test_a_sync_rebuilds_what_the_master_lost(api: Api, clock: Clock) -> None:
    api("POST", "/config/domains", domain="a.test")
    api("POST", "/config/domains", domain="b.test")  # lost on the master (same second)
    clock.t += 5.0  # pmg2 rsyncs the file (written now, newer than its .db) and runs postmap
    assert relayed(api.model, "pmg2", "b.test") and not relayed(api.model, "pmg1", "b.test")


# ---------------------------------------------------------------- SMTP answers


def test_rcpt_answers_as_postfix_on_pmg(api: Api) -> None:
    model = api.model
    address = "postmaster@a.test"
    assert model.rcpt("pmg1", "127.0.0.2", address) == (554, f"5.7.1 <{address}>: Relay access denied")
    api("POST", "/config/domains", domain="a.test")
    code, text = model.rcpt("pmg1", "127.0.0.2", address)
    assert code == 450 and text.startswith("4.7.1")  # PMG greylists by default
    model.configure(smtp_greylist=False)
    assert model.rcpt("pmg1", "127.0.0.2", address)[0] == 250
    model.configure(smtp_verify_recipients=True)
    code, text = model.rcpt("pmg1", "127.0.0.2", address)
    assert code == 550 and text.startswith("5.1.1") and "User unknown" in text


def test_a_trusted_client_is_permitted_for_any_domain(api: Api, clock: Clock) -> None:
    assert api.model.rcpt("pmg1", "192.0.2.11", "x@nowhere.test")[0] == 250  # the node's own address
    assert api.model.rcpt("pmg1", "127.0.0.2", "x@nowhere.test")[0] == 554
    api("POST", "/config/mynetworks", cidr="127.0.0.0/24")
    assert api.model.rcpt("pmg1", "127.0.0.2", "x@nowhere.test")[0] == 250  # permit_mynetworks


@pytest.fixture
def smtp_node() -> Iterator[tuple[PmgModel, int]]:
    model = quick_model(nodes=[("pmg1", "127.0.0.1"), ("pmg2", "127.0.0.1")])
    server = serve_smtp(model, "pmg1", "127.0.0.1", 0)
    try:
        yield model, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def smtp_rcpt(port: int, source: str, address: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=5, source_address=(source, 0)) as s:
        s.ehlo("probe.test")
        assert s.mail("")[0] == 250
        return s.rcpt(address)


def test_smtp_listener_answers_from_the_effective_maps(smtp_node: tuple[PmgModel, int]) -> None:
    model, port = smtp_node
    code, text = smtp_rcpt(port, "127.0.0.2", "postmaster@a.test")
    assert (code, text) == (554, b"5.7.1 <postmaster@a.test>: Relay access denied")
    Api(model)("POST", "/config/domains", domain="a.test")
    assert smtp_rcpt(port, "127.0.0.2", "postmaster@a.test")[0] == 450
    assert smtp_rcpt(port, "127.0.0.1", "postmaster@b.test")[0] == 250  # from the node's own address: trusted


def test_smtp_listener_of_a_node_that_is_down_gives_no_banner(smtp_node: tuple[PmgModel, int]) -> None:
    model, port = smtp_node
    model.set_down("pmg1")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtplib.SMTP("127.0.0.1", port, timeout=5)


def test_smtp_listener_binds_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        serve_smtp(quick_model(), "pmg1", "192.0.2.1", 0)


# ---------------------------------------------------------------- TLS, login delay, write latency


def test_stock_certificate_is_cn_only_and_pinnable_by_fingerprint(tmp_path: Path) -> None:
    from cryptography import x509

    certs = node_certs(tmp_path, ["pmg1"])
    cert = x509.load_pem_x509_certificate(certs["pmg1"][0].read_bytes())
    assert cert.subject.rfc4514_string() == "CN=pmg1"
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    model = quick_model(nodes=[("pmg1", "127.0.0.1")])
    (server,) = serve_cluster([0], certs, *model.credentials, model=model)
    try:
        port = server.server_address[1]
        with pytest.raises(requests.exceptions.SSLError):  # pinned as a CA it fails: no subjectAltName
            requests.get(f"https://127.0.0.1:{port}/api2/json/version", verify=str(certs["pmg1"][0]), timeout=5)
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port), 5) as raw, ctx.wrap_socket(raw) as tls:
            served = tls.getpeercert(binary_form=True)
        assert served is not None
        pem = tmp_path / "served.pem"
        pem.write_text(ssl.DER_cert_to_PEM_cert(served))
        assert fingerprint(pem) == fingerprint(certs["pmg1"][0])
    finally:
        server.shutdown()
        server.server_close()


def test_refused_login_waits_three_seconds_by_default() -> None:
    model = PmgModel()
    bad = model.call(ApiCall("pmg1", "POST", "/access/ticket", {"username": "automation@pmg", "password": "x"}))
    assert (bad.status, bad.delay) == (401, 3.0)
    model.configure(auth_failure_delay_s=0.01)
    bad = model.call(ApiCall("pmg1", "POST", "/access/ticket", {"username": "automation@pmg", "password": "x"}))
    assert bad.delay == 0.01


def test_trusted_network_writes_hold_the_config_lock(clock: Clock) -> None:
    api = Api(PmgModel(clock=clock))  # real latency: ~2 s per trusted-network add/delete
    first = api("POST", "/config/mynetworks", cidr="192.0.2.0/24")
    second = api("POST", "/config/mynetworks", cidr="198.51.100.0/24")  # queued behind the first
    assert (first.status, first.delay, second.status, second.delay) == (200, 2.0, 200, 4.0)
    assert api("POST", "/config/domains", domain="a.test").delay == 4.0  # waits for the lock, holds it briefly
    api.model.configure(network_write_delay_s=7.0, lock_timeout_s=10.0)
    api("POST", "/config/mynetworks", cidr="203.0.113.0/24")
    late = api("POST", "/config/mynetworks", cidr="203.0.114.0/24")
    assert late.status == 500 and "can't lock file" in late.message  # the queue reached the 10 s lock timeout


def test_ipv6_networks_are_written_cidr_comment_and_empty_comments_keep_the_hash(api: Api) -> None:
    api("POST", "/config/mynetworks", cidr="2001:db8:100::/48", comment="v6 #1")
    api("POST", "/config/mynetworks", cidr="10.0.0.0/8")
    assert api.model.nodes["pmg1"].files["mynetworks"] == "10.0.0.0/8 #\n2001:db8:100::/48 #v6 #1\n"
    rows = api("GET", "/config/mynetworks").data
    assert rows == [{"cidr": "10.0.0.0/8"}, {"cidr": "2001:db8:100::/48", "comment": "v6 #1"}]
