"""PmgClient: the GatewayPort contract against (a) the in-process fake, (b) the simulator over HTTPS, (c) a real PMG
(``-m live`` with PMG_HOST, PMG_USER, PMG_PASSWORD[, PMG_CA_FILE, PMG_VERIFY_TLS=0]); then adapter specifics
(error mapping, failover, tickets, lost answers) on the fake.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import requests.adapters
from sim.pmg import PmgModel

from functions._core.model.ports import GatewayPort, GatewayTransport, RelayDomain, TrustedNetwork
from functions._core.platform.config import MxHost, PmgSettings, Secret
from functions._core.platform.errors import ConfigError, PmgRejected, PmgUnavailable
from functions.adapters.pmg import MANAGED_COMMENT, PmgClient, effective_use_mx
from tests.fakes.pmg import HttpsCluster, fake_pmg, https_cluster, no_wait

M = MANAGED_COMMENT


def ensure(port: GatewayPort, domain: RelayDomain, transport: GatewayTransport, network: TrustedNetwork) -> None:
    """A minimal planner: read, diff, write only what differs (desired transport normalised like the port's reads)."""
    want_t = GatewayTransport(
        transport.domain,
        transport.host,
        transport.port,
        transport.protocol,
        effective_use_mx(transport.protocol, transport.host, transport.use_mx),
        transport.comment,
    )
    if domain not in port.list_relay_domains():
        port.add_relay_domain(domain)
    have_t = {t.domain: t for t in port.list_transports()}
    if want_t.domain not in have_t:
        port.add_transport(want_t)
    elif have_t[want_t.domain] != want_t:
        port.update_transport(want_t)
    if network not in port.list_networks():
        port.add_network(network)


class Env:
    """What a contract test may observe or break on the system behind the port (None/False: cannot)."""

    def __init__(self, port: PmgClient) -> None:
        self.port = port

    def writes(self) -> int | None:
        return None

    def logins(self) -> int | None:
        return None

    def sent(self) -> list[dict[str, Any]] | None:
        """The parameters of every config write the server received."""
        return None

    def master_down(self) -> bool:
        return False

    def expire_tickets(self) -> bool:
        return False

    def master_domains(self) -> list[str] | None:
        """The relay domains in the master's file, read behind the API's back."""
        return None


class ModelEnv(Env):
    """Observe and break the simulator through its model (in-process)."""

    def __init__(self, port: PmgClient, model: PmgModel) -> None:
        super().__init__(port)
        self.model = model

    def _log(self) -> list[dict[str, Any]]:
        return self.model.requests()

    def writes(self) -> int:
        return sum(1 for r in self._log() if r["write"])

    def logins(self) -> int:
        return sum(1 for r in self._log() if r["path"] == "/access/ticket")

    def sent(self) -> list[dict[str, Any]]:
        return [r["params"] for r in self._log() if r["write"]]

    def master_down(self) -> bool:
        self.model.set_down(self.model.master)
        return True

    def expire_tickets(self) -> bool:
        self.model.advance(7201)
        return True

    def master_domains(self) -> list[str]:
        return [r["domain"] for r in self.model.config()["domains"]]


class HttpSimEnv(ModelEnv):
    """Observe and break the simulator through its HTTPS control plane (/_sim/requests, /_sim/faults)."""

    def __init__(self, port: PmgClient, cluster: HttpsCluster) -> None:
        super().__init__(port, cluster.model)
        self.cluster = cluster

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self.cluster.urls['pmg2']}/_sim/{path}"
        resp = requests.request(method, url, json=body, verify=self.cluster.ca, timeout=5)
        resp.raise_for_status()
        return resp.json()

    def _log(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._control("GET", "requests")
        return data

    def master_down(self) -> bool:
        self._control("POST", "faults", {"master_down": True})
        return True

    def expire_tickets(self) -> bool:
        self._control("POST", "faults", {"advance_s": 7201})
        return True


class GatewayPortContract:
    """Behaviour every GatewayPort must show. Subclasses provide the ``env`` fixture."""

    DOMAIN = "contract.mailplane-test.invalid"

    @pytest.fixture
    def env(self) -> Env:
        raise NotImplementedError

    def names(self) -> tuple[RelayDomain, GatewayTransport, TrustedNetwork]:
        return (
            RelayDomain(self.DOMAIN, M),
            GatewayTransport(self.DOMAIN, "192.0.2.25", 25, "smtp", True, M),  # IP host: PMG reads use_mx back as 0
            TrustedNetwork("198.51.100.0/24", M),
        )

    def test_add_twice_is_one_entry(self, env: Env) -> None:
        domain, transport, network = self.names()
        for _ in range(2):
            env.port.add_relay_domain(domain)
            env.port.add_transport(transport)
            env.port.add_network(network)
        assert [d for d in env.port.list_relay_domains() if d.domain == self.DOMAIN] == [domain]
        assert [t.domain for t in env.port.list_transports()].count(self.DOMAIN) == 1
        assert [n for n in env.port.list_networks() if n.cidr == network.cidr] == [network]

    def test_reads_are_normalised(self, env: Env) -> None:
        domain, transport, network = self.names()
        env.port.add_relay_domain(RelayDomain(self.DOMAIN.upper(), ""))  # lower-cased, marked
        env.port.add_transport(transport)
        assert RelayDomain(self.DOMAIN, M) in env.port.list_relay_domains()
        got = next(t for t in env.port.list_transports() if t.domain == self.DOMAIN)
        assert got == GatewayTransport(self.DOMAIN, "192.0.2.25", 25, "smtp", False, M)  # int port, effective use_mx

    def test_second_ensure_writes_nothing(self, env: Env) -> None:
        domain, transport, network = self.names()
        ensure(env.port, domain, transport, network)
        before = env.writes()
        if before is None:
            pytest.skip("writes are not observable here")
        ensure(env.port, domain, transport, network)
        hostname = GatewayTransport(self.DOMAIN, "mx.example.com", 2525, "lmtp", True, M)
        ensure(env.port, domain, hostname, network)  # one update
        ensure(env.port, domain, hostname, network)  # nothing: lmtp reads back use_mx 0
        assert env.writes() == before + 1

    def test_update_relay_domain_and_transport(self, env: Env) -> None:
        domain, transport, _ = self.names()
        env.port.add_relay_domain(domain)
        env.port.add_transport(transport)
        env.port.update_relay_domain(RelayDomain(self.DOMAIN, f"{M} customer=7"))
        env.port.update_transport(GatewayTransport(self.DOMAIN, "mx.example.com", 25, "smtp", False, M))
        assert RelayDomain(self.DOMAIN, f"{M} customer=7") in env.port.list_relay_domains()
        got = next(t for t in env.port.list_transports() if t.domain == self.DOMAIN)
        assert (got.host, got.use_mx) == ("mx.example.com", False)

    def test_per_item_reads_see_exactly_the_entry_or_none(self, env: Env) -> None:
        """The event paths' reads (GET /config/domains/{d}, /config/transport/{d}, /config/mynetworks/{cidr}): a
        missing entry is None (PMG answers 500 "... does not exist"), a present one reads as the listing shows it."""
        domain, transport, network = self.names()
        v6 = TrustedNetwork("2001:db8:17::/64", M)
        for cidr in (network.cidr, v6.cidr):
            env.port.delete_network(cidr)
        env.port.delete_transport(self.DOMAIN)
        env.port.delete_relay_domain(self.DOMAIN)
        assert env.port.get_relay_domain(self.DOMAIN) is None
        assert env.port.get_transport(self.DOMAIN) is None
        assert env.port.get_network(network.cidr) is None and env.port.get_network(v6.cidr) is None
        ensure(env.port, domain, transport, network)
        env.port.add_network(v6)
        assert env.port.get_relay_domain(self.DOMAIN) == domain
        got = env.port.get_transport(self.DOMAIN)
        assert got == next(t for t in env.port.list_transports() if t.domain == self.DOMAIN)
        assert env.port.get_network(network.cidr) == network and env.port.get_network(v6.cidr) == v6
        env.port.delete_network(v6.cidr)

    def test_delete_missing_is_success(self, env: Env) -> None:
        domain, transport, network = self.names()
        env.port.add_relay_domain(domain)
        for _ in range(2):
            env.port.delete_relay_domain(self.DOMAIN)
            env.port.delete_transport(self.DOMAIN)
            env.port.delete_network(network.cidr)
        assert all(d.domain != self.DOMAIN for d in env.port.list_relay_domains())

    def test_true_boolean_is_never_sent(self, env: Env) -> None:
        _, transport, _ = self.names()
        env.port.add_transport(transport)
        env.port.update_transport(GatewayTransport(self.DOMAIN, "mx.example.com", 25, "smtp", True, M))
        sent = env.sent()
        if sent is None:
            pytest.skip("request bodies are not observable here")
        flags = [str(p["use_mx"]) for p in sent if "use_mx" in p]
        assert flags == ["1", "1"]

    def test_comment_with_newline_is_refused_before_sending(self, env: Env) -> None:
        before = env.writes()
        with pytest.raises(PmgRejected):
            env.port.add_relay_domain(RelayDomain(self.DOMAIN, "one\ntwo.test 1"))
        assert env.writes() == before

    def test_rejection_carries_pmg_reason_and_no_secret(self, env: Env) -> None:
        with pytest.raises(PmgRejected) as info:
            env.port.add_relay_domain(RelayDomain("bad_domain.invalid", M))
        message = str(info.value)
        assert "invalid format - value does not look like a valid transport domain" in message
        self.assert_no_secret(env, message + repr(info.value) + repr(env.port))

    def test_wrong_password_is_rejected_once(self, env: Env) -> None:
        bad = self.with_password(env, "not-the-password-" + secrets.token_hex(4))
        before = env.logins()
        with pytest.raises(PmgRejected) as info:
            bad.list_relay_domains()
        assert "401" in str(info.value) and "not-the-password" not in str(info.value)
        if before is not None:
            assert env.logins() == before + 1  # no retry, no loop

    def test_master_down_is_unavailable_after_bounded_retries(self, env: Env) -> None:
        env.port.list_relay_domains()  # logged in
        if not env.master_down():
            pytest.skip("cannot stop the master here")
        started = time.monotonic()
        with pytest.raises(PmgUnavailable):
            env.port.list_relay_domains()
        with pytest.raises(PmgUnavailable):
            env.port.add_relay_domain(self.names()[0])
        assert time.monotonic() - started < 10
        assert len(env.sent() or []) <= 3 * 3  # attempts x nodes
        assert self.DOMAIN not in (env.master_domains() or [])

    def test_ticket_expiry_triggers_exactly_one_login(self, env: Env) -> None:
        env.port.list_relay_domains()
        before = env.logins()
        if not env.expire_tickets():
            pytest.skip("cannot expire tickets here")
        env.port.list_relay_domains()
        env.port.add_relay_domain(self.names()[0])
        assert env.logins() == (before or 0) + 1

    def test_cluster_nodes_sorted_by_cid(self, env: Env) -> None:
        nodes = env.port.cluster_nodes()
        assert [n.cid for n in nodes] == sorted(n.cid for n in nodes) and nodes
        assert sum(1 for n in nodes if n.role == "master") <= 1

    def test_postfix_reload_runs_on_a_cluster_node_and_a_wrong_node_is_rejected(self, env: Env) -> None:
        node = env.port.cluster_nodes()[0].name
        env.port.reload_postfix(node)  # a task on that node (real PMG answers its UPID)
        with pytest.raises(PmgRejected, match="reload postfix on nosuchnode"):  # real PMG: 500 hostname lookup
            env.port.reload_postfix("nosuchnode")

    # helpers

    def with_password(self, env: Env, password: str) -> PmgClient:
        raise NotImplementedError

    def assert_no_secret(self, env: Env, text: str) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------- (a) in-process fake


class TestFakePmg(GatewayPortContract):
    @pytest.fixture
    def env(self) -> Env:
        client, model = fake_pmg()
        return ModelEnv(client, model)

    def with_password(self, env: Env, password: str) -> PmgClient:
        assert isinstance(env, ModelEnv)
        return fake_pmg(env.model, password=password)[0]

    def assert_no_secret(self, env: Env, text: str) -> None:
        assert isinstance(env, ModelEnv)
        assert env.model.credentials[1] not in text
        assert env.port._auth.ticket and env.port._auth.ticket not in text
        assert env.port._auth.csrf not in text


# ---------------------------------------------------------------- (b) the simulator over HTTPS


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsCluster]:
    with https_cluster(tmp_path_factory.mktemp("pmg-tls")) as cluster:
        yield cluster


