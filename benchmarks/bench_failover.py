"""Failover latency on the local stack: node.down published -> the node's A/AAAA gone on every authoritative server.

Runs the real worker in a background thread, then, ``--iterations`` times: publish node.down for ``--node`` as the
``monitoring`` user, poll every authoritative server of the provider zone until none serves the node's A/AAAA
(the withdrawal is verified), then publish node.up and wait until every server serves them again. Prints p50/p99
of both, and of the handler's own run time. A benchmark, not a test: it asserts nothing about timing.

    . .stack/env.sh && .venv/bin/python benchmarks/bench_failover.py --iterations 20

It changes the provider zone for a moment per iteration and consumes the shared work queues while it runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "infra" / "local")]

from functions._core.model.ports import Ports  # noqa: E402
from functions._core.platform.config import Secret, Settings  # noqa: E402
from functions.runtime import dispatch  # noqa: E402
from functions.runtime.amqp import Publisher, params  # noqa: E402
from functions.runtime.consumer import Worker  # noqa: E402
from functions.runtime.main import build_ports  # noqa: E402
from tests.integration.stack import take  # noqa: E402
from tests.integration.test_nodes_stack import restore_all  # noqa: E402
from tests.stackenv import load_stack_env  # noqa: E402

POLL = 0.002  # seconds between polls of the servers


def event(kind: str, node: str) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((REPO / "events" / f"{kind}.json").read_text())
    raw["id"] = f"bench-{uuid.uuid4().hex[:12]}"
    raw["subject"] = raw["data"]["node"] = node
    raw["data"]["sequence"] = int(time.time() * 1000)
    raw["data"]["observer"] = "bench"
    return raw


def serving(ports: Ports, servers: list[str], fqdn: str) -> list[bool]:
    """Per server: does it still answer A or AAAA for the node?"""
    return [any(ports.dns.query(s, fqdn, t) is not None for t in ("A", "AAAA")) for s in servers]


def wait_for(ports: Ports, servers: list[str], fqdn: str, present: bool, timeout: float) -> float:
    """Seconds until every server agrees (present or absent); raises TimeoutError."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if all(s is present for s in serving(ports, servers, fqdn)):
            return time.perf_counter()
        time.sleep(POLL)
    raise TimeoutError(f"{fqdn} still {'absent' if present else 'served'} after {timeout} s")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def show(name: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    print(
        f"{name:<42} n={len(ms):<3} p50={pct(ms, 50):7.1f} ms  p99={pct(ms, 99):7.1f} ms  "
        f"mean={statistics.fmean(ms):7.1f} ms  min={min(ms):7.1f} ms  max={max(ms):7.1f} ms"
    )


def run(settings: Settings, env: dict[str, str], node: str, iterations: int) -> None:
    ports = build_ports(settings, probe=False)
    zone = settings.provider.zone
    fqdn = next(h.name for h in settings.provider.mx_hosts if node in (h.name, h.name.split(".")[0]))
    servers = ports.dns.servers(zone)
    handler: dict[str, list[float]] = {"node.down": [], "node.up": []}
    published: dict[str, float] = {}  # event id -> perf_counter at publish
    queued: list[float] = []  # publish -> the worker starts the handler

    finished: set[str] = set()

    def on_result(result: dispatch.Result) -> None:
        if result.event is not None:
            finished.add(result.event.id)
        if result.event is not None and result.event.type in handler and result.verdict == "done":
            handler[result.event.type].append(result.duration)
            if result.event.id in published:
                queued.append(time.perf_counter() - result.duration - published[result.event.id])

    def settle() -> None:
        """Wait until the worker finished every event sent so far (the next one must not queue behind it)."""
        deadline = time.monotonic() + 30
        while not set(published) <= finished and time.monotonic() < deadline:
            time.sleep(0.01)

    def send(kind: str) -> float:
        settle()
        ev = event(kind, node)
        published[ev["id"]] = t = time.perf_counter()
        pub.publish_event(settings.broker.exchange, ev, "monitoring")
        return t

    worker = Worker(build_ports(settings), pool_size=4)
    worker.on_result = on_result
    thread = threading.Thread(target=worker.run, name="worker", daemon=True)
    thread.start()
    pub = Publisher(params(settings.broker, "monitoring", Secret(env["MAILPLANE_AMQP_MONITORING_PASSWORD"])))
    drain: list[float] = []
    restore: list[float] = []
    try:
        wait_for(ports, servers, fqdn, True, 30)
        for i in range(iterations):
            t0 = send("node.down")
            drain.append(wait_for(ports, servers, fqdn, False, 30) - t0)
            time.sleep(settings.nodes.hold_down_seconds)  # node.up sooner would be held down (and retried)
            t1 = send("node.up")
            restore.append(wait_for(ports, servers, fqdn, True, 60) - t1)
            print(f"iteration {i + 1}: drained in {drain[-1] * 1000:.1f} ms, restored in {restore[-1] * 1000:.1f} ms")
        settle()
    finally:
        worker.stop()
        thread.join(30)
        pub.close()
        for subject in (node, fqdn):  # the node.drained / node.restored outcomes this run left in q.outcomes
            take(env, settings, "q.outcomes", subject)
        restore_all(ports)  # an interrupted run must not leave the node out of rotation
    print(f"\n{fqdn}: {len(servers)} authoritative server(s): {', '.join(servers)}")
    show("node.down publish -> withdrawn on all servers", drain)
    show("node.up publish -> served again on all", restore)
    if queued:
        show("publish -> handler starts (broker, worker)", queued)
    for kind, values in handler.items():
        if values:
            show(f"{kind} handler run time (worker)", values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--node", default="pmg3")
    args = parser.parse_args()
    env = load_stack_env()
    settings = Settings.load(env["MAILPLANE_CONFIG"], env)
    run(settings, env, args.node, args.iterations)
    return 0


if __name__ == "__main__":
    sys.exit(main())
