"""Bulk onboarding (issue 17 item 5): N domain.created published at once, drained by the workers, then checked.

    PYTHONPATH=.:infra/local .venv/bin/python -m benchmarks.bench_onboard --domains 10000 [--json F]

On its own sandbox (benchmarks/harness.py): N fresh hosted zones on the stack's BIND, all N events published
(with confirms) before the workers start, ``workers`` x ``pool`` handler threads draining them with the settings'
defaults (``pmg.map_writes = "retouch"``: PMG's one-second map rule; the key pool off, keys generated in the event).
Checked after the drain, as a sender would see it: every domain's state ``provisioned``, the parked queue empty,
and every PMG node's SMTP listener accepting ``RCPT TO:<postmaster@DOMAIN>`` for every domain (a relay domain lost to
the one-second rule would be refused by the master's postfix, which uses its map, not the API). Reported:
domains/s, CPU per event per process, and the ceiling a real PMG master imposes: relay-domain and transport writes
are serialised under one cluster-wide lock at 0.03-0.09 s each (shared/live/pmg), ``pmg_writes`` of them per
domain (counted from the simulator's request log), so at most 1 / (writes x seconds per write) domains/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.bench_throughput import drain
from benchmarks.harness import Sandbox, created_event
from functions._core.model import state
from functions._core.model.acceptance import CONTROL, read_answer
from functions.runtime.main import build_ports, build_store

PMG_WRITE_SECONDS = (0.03, 0.09)  # the live PMG master per relay-domain / transport write (shared/live/pmg)


def check(sb: Sandbox, domains: list[str]) -> dict[str, Any]:
    """States, parked queue and RCPT on every node after the drain."""
    store = build_store(sb.settings.store, sb.settings.store.state_bucket, probe=False)
    ports = build_ports(sb.settings, probe=False)
    assert ports.smtp is not None
    smtp = ports.smtp

    def status(d: str) -> str:
        return state.load(store, d).status

    def refused(d: str) -> list[str]:
        out = []
        for host in sb.settings.provider.mx_hosts:
            answer = smtp.rcpt(host.smtp or f"{host.name}:25", (f"postmaster@{d}", CONTROL))
            if not read_answer(host.name, d, answer).ok:
                out.append(host.name)
        return out

    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(status, domains))
        rcpt = list(pool.map(refused, domains))
    counts: dict[str, int] = {}
    for s in got:
        counts[s] = counts.get(s, 0) + 1
    not_accepted = {d: r for d, r in zip(domains, rcpt, strict=True) if r}
    return {
        "statuses": counts,
        "parked": sb.queue_depth(sb.settings.broker.parked_queue),
        "rcpt_refused": len(not_accepted),
        "rcpt_refused_sample": dict(list(not_accepted.items())[:5]),
    }


def run(sb: Sandbox, *, domains: int, workers: int, pool: int, latency_ms: float, bulk: str = "") -> dict[str, Any]:
    names = [sb.domain(i, "o") for i in range(domains)]
    t0 = time.monotonic()
    if bulk:
        sb.add_zones_bulk(names, signed=bulk == "signed")
    else:
        sb.add_zones(names)
    zones_s = time.monotonic() - t0
    print(f"bench_onboard: {domains} zones added in {zones_s:.0f} s", file=sys.stderr, flush=True)
    sb.reset_sims()
    sb.set_latency(latency_ms)
    events = [created_event(d, i=i) for i, d in enumerate(names)]
    d = drain(sb, events, workers=workers, pool=pool, timeout=max(900.0, domains * 2.0))
    print(f"bench_onboard: drained {d.done}/{d.events} in {d.seconds:.0f} s", file=sys.stderr, flush=True)
    pmg_writes = d.calls["pmg"].get("write", 0.0)
    checked = check(sb, names)
    ceiling = {f"{s:.2f}": 1 / (pmg_writes * s) if pmg_writes else None for s in PMG_WRITE_SECONDS}
    return {
        "domains": domains,
        "workers": workers,
        "pool": pool,
        "latency_ms": latency_ms,
        "zones_seconds": zones_s,
        "zones_bulk": f"bulk path, {bulk}" if bulk else "",
        "done": d.done,
        "seconds": d.seconds,
        "rate": d.rate,
        "cpu_ms_per_event": {k: 1000 * v / d.done for k, v in sorted(d.cpu.items())} if d.done else {},
        "calls": d.calls,
        "pmg_writes_per_domain": pmg_writes,
        "pmg_master_ceiling_domains_per_s": ceiling,
        **checked,
    }


def render(r: dict[str, Any]) -> str:
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_ms_per_event"].items())
    ceil = ", ".join(f"{v:.1f} domains/s at {k} s per write" for k, v in r["pmg_master_ceiling_domains_per_s"].items())
    rows = [
        ("domain.created published at once", f"{r['domains']}"),
        ("done / provisioned / parked", f"{r['done']} / {r['statuses'].get('provisioned', 0)} / {r['parked']}"),
        ("states by status", json.dumps(r["statuses"])),
        ("domains refused by RCPT on some PMG node", f"{r['rcpt_refused']} {r['rcpt_refused_sample'] or ''}"),
        ("drain time, rate", f"{r['seconds']:.0f} s, {r['rate']:.2f} domains/s ({r['workers']} x {r['pool']})"),
        ("CPU ms per event per process", cpu),
        ("PMG API writes per domain (master)", f"{r['pmg_writes_per_domain']:.2f}"),
        ("real PMG master ceiling (one cluster lock)", ceil),
        (f"zones added ({r.get('zones_bulk') or 'zone-add'}) before", f"{r['zones_seconds']:.0f} s"),
    ]
    return "\n".join(["| figure | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_onboard", description=__doc__.split("\n\n")[0])
    p.add_argument("--domains", type=int, default=10000)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--pool", type=int, default=16)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--json", type=Path)
    p.add_argument(
        "--bulk-zones",
        choices=("signed", "unsigned"),
        help="add the zones through BIND's bulk path (zones.conf + one reconfig) instead of zone-add per zone",
    )
    args = p.parse_args(argv)
    load0 = os.getloadavg()
    with Sandbox() as sb:
        res = run(
            sb,
            domains=args.domains,
            workers=args.workers,
            pool=args.pool,
            latency_ms=args.latency_ms,
            bulk=args.bulk_zones or "",
        )
    res["load_before"], res["load_after"] = load0, os.getloadavg()
    print(render(res))
    print(f"load average before {load0[0]:.1f}, after {res['load_after'][0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    ok = res["done"] == res["domains"] == res["statuses"].get("provisioned", 0) and not res["parked"]
    return 0 if ok and not res["rcpt_refused"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
