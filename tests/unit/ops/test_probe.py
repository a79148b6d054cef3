"""The health prober (counters, sequences, publishing) and the Wazuh integration's alert mapping."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from functions import node_down
from functions._core.platform.config import MxHost, Settings
from functions._core.platform.envelope import parse
from functions.ops.probe import Check, Prober, load, smtp_banner, split_hostport
from functions.runtime import dispatch
from tests.fakes.settings import make_settings
from tests.fakes.store import MemoryStore
from tests.stackenv import REPO
from tests.unit.test_node_down import build_world

T0 = 1_795_771_862.0  # 2026-11-27T09:31:02Z


class Health:
    """A scripted check: nodes listed in ``down`` fail SMTP; ``api_down`` fail the API."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.api_down: set[str] = set()

    def __call__(self, host: MxHost) -> Check:
        short = host.name.split(".")[0]
        smtp = short not in self.down
        return Check(smtp, short not in self.api_down, "" if smtp else f"SMTP {host.smtp}: ConnectionRefusedError")


@dataclasses.dataclass
class Rig:
    settings: Settings
    store: MemoryStore
    health: Health
    published: list[Mapping[str, Any]]
    now: list[float]

    def prober(self) -> Prober:
        return Prober(self.settings, self.store, self.published.append, check=self.health, clock=lambda: self.now[0])

    def rounds(self, n: int) -> list[Mapping[str, Any]]:
        prober, out = self.prober(), []
        for _ in range(n):
            out += prober.round()
            self.now[0] += 1.0
        prober.close()
        return out


@pytest.fixture
def rig() -> Rig:
    return Rig(make_settings(), MemoryStore(), Health(), [], [T0])  # local settings: fail_after 2, recover_after 2


def test_down_after_n_failed_rounds_then_up_after_m_good_ones(rig: Rig) -> None:
    rig.health.down.add("pmg2")
    assert rig.rounds(1) == []  # 1 of 2
    (down,) = rig.rounds(3)  # the second failure publishes, later ones do not repeat it
    assert (down["type"], down["subject"]) == ("node.down", "pmg2.faster.test")
    assert down["data"]["checks"] == {"smtp": False, "api": True}
    assert "2 consecutive failed rounds" in down["data"]["reason"]
    rig.health.down.clear()
    assert rig.rounds(1) == []
    (up,) = rig.rounds(3)
    assert up["type"] == "node.up" and up["data"]["sequence"] > down["data"]["sequence"]
    assert rig.published == [down, up]


def test_a_round_where_every_node_fails_is_not_counted(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.health.down = {"pmg1", "pmg2", "pmg3"}  # more likely the prober's own network than three outages
    assert rig.rounds(4) == []
    assert load(rig.store, "pmg1.faster.test").fails == 0
    assert any("ALERT" in r.getMessage() for r in caplog.records)


def test_a_single_good_round_resets_the_failure_count(rig: Rig) -> None:
    prober = rig.prober()
    for healthy in (False, True, False, True, False):
        rig.health.down = set() if healthy else {"pmg1"}
        prober.round()
    assert rig.published == []


def test_sequences_increase_across_restarts_even_if_the_clock_goes_back(rig: Rig) -> None:
    rig.health.down.add("pmg3")
    (first,) = rig.rounds(2)
    rig.health.down.clear()
    rig.now[0] = T0 - 3600  # a new process on a host whose clock is an hour behind
    (second,) = rig.rounds(2)
    assert second["data"]["sequence"] == first["data"]["sequence"] + 1
    assert load(rig.store, "pmg3.faster.test").sequence == second["data"]["sequence"]


def test_counters_persist_across_once_runs(rig: Rig) -> None:
    rig.health.down.add("pmg2")
    assert rig.rounds(1) == []  # `mailplane probe --once` from cron: one round per process
    assert [e["type"] for e in rig.rounds(1)] == ["node.down"]


def test_a_failed_publish_is_retried_next_round(rig: Rig) -> None:
    def broken(event: Mapping[str, Any]) -> None:
        raise ConnectionError("broker down")

    rig.health.down.add("pmg2")
    prober = Prober(rig.settings, rig.store, broken, check=rig.health, clock=lambda: rig.now[0])
    prober.round()
    prober.round()
    assert load(rig.store, "pmg2.faster.test").status == "up"
    assert [e["type"] for e in rig.rounds(1)] == ["node.down"]


def test_api_failure_alone_counts_only_when_required(rig: Rig) -> None:
    rig.health.api_down.add("pmg1")
    assert rig.rounds(3) == []
    rig.settings = dataclasses.replace(rig.settings, nodes=dataclasses.replace(rig.settings.nodes, require_api=True))
    assert [e["type"] for e in rig.rounds(2)] == ["node.down"]


def test_published_events_are_valid_authorized_and_drain_the_node(rig: Rig) -> None:
    rig.health.down.add("pmg2")
    (event,) = rig.rounds(2)
    body = json.dumps(event).encode()
    env = parse(body, publisher="monitoring")
    assert env.source == "urn:mailplane:monitoring" and env.data["observer"] == "mon-local"
    world = build_world()
    assert node_down.handle(env, world.ports).status == "drained"
    assert dispatch.run(body, "billing", world.ports).verdict == "park"  # only monitoring may send it


# ---------------------------------------------------------------- the SMTP check on real sockets


@contextmanager
def smtp_listener(greeting: bytes) -> Iterator[str]:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(greeting)
                conn.recv(64)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        server.close()


@pytest.mark.parametrize(
    ("greeting", "healthy"),
    [
        (b"220 pmg1 ESMTP Postfix\r\n", True),
        (b"220-pmg1 ESMTP\r\n220 ready\r\n", True),
        (b"554 5.3.2 pmg1 not accepting mail\r\n", False),
    ],
)
def test_smtp_banner(greeting: bytes, healthy: bool) -> None:
    with smtp_listener(greeting) as target:
        ok, reason = smtp_banner(target, 2.0)
    assert ok is healthy and (reason == "") is healthy


def test_smtp_banner_refused_and_silent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ok, reason = smtp_banner(f"127.0.0.1:{port}", 1.0)
    assert not ok and "ConnectionRefused" in reason
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) but never greets
    try:
        ok, reason = smtp_banner(f"127.0.0.1:{silent.getsockname()[1]}", 0.3)
    finally:
        silent.close()
    assert not ok and "timed out" in reason.lower()


