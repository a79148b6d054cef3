"""DNS as production runs it (issue 14): the gate against primary + 2 secondaries, TLSA propagation, the rollover.

Runs in its own sandbox (benchmarks/harness.py: vhost, simulators with injected latency, provider zone ``p<run>.test``
signed by BIND and served by the hidden primary and both secondaries) with the real worker in a background thread:

- ``gate``: ``--domains`` fresh hosted zones (one batched infra/local/zone-add), then one domain.created at a time:
  publish -> the worker's final verdict for it (its outcome event published, the delivery acked), the gate included:
  every authoritative server (primary, ns2, ns3) serves the plan, SMTP RCPT on every PMG node; retries of the gate
  (NotPropagated through the broker's retry ladder) are part of the time. Status per domain (provisioned/degraded).
- ``tlsa``: ``--adopts`` times, a node whose TLSA is absent (RRset deleted, its cert state removed: the node as
  mailplane first sees it) gets a cert.renew; publish -> every authoritative server serves ``_25._tcp.<node>``
  TLSA 3 1 1 of the certificate it presents. Also, per rollover below: publish -> every server serves current + next.
- ``rollover``: ``--rollovers`` key rollovers (one node at a time) with ``[dane] tlsa_ttl = --tlsa-ttl`` on the real
  clock, Pebble issuing by DNS-01; this script plays the scheduler (renew-due), publishing a ``nudge`` as soon as the
  outcome's ``next_check`` has passed. Wall time publish -> IDLE (old TLSA withdrawn) and every server serving only the
  new key's TLSA, with the time spent in each phase.

A benchmark, not a test: it asserts nothing about timing; it prints figures and the load average next to them.

    . .stack/env.sh && PYTHONPATH=.:infra/local .venv/bin/python -m benchmarks.bench_dns_gate --domains 20
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "infra" / "local")]

from benchmarks.harness import Sandbox, created_event  # noqa: E402
from functions._core.model import dane  # noqa: E402
from functions._core.model.ports import DnsChange, Ports  # noqa: E402
from functions._core.platform.config import AcmeSettings, Settings  # noqa: E402
from functions.runtime import dispatch  # noqa: E402
from functions.runtime.amqp import Publisher, params  # noqa: E402
from functions.runtime.consumer import Worker  # noqa: E402
from functions.runtime.main import build_ports  # noqa: E402

POLL = 0.005  # seconds between polls of the servers
PARTS = ("gate", "tlsa", "rollover")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def show(name: str, values: list[float], unit: str = "ms") -> None:
    if not values:
        print(f"{name:<58} n=0 (nothing measured)")
        return
    k = 1000.0 if unit == "ms" else 1.0
    v = [x * k for x in values]
    print(
        f"{name:<58} n={len(v):<3} p50={pct(v, 50):8.1f} {unit}  p99={pct(v, 99):8.1f} {unit}  "
        f"mean={statistics.fmean(v):8.1f} {unit}  min={min(v):8.1f} {unit}  max={max(v):8.1f} {unit}  "
        f"(load {load()})"
    )


class Bench:
    """The sandbox's settings with DANE on, the in-process worker and its results per event id."""

    def __init__(self, sb: Sandbox, tlsa_ttl: int, *, primary_only: bool = False) -> None:
        self.sb = sb
        env = sb.env
        base = sb.settings
        acme = AcmeSettings(
            directory=env["MAILPLANE_ACME_DIRECTORY"],
            ca_file=env["MAILPLANE_ACME_CA"],
            root_file=env["MAILPLANE_ACME_ROOT"],
            timeout_seconds=60,
        )
        self.settings: Settings = replace(base, acme=acme, dane=replace(base.dane, enabled=True, tlsa_ttl=tlsa_ttl))
        if primary_only:  # the comparison: a gate that asks only the hidden primary (what issue 14 replaced)
            d = self.settings.dns
            self.settings = replace(self.settings, dns=replace(d, servers=(f"{d.primary}:{d.port}",)))
        self.ports: Ports = build_ports(self.settings, probe=False)
        self.servers = self.ports.dns.servers(self.settings.provider.zone)
        self.results: dict[str, list[tuple[float, dispatch.Result]]] = {}
        self.cond = threading.Condition()
        self.worker = Worker(build_ports(self.settings), pool_size=4)
        self.worker.on_result = self._on_result
        self.thread = threading.Thread(target=self.worker.run, name="worker", daemon=True)
        self.pubs: dict[str, Publisher] = {}

    def _on_result(self, result: dispatch.Result) -> None:
        if result.event is None:
            return
        with self.cond:
            self.results.setdefault(result.event.id, []).append((time.perf_counter(), result))
            self.cond.notify_all()

    def __enter__(self) -> Bench:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(30)
        for pub in self.pubs.values():
            pub.close()

    def publish(self, event: dict[str, Any], user: str) -> float:
        if user not in self.pubs:
            self.pubs[user] = Publisher(params(self.settings.broker, user, self.sb.password(user)))
        t = time.perf_counter()
        self.pubs[user].publish_event(self.settings.broker.exchange, event, user)
        return t

    def final(self, event_id: str, timeout: float) -> tuple[float, dispatch.Result, int]:
        """Wait for the event's final verdict (done or park); returns (when, result, retries before it)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                seen = self.results.get(event_id, [])
                for i, (t, r) in enumerate(seen):
                    if r.verdict in ("done", "park"):
                        return t, r, i
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"event {event_id}: no final verdict after {timeout:.0f} s ({len(seen)} tries)")
                self.cond.wait(left)

    # -- DNS -------------------------------------------------------------------------------------------------

    def tlsa_everywhere(self, name: str) -> list[set[str]]:
        """Per authoritative server: the 3 1 1 hashes it serves for ``name``."""
        out = []
        for s in self.servers:
            rs = self.ports.dns.query(s, name, "TLSA")
            out.append({h for h in (dane.spki_of_value(v) for v in (rs.values if rs else ())) if h})
        return out

    def wait_tlsa(self, name: str, ok: Callable[[set[str]], bool], timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(ok(have) for have in self.tlsa_everywhere(name)):
                return time.perf_counter()
            time.sleep(POLL)
        raise TimeoutError(f"{name}: not every server serves the expected TLSA after {timeout:.0f} s")


def renew_event(node: str, reason: str) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((REPO / "events" / "cert.renew.json").read_text())
    raw["id"] = f"bench-{reason}-{node}-{uuid.uuid4().hex[:10]}"
    raw["subject"] = raw["data"]["node"] = node
    raw["data"]["reason"] = reason
    raw["time"] = dane.iso(dt.datetime.now(dt.UTC))
    return raw


# ---------------------------------------------------------------- 1. the gate


def bench_gate(b: Bench, domains: int, latency_ms: float) -> dict[str, Any]:
    sb = b.sb
    names = [sb.domain(i, "g") for i in range(domains)]
    t0 = time.monotonic()
    sb.add_zones(names)  # one batched zone-add per chunk (catalog + delegation UPDATEs batched)
    print(f"gate: {domains} zones added in {time.monotonic() - t0:.1f} s (load {load()})")
    sb.set_latency(latency_ms)
    times: list[float] = []
    statuses: dict[str, int] = {}
    retries: list[int] = []
    handler: list[float] = []  # the final delivery's handler run time
    print(f"gate: load at start {load()}")
    for i, name in enumerate(names):
        ev = created_event(name, i=i)
        t = b.publish(ev, "billing")
        when, res, tries = b.final(ev["id"], 180)
        status = res.outcome.status if res.outcome is not None else f"{res.verdict}: {res.reason[:80]}"
        statuses[status] = statuses.get(status, 0) + 1
        retries.append(tries)
        times.append(when - t)
        handler.append(res.duration)
        print(f"  {name}: {status} in {(when - t) * 1000:.0f} ms ({tries} retries)")
    sb.set_latency(0)
    print(f"\ngate: {len(b.servers)} authoritative servers: {', '.join(b.servers)}; simulators at {latency_ms} ms")
    show("domain.created publish -> final verdict (outcome)", times)
    ok = [t for t, n in zip(times, retries, strict=True) if n == 0]
    show("  of which: no retry of the gate", ok)
    show("  handler run time of the final delivery (worker)", handler)
    print(f"statuses: {statuses}; retries per event: mean {statistics.fmean(retries):.2f}, max {max(retries)}")
    return {"times": times, "statuses": statuses, "retries": retries, "handler": handler}


# ---------------------------------------------------------------- 2. TLSA served everywhere (adoption)


def _clear_tlsa(b: Bench, node: str) -> None:
    """Remove the node's TLSA and its cert state: the node as mailplane first sees it."""
    host = next(h for h in b.settings.provider.mx_hosts if h.name.startswith(node + "."))
    name = dane.tlsa_name(host)
    have = b.ports.dns.read_rrset(name, "TLSA")
    if have is not None:
        b.ports.dns.apply(b.settings.provider.zone, [DnsChange(before=have, after=None)])
    b.ports.state.delete(dane.state_key(node))
    b.wait_tlsa(name, lambda h: not h, 30)


