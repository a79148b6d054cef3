"""Worker memory with a large backlog: ``backlog`` no-op events wait in the work queue before one worker starts.

The worker drains them all (no-op handler, no ledger, no per-event samples kept by the benchmark). Its resident set
is polled every 0.2 s from /proc, and its own peak (VmHWM) is read when it exits: prefetch, not the backlog, must
bound what it holds.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.bench_overhead import fill
from benchmarks.harness import Sandbox
from benchmarks.worker import peak_rss_kib


def run(sb: Sandbox, *, backlog: int, pool: int) -> dict[str, Any]:
    started = time.monotonic()
    depth = fill(sb, backlog, "r")
    published = time.monotonic() - started
    worker = sb.start_worker("memory", pool=pool, noop=True, ledger=False, idle_seconds=1.0, samples=False)
    polled, series = 0, []
    deadline = time.monotonic() + max(600.0, backlog / 100)
    while worker.proc.poll() is None and time.monotonic() < deadline:
        try:
            rss = peak_rss_kib(worker.proc.pid).get("VmRSS", 0)
        except (FileNotFoundError, ProcessLookupError):
            break
        polled = max(polled, rss)
        series.append(rss)
        time.sleep(0.2)
    report = worker.wait(60)
    done = report["verdicts"].get("done", 0)
    seconds = report["last_done"] - report["first_start"] if report["last_done"] else 0.0
    return {
        "backlog": backlog,
        "depth_reached": depth,
        "publish_seconds": published,
        "done": done,
        "drain_rate": done / seconds if seconds > 0 else 0.0,
        "peak_rss_mib": report["memory_kib"]["VmHWM"] / 1024,
        "polled_peak_rss_mib": polled / 1024,
        "rss_first_mib": series[0] / 1024 if series else None,
        "rss_last_mib": series[-1] / 1024 if series else None,
        "prefetch": sb.settings.broker.prefetch,
    }
