"""CPU per domain.created in the worker processes, and object-store calls per event, before and after issue 17
item 6, in one run on one sandbox (benchmarks/harness.py):

    PYTHONPATH=.:infra/local .venv/bin/python -m benchmarks.bench_cpu [--domains 150] [--rounds 1] [--json F]

* before: every key generated in the event (``dkim.key_pool_size = 0``), subject locks that read the lease
  before every release (``benchmarks/worker.py --old-release``) and S3 connections LocalStack closes after every
  call (``--close-connections``): the code path the 114 ms of BENCHMARKS.md measured;
* pool: the sealed key pool, filled before the drain by ``mailplane keypool refill`` in its own process (its CPU
  per key is printed next to it: the cost moved out of the event, not removed), and the one-call lease release;
  connections still closed;
* after: as pool, and the S3 clients ask for keep-alive (one TLS handshake per connection, not per call).

Both drain a backlog of fresh hosted domains with the same worker processes and threads (2 x 16 by default), from
reset simulators at 20 ms latency; sides alternate per round. CPU is each worker process's own (``os.times`` from
after start-up to exit, the idle refill off), divided by the events it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.bench_throughput import Drain, drain
from benchmarks.harness import PYTHON, REPO, BenchError, Sandbox, created_event


def pool_settings(sb: Sandbox, size: int) -> Path:
    """A copy of the sandbox's settings with ``dkim.key_pool_size = size``."""
    text, n = re.subn(r"^\[dkim\]$", f"[dkim]\nkey_pool_size = {size}", sb.settings_path.read_text(), flags=re.M)
    if n != 1:
        raise BenchError("the sandbox settings have no [dkim] table")
    path = sb.workdir / "platform.pool.toml"
    path.write_text(text)
    return path


def refill(sb: Sandbox, settings: Path, size: int) -> dict[str, float]:
    """``mailplane keypool refill`` to ``size`` keys; its wall time and CPU (child rusage) per key."""
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    cmd = [PYTHON, "-m", "functions.ops.cli", "keypool", "refill", "--config", str(settings), "--size", str(size)]
    done = subprocess.run(cmd, cwd=REPO, env=sb.env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"keypool refill failed: {done.stderr.strip()[-400:]}")
    r1, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic() - t0
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return {"keys": size, "seconds": wall, "cpu_ms_per_key": 1000 * cpu / size}


def figures(d: Drain) -> dict[str, Any]:
    s3 = d.calls.get("s3", {})
    return {
        "events": d.events,
        "done": d.done,
        "rate": d.rate,
        "worker_cpu_ms_per_event": 1000 * d.cpu["mailplane workers"] / d.done if d.done else None,
        "all_cpu_ms_per_event": {k: 1000 * v / d.done for k, v in sorted(d.cpu.items())} if d.done else {},
        "s3_calls_per_event": sum(v for k, v in s3.items() if k != "bytes"),  # calls, not the bytes counter
        "s3": s3,
        "calls": d.calls,
    }


def run(sb: Sandbox, *, domains: int, rounds: int, workers: int, pool: int, latency_ms: float) -> dict[str, Any]:
    sides = ("before", "pool", "after")
    names = {
        (r, side): [sb.domain(i, f"{side[0]}{r}") for i in range(domains)] for r in range(rounds) for side in sides
    }
    sb.add_zones([n for v in names.values() for n in v])
    after_settings = pool_settings(sb, domains + 8)
    out: dict[str, Any] = {"domains": domains, "rounds": rounds, "workers": workers, "pool": pool, "runs": []}
    for r in range(rounds):
        for side in sides:
            sb.reset_sims()
            sb.set_latency(latency_ms)
            events = [created_event(d, i=i) for i, d in enumerate(names[(r, side)])]
            entry: dict[str, Any] = {"round": r, "side": side}
            if side == "before":
                extra: tuple[str, ...] = ("--old-release", "--close-connections")
                d = drain(sb, events, workers=workers, pool=pool, timeout=max(600.0, domains * 3.0), extra=extra)
            else:
                entry["refill"] = refill(sb, after_settings, domains + 8)
                extra = ("--no-refill", "--close-connections") if side == "pool" else ("--no-refill",)
                d = drain(
                    sb,
                    events,
                    workers=workers,
                    pool=pool,
                    timeout=max(600.0, domains * 3.0),
                    extra=extra,
                    settings_path=after_settings,
                )
            entry.update(figures(d))
            out["runs"].append(entry)
            print(
                f"bench_cpu: round {r} {side}: {entry['worker_cpu_ms_per_event']:.1f} ms/event in the workers,"
                f" {entry['s3_calls_per_event']:.2f} S3 calls/event, {entry['rate']:.2f} domains/s,"
                f" {d.done}/{d.events} done",
                file=sys.stderr,
                flush=True,
            )
    return out