def bench_tlsa(b: Bench, adopts: int) -> dict[str, Any]:
    nodes = [h.name.split(".")[0] for h in b.settings.provider.mx_hosts]
    times: list[float] = []
    print(f"tlsa: load at start {load()}")
    for i in range(adopts):
        node = nodes[i % len(nodes)]
        host = next(h for h in b.settings.provider.mx_hosts if h.name.startswith(node + "."))
        _clear_tlsa(b, node)
        presented = dane.presented_spki(b.ports, host)
        want: set[str] = {presented} if presented else set()
        ev = renew_event(node, "nudge")
        t = b.publish(ev, "scheduler")
        served = b.wait_tlsa(dane.tlsa_name(host), lambda h: h == want, 60)  # noqa: B023 - used in this iteration
        b.final(ev["id"], 60)
        times.append(served - t)
        print(f"  adopt {node}: TLSA served everywhere {(served - t) * 1000:.0f} ms after publish")
    for node in nodes:  # every node adopted for the rollovers
        st, _ = dane.load(b.ports, node)
        if not st.current_spki:
            ev = renew_event(node, "nudge")
            b.publish(ev, "scheduler")
            b.final(ev["id"], 60)
    print()
    show("cert.renew (adopt) publish -> TLSA on all servers", times)
    return {"times": times}


