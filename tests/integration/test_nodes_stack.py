"""node.down / node.up end to end on the real stack: the PMG simulator's SMTP listeners are the nodes' port 25,
the prober publishes as ``monitoring``, the real worker drains and restores through BIND, the Mailcow simulator
and LocalStack S3.

These tests change the provider zone faster.test (pmgN A/AAAA) for a few seconds; a fixture puts every node back.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from functions import node_up
from functions._core.model import nodes
from functions._core.model.ports import Ports
from functions._core.model.records import Key, RecordSet
from functions._core.platform.config import Settings
from functions._core.platform.envelope import parse
from functions.ops.probe import Prober, load
from functions.runtime.amqp import Publisher, credential_from_env, params
from functions.runtime.main import build_ports
from tests.conftest import load_event
from tests.integration import stack

pytestmark = pytest.mark.stack

ZONE = "faster.test"
NODES = ("pmg1", "pmg2", "pmg3")


class SimNode:
    """One node of the PMG simulator: ``stop()`` powers it off (its SMTP gives no banner, its API refuses)."""

    def __init__(self, env: dict[str, str], name: str) -> None:
        self.env, self.name = env, name

    def _set(self, down: bool) -> None:
        state = stack.pmg_control(self.env, "GET", "state")
        others = [n["name"] for n in state["nodes"] if not n["up"] and n["name"] != self.name]
        stack.pmg_control(self.env, "POST", "faults", {"down": [*others, self.name] if down else others})

    def stop(self) -> None:
        self._set(True)

    def start(self) -> None:
        self._set(False)


@pytest.fixture(scope="module")
def settings(stack_env: dict[str, str]) -> Settings:
    return stack.settings_for(stack_env)


@pytest.fixture(scope="module")
def ports(settings: Settings) -> Ports:
    return build_ports(settings, probe=False)


def now_seq() -> int:
    return int(time.time() * 1000)


def node_event(kind: str, node: str, sequence: int) -> dict[str, Any]:
    raw = load_event(kind)
    raw["id"] = f"test-{uuid.uuid4().hex[:12]}"
    raw["subject"] = raw["data"]["node"] = node
    raw["data"]["sequence"] = sequence
    return raw


def restore_all(ports: Ports) -> None:
    """Put back every node a failed run left out of rotation (in-process node.up, after the hold-down)."""
    for host in ports.settings.provider.mx_hosts:
        for _ in range(20):
            if nodes.load(ports.state, host.name).in_rotation:
                break
            event = parse(json.dumps(node_event("node.up", host.name, now_seq())).encode(), publisher="monitoring")
            try:
                node_up.handle(event, ports)
            except nodes.HoldDown:
                time.sleep(0.5)
        ports.state.delete(f"probes/{host.name}.json")


@pytest.fixture(scope="module")
def baseline(ports: Ports) -> Iterator[dict[Key, RecordSet]]:
    """Every node in rotation with an active Mailcow relayhost; restored again afterwards."""
    restore_all(ports)
    have = {r.hostname: r for r in ports.mail.list_relayhosts()}
    for host in ports.settings.provider.mx_hosts:
        name = nodes.smarthost_target(ports.settings, host)
        if name not in have:
            ports.mail.add_relayhost(name)
        elif not have[name].active:
            ports.mail.edit_relayhost(have[name].id, active=True)
    zone = ports.dns.read_zone(ZONE)
    before = {k: v for k, v in zone.items() if k[0].startswith("pmg") and k[1] in ("A", "AAAA")}
    assert len(before) == 6, f"the provider zone lacks node addresses: {sorted(before)}"
    yield before
    restore_all(ports)


@pytest.fixture
def listeners(stack_env: dict[str, str]) -> Iterator[dict[str, SimNode]]:
    """The simulator's SMTP listeners (MAILPLANE_PMGn_SMTP), every node up before and after the test."""
    found = {name: SimNode(stack_env, name) for name in NODES}
    stack.pmg_control(stack_env, "POST", "faults", {"down": []})
    yield found
    stack.pmg_control(stack_env, "POST", "faults", {"down": []})


def served(ports: Ports, node: str) -> dict[str, set[str]]:
    """What every authoritative server answers for the node's A and AAAA (server -> values)."""
    out: dict[str, set[str]] = {}
    for server in ports.dns.servers(ZONE):
        values: set[str] = set()
        for rtype in ("A", "AAAA"):
            rs = ports.dns.query(server, f"{node}.{ZONE}", rtype)
            values |= set(rs.values) if rs else set()
        out[server] = values
    return out


def relayhost_active(ports: Ports, node: str) -> bool:
    target = f"[{node}.{ZONE}]:25"
    return any(r.active for r in ports.mail.list_relayhosts() if r.hostname == target)


def outcomes(env: dict[str, str], settings: Settings, subject: str) -> list[dict[str, Any]]:
    return [stack.body_json(b) for _, b in stack.take(env, settings, "q.outcomes", subject)]


def monitoring_prober(env: dict[str, str], settings: Settings, ports: Ports) -> tuple[Prober, Publisher]:
    pub = Publisher(params(settings.broker, "monitoring", credential_from_env("monitoring", env)))
    prober = Prober(settings, ports.state, lambda ev: pub.publish_event(settings.broker.exchange, ev, "monitoring"))
    return prober, pub


