"""The in-process PMG: the real PmgClient over the simulator's model, without sockets.

One model, two front-ends: the same ``PmgModel`` the HTTPS simulator serves, reached here through
``RequestsAdapter(HostRouter({host: PmgNodeApp(model, node)}))`` mounted on the client's sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sim.common import ensure_certs
from sim.pmg import PmgModel, PmgNodeApp, serve_cluster
from sim.pmg.tls import node_certs
from sim.transports import HostRouter, RequestsAdapter
from tenacity import wait_none

from functions._core.platform.config import MxHost, PmgSettings, Secret, Settings
from functions._core.platform.retry import retried
from functions.adapters.pmg import PmgClient
from tests.fakes.smtp import FakeSmtp

T = TypeVar("T")


def no_wait(fn: Callable[..., T]) -> Callable[..., T]:
    """The shared retry policy (same attempts and stop) without the waits between attempts."""
    wrapped = retried(fn)
    fast: Callable[..., T] = wrapped.retry_with(wait=wait_none())  # type: ignore[attr-defined]
    return fast


def quick_model(**kwargs: Any) -> PmgModel:
    """A PmgModel without the real waits (3 s after a refused login, ~2 s per trusted-network write)."""
    return PmgModel(**{"auth_failure_delay": 0.0, "network_write_delay": 0.0, **kwargs})


class VirtualClock:
    """Seconds since the epoch that move only when someone sleeps (the client's waits cost no real time)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


@dataclass(frozen=True)
class FakeGateway:
    client: PmgClient
    model: PmgModel
    smtp: FakeSmtp
    clock: VirtualClock


def fake_gateway(settings: Settings, *, map_writes: str = "retouch", sync_interval: float = 0.0) -> FakeGateway:
    """The PMG cluster of ``settings`` (its mx hosts as nodes pmg1..N) in-process: the client (MapWrites on a virtual
    clock shared with the model) and the SMTP probe answering from each node's effective maps."""
    clock = VirtualClock()
    hosts = settings.provider.mx_hosts
    model = quick_model(nodes=[(f"pmg{i}", h.ipv4) for i, h in enumerate(hosts, 1)], clock=clock)
    model.configure(sync_interval_s=sync_interval)
    router = HostRouter({node_url(name).removeprefix("https://"): PmgNodeApp(model, name) for name in model.node_names})
    user, password = model.credentials
    client = PmgClient(
        PmgSettings(user=user, password=Secret(password), map_writes=map_writes),
        [MxHost(name, n.ip, "", api_url=node_url(name)) for name, n in model.nodes.items()],
        session_adapter=RequestsAdapter(router),
        clock=clock,
        sleep=clock.sleep,
        retry=no_wait,
    )
    targets = {h.smtp or f"{h.name}:25": f"pmg{i}" for i, h in enumerate(hosts, 1)}
    return FakeGateway(client, model, FakeSmtp(model, targets, settings.smtp_probe.source or "127.0.0.2"), clock)


def node_url(name: str) -> str:
    """The (never resolved) API URL of a simulated node in the in-process fake."""
    return f"https://{name}.pmg.invalid:8006"


def fake_pmg(
    model: PmgModel | None = None,
    *,
    timeout: float = 5.0,
    password: str | None = None,
    clock: Callable[[], float] | None = None,
) -> tuple[PmgClient, PmgModel]:
    """A PmgClient talking to every node of ``model`` (default: a fresh 3-node cluster) in-process.

    ``password`` overrides the model's (to test refused logins); ``clock`` is the client's monotonic clock.
    """
    model = quick_model() if model is None else model
    router = HostRouter({node_url(name).removeprefix("https://"): PmgNodeApp(model, name) for name in model.node_names})
    user, real_password = model.credentials
    nodes = [MxHost(name, n.ip, "", api_url=node_url(name)) for name, n in model.nodes.items()]
    client = PmgClient(
        PmgSettings(user=user, password=Secret(real_password if password is None else password), timeout=timeout),
        nodes,
        session_adapter=RequestsAdapter(router),
        clock=clock,
        retry=no_wait,
    )
    return client, model


@dataclass(frozen=True)
class HttpsCluster:
    """A simulated cluster served over real HTTPS on loopback (one front-end per node, one model)."""

    model: PmgModel
    urls: dict[str, str]  # node name -> https://127.0.0.1:<port>
    ca: str  # CA bundle that verifies the servers

    def client(self, *, timeout: float = 5.0, password: str | None = None, ca: str | None = None) -> PmgClient:
        """The real PmgClient over HTTPS to every node, TLS verified with the simulator's CA."""
        user, real_password = self.model.credentials
        settings = PmgSettings(
            user=user,
            password=Secret(real_password if password is None else password),
            ca_file=self.ca if ca is None else ca,
            timeout=timeout,
        )
        nodes = [MxHost(name, "127.0.0.1", "", api_url=url) for name, url in self.urls.items()]
        return PmgClient(settings, nodes, retry=no_wait)


@contextmanager
def https_cluster(directory: Path, model: PmgModel | None = None, *, cn_only: bool = False) -> Iterator[HttpsCluster]:
    """Serve ``model`` (default: a fresh 3-node cluster) on ephemeral loopback ports; stop the servers on exit.

    ``cn_only``: each node serves PMG's stock certificate (self-signed, CN only; ``node_certs``) instead of one
    signed by the simulator CA.
    """
    ca, cert, key = ensure_certs(directory)
    if model is None:
        model = quick_model(nodes=[(f"pmg{i}", "127.0.0.1") for i in (1, 2, 3)])
    user, password = model.credentials
    tls: Any = node_certs(directory / "pmg-tls", model.node_names) if cn_only else (cert, key)
    servers = serve_cluster([0] * len(model.node_names), tls, user, password, model=model)
    try:
        urls = {
            name: f"https://127.0.0.1:{s.server_address[1]}" for name, s in zip(model.node_names, servers, strict=True)
        }
        yield HttpsCluster(model, urls, str(ca))
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def stale_postfix(model: PmgModel, monkeypatch: pytest.MonkeyPatch, nodes: set[str], domain: str) -> list[str]:
    """Make ``nodes`` answer ``domain``'s RCPT from maps opened before its postmap (an idle smtpd/trivial-rewrite of
    a real Postfix: the map has the domain, the daemon does not; docs/mail-plane.md) until PMG's API reloads their
    postfix; returns the reloads the simulator saw, in order (``node:service``)."""
    rcpt, reload = model.rcpt, model._h_service_reload
    reloads: list[str] = []

    def stale_rcpt(node: str, client: str, address: str) -> tuple[int, str]:
        if node in nodes and address.endswith(f"@{domain}"):
            return 554, f"5.7.1 <{address}>: Relay access denied"
        return rcpt(node, client, address)

    def spy(target: Any, origin: Any, p: dict[str, Any]) -> str:
        reloads.append(f"{target.name}:{p['service']}")
        nodes.discard(target.name)
        return reload(target, origin, p)

    monkeypatch.setattr(model, "rcpt", stale_rcpt)
    monkeypatch.setattr(model, "_h_service_reload", spy)
    return reloads