# ---------------------------------------------------------------- 3. the rollover


def rollover(b: Bench, node: str) -> dict[str, Any]:
    host = next(h for h in b.settings.provider.mx_hosts if h.name.startswith(node + "."))
    name = dane.tlsa_name(host)
    before, _ = dane.load(b.ports, node)
    ev = renew_event(node, "rollover")
    t0 = b.publish(ev, "scheduler")
    # current + next on every server (the next key is only known once NEXT_KEY is stored)
    published = b.wait_tlsa(name, lambda h: before.current_spki in h and len(h) >= 2, 120)
    phases: list[tuple[str, float, float]] = []  # step, seconds since publish, handler run time of its delivery
    event_id, nudges = ev["id"], 0
    while True:
        when, res, _ = b.final(event_id, 300)
        if res.verdict == "park" or res.outcome is None:
            raise RuntimeError(f"{node}: rollover parked: {res.reason}")
        for step in res.outcome.detail.get("transitions", ()):
            phases.append((str(step), when - t0, res.duration))
        phase = str(res.outcome.detail.get("phase"))
        if phase == "IDLE":
            break
        check = res.outcome.detail.get("next_check")
        if check:
            wait = (
                dt.datetime.fromisoformat(str(check).replace("Z", "+00:00")) - dt.datetime.now(dt.UTC)
            ).total_seconds()
            time.sleep(max(0.0, wait) + 0.05)
        nudge = renew_event(node, "nudge")
        b.publish(nudge, "scheduler")
        event_id, nudges = nudge["id"], nudges + 1
    after, _ = dane.load(b.ports, node)
    withdrawn = b.wait_tlsa(name, lambda h: h == {after.current_spki}, 60)
    total = withdrawn - t0
    line = ", ".join(f"{s} +{t:.1f} s (run {d:.2f} s)" for s, t, d in phases)
    print(
        f"  rollover {node}: {total:.1f} s, current+next everywhere after {(published - t0) * 1000:.0f} ms, "
        f"{nudges} nudges; {line}"
    )
    return {"node": node, "total": total, "published": published - t0, "phases": phases, "nudges": nudges}


def bench_rollover(b: Bench, rollovers: int) -> dict[str, Any]:
    nodes = [h.name.split(".")[0] for h in b.settings.provider.mx_hosts]
    ttl = b.settings.dane.tlsa_ttl
    print(f"rollover: tlsa_ttl {ttl} s (2 x TTL = {2 * ttl} s, waited twice), load at start {load()}")
    runs = [rollover(b, nodes[i % len(nodes)]) for i in range(rollovers)]
    print()
    show("cert.renew (rollover) publish -> current+next on all servers", [r["published"] for r in runs])
    show("rollover wall time, publish -> old TLSA withdrawn everywhere", [r["total"] for r in runs], unit="s")
    print(f"floor from the TTL alone: 2 x 2 x {ttl} s = {4 * ttl} s")
    return {"runs": runs, "tlsa_ttl": ttl}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=20, help="domain.created events for the gate")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="simulator latency per API call (gate)")
    parser.add_argument("--adopts", type=int, default=12, help="TLSA adoptions (event -> TLSA everywhere)")
    parser.add_argument("--rollovers", type=int, default=3, help="key rollovers, one node at a time")
    parser.add_argument("--tlsa-ttl", type=int, default=3, help="[dane] tlsa_ttl for the run (seconds)")
    parser.add_argument(
        "--primary-only",
        action="store_true",
        help="comparison run: the gates ask only the hidden primary ([dns] servers = the primary)",
    )
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--json", help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    chosen = args.only.split(",")
    print(
        f"bench_dns_gate: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load {load()}, "
        f"nproc {os.cpu_count()}"
    )
    out: dict[str, Any] = {"load_before": os.getloadavg()}
    with Sandbox() as sb, Bench(sb, args.tlsa_ttl, primary_only=args.primary_only) as b:
        print(f"sandbox {sb.run}: provider zone {sb.provider_zone}, servers {', '.join(b.servers)}\n")
        if "gate" in chosen:
            out["gate"] = bench_gate(b, args.domains, args.latency_ms)
        if "tlsa" in chosen or "rollover" in chosen:
            out["tlsa"] = bench_tlsa(b, args.adopts if "tlsa" in chosen else 0)
        if "rollover" in chosen:
            out["rollover"] = bench_rollover(b, args.rollovers)
    out["load_after"] = os.getloadavg()
    print(f"\nload after {load()}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
