"""Provisioning throughput (mailplane's workers against the naive baseline) and the cost of a replay.

The sandbox's simulators answer every API call after ``latency_ms`` (20 ms by default). Both contenders start from
empty simulators and provision fresh hosted zones. mailplane: all events are published first (a backlog), then
``workers`` worker processes with ``pool`` handler threads each drain it; the rate is events done divided by the
time from the first handler start to the last completion. The baseline (naive_baseline.py) provisions its own
domains one after another. Replay: the same events (same ids) are published again and drained; the systems' calls
are counted while that happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.counting import sim_counts
from benchmarks.harness import PYTHON, REPO, BenchError, Sandbox, WorkerProc, cpu_delta, cpu_snapshot, created_event

SYSTEMS = ("mailcow", "pmg", "dns", "s3")


@dataclass(frozen=True)
class Drain:
    """What the workers reported for one drained backlog."""

    events: int
    done: int
    seconds: float
    calls: dict[str, dict[str, float]]  # system -> {"read"|"write"|"refused": calls per event}
    durations: list[float]
    peak_rss_kib: int
    cpu: dict[str, float]  # process group -> CPU seconds during the drain

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


def baseline(sb: Sandbox, domains: list[str], latency_ms: float) -> dict[str, Any]:
    """Run naive_baseline.py over ``domains`` (simulators reset first); its report plus ``rate``."""
    sb.reset_sims()
    sb.set_latency(latency_ms)
    out = sb.workdir / "naive.json"
    cmd = [PYTHON, "-m", "benchmarks.naive_baseline", "--config", str(sb.settings_path), "--out", str(out), *domains]
    done = subprocess.run(cmd, cwd=REPO, env=sb.env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"naive baseline failed: {done.stderr.strip()[-400:]}")
    report: dict[str, Any] = json.loads(out.read_text())
    report["rate"] = report["domains"] / report["seconds"]
    report["per_domain"] = {s: report["calls"].get(s, 0) / report["domains"] for s in SYSTEMS}
    return report


def drain(
    sb: Sandbox,
    events: list[dict[str, Any]],
    *,
    workers: int,
    pool: int,
    timeout: float,
    extra: tuple[str, ...] = (),
    settings_path: Path | None = None,
) -> Drain:
    """Publish ``events`` as billing, then let ``workers`` processes drain them (until idle); ``extra`` flags and
    ``settings_path`` go to each worker (benchmarks/worker.py)."""
    before = {s: sb.sim_requests(s) for s in ("mailcow", "pmg")}
    sb.publish(events)
    cpu0 = cpu_snapshot()
    procs = [
        sb.start_worker(f"drain-{time.monotonic_ns()}-{k}", pool=pool, extra=extra, settings_path=settings_path)
        for k in range(workers)
    ]
    reports = _wait_all(procs, timeout)
    names = {sim.proc.pid: f"{sim.name} simulator" for sim in sb.sims} | {os.getpid(): "benchmark process"}
    cpu = cpu_delta(cpu0, names)
    cpu["mailplane workers"] = sum(r["cpu_seconds"] for r in reports)
    starts = [r["first_start"] for r in reports if r["first_start"] is not None]
    ends = [r["last_done"] for r in reports if r["last_done"] is not None]
    if not starts:
        raise BenchError("the workers handled nothing")
    n = len(events)
    calls: dict[str, dict[str, float]] = {}
    for system in ("mailcow", "pmg"):
        new = sb.sim_requests(system)[len(before[system]) :]
        calls[system] = {k: v / n for k, v in sim_counts(new).items()}
    for system in ("dns", "s3"):
        totals: dict[str, float] = {"read": 0, "write": 0, "refused": 0}
        for r in reports:
            for key, count in r["calls"].items():
                name, _, kind = key.partition(".")
                if name == system:
                    totals[kind] = totals.get(kind, 0) + count
        calls[system] = {k: v / n for k, v in totals.items()}
    return Drain(
        events=n,
        done=sum(r["verdicts"].get("done", 0) for r in reports),
        seconds=max(ends) - min(starts),
        calls=calls,
        durations=[d for r in reports for d in r["durations"]],
        peak_rss_kib=max(r["memory_kib"]["VmHWM"] for r in reports),
        cpu=cpu,
    )


def _wait_all(procs: list[WorkerProc], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.stop()


def run(
    sb: Sandbox, *, domains: int, baseline_domains: int, workers: int, pool: int, latency_ms: float
) -> dict[str, Any]:
    """Baseline, mailplane, then the replay of mailplane's events; figures as a dict (see suite.py)."""
    base_names = [sb.domain(i, "b") for i in range(baseline_domains)]
    names = [sb.domain(i, "m") for i in range(domains)]
    sb.add_zones(base_names + names)
    base = baseline(sb, base_names, latency_ms)
    sb.reset_sims()
    sb.set_latency(latency_ms)
    events = [created_event(d, i=i) for i, d in enumerate(names)]
    first = drain(sb, events, workers=workers, pool=pool, timeout=max(600.0, domains * 3.0))
    again = drain(sb, events, workers=workers, pool=pool, timeout=max(600.0, domains * 1.0))
    return {
        "baseline": base,
        "mailplane": _figures(first),
        "replay": _figures(again),
        "workers": workers,
        "pool": pool,
        "latency_ms": latency_ms,
    }


def _figures(d: Drain) -> dict[str, Any]:
    ordered = sorted(d.durations)
    return {
        "events": d.events,
        "done": d.done,
        "seconds": d.seconds,
        "rate": d.rate,
        "calls": d.calls,
        "handler_p50_s": ordered[len(ordered) // 2] if ordered else None,
        "handler_p99_s": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else None,
        "peak_rss_mib": d.peak_rss_kib / 1024,
        "cpu_ms_per_event": {k: 1000 * v / d.done for k, v in sorted(d.cpu.items())} if d.done else {},
        "cpu_seconds_wall": d.seconds,
    }


def calls_total(calls: Mapping[str, Mapping[str, float]], kinds: tuple[str, ...] = ("read", "write")) -> float:
    return sum(v for c in calls.values() for k, v in c.items() if k in kinds)
