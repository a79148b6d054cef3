"""CPU per domain.created in the worker processes, and object-store calls per event, before and after issue 17
item 6, in one run on one sandbox (benchmarks/harness.py):

    PYTHONPATH=.:infra/local .venv/bin/python -m benchmarks.bench_cpu [--domains 150] [--rounds 1] [--json F]

* before: every key generated in the event (``dkim.key_pool_size = 0``) and subject locks that read the lease
  before every release (``benchmarks/worker.py --old-release``): the code path the 114 ms of BENCHMARKS.md measured;
* after: the sealed key pool, filled before the drain by ``mailplane keypool refill`` in its own process (its CPU
  per key is printed next to it: the cost moved out of the event, not removed), and the one-call lease release.

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
from collections.abc import Sequence
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
        "s3_calls_per_event": sum(s3.values()),
        "s3": s3,
        "calls": d.calls,
    }


def run(sb: Sandbox, *, domains: int, rounds: int, workers: int, pool: int, latency_ms: float) -> dict[str, Any]:
    sides = ("before", "after")
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
                d = drain(
                    sb, events, workers=workers, pool=pool, timeout=max(600.0, domains * 3.0), extra=("--old-release",)
                )
            else:
                entry["refill"] = refill(sb, after_settings, domains + 8)
                d = drain(
                    sb,
                    events,
                    workers=workers,
                    pool=pool,
                    timeout=max(600.0, domains * 3.0),
                    extra=("--no-refill",),
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
    args = p.parse_args(argv)
    load0 = os.getloadavg()
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


if __name__ == "__main__":
    raise SystemExit(main())
