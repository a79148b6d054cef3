"""The one command: ``python -m benchmarks [--size small|full]`` (or ``benchmarks/run``) prints the tables.

Order: the dependencies' capacity (stack limit), the naive baseline, mailplane's throughput, the replay, calls per
event per type, runtime overhead, memory with a backlog, failover latency (benchmarks/bench_failover.py, another
module's benchmark, run on this sandbox). A benchmark that fails is reported with its error; the others still run,
and the sandbox is always torn down.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks import (
    bench_calls,
    bench_capacity,
    bench_fleet_calls,
    bench_memory,
    bench_overhead,
    bench_throughput,
    report,
)
from benchmarks.harness import Sandbox


@dataclass(frozen=True)
class Size:
    domains: int  # domain.created events for mailplane (and the replay)
    baseline: int  # domains for the naive baseline
    capacity: int  # domains per dependency for the capacity probes
    capacity_threads: int
    calls_k: int  # events per scenario in calls-per-event
    noop: int  # no-op backlog for the runtime's events/s
    latency_events: int  # paced no-op events for the overhead percentiles
    per_second: float  # their pace
    ledger_events: int  # no-op events with the S3 ledger
    backlog: int  # memory benchmark backlog
    failover: int  # node.down / node.up iterations
    fleet: tuple[int, ...] = ()  # fleet sizes for calls and bytes per event (bench_fleet_calls; () = skipped)
    fleet_zones: int = 0  # at most this many customer zones on BIND for it
    fleet_store: int = 0  # at most this many seeded state objects (LocalStack takes ~35 PUT/s here)


SIZES = {
    # small: no fleet (tests/test_bench_fleet_calls_smoke.py runs it at CI size on its own sandbox)
    "small": Size(10, 4, 8, 8, 2, 500, 100, 200, 20, 2000, 2),
    "full": Size(500, 500, 100, 32, 5, 20000, 2000, 200, 300, 100000, 20, (100, 10_000, 100_000), 10_000, 3_000),
}
# fleet last: it leaves the sandbox's simulators holding the largest fleet
BENCHMARKS = ("capacity", "throughput", "calls", "overhead", "memory", "failover", "fleet")


def machine() -> dict[str, Any]:
    """What the figures ran on: CPUs, memory, CPU model, Python, load before the run."""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    mem = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.splitlines()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory": " ".join(mem[1].split()[1:2]) if len(mem) > 1 else "?",
        "python": platform.python_version(),
        "load_before": os.getloadavg(),
        "kernel": platform.release(),
    }


def failover(sb: Sandbox, iterations: int) -> dict[str, Any]:
    """Run bench_failover on this sandbox (its provider zone, vhost and simulators) and parse its p50/p99 lines."""
    try:
        from benchmarks import bench_failover
    except ImportError as exc:
        return {"missing": f"benchmarks/bench_failover.py cannot be imported ({exc})"}
    node = sb.settings.provider.mx_hosts[-1].name.split(".")[0]
    out = io.StringIO()
    with redirect_stdout(out):
        bench_failover.run(sb.settings, sb.env, node, iterations)
    text = out.getvalue()
    figures: dict[str, Any] = {"node": node, "iterations": iterations, "output": text[-3000:]}
    for key, label in (("withdrawal", "node.down publish"), ("restore", "node.up publish")):
        m = re.search(rf"{re.escape(label)}.*?n=(\d+)\s+p50=\s*([\d.]+) ms\s+p99=\s*([\d.]+) ms", text)
        if m:
            figures[key] = {"n": int(m[1]), "p50_ms": float(m[2]), "p99_ms": float(m[3])}
    return figures


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the sandbox's teardown


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    size = SIZES[args.size]
    if args.domains is not None:
        size = Size(**{**asdict(size), "domains": args.domains, "baseline": min(size.baseline, args.domains)})
    chosen = args.only.split(",") if args.only else list(BENCHMARKS)
    results: dict[str, Any] = {"size": args.size, "machine": machine(), "config": asdict(size), "errors": {}}
    results["command"] = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.monotonic()
    with Sandbox(prefetch=args.prefetch) as sb:
        results["sandbox"] = {"run": sb.run, "vhost": sb.vhost, "provider_zone": sb.provider_zone}
        steps: dict[str, Callable[[], Any]] = {
            "capacity": lambda: {
                k: asdict(v)
                for k, v in bench_capacity.run(sb, size.capacity, size.capacity_threads, args.latency_ms).items()
            },
            "throughput": lambda: bench_throughput.run(
                sb,
                domains=size.domains,
                baseline_domains=size.baseline,
                workers=args.workers,
                pool=args.pool,
                latency_ms=args.latency_ms,
            ),
            "calls": lambda: bench_calls.run(sb, size.calls_k),
            "overhead": lambda: bench_overhead.run(
                sb,
                events=size.noop,
                latency_events=size.latency_events,
                per_second=size.per_second,
                ledger_events=size.ledger_events,
                pool=args.noop_pool,
            ),
            "memory": lambda: bench_memory.run(sb, backlog=size.backlog, pool=args.noop_pool),
            "failover": lambda: failover(sb, size.failover),
            "fleet": lambda: (
                bench_fleet_calls.run(sb, size.fleet, zones=size.fleet_zones, store=size.fleet_store)
                if size.fleet
                else {"skipped": "no fleet sizes at this size (tests/test_bench_fleet_calls_smoke.py)"}
            ),
        }
        for name in chosen:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                results[name] = steps[name]()
            except Exception as exc:  # noqa: BLE001 - one failed benchmark must not hide the others
                results["errors"][name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc(file=sys.stderr)
            print(f"bench: {name} took {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    results["seconds"] = time.monotonic() - started
    print(report.render(results))
    if args.json:
        Path(args.json).write_text(json.dumps(_lean(results), indent=1, default=str))
    return 1 if results["errors"] else 0


def _lean(results: dict[str, Any]) -> dict[str, Any]:
    """The results without per-event sample lists (they are summarised already)."""
    out = json.loads(json.dumps(results, default=str))
    for key in ("mailplane", "replay"):
        out.get("throughput", {}).get(key, {}).pop("durations", None)
    return dict(out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--domains", type=int, help="override N (domain.created events)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="worker processes (default: nproc)")
    p.add_argument("--pool", type=int, default=16, help="handler threads per worker process")
    p.add_argument("--prefetch", type=int, help="override broker.prefetch in the sandbox's settings")
    p.add_argument("--noop-pool", type=int, default=4, help="handler threads of the no-op worker (the CLI default)")
    p.add_argument("--latency-ms", type=float, default=20.0, help="simulator latency per API call")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--json", help="also write the figures as JSON to this file")
    return p
