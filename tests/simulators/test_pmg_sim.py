"""Every documented PMG quirk (reference/pmg.md) asserted against the simulator with raw HTTP requests.

Each test runs twice: in-process (requests -> RequestsAdapter -> PmgNodeApp) and over real HTTPS on loopback
(serve_cluster, TLS verified with the simulator's CA). Both front-ends share the one model.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from sim.common import Request
from sim.pmg import PmgModel, PmgNodeApp
from sim.transports import HostRouter, RequestsAdapter

from tests.fakes.pmg import HttpsCluster, https_cluster, quick_model

USER, PASSWORD = "automation@pmg", "sim-pmg-password"
ROOT_PASSWORD = "root-sim-password"


@dataclass
class Raw:
    """Raw API requests to the simulated nodes: no client logic in between."""

    session: requests.Session
    urls: dict[str, str]
    model: PmgModel
    verify: bool | str = True
    ticket: str = ""
    csrf: str = ""

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        node: str = "pmg1",
        json_body: Any = None,
        cookie: bool = True,
        csrf: bool = True,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> requests.Response:
        h = dict(headers or {})
        if cookie and self.ticket:
            h["Cookie"] = f"PMGAuthCookie={self.ticket}"
        if csrf and self.csrf and method != "GET":
            h["CSRFPreventionToken"] = self.csrf
        query = params if method in ("GET", "DELETE") else None
        data = params if method not in ("GET", "DELETE") else None
        return self.session.request(
            method,
            f"{self.urls[node]}/api2/json{path}",
            params=query,
            data=data,
            json=json_body,
            headers=h,
            verify=self.verify,
            timeout=timeout,
        )

    def login(self, user: str = USER, password: str = PASSWORD, node: str = "pmg1", **extra: str) -> requests.Response:
        resp = self.request("POST", "/access/ticket", {"username": user, "password": password, **extra}, node=node)
        if resp.status_code == 200:
            data = resp.json()["data"]
            self.ticket, self.csrf = data["ticket"], data["CSRFPreventionToken"]
        return resp

    def control(self, method: str, path: str, body: Any = None) -> Any:
        resp = self.session.request(method, f"{self.urls['pmg1']}/_sim/{path}", json=body, verify=self.verify)
        assert resp.status_code == 200, resp.text
        return resp.json()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsCluster]:
    with https_cluster(tmp_path_factory.mktemp("pmg-tls")) as cluster:
        yield cluster


@pytest.fixture(params=["in-process", "https"])
def raw(request: pytest.FixtureRequest) -> Raw:
    verify: bool | str = True
    if request.param == "https":
        cluster: HttpsCluster = request.getfixturevalue("served")
        cluster.model.reset()
        model, urls, verify = cluster.model, cluster.urls, cluster.ca
        session = requests.Session()
    else:
        model = quick_model()
        urls = {name: f"https://{name}.sim.invalid:8006" for name in model.node_names}
        router = HostRouter({u.removeprefix("https://"): PmgNodeApp(model, n) for n, u in urls.items()})
        session = requests.Session()
        session.mount("https://", RequestsAdapter(router))
    model.add_user("root@pam", ROOT_PASSWORD, "root")
    return Raw(session, urls, model, verify)


@pytest.fixture
def api(raw: Raw) -> Raw:
    """``raw``, logged in as the admin user."""
    assert raw.login().status_code == 200
    return raw


def error(resp: requests.Response) -> tuple[int, str, dict[str, Any] | None]:
    """(status, reason phrase, errors) of an error answer."""
    body = resp.json() if resp.content else None
    return resp.status_code, resp.reason, (body or {}).get("errors")


# ---------------------------------------------------------------- authentication


def test_login_defaults_the_realm_and_maps_root(raw: Raw) -> None:
    assert raw.login("root", ROOT_PASSWORD).status_code == 401  # root -> root@quarantine
    assert raw.login("automation", PASSWORD).status_code == 401  # -> automation@quarantine
    resp = raw.login("automation", PASSWORD, realm="pmg")
    assert resp.status_code == 200 and resp.json()["data"]["username"] == USER
    resp = raw.login("root@pmg", ROOT_PASSWORD)  # rewritten to root@pam
    assert resp.json()["data"]["username"] == "root@pam" and resp.json()["data"]["role"] == "root"
    data = raw.login().json()["data"]
    assert data["role"] == "admin"
    assert re.fullmatch(r"PMG:automation@pmg:[0-9A-F]{8}::\S+", data["ticket"])
    assert re.fullmatch(r"[0-9A-F]{8}:\S+", data["CSRFPreventionToken"])


def test_failed_login_is_401_with_the_reason_in_the_status_line(raw: Raw) -> None:
    resp = raw.login(USER, "wrong")
    assert (resp.status_code, resp.reason) == (401, "authentication failure")
    assert resp.json() == {"data": None, "message": "authentication failure\n"}
    raw.model.configure(body_style="old")
    assert raw.login(USER, "wrong").json() == {"data": None}


@pytest.mark.parametrize(
    ("headers", "cookie", "reason"),
    [
        ({}, False, "No ticket"),
        (
            {"Cookie": "PMGAuthCookie=PMG:automation@pmg:00000000::forged"},
            False,
            "permission denied - invalid PMG ticket",
        ),
        ({"Authorization": "PVEAPIToken=automation@pmg!ci=123"}, False, "API tokens not implemented"),
        ({"Authorization": "PMGAPIToken=automation@pmg!ci=123"}, False, "No ticket"),
    ],
)
def test_bad_auth_is_401_with_an_empty_body(api: Raw, headers: dict[str, str], cookie: bool, reason: str) -> None:
    resp = api.request("GET", "/config/domains", headers=headers, cookie=cookie)
    assert (resp.status_code, resp.reason, resp.content) == (401, reason, b"")


def test_csrf_token_is_required_on_non_get_only(api: Raw) -> None:
    resp = api.request("POST", "/config/domains", {"domain": "a.test"}, csrf=False)
    assert (resp.status_code, resp.reason, resp.content) == (401, "Permission denied - invalid csrf token", b"")
    assert api.request("GET", "/config/domains", csrf=False).status_code == 200
    assert api.request("POST", "/config/domains", {"domain": "a.test"}).status_code == 200


def test_ticket_in_the_authorization_header_works(api: Raw) -> None:
    resp = api.request("GET", "/config/domains", cookie=False, headers={"Authorization": f"PMGAuthCookie={api.ticket}"})
    assert resp.status_code == 200


def test_tickets_expire_after_two_hours_and_renew_with_password_ticket(api: Raw) -> None:
    first = api.ticket
    api.model.advance(3600)
    assert api.login(USER, first).status_code == 200  # renewal: password=<ticket>
    assert api.ticket != first
    api.model.advance(3601)  # the first ticket is now 2 h + 1 s old, the renewed one 1 h + 1 s
    old = api.request("GET", "/config/domains", cookie=False, headers={"Cookie": f"PMGAuthCookie={first}"})
    assert (old.status_code, old.reason) == (401, "permission denied - invalid PMG ticket")
    assert api.request("GET", "/config/domains").status_code == 200
    assert api.login(USER, first).status_code == 401  # an expired ticket renews nothing
    tampered = api.ticket[:-3] + ("AAA" if not api.ticket.endswith("AAA") else "BBB")
    resp = api.request("GET", "/config/domains", cookie=False, headers={"Cookie": f"PMGAuthCookie={tampered}"})
    assert resp.status_code == 401


def test_every_401_can_be_delayed(raw: Raw) -> None:
    raw.model.configure(auth_failure_delay_s=0.2)
    started = time.monotonic()
    assert raw.login(USER, "wrong").status_code == 401
    assert raw.request("GET", "/config/domains").status_code == 401
    assert time.monotonic() - started >= 0.4


def test_permissions_audit_reads_but_cannot_write(raw: Raw) -> None:
    raw.model.add_user("auditor@pmg", "audit-pw", "audit")
    assert raw.login("auditor@pmg", "audit-pw").status_code == 200
    assert raw.request("GET", "/config/domains").status_code == 200
    resp = raw.request("POST", "/config/domains", {"domain": "a.test"})
    assert (resp.status_code, resp.reason) == (403, "Permission check failed")


# ---------------------------------------------------------------- relay domains


@pytest.mark.parametrize("domain", ["example.com", "localdomain", ".example.com", "a-b.example.com", "Example.COM"])
def test_transport_domain_format_accepts(api: Raw, domain: str) -> None:
    assert api.request("POST", "/config/domains", {"domain": domain}).status_code == 200


@pytest.mark.parametrize("domain", ["*.example.com", "example.com.", "ex_ample.com", "a b.com", "bücher.de", "-a.com"])
def test_transport_domain_format_rejects(api: Raw, domain: str) -> None:
    resp = api.request("POST", "/config/domains", {"domain": domain})
    text = "invalid format - value does not look like a valid transport domain\n"
    assert error(resp) == (400, "Parameter verification failed.", {"domain": text})


def test_domains_are_case_sensitive_ascii_sorted_and_500_on_exists_or_missing(api: Raw) -> None:
    for d in ("b.com", "B.com", "a.com"):
        assert api.request("POST", "/config/domains", {"domain": d, "comment": "c"}).status_code == 200
    assert [r["domain"] for r in api.request("GET", "/config/domains").json()["data"]] == ["B.com", "a.com", "b.com"]
    resp = api.request("POST", "/config/domains", {"domain": "a.com"})
    assert (resp.status_code, resp.reason) == (500, "add relay domain failed: Domain 'a.com' already exists")
    assert resp.json() == {"data": None, "message": "add relay domain failed: Domain 'a.com' already exists\n"}
    assert (
        api.request("DELETE", "/config/domains/x.test").reason
        == "delete relay domain failed: Domain 'x.test' does not exist"
    )
    assert api.request("GET", "/config/domains/x.test").reason == "Domain 'x.test' does not exist"
    put = api.request("PUT", "/config/domains/x.test", {"comment": "c"})
    assert (put.status_code, put.reason) == (500, "update relay domain failed: Domain 'x.test' does not exist")


def test_domain_put_requires_comment_and_comment_is_omitted_when_empty(api: Raw) -> None:
    api.request("POST", "/config/domains", {"domain": "a.test"})
    assert api.request("GET", "/config/domains/a.test").json()["data"] == {"domain": "a.test"}
    resp = api.request("PUT", "/config/domains/a.test", {})
    assert error(resp) == (
        400,
        "Parameter verification failed.",
        {"comment": "property is missing and it is not optional"},
    )
    assert api.request("PUT", "/config/domains/a.test", {"comment": "hello"}).status_code == 200
    assert api.request("GET", "/config/domains/a.test").json()["data"] == {"domain": "a.test", "comment": "hello"}


def test_a_newline_in_a_comment_corrupts_the_file(api: Raw) -> None:
    api.request("POST", "/config/domains", {"domain": "a.test", "comment": "one\nintruder.test line"})
    assert [r["domain"] for r in api.request("GET", "/config/domains").json()["data"]] == ["a.test", "intruder.test"]


def test_duplicate_parameter_in_path_and_body(api: Raw) -> None:
    api.request("POST", "/config/domains", {"domain": "a.test"})
    resp = api.request("PUT", "/config/domains/a.test", {"domain": "a.test", "comment": "x"})
    assert error(resp) == (
        400,
        "Parameter verification failed.",
        {"domain": "duplicate parameter (already defined in URI)"},
    )


def test_unknown_routes_are_501(api: Raw) -> None:
    resp = api.request("PUT", "/config/domains", {"comment": "x"})
    assert (resp.status_code, resp.reason) == (501, "Method 'PUT /config/domains' not implemented")
    assert api.request("GET", "/config/nothing").reason == "Method 'GET /config/nothing' not implemented"
    resp = api.request("DELETE", "/config/domains/a.test", headers={"Content-Type": "application/json"}, json_body={})
    assert (resp.status_code, resp.reason) == (501, "Unexpected content for method 'DELETE'")


def test_old_body_style_has_no_message(api: Raw) -> None:
    api.model.configure(body_style="old")
    resp = api.request("GET", "/config/domains/x.test")
    assert (resp.status_code, resp.reason, resp.json()) == (500, "Domain 'x.test' does not exist", {"data": None})
    resp = api.request("POST", "/config/domains", {"domain": "*"})
    assert set(resp.json()) == {"data", "errors"}


# ---------------------------------------------------------------- transports


@pytest.mark.parametrize(
    ("params", "field", "text"),
    [
        ({"use_mx": "True"}, "use_mx", "type check ('boolean') failed - got 'True'"),
        ({"use_mx": "true"}, "use_mx", "type check ('boolean') failed - got 'true'"),
        ({"port": "70000"}, "port", "value must have a maximum value of 65535"),
        ({"port": "0"}, "port", "value must have a minimum value of 1"),
        ({"port": "abc"}, "port", "type check ('integer') failed - got 'abc'"),
        ({"protocol": "x"}, "protocol", "value 'x' does not have a value in the enumeration 'smtp, lmtp'"),
        ({"host": None}, "host", "property is missing and it is not optional"),
        ({"foo": "1"}, "foo", "property is not defined in schema and the schema does not allow additional properties"),
        ({"host": "[192.0.2.1]"}, "host", "invalid format - value does not look like a valid address\n"),
        ({"host": "mx.example.com."}, "host", "invalid format - value does not look like a valid address\n"),
        (
            {"domain": "*.example.com"},
            "domain",
            "invalid format - value does not look like a valid transport domain or email address\n",
        ),
    ],
)
def test_transport_parameter_checks(api: Raw, params: dict[str, Any], field: str, text: str) -> None:
    body = {k: v for k, v in {"domain": "t.test", "host": "mx.example.com", **params}.items() if v is not None}
    resp = api.request("POST", "/config/transport", body)
    assert error(resp) == (400, "Parameter verification failed.", {field: text})


def test_transport_booleans_as_1_0_or_json(api: Raw) -> None:
    assert api.request("POST", "/config/transport", {"domain": "a.test", "host": "mx.a.test", "use_mx": "1"}).ok
    assert api.request("POST", "/config/transport", {"domain": "b.test", "host": "mx.b.test", "use_mx": "0"}).ok
    body = {"domain": "c.test", "host": "mx.c.test", "use_mx": False, "port": 2525}
    assert api.request("POST", "/config/transport", json_body=body).ok
    rows = {r["domain"]: r for r in api.request("GET", "/config/transport").json()["data"]}
    assert (rows["a.test"]["use_mx"], rows["b.test"]["use_mx"], rows["c.test"]["use_mx"]) == (1, 0, 0)
    assert rows["c.test"]["port"] == "2525"


@pytest.mark.parametrize(
    ("host", "protocol", "sent", "read"),
    [
        ("192.0.2.5", "smtp", "1", 0),  # an IP host is always bracketed
        ("2001:db8::5", "smtp", "1", 0),
        ("mx.example.com", "smtp", "1", 1),
        ("mx.example.com", "smtp", "0", 0),
        ("mx.example.com", "lmtp", "1", 0),  # every lmtp entry reads 0
    ],
)
def test_transport_use_mx_read_back_and_port_as_string(
    api: Raw, host: str, protocol: str, sent: str, read: int
) -> None:
    body = {"domain": "t.test", "host": host, "protocol": protocol, "use_mx": sent}
    assert api.request("POST", "/config/transport", body).ok
    row = api.request("GET", "/config/transport/t.test").json()["data"]
    assert row == {"domain": "t.test", "host": host, "protocol": protocol, "port": "25", "use_mx": read}


def test_transport_per_recipient_and_ipv6_prefix(api: Raw) -> None:
    assert api.request("POST", "/config/transport", {"domain": "user@example.com", "host": "ipv6:2001:db8::1"}).ok
    assert api.request("GET", "/config/transport").json()["data"][0]["domain"] == "user@example.com"


def test_transport_exists_missing_and_put_quirks(api: Raw) -> None:
    api.request("POST", "/config/transport", {"domain": "t.test", "host": "mx.t.test"})
    resp = api.request("POST", "/config/transport", {"domain": "t.test", "host": "mx.t.test"})
    assert resp.reason == "add transport map entry failed: Transport map entry 't.test' already exists"
    resp = api.request("PUT", "/config/transport/x.test", {"host": "mx.x.test"})
    assert (resp.status_code, resp.reason) == (
        500,
        "update transport map entry failed: Transport map entry '' does not exist",
    )
    resp = api.request("PUT", "/config/transport/t.test", {})
    assert (resp.status_code, resp.reason) == (500, "update transport map entry failed: no options specified")
    assert api.request("DELETE", "/config/transport/x.test").reason == (
        "delete transport map entry failed: Transport map entry 'x.test' does not exist"
    )
    assert api.request("GET", "/config/transport/x.test").reason == "Transport map entry 'x.test' does not exist"
    assert api.request("PUT", "/config/transport/t.test", {"host": "192.0.2.7", "port": "2525"}).ok
    row = api.request("GET", "/config/transport/t.test").json()["data"]
    assert (row["host"], row["port"], row["use_mx"]) == ("192.0.2.7", "2525", 0)


# ---------------------------------------------------------------- trusted networks


def test_mynetworks_cidr_in_path_raw_or_percent_encoded(api: Raw) -> None:
    assert api.request("POST", "/config/mynetworks", {"cidr": "10.0.0.0/8", "comment": "x"}).ok
    assert api.request("GET", "/config/mynetworks/10.0.0.0/8").json()["data"] == {"cidr": "10.0.0.0/8", "comment": "x"}
    assert api.request("GET", "/config/mynetworks/10.0.0.0%2F8").ok
    assert api.request("DELETE", "/config/mynetworks/10.0.0.0%2F8").ok
    resp = api.request("DELETE", "/config/mynetworks/10.0.0.0/8")
    assert (resp.status_code, resp.reason) == (
        500,
        "delete trusted network failed: trusted network '10.0.0.0/8' does not exist",
    )
    assert api.request("GET", "/config/mynetworks/10.0.0.0/8").reason == "trusted network '10.0.0.0/8' does not exist"


@pytest.mark.parametrize("cidr", ["10.0.0.0/8", "10.1.2.3/8", "192.0.2.1/32", "2001:DB8::/32", "2001:db8::1/128"])
def test_cidr_format_accepts(api: Raw, cidr: str) -> None:
    assert api.request("POST", "/config/mynetworks", {"cidr": cidr}).ok


@pytest.mark.parametrize(
    "cidr", ["0.0.0.0/0", "10.0.0.0/7", "10.0.0.1", "2001:db8::/129", "300.0.0.0/8", "10.0.0.0/33"]
)
def test_cidr_format_rejects(api: Raw, cidr: str) -> None:
    resp = api.request("POST", "/config/mynetworks", {"cidr": cidr})
    assert error(resp) == (
        400,
        "Parameter verification failed.",
        {"cidr": "invalid format - value does not look like a valid CIDR network\n"},
    )


def test_cidrs_are_not_normalised(api: Raw) -> None:
    for cidr in ("10.1.2.3/8", "10.0.0.0/8", "2001:DB8::/32"):
        assert api.request("POST", "/config/mynetworks", {"cidr": cidr}).ok
    rows = api.request("GET", "/config/mynetworks").json()["data"]
    assert [r["cidr"] for r in rows] == ["10.0.0.0/8", "10.1.2.3/8", "2001:DB8::/32"]
    resp = api.request("POST", "/config/mynetworks", {"cidr": "10.0.0.0/8"})
    assert resp.reason == "add trusted network failed: trusted network '10.0.0.0/8' already exists"


def test_mynetworks_put_needs_comment_and_skips_the_format_check(api: Raw) -> None:
    api.request("POST", "/config/mynetworks", {"cidr": "10.0.0.0/8"})
    assert api.request("PUT", "/config/mynetworks/10.0.0.0/8", {}).json()["errors"] == {
        "comment": "property is missing and it is not optional"
    }
    assert api.request("PUT", "/config/mynetworks/10.0.0.0/8", {"comment": "y"}).ok
    resp = api.request("PUT", "/config/mynetworks/not-a-cidr", {"comment": "y"})
    assert (resp.status_code, resp.reason) == (
        500,
        "update trusted network failed: trusted network 'not-a-cidr' does not exist",
    )


# ---------------------------------------------------------------- cluster: proxying, master down, sync


def test_config_calls_go_to_the_master_from_any_node(api: Raw) -> None:
    assert api.request("POST", "/config/domains", {"domain": "a.test"}, node="pmg2").ok
    assert [r["domain"] for r in api.request("GET", "/config/domains", node="pmg3").json()["data"]] == ["a.test"]
    assert api.model.config("pmg1")["domains"] == [{"domain": "a.test"}]


def test_master_down_gives_595_with_an_empty_body_on_the_others(api: Raw) -> None:
    api.model.set_down("pmg1")
    for method, params in (("GET", None), ("POST", {"domain": "a.test"})):
        resp = api.request(method, "/config/domains", params, node="pmg2")
        assert (resp.status_code, resp.reason, resp.content) == (595, "Connection refused", b"")
    assert api.login(node="pmg3").status_code == 200  # login is local
    with pytest.raises(requests.exceptions.ConnectionError):
        api.request("GET", "/config/domains", node="pmg1")
    assert api.request("GET", "/nodes/pmg1/status", node="pmg2").status_code == 595


def test_master_down_can_hang_like_the_30s_proxy_timeout(api: Raw) -> None:
    api.model.configure(master_down=True, master_down_mode="hang", proxy_timeout_s=0.3)
    with pytest.raises(requests.exceptions.ReadTimeout):
        api.request("GET", "/config/domains", node="pmg2", timeout=0.1)
    started = time.monotonic()
    resp = api.request("GET", "/config/domains", node="pmg2", timeout=5)
    assert (resp.status_code, resp.reason, resp.content) == (595, "Connection timed out", b"")
    assert time.monotonic() - started >= 0.3


def test_non_masters_apply_the_config_after_the_sync_interval(api: Raw) -> None:
    api.request("POST", "/config/domains", {"domain": "a.test"})
    assert api.model.config("pmg1")["domains"] == [{"domain": "a.test"}]
    assert api.model.config("pmg2")["domains"] == []
    api.model.advance(119)
    assert api.model.config("pmg3")["domains"] == []
    api.model.advance(2)
    assert api.model.config("pmg2")["domains"] == api.model.config("pmg3")["domains"] == [{"domain": "a.test"}]
    api.request("POST", "/config/domains", {"domain": "b.test"})
    api.model.sync_now()
    assert len(api.model.config("pmg2")["domains"]) == 2


def test_cluster_status_reports_conn_error_and_insync(api: Raw) -> None:
    api.model.set_down("pmg3")
    api.model.advance(181)
    rows = {r["name"]: r for r in api.request("GET", "/config/cluster/status", node="pmg2").json()["data"]}
    assert rows["pmg3"]["conn_error"] and "insync" not in rows["pmg3"]
    assert (rows["pmg1"]["type"], rows["pmg2"]["type"], rows["pmg1"]["cid"]) == ("master", "node", "1")
    assert rows["pmg1"]["insync"] == 0  # pmg3 has not synced for more than 3 minutes
    assert api.request("GET", "/nodes/localhost/status", node="pmg2").json()["data"]["insync"] == 0
    api.model.set_down("pmg3", False)
    assert api.request("GET", "/nodes/pmg3/status").json()["data"]["insync"] == 1


def test_cluster_nodes_reads_the_local_cluster_conf(api: Raw) -> None:
    rows = api.request("GET", "/config/cluster/nodes", node="pmg3").json()["data"]
    assert sorted((r["cid"], r["name"], r["type"]) for r in rows) == [
        (1, "pmg1", "master"),
        (2, "pmg2", "node"),
        (3, "pmg3", "node"),
    ]
    nodes = api.request("GET", "/nodes", node="pmg2").json()["data"]
    assert nodes[0] == {"node": "pmg2"} and len(nodes) == 3


def test_promote_is_out_of_band_and_others_follow_after_sync(api: Raw) -> None:
    api.request("POST", "/config/domains", {"domain": "synced.test"})
    api.model.sync_now()
    api.request("POST", "/config/domains", {"domain": "unsynced.test"})
    api.model.set_down("pmg1")
    api.model.promote("pmg2")
    # the new master starts from its last synced copy: the unsynced write is gone
    assert [r["domain"] for r in api.request("GET", "/config/domains", node="pmg2").json()["data"]] == ["synced.test"]
    assert api.request("GET", "/config/domains", node="pmg3").status_code == 595  # still names pmg1
    api.model.sync_now()
    assert api.request("POST", "/config/domains", {"domain": "new.test"}, node="pmg3").ok
    assert len(api.model.config("pmg2")["domains"]) == 2


def test_disagreeing_views_give_proxy_loop_or_not_master(api: Raw) -> None:
    api.model.set_view("pmg2", "pmg3")
    api.model.set_view("pmg3", "pmg2")
    assert api.request("GET", "/config/domains", node="pmg2").reason == "proxy loop detected"
    api.model.set_view("pmg3", "pmg1")
    resp = api.request("GET", "/config/domains", node="pmg2")
    assert (resp.status_code, resp.reason) == (500, "this node ('pmg3') is not the master node")


# ---------------------------------------------------------------- control plane and faults


def test_control_endpoints_state_requests_reset(api: Raw) -> None:
    api.request("POST", "/config/domains", {"domain": "a.test"}, node="pmg2")
    api.request("GET", "/config/domains")
    log = api.control("GET", "requests")
    writes = [r for r in log if r["write"]]
    assert [(r["method"], r["path"], r["node"], r["params"]) for r in writes] == [
        ("POST", "/config/domains", "pmg2", {"domain": "a.test"})
    ]
    assert log[0]["path"] == "/access/ticket" and "params" not in log[0] and log[0]["renewal"] is False
    state = api.control("GET", "state")
    assert state["master"] == "pmg1" and state["nodes"][0]["config"]["domains"] == [{"domain": "a.test"}]
    api.control("POST", "reset")
    assert api.control("GET", "requests") == []
    assert api.model.config()["domains"] == []


def test_faults_fail_next_lock_timeout_and_error_rate(api: Raw) -> None:
    lock = "add relay domain failed: can't lock file '/var/lock/pmgconfig.lck' - got timeout"
    api.control("POST", "faults", {"fail_next": [{"path_prefix": "/config/domains", "status": 500, "message": lock}]})
    resp = api.request("POST", "/config/domains", {"domain": "a.test"})
    assert (resp.status_code, resp.reason) == (500, lock)
    assert api.request("POST", "/config/domains", {"domain": "a.test"}).ok
    api.control("POST", "faults", {"config_locked": True, "lock_timeout_s": 0})
    assert api.request("POST", "/config/domains", {"domain": "b.test"}).reason == lock
    assert api.request("GET", "/config/domains").ok  # reads take no lock
    api.control("POST", "faults", {"config_locked": False, "error_rate": 1.0})
    assert api.request("GET", "/config/domains").status_code == 595


def test_faults_lost_answer_latency_down_promote(api: Raw) -> None:
    api.control("POST", "faults", {"fail_next": [{"path_prefix": "/config/domains", "status": 597, "after": True}]})
    assert api.request("POST", "/config/domains", {"domain": "a.test"}).status_code == 597
    assert api.model.config()["domains"] == [{"domain": "a.test"}]  # executed; only the answer was lost
    api.control("POST", "faults", {"latency_ms": 150})
    started = time.monotonic()
    api.request("GET", "/config/domains")
    assert time.monotonic() - started >= 0.15
    api.control("POST", "faults", {"latency_ms": 0, "down": ["pmg1"], "promote": "pmg2", "sync_now": True})
    assert api.control("GET", "state")["master"] == "pmg2"
    assert api.request("GET", "/config/domains", node="pmg3").ok
    bad = api.session.post(f"{api.urls['pmg2']}/_sim/faults", json={"nope": 1}, verify=api.verify)
    assert bad.status_code == 400


def test_control_plane_is_loopback_only() -> None:
    app = PmgNodeApp(quick_model(), "pmg1")
    resp = app.handle(Request("GET", "/_sim/state", {}, {}, b"", client="192.0.2.99"))
    assert resp.status == 403
    assert json.loads(app.handle(Request("GET", "/_sim/state", {}, {}, b"")).body)["master"] == "pmg1"


def test_https_servers_verify_with_the_simulator_ca(served: HttpsCluster, tmp_path: Path) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{served.urls['pmg1']}/api2/json/version", timeout=5, verify=True)
    resp = requests.get(f"{served.urls['pmg2']}/api2/json/version", timeout=5, verify=served.ca)
    assert (resp.status_code, resp.reason, resp.content) == (401, "No ticket", b"")


# ---------------------------------------------------------------- per-item reads and the seeding fast path


def test_per_item_reads_answer_exactly_the_listed_row_or_500_does_not_exist(api: Raw) -> None:
    """What the adapter's per-event reads rely on: one item, the same object (types included) as its row in the
    listing, and PMG's 500 "... does not exist" (not a 404) for a missing key; keys are exact (case, CIDR form)."""
    api.request("POST", "/config/domains", {"domain": "a.test", "comment": "c"})
    api.request("POST", "/config/transport", {"domain": "a.test", "host": "mx.a.test", "use_mx": 0, "comment": "t"})
    api.request("POST", "/config/mynetworks", {"cidr": "2001:DB8::/64", "comment": "n"})
    rows = {p: api.request("GET", p).json()["data"] for p in ("/config/domains", "/config/transport")}
    assert api.request("GET", "/config/domains/a.test").json()["data"] == rows["/config/domains"][0]
    transport = api.request("GET", "/config/transport/a.test").json()["data"]
    assert transport == rows["/config/transport"][0] and transport["port"] == "25"
    net = api.request("GET", "/config/mynetworks/2001:DB8::/64").json()["data"]
    assert net == api.request("GET", "/config/mynetworks/2001:DB8::%2F64").json()["data"]
    assert net == {"cidr": "2001:DB8::/64", "comment": "n"}
    for path, reason in (
        ("/config/domains/A.test", "Domain 'A.test' does not exist"),
        ("/config/transport/b.test", "Transport map entry 'b.test' does not exist"),
        ("/config/mynetworks/2001:db8::/64", "trusted network '2001:db8::/64' does not exist"),
    ):
        resp = api.request("GET", path)
        assert (resp.status_code, resp.reason) == (500, reason)