def render(res: dict[str, Any]) -> str:
    head = "| round | side | done | domains/s | CPU ms per domain.created, worker processes |"
    head += " S3 calls per event (r / w / refused) | key pool refill (own process) |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for e in res["runs"]:
        s3 = e["s3"]
        rf = e.get("refill")
        pool = f"{rf['keys']} keys, {rf['cpu_ms_per_key']:.1f} ms CPU per key, {rf['seconds']:.1f} s" if rf else ""
        rw = f"{s3.get('read', 0):.2f} / {s3.get('write', 0):.2f} / {s3.get('refused', 0):.2f}"
        cpu = e["worker_cpu_ms_per_event"]
        lines.append(
            f"| {e['round']} | {e['side']} | {e['done']}/{e['events']} | {e['rate']:.2f} | {cpu:.1f} |"
            f" {e['s3_calls_per_event']:.2f} ({rw}) | {pool} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--domains", type=int, default=150, help="domain.created per side and round")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--pool", type=int, default=16, help="handler threads per worker")
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--json", type=Path)
    p.add_argument("--thread", type=int, metavar="N", help="instead: N domains per side in one thread, by port")
    args = p.parse_args(argv)
    load0 = os.getloadavg()
    if args.thread:
        sides = thread_cpu(args.thread)
        print(render_thread(sides))
        print(f"load average before {load0[0]:.1f}, after {os.getloadavg()[0]:.1f}")
        if args.json:
            args.json.write_text(json.dumps(sides, indent=1))
        return 0
    with Sandbox() as sb:
        res = run(
            sb,
            domains=args.domains,
            rounds=args.rounds,
            workers=args.workers,
            pool=args.pool,
            latency_ms=args.latency_ms,
        )
    res["load_before"], res["load_after"] = load0, os.getloadavg()
    print(render(res))
    print(f"load average before {load0[0]:.1f}, after {res['load_after'][0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return 0


def thread_cpu(n: int) -> dict[str, dict[str, float]]:
    """CPU per domain.created inside ONE worker thread, by port (benchmarks/ab_fixes.py's exclusive per-port thread
    CPU), through ``dispatch.run`` with ledger and lock on the running stack (not a sandbox): before and after
    alternate per domain; the first two are warm-up. A domain's CPU includes its retries (the acceptance gate waits
    for the cluster sync and the SOGo restart), retried here after 1 s. The after side's pool is filled first in
    this process (its generation is reported as ``pool refill (moved), per key``; only keys added by this run)."""
    from benchmarks.ab_fixes import _PortClock, _timed_library
    from functions._core.model.keypool import KeyPool
    from functions._core.platform.locks import SubjectLocks
    from functions.runtime import dispatch
    from functions.runtime.main import build_ports
    from tests.integration.stack import settings_for
    from tests.stackenv import load_stack_env

    settings = settings_for(load_stack_env())
    clock = _PortClock()
    base = build_ports(settings)
    assert base.locks is not None
    d = settings.dkim
    kp = KeyPool(base.state.inner if hasattr(base.state, "inner") else base.state, d.key_encryption_key, size=n + 16)
    t0 = time.process_time()
    added = kp.refill().added
    per_key = 1000 * (time.process_time() - t0) / max(1, added)
    timed = {
        "mail": clock.port("Mailcow client (httpx, TLS)", base.mail),
        "gateway": clock.port("PMG client (proxmoxer, TLS)", base.gateway),
        "dns": clock.port("DNS (dnspython)", base.dns),
    }
    sides = {
        "before": replace(
            base, **timed, keypool=None, locks=SubjectLocks(base.state, lease=base.locks.lease, fast_release=False)
        ),
        "after": replace(base, **timed, keypool=kp),
    }
    domains = [f"cpu{uuid.uuid4().hex[:8]}.test" for _ in range(2 * n + 2)]
    subprocess.run([str(REPO / "infra/local/zone-add"), *domains], check=True, capture_output=True)
    out: dict[str, dict[str, float]] = {"before": defaultdict(float), "after": defaultdict(float)}
    runs: dict[str, dict[str, float]] = {"before": defaultdict(float), "after": defaultdict(float)}
    try:
        with _timed_library(clock):
            for i, domain in enumerate(domains):
                side = "before" if i % 2 == 0 else "after"
                clock.spent.clear()
                body, total = json.dumps(created_event(domain, i=i)).encode(), 0.0
                for attempt in range(30):  # the gate's retries (cluster sync, SOGo restart) count, as in a worker
                    start = time.thread_time()
                    result = dispatch.run(body, "billing", sides[side], attempt=attempt, last_attempt=False)
                    spent_run = time.thread_time() - start
                    total += spent_run
                    if i >= 2:
                        which = "first run" if attempt == 0 else "retries"
                        runs[side][f"{which}: CPU ms per domain"] += spent_run * 1000 / n
                        runs[side][f"{which}: runs per domain"] += 1 / n
                    if result.verdict != "retry":
                        break
                    time.sleep(1.0)
                if result.verdict != "done":
                    raise BenchError(f"{domain}: {result.verdict} {result.reason}")
                if i >= 2:
                    for category, spent in clock.spent.items():
                        out[side][category] += spent * 1000 / n
                    out[side]["everything else (dispatch, plans, state, ledger logic, logs)"] += (
                        (total - sum(clock.spent.values())) * 1000 / n
                    )
    finally:
        subprocess.run([str(REPO / "infra/local/zone-del"), *domains], check=False, capture_output=True)
    out["after"]["pool refill (moved out of the event), per key"] = per_key
    for side, split in runs.items():  # by handler run, apart from the per-port categories (not in their total)
        out[f"{side}, by run"] = split
    return out


def render_thread(sides: dict[str, dict[str, float]]) -> str:
    moved = "pool refill (moved out of the event), per key"
    lines = ["| CPU ms per domain.created, one worker thread | before | after |", "|---|---|---|"]
    for category in sorted(sides["before"], key=lambda c: -sides["before"][c]):
        lines.append(f"| {category} | {sides['before'][category]:.1f} | {sides['after'].get(category, 0.0):.1f} |")
    total_b = sum(sides["before"].values())
    total_a = sum(v for k, v in sides["after"].items() if k != moved)
    lines.append(f"| **total** | {total_b:.1f} | {total_a:.1f} |")
    lines.append(f"| {moved} | | {sides['after'][moved]:.1f} |")
    for row in sorted(sides.get("before, by run", {})):
        lines.append(f"| {row} | {sides['before, by run'][row]:.1f} | {sides['after, by run'].get(row, 0.0):.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