def probe_until(prober: Prober, kind: str, rounds: int = 6) -> dict[str, Any]:
    for _ in range(rounds):
        for event in prober.round():
            if event["type"] == kind:
                return dict(event)
        time.sleep(0.2)
    raise AssertionError(f"the prober published no {kind} in {rounds} rounds")


def test_prober_drains_and_restores_a_stopped_node(
    stack_env: dict[str, str],
    settings: Settings,
    ports: Ports,
    baseline: dict[Key, RecordSet],
    listeners: dict[str, SimNode],
) -> None:
    prober, pub = monitoring_prober(stack_env, settings, ports)
    try:
        assert prober.round() == []  # all three greet
        listeners["pmg2"].stop()
        down = probe_until(prober, "node.down")
        assert down["subject"] == "pmg2.faster.test" and down["data"]["checks"]["smtp"] is False
        stack.run_worker(settings)
        assert all(v == set() for v in served(ports, "pmg2").values()), served(ports, "pmg2")
        assert not relayhost_active(ports, "pmg2") and relayhost_active(ports, "pmg1")
        assert served(ports, "pmg1") and all(served(ports, "pmg3").values())
        (drained,) = outcomes(stack_env, settings, "pmg2.faster.test")
        assert drained["type"] == "node.drained"
        assert drained["data"]["in_rotation"] == ["pmg1.faster.test", "pmg3.faster.test"]

        listeners["pmg2"].start()
        up = probe_until(prober, "node.up")
        assert up["data"]["sequence"] > down["data"]["sequence"]
        stack.run_worker(settings)  # held down for 1 s at first: the retry ladder brings it back
        want = {v for (name, _), rs in baseline.items() if name == "pmg2.faster.test" for v in rs.values}
        assert all(v == want for v in served(ports, "pmg2").values())
        assert relayhost_active(ports, "pmg2")
        (restored,) = outcomes(stack_env, settings, "pmg2.faster.test")
        assert restored["type"] == "node.restored" and len(restored["data"]["in_rotation"]) == 3
        assert load(ports.state, "pmg2.faster.test").status == "up"
    finally:
        prober.close()
        pub.close()


def test_second_node_down_is_refused_and_parked(
    stack_env: dict[str, str], settings: Settings, ports: Ports, baseline: dict[Key, RecordSet]
) -> None:
    stack.publish(stack_env, settings, node_event("node.down", "pmg2", now_seq()), user="monitoring")
    stack.run_worker(settings)
    assert all(v == set() for v in served(ports, "pmg2").values())
    serial = stack.soa_serial(stack_env, ZONE)
    stack.publish(stack_env, settings, node_event("node.down", "pmg3", now_seq()), user="monitoring")
    worker = stack.run_worker(settings)
    assert worker.counts["park"] >= 1
    (parked,) = stack.take(stack_env, settings, "q.parked", "pmg3")
    assert parked[0]["x-mailplane-error"] == "QuorumRefused"
    assert "minimum of 2" in parked[0]["x-mailplane-reason"]
    assert stack.soa_serial(stack_env, ZONE) == serial  # nothing changed
    assert all(served(ports, "pmg3").values()) and relayhost_active(ports, "pmg3")
    outcomes(stack_env, settings, "pmg2")
    restore_all(ports)
    assert all(served(ports, "pmg2").values())


def test_stale_and_duplicate_events_change_nothing(
    stack_env: dict[str, str], settings: Settings, ports: Ports, baseline: dict[Key, RecordSet]
) -> None:
    seq = now_seq()
    drain = node_event("node.down", "pmg3", seq)
    stack.publish(stack_env, settings, drain, user="monitoring")
    stack.run_worker(settings)
    assert all(v == set() for v in served(ports, "pmg3").values())

    def snapshot() -> dict[str, Any]:
        st = ports.state.get(nodes.state_key("pmg3.faster.test"))
        return {**stack.sim_writes(stack_env), "serial": stack.soa_serial(stack_env, ZONE), "state": st and st.etag}

    before = snapshot()
    stack.publish(stack_env, settings, drain, user="monitoring")  # duplicate
    stack.publish(stack_env, settings, node_event("node.down", "pmg3", seq - 10), user="monitoring")  # stale
    stack.publish(stack_env, settings, node_event("node.up", "pmg3", seq - 5), user="monitoring")  # stale
    worker = stack.run_worker(settings)
    assert worker.counts["park"] == 0
    assert snapshot() == before
    assert all(v == set() for v in served(ports, "pmg3").values())
    time.sleep(settings.nodes.hold_down_seconds)
    stack.publish(stack_env, settings, node_event("node.up", "pmg3", now_seq()), user="monitoring")
    stack.run_worker(settings)
    assert all(served(ports, "pmg3").values()) and relayhost_active(ports, "pmg3")
    kinds = [o["type"] for o in outcomes(stack_env, settings, "pmg3")]
    assert kinds.count("node.drained") >= 1 and kinds.count("node.restored") == 1