def test_seed_fills_every_node_without_api_requests(api: Raw) -> None:
    before = len(api.model.requests())
    assert api.control("POST", "seed", {"count": 300, "prefix": "s", "host": "mx.s.test"}) == {"added": 300}
    assert len(api.model.requests()) == before  # the control plane is not the API
    for node in api.model.node_names:
        listed = api.request("GET", "/config/domains", node=node).json()["data"]
        assert len(listed) == 300 and {"domain": "s299.test", "comment": "seeded"} in listed
    got = api.request("GET", "/config/transport/s7.test").json()["data"]
    assert (got["host"], got["port"], got["use_mx"]) == ("mx.s.test", "25", 0)
    assert api.model.rcpt("pmg2", "198.51.100.7", "postmaster@s7.test")[0] != 554  # postfix uses it on every node
    resp = api.session.post(f"{api.urls['pmg1']}/_sim/seed", json={"count": -1}, verify=api.verify)
    assert resp.status_code == 400


def test_request_log_counts_the_bytes_of_url_and_bodies(api: Raw) -> None:
    """The benchmark's bytes per event (benchmarks/bench_fleet_calls.py): a listing costs what its answer holds."""
    api.control("POST", "seed", {"count": 50, "prefix": "s"})
    small = api.request("GET", "/config/domains/s1.test")
    listing = api.request("GET", "/config/domains")
    one, everything = api.model.requests()[-2:]
    assert one["bytes_out"] == len(small.content) and everything["bytes_out"] == len(listing.content)
    assert one["bytes_in"] == len("/api2/json/config/domains/s1.test")
    assert everything["bytes_out"] > 40 * one["bytes_out"]