def test_split_hostport() -> None:
    assert split_hostport("127.0.0.1:2525", 25) == ("127.0.0.1", 2525)
    assert split_hostport("[::1]:2526", 25) == ("::1", 2526)
    assert split_hostport("pmg1.faster.cz", 25) == ("pmg1.faster.cz", 25)


# ---------------------------------------------------------------- Wazuh integration


@pytest.fixture(scope="module")
def wazuh() -> ModuleType:
    path = REPO / "infra" / "wazuh" / "custom-mailplane.py"
    spec = importlib.util.spec_from_file_location("custom_mailplane", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sample_alert() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REPO / "infra" / "wazuh" / "sample-alert.json").read_text())
    return data


def test_wazuh_alert_becomes_a_valid_node_down(wazuh: ModuleType) -> None:
    event = wazuh.to_event(sample_alert(), dict(wazuh.DEFAULTS))
    env = parse(json.dumps(event).encode(), publisher="monitoring")
    assert (env.type, env.subject, env.data["sequence"]) == ("node.down", "pmg2", int(T0 * 1000) + 123)
    assert env.data["observed_at"] == "2026-11-27T09:31:02.123Z" and env.id.startswith("wazuh-")
    world = build_world()
    assert node_down.handle(env, world.ports).status == "drained"


def test_wazuh_up_rule_unknown_rule_and_node_mapping(wazuh: ModuleType) -> None:
    options: dict[str, Any] = {**wazuh.DEFAULTS, "nodes": {"pmg-agent-3": "pmg3.faster.test"}}
    alert = sample_alert()
    alert["rule"] = {"id": "100911", "groups": ["pmg"], "description": "postfix started"}
    alert["agent"]["name"] = "pmg-agent-3"
    event = wazuh.to_event(alert, options)
    assert (event["type"], event["subject"]) == ("node.up", "pmg3.faster.test")
    alert["rule"] = {"id": "5501", "groups": ["authentication_success"]}
    assert wazuh.to_event(alert, options) is None
    alert["rule"] = {"id": "1", "groups": ["mailplane_node_down"]}
    alert["agent"]["name"] = "PMG 2; rm -rf /"
    with pytest.raises(wazuh.BadInput):
        wazuh.to_event(alert, dict(wazuh.DEFAULTS))


def test_wazuh_secret_references(wazuh: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MP_TEST_PW", "from-env")
    (tmp_path / "pw").write_text("from-file\n")
    assert wazuh.secret("env:MP_TEST_PW") == "from-env"
    assert wazuh.secret(f"file:{tmp_path / 'pw'}") == "from-file"
    with pytest.raises(wazuh.BadInput):
        wazuh.secret("env:MP_TEST_UNSET")


def test_wazuh_main_ignores_other_alerts_and_rejects_bad_options(
    wazuh: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alert = sample_alert()
    alert["rule"] = {"id": "5501", "groups": []}
    path = tmp_path / "alert.json"
    path.write_text(json.dumps(alert))
    main: Callable[[list[str]], int] = wazuh.main
    assert main(["x", str(path), "secret-pw", "amqp://monitoring@127.0.0.1:1/mailplane"]) == 0
    (tmp_path / "opts.json").write_text('{"bogus": 1}')
    assert main(["x", str(path), "secret-pw", "amqp://m@h/v", str(tmp_path / "opts.json")]) == 2
    assert "secret-pw" not in capsys.readouterr().err