class TestSimulatedPmgOverHttps(TestFakePmg):
    @pytest.fixture
    def env(self, served: HttpsCluster) -> Env:
        served.model.reset()
        return HttpSimEnv(served.client(), served)

    def with_password(self, env: Env, password: str) -> PmgClient:
        assert isinstance(env, HttpSimEnv)
        return env.cluster.client(password=password)


# ---------------------------------------------------------------- (c) a real PMG, opt-in


class CountingAdapter(requests.adapters.HTTPAdapter):
    """A real HTTP adapter that remembers config writes and logins (client-side view of a live PMG)."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, str, dict[str, list[str]]]] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        path = urllib.parse.urlsplit(request.url or "").path.removeprefix("/api2/json")
        body = request.body.decode() if isinstance(request.body, bytes) else request.body or ""
        params = urllib.parse.parse_qs(body) if not path.startswith("/access/") else {}
        self.log.append((request.method or "", path, params))
        return super().send(request, *args, **kwargs)


class LiveEnv(Env):
    def __init__(self, port: PmgClient, counter: CountingAdapter) -> None:
        super().__init__(port)
        self.counter = counter

    def writes(self) -> int:
        return sum(1 for m, p, _ in self.counter.log if m != "GET" and p.startswith("/config/"))

    def logins(self) -> int:
        return sum(1 for _, p, _ in self.counter.log if p == "/access/ticket")

    def sent(self) -> list[dict[str, Any]]:
        return [
            {k: v[0] for k, v in b.items()} for m, p, b in self.counter.log if m != "GET" and p.startswith("/config/")
        ]


@pytest.mark.live
class TestLivePmg(GatewayPortContract):
    DOMAIN = f"contract-{secrets.token_hex(3)}.mailplane-test.invalid"

    def settings(self, password: str | None = None) -> tuple[PmgSettings, list[MxHost]]:
        host = os.environ.get("PMG_HOST")
        user, real = os.environ.get("PMG_USER"), os.environ.get("PMG_PASSWORD")
        if not (host and user and real):
            pytest.skip("PMG_HOST, PMG_USER and PMG_PASSWORD are not set")
        settings = PmgSettings(
            user=user,
            password=Secret(real if password is None else password),
            verify_tls=os.environ.get("PMG_VERIFY_TLS", "1") != "0",
            ca_file=os.environ.get("PMG_CA_FILE", ""),
        )
        url = host if host.startswith("https://") else f"https://{host}:8006"
        return settings, [MxHost("live", "", "", api_url=url)]

    @pytest.fixture
    def env(self) -> Iterator[Env]:
        settings, nodes = self.settings()
        counter = CountingAdapter()
        port = PmgClient(settings, nodes, session_adapter=counter, retry=no_wait)
        yield LiveEnv(port, counter)
        port.delete_relay_domain(self.DOMAIN)
        port.delete_transport(self.DOMAIN)
        port.delete_network(self.names()[2].cidr)

    def with_password(self, env: Env, password: str) -> PmgClient:
        """A client with another password, through the SAME counting adapter as ``env`` (so its logins count)."""
        assert isinstance(env, LiveEnv)
        settings, nodes = self.settings(password)
        return PmgClient(settings, nodes, session_adapter=env.counter, retry=no_wait)

    def assert_no_secret(self, env: Env, text: str) -> None:
        assert os.environ["PMG_PASSWORD"] not in text
        assert env.port._auth.ticket not in text


# ---------------------------------------------------------------- adapter specifics (in-process)


@pytest.fixture
def fake() -> tuple[PmgClient, PmgModel]:
    return fake_pmg()


def test_lock_timeout_is_transient_and_the_write_is_repeated_after_a_re_read(fake: tuple[PmgClient, PmgModel]) -> None:
    client, model = fake
    lock = "add relay domain failed: can't lock file '/var/lock/pmgconfig.lck' - got timeout"
    model.configure(fail_next=[{"path_prefix": "/config/domains", "status": 500, "message": lock}])
    client.add_relay_domain(RelayDomain("a.test", M))
    assert model.writes() == 2  # the first did not land, so it was sent again
    calls = [(r["method"], r["path"]) for r in model.requests() if r["path"].startswith("/config/domains")]
    # the re-read is the one item, not the whole map
    assert calls == [("POST", "/config/domains"), ("GET", "/config/domains/a.test"), ("POST", "/config/domains")]


def test_a_write_whose_answer_was_lost_is_not_repeated(fake: tuple[PmgClient, PmgModel]) -> None:
    client, model = fake
    model.configure(fail_next=[{"path_prefix": "/config/transport", "status": 597, "after": True}])
    client.add_transport(GatewayTransport("a.test", "mx.a.test", 25, "smtp", True, M))
    assert model.writes() == 1
    assert [t.host for t in client.list_transports()] == ["mx.a.test"]


def test_persistent_lock_timeout_gives_up_as_unavailable(fake: tuple[PmgClient, PmgModel]) -> None:
    client, model = fake
    model.configure(config_locked=True, lock_timeout_s=0)
    with pytest.raises(PmgUnavailable, match="can't lock file"):
        client.add_network(TrustedNetwork("192.0.2.0/24", M))
    assert model.writes() == 3  # the shared policy: three attempts


@pytest.mark.parametrize(
    ("views", "text"),
    [
        ({"pmg1": "pmg2", "pmg2": "pmg1"}, "proxy loop detected"),
        ({"pmg1": "pmg2", "pmg2": "pmg3"}, "is not the master"),
    ],
)
def test_cluster_disagreement_is_transient(fake: tuple[PmgClient, PmgModel], views: dict[str, str], text: str) -> None:
    client, model = fake
    for node, master in views.items():
        model.set_view(node, master)
    with pytest.raises(PmgUnavailable, match=text):
        client.list_networks()


def test_permission_and_validation_errors_are_permanent(fake: tuple[PmgClient, PmgModel]) -> None:
    client, model = fake
    with pytest.raises(PmgRejected, match="port: value must have a maximum value of 65535"):
        client.add_transport(GatewayTransport("a.test", "mx.a.test", 70000))
    with pytest.raises(PmgRejected, match="does not exist"):
        client.update_relay_domain(RelayDomain("missing.test", M))  # update of a vanished entry: re-plan
    model.add_user("automation@pmg", model.credentials[1], "audit")
    with pytest.raises(PmgRejected, match="403 Permission check failed"):
        client.add_relay_domain(RelayDomain("a.test", M))
    assert model.writes() == 3  # none was retried


def test_fails_over_to_the_next_node_and_stays_there(fake: tuple[PmgClient, PmgModel]) -> None:
    client, model = fake
    model.set_down("pmg1")
    model.promote("pmg2")
    model.sync_now()
    client.add_relay_domain(RelayDomain("a.test", M))
    client.list_relay_domains()
    nodes = [(r["node"], r["status"]) for r in model.requests()]
    assert nodes[0] == ("pmg1", 0) and all(n == "pmg2" for n, _ in nodes[1:])


def test_no_node_answering_is_unavailable(fake: tuple[PmgClient, PmgModel]) -> None:
    client, model = fake
    model.configure(down=["pmg1", "pmg2", "pmg3"])
    with pytest.raises(PmgUnavailable, match=r"no node answered \(pmg1: ConnectionError, pmg2: .*pmg3"):
        client.list_transports()


def test_master_hang_is_unavailable_within_the_client_timeout() -> None:
    client, model = fake_pmg(timeout=0.1)
    client.list_relay_domains()
    model.configure(master_down=True, master_down_mode="hang", proxy_timeout_s=0.3)
    with pytest.raises(PmgUnavailable, match="no answer within 0.1 s"):
        client.list_relay_domains()


def test_ticket_is_renewed_with_itself_after_an_hour() -> None:
    now = [1000.0]
    client, model = fake_pmg(clock=lambda: now[0])
    client.list_networks()
    now[0] += 3599
    client.list_networks()
    now[0] += 2
    model.advance(3601)
    client.list_networks()
    logins = [r.get("renewal") for r in model.requests() if r["path"] == "/access/ticket"]
    assert logins == [False, True]
    now[0] += 3600
    model.advance(7300)  # the renewed ticket expired too: the renewal fails, one password login follows
    client.list_networks()
    logins = [r.get("renewal") for r in model.requests() if r["path"] == "/access/ticket"]
    assert logins == [False, True, True, False]


def test_a_second_401_after_re_login_is_rejected_not_looped(fake: tuple[PmgClient, PmgModel]) -> None:
    client, model = fake
    client.list_networks()
    model.configure(fail_next=[{"path_prefix": "/config/mynetworks", "status": 401, "count": 5}])
    with pytest.raises(PmgRejected, match="401"):
        client.list_networks()
    assert sum(1 for r in model.requests() if r["path"] == "/access/ticket") == 2


def test_cluster_nodes_reports_down_nodes_and_falls_back_to_the_node_list(fake: tuple[PmgClient, PmgModel]) -> None:
    client, model = fake
    model.set_down("pmg3")
    nodes = client.cluster_nodes()
    assert [(n.cid, n.name, n.role, n.reachable) for n in nodes] == [
        (1, "pmg1", "master", True),
        (2, "pmg2", "node", True),
        (3, "pmg3", "node", False),
    ]
    model.configure(fail_next=[{"path_prefix": "/config/cluster/status", "status": 500, "message": "boom"}])
    assert client.cluster_nodes() == nodes
    assert any(r["path"] == "/config/cluster/nodes" for r in model.requests())


def test_no_secret_in_logs_or_reprs(fake: tuple[PmgClient, PmgModel], caplog: pytest.LogCaptureFixture) -> None:
    client, model = fake
    caplog.set_level(logging.DEBUG)
    client.add_relay_domain(RelayDomain("a.test", M))
    model.advance(7201)
    client.add_transport(GatewayTransport("a.test", "mx.a.test"))
    with pytest.raises(PmgRejected) as info:
        client.add_network(TrustedNetwork("0.0.0.0/0", M))
    text = caplog.text + repr(client) + repr(client._auth) + str(info.value)
    for secret in (model.credentials[1], client._auth.ticket, client._auth.csrf):
        assert secret and secret not in text


def test_tls_is_verified(served: HttpsCluster, tmp_path: Path) -> None:
    client = served.client(ca="")  # the system CA store does not know the simulator's CA
    with pytest.raises(PmgRejected, match="TLS verification failed on every node"):
        client.list_relay_domains()
    assert served.client().list_relay_domains() == []


def test_effective_use_mx() -> None:
    assert effective_use_mx("smtp", "mx.example.com", True)
    assert not effective_use_mx("smtp", "mx.example.com", False)
    assert not effective_use_mx("smtp", "192.0.2.1", True)
    assert not effective_use_mx("smtp", "2001:db8::1", True)
    assert not effective_use_mx("lmtp", "mx.example.com", True)


def test_a_hand_edited_unbracketed_ip_host_reads_as_no_mx(fake: tuple[PmgClient, PmgModel]) -> None:
    client, model = fake
    model.nodes["pmg1"].files["transport"] = "a.test smtp:192.0.2.1:25\n"  # PMG itself would have bracketed it
    assert client.list_transports() == [GatewayTransport("a.test", "192.0.2.1", 25, "smtp", False, "")]


# ---------------------------------------------------------------- TLS: PMG's CN-only certificate, pinned by fingerprint


@pytest.fixture(scope="module")
def cn_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsCluster]:
    with https_cluster(tmp_path_factory.mktemp("pmg-cn-only"), cn_only=True) as cluster:
        yield cluster


def pinned_client(cluster: HttpsCluster, fingerprints: dict[str, str], ca_file: str = "") -> PmgClient:
    user, password = cluster.model.credentials
    hosts = [
        MxHost(n, "127.0.0.1", "", api_url=u, api_fingerprint=fingerprints.get(n, "")) for n, u in cluster.urls.items()
    ]
    return PmgClient(PmgSettings(user=user, password=Secret(password), ca_file=ca_file), hosts, retry=no_wait)


def served_fingerprints(cluster: HttpsCluster, tmp: Path) -> dict[str, str]:
    from sim.pmg.tls import fingerprint

    return {name: fingerprint(tmp / "pmg-tls" / f"{name}.pem") for name in cluster.urls}


def test_cn_only_certificate_fails_as_a_ca_and_works_pinned(cn_only: HttpsCluster) -> None:
    tmp = Path(cn_only.ca).parent
    cert = str(tmp / "pmg-tls" / "pmg1.pem")
    with pytest.raises(PmgRejected, match="TLS verification failed on every node"):
        pinned_client(cn_only, {}, ca_file=cert).list_relay_domains()  # what the live PMG showed: no SAN
    client = pinned_client(cn_only, served_fingerprints(cn_only, tmp))
    client.add_relay_domain(RelayDomain("pinned.test", M))
    assert [d.domain for d in client.list_relay_domains()] == ["pinned.test"]
    client.delete_relay_domain("pinned.test")


def test_a_wrong_fingerprint_is_refused_without_failing_over(cn_only: HttpsCluster) -> None:
    tmp = Path(cn_only.ca).parent
    pins = {**served_fingerprints(cn_only, tmp), "pmg1": "AB" * 32}
    before = cn_only.model.requests()[-1]["seq"] if cn_only.model.requests() else 0
    with pytest.raises(
        PmgRejected, match=r"pmg1: its API certificate does not have the pinned SHA-256 fingerprint AB:AB"
    ):
        pinned_client(cn_only, pins).list_relay_domains()
    assert all(r["seq"] <= before for r in cn_only.model.requests())  # no request reached any node, nor pmg2


def test_fingerprint_settings_are_normalised_and_checked() -> None:
    host = MxHost("pmg1", "", "", api_fingerprint="ab" * 32)
    assert host.api_fingerprint == ":".join(["AB"] * 32)
    with pytest.raises(ConfigError, match="not a SHA-256 fingerprint"):
        MxHost("pmg1", "", "", api_fingerprint="AB:CD")


# ---------------------------------------------------------------- per-item reads (issue 17)


def test_per_item_reads_return_the_entry_under_exactly_that_key_or_none(fake: tuple[PmgClient, PmgModel]) -> None:
    client, model = fake
    client.add_relay_domain(RelayDomain("a.test", "x"))
    client.add_transport(GatewayTransport("a.test", "10.0.0.5", 25, "smtp", True, "x"))
    client.add_network(TrustedNetwork("2001:db8::/64", "x"))
    assert client.get_relay_domain("a.test") == RelayDomain("a.test", f"{M}; x")
    assert client.get_relay_domain("A.test") is None and client.get_relay_domain("b.test") is None  # case-sensitive
    # read back like the listing: an IP host is bracketed, so use_mx reads 0; port "25" becomes 25
    assert client.get_transport("a.test") == GatewayTransport("a.test", "10.0.0.5", 25, "smtp", False, f"{M}; x")
    assert client.get_transport("b.test") is None
    assert client.get_network("2001:db8::/64") == TrustedNetwork("2001:db8::/64", f"{M}; x")
    assert client.get_network("2001:db8::0/64") is None  # PMG does not normalise CIDRs
    gets = [r["path"] for r in model.requests() if r["method"] == "GET" and r["path"].startswith("/config/")]
    assert "/config/domains" not in gets and "/config/transport" not in gets and "/config/mynetworks" not in gets


def test_a_per_item_read_maps_other_errors_instead_of_reading_them_as_missing(fake: tuple[PmgClient, PmgModel]) -> None:
    client, model = fake
    lock = "can't lock file '/var/lock/pmgconfig.lck' - got timeout"
    model.configure(fail_next=[{"path_prefix": "/config/domains/a.test", "status": 500, "message": lock, "count": 9}])
    with pytest.raises(PmgUnavailable, match="read relay domain a.test"):
        client.get_relay_domain("a.test")
    model.configure(
        fail_next=[{"path_prefix": "/config/transport/a.test", "status": 403, "message": "Permission check failed"}]
    )
    with pytest.raises(PmgRejected, match="Permission check failed"):
        client.get_transport("a.test")


def test_the_re_touch_after_an_event_reads_one_entry_not_the_map(fake: tuple[PmgClient, PmgModel]) -> None:
    client, model = fake
    model.seed_domains(200, comment=f"{M} seeded")
    client.add_relay_domain(RelayDomain("a.test", "x"))
    before = len(model.requests())
    client.settle()  # a write without a later one to the same map in a later second: re-touch it
    calls = [(r["method"], r["path"]) for r in model.requests()[before:]]
    assert calls == [("GET", "/config/domains/a.test"), ("PUT", "/config/domains/a.test")]


def test_the_proxy_environment_is_read_once_not_on_every_request(
    fake: tuple[PmgClient, PmgModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, model = fake
    client.get_relay_domain("alpha.test")  # a login and a read work as before

    def scan(*args: Any, **kwargs: Any) -> dict[str, str]:
        raise AssertionError("requests read the proxy environment during a request")

    monkeypatch.setattr(requests.utils, "get_environ_proxies", scan)
    monkeypatch.setattr(requests.sessions, "get_environ_proxies", scan)
    client.add_relay_domain(RelayDomain("alpha.test", MANAGED_COMMENT))
    found = client.get_relay_domain("alpha.test")
    assert found is not None and found.domain == "alpha.test"


def test_an_environment_proxy_applies_per_node_and_no_proxy_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "pmg2.faster.test")
    nodes = [MxHost(f"pmg{i}.faster.test", "", "") for i in (1, 2)]
    client = PmgClient(PmgSettings(user="u@pmg", password=Secret("p")), nodes)
    assert not client._session.trust_env and not client._login_session.trust_env
    assert client._session.proxies == {"https://pmg1.faster.test": "http://proxy.invalid:3128"}
    assert client._login_session.proxies == client._session.proxies


def test_the_ca_bundle_variable_requests_reads_is_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    client = PmgClient(PmgSettings(user="u@pmg", password=Secret("p")), [MxHost("pmg1.faster.test", "", "")])
    assert client._verify == str(bundle)
    pinned = PmgClient(PmgSettings(user="u@pmg", password=Secret("p"), verify_tls=False), [MxHost("pmg1", "", "")])
    assert pinned._verify is False
