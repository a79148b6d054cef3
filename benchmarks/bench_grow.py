"""node.add at fleet size (issue 17, item 7): plan and apply of a fourth gateway node over N managed domains.

Two measurements, printed side by side:

- ``--domains N`` (default 10,000), in-process: the DNS and object-store fakes of the unit tests (tests/fakes), N
  domains seeded as domain.created leaves them (records, MTA-STS policy, state). Measures mailplane's own cost:
  wall time and CPU of ``plan_add`` and ``apply_add``, DNS reads (AXFR) / UPDATEs / verification queries and
  object-store calls, per domain. No stack needed.
- ``--stack-zones M`` (0 = skip), on the local stack (run inside the stack's namespace with .stack/env.sh sourced):
  M real BIND zones (infra/local/zone-add, then each zone's records in one UPDATE) and LocalStack S3; node.add's
  plan and apply timed against them, and the per-zone time extrapolated linearly to N (each zone costs the same
  fixed set of operations: one AXFR, one GET, one PUT, two UPDATEs, two verification rounds).

``python -m benchmarks.bench_grow --domains 10000 --stack-zones 500``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from collections import Counter
from typing import Any

from functions._core.model import state
from functions._core.model.mailset import desired_records, mta_sts_policy, policy_key
from functions._core.model.ports import DnsChange, Ports
from functions._core.model.records import RecordSet
from functions._core.platform.config import MxHost, Settings
from functions.ops import grow
from functions.ops.probe import Check

PMG4 = MxHost("pmg4.faster.test", "127.0.1.4", "2001:db8:10:1450::6c", joining=True)
SPF3 = (
    "v=spf1 ip4:127.0.1.1 ip4:127.0.1.2 ip4:127.0.1.3 "
    "ip6:2001:db8:10:1410::6c ip6:2001:db8:0:2006::6c ip6:2001:db8:10:1440::6c -all"
)


def healthy(host: MxHost, settings: Settings) -> Check:
    return Check(True, True)


def with_pmg4(s: Settings, **nodes: Any) -> Settings:
    provider = dataclasses.replace(s.provider, mx_hosts=(*s.provider.mx_hosts, PMG4))
    return dataclasses.replace(s, provider=provider, nodes=dataclasses.replace(s.nodes, **nodes))


class Counting:
    """Counts the calls made through a port (by method name)."""

    def __init__(self, target: Any, counts: Counter[str], prefix: str) -> None:
        self._t, self._c, self._p = target, counts, prefix

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._t, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._c[f"{self._p}.{name}"] += 1
            return attr(*args, **kwargs)

        return call


def _fast_dns() -> Any:
    """The unit tests' FakeDns, with the primary's per-name lookups by label walk instead of a scan of every zone
    (the fake's scan is O(zones) per query: fine for tests, quadratic at 10,000 zones; same answers)."""
    from tests.fakes.dns import PRIMARY, FakeDns

    class FastDns(FakeDns):
        def _zone(self, name: str) -> str | None:
            labels = name.rstrip(".").lower().split(".")
            for i in range(len(labels)):
                if (z := ".".join(labels[i:])) in self.zones:
                    return z
            return None

        def serial(self, zone: str, server: str) -> int | None:
            if server != PRIMARY:
                return super().serial(zone, server)
            return self.serials.get(zone.rstrip(".").lower())

        def query(self, server: str, name: str, rtype: str) -> RecordSet | None:
            zone = self._zone(name) if server == PRIMARY else None
            if zone is None:
                return super().query(server, name, rtype)
            return self.zones[zone].get((name.rstrip(".").lower(), rtype.upper()))

    return FastDns()


def seed_fakes(n: int) -> tuple[Ports, Counter[str]]:
    from sim.pmg.model import DEFAULT_NODES

    from tests.fakes.pmg import fake_pmg, quick_model
    from tests.fakes.settings import make_settings
    from tests.fakes.store import MemoryStore
    from tests.unit.test_node_down import build_world, provider_records

    three = make_settings()
    world = build_world(with_pmg4(three))
    dns = _fast_dns()
    dns.add_zone("faster.test", [*provider_records(), RecordSet.of("_pmg.faster.test", "TXT", 300, [SPF3])])
    web, st = MemoryStore(), MemoryStore()
    body = mta_sts_policy(three).encode()
    for i in range(n):
        zone = f"d{i:06d}.fleet.test"
        dns.add_zone(zone, desired_records(zone, three, "fc20261202", "QUJD").values())
        web.put(policy_key(zone), body, content_type="text/plain")
        rec = state.DomainState(zone, request={"dns": {"hosted": True}}, status="provisioned")
        st.put(state.state_key(zone), rec.body())
    gateway, _ = fake_pmg(quick_model(nodes=(*DEFAULT_NODES, ("pmg4", "192.0.2.14"))))
    counts: Counter[str] = Counter()
    ports = dataclasses.replace(
        world.ports,
        dns=Counting(dns, counts, "dns"),
        web=Counting(web, counts, "web"),
        state=Counting(st, counts, "state"),
        gateway=gateway,
    )
    return ports, counts


def _timed(fn: Any) -> tuple[Any, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def run_fakes(n: int) -> dict[str, Any]:
    ports, counts = seed_fakes(n)
    counts.clear()
    plan, plan_s, plan_cpu = _timed(lambda: grow.plan_add(ports, "pmg4", check=healthy))
    plan_calls = dict(counts)
    counts.clear()
    report, apply_s, apply_cpu = _timed(lambda: grow.apply_add(ports, plan))
    apply_calls = dict(counts)
    counts.clear()
    again, _, _ = _timed(lambda: grow.plan_add(ports, "pmg4", check=healthy))
    replay = grow.apply_add(ports, again)
    return {
        "domains": n,
        "plan": {"seconds": round(plan_s, 2), "cpu_s": round(plan_cpu, 2), "calls": plan_calls},
        "apply": {"seconds": round(apply_s, 2), "cpu_s": round(apply_cpu, 2), "calls": apply_calls},
        "written": report.phases,
        "halted": report.halted,
        "replay_written": {k: v for k, v in replay.phases.items() if v},
        "replay_dns_updates": counts.get("dns.apply", 0),
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_stack(m: int, n: int, *, bulk: str = "") -> dict[str, Any]:
    """M real zones on the local stack (needs .stack/env.sh in the environment). ``bulk`` ("signed", "unsigned"):
    the zones, records included, through BIND's bulk path (benchmarks/harness.py ``add_bulk_zones``) instead of
    zone-add and one UPDATE each; deleted at the end."""
    import os

    from benchmarks.harness import add_bulk_zones, drop_bulk_zones
    from functions.runtime.main import build_ports
    from tests.integration import stack

    env = dict(os.environ)
    base = stack.settings_for(env)
    s = with_pmg4(base, retire_waves=(1, 10, 100))
    ports = build_ports(s, probe=False)
    ports = dataclasses.replace(ports, gateway=_FourNodes(ports.gateway))
    zones = [f"g{i:05d}{os.getpid()}.bench.test" for i in range(m)]
    t0 = time.perf_counter()
    three = base
    body = mta_sts_policy(three).encode()
    tag = f"bench-grow {os.getpid()}"
    if bulk:
        texts = {
            z: "".join(f"{ln}\n" for rs in desired_records(z, three, "fc1", "QUJD").values() for ln in rs.zone_lines())
            for z in zones
        }
        add_bulk_zones(
            texts,
            tag,
            signed=bulk == "signed",
        )
    else:
        for i in range(0, m, 100):
            stack.zone_add(*zones[i : i + 100])
    for zone in zones:
        if not bulk:
            want = desired_records(zone, three, "fc1", "QUJD")
            ports.dns.apply(zone, [DnsChange(None, rs) for rs in want.values()])
        ports.web.put(policy_key(zone), body, content_type="text/plain")
    seed_s = time.perf_counter() - t0
    try:
        plan, plan_s, plan_cpu = _timed(lambda: grow.plan_add(ports, "pmg4", check=healthy, zones=zones))
        report, apply_s, apply_cpu = _timed(lambda: grow.apply_add(ports, plan))
        undo, undo_s, _ = _timed(lambda: grow.undo_add(ports, "pmg4", zones))
    finally:
        if bulk:
            drop_bulk_zones(zones, tag)
    per_zone = (plan_s + apply_s) / m
    return {
        "zones": m,
        "zones_bulk": bulk,
        "seed_seconds": round(seed_s, 1),
        "plan": {"seconds": round(plan_s, 2), "cpu_s": round(plan_cpu, 2)},
        "apply": {"seconds": round(apply_s, 2), "cpu_s": round(apply_cpu, 2)},
        "written": report.phases,
        "halted": report.halted,
        "failed": report.failed[:5],
        "undo_seconds": round(undo_s, 2),
        "per_zone_ms": round(per_zone * 1000, 1),
        "extrapolated": {"domains": n, "minutes": round(per_zone * n / 60, 1)},
    }


class _FourNodes:
    """The stack's 3-node PMG simulator, with pmg4 reported as a cluster member (the health check is injected)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def cluster_nodes(self) -> list[Any]:
        from functions._core.model.ports import GatewayNode

        return [*self._inner.cluster_nodes(), GatewayNode(4, "pmg4", "127.0.1.4", "node", True, True)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_grow", description=__doc__)
    ap.add_argument("--domains", type=int, default=10_000)
    ap.add_argument("--stack-zones", type=int, default=0)
    ap.add_argument("--json", default="")
    ap.add_argument("--no-fakes", action="store_true", help="only the stack measurement")
    ap.add_argument(
        "--bulk-zones",
        choices=("signed", "unsigned"),
        help="the stack's zones through BIND's bulk path (zones.conf + one reconfig), records included",
    )
    args = ap.parse_args(argv)
    out: dict[str, Any] = {} if args.no_fakes else {"fakes": run_fakes(args.domains)}
    if args.stack_zones:
        out["stack"] = run_stack(args.stack_zones, args.domains, bulk=args.bulk_zones or "")
    text = json.dumps(out, indent=1, sort_keys=True)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text)
    return 0 if not any(r.get("halted") for r in out.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
