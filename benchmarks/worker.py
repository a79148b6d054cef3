"""The benchmark worker: ``mailplane worker`` (the same ``Worker``, ``build_ports`` and logging) plus measurements.

    python -m benchmarks.worker --config FILE --out FILE.json [--pool N] [--noop] [--no-ledger] [--until-idle]

Differences from the CLI, all for measuring: S3 and DNS calls are counted (benchmarks.counting); every result's
completion time, handler duration and latency since the event's ``time`` are kept; the peak RSS (VmHWM) is read at
exit; ``--noop`` routes every inbound type to a handler that does nothing (runtime overhead); ``--no-ledger`` runs
without the idempotency ledger and subject locks (dispatch then calls the handler directly). The report is written as
JSON to ``--out`` when the worker stops (SIGTERM or idle).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.counting import Tally, counted
from functions import ROUTES, Route
from functions._core.model.ports import Ports
from functions._core.platform.envelope import Envelope
from functions._core.platform.outcome import Outcome
from functions.adapters import s3 as s3_adapter
from functions.runtime import dispatch, main
from functions.runtime.consumer import Worker

NOOP = "bench_noop"


def noop(event: Envelope, ports: Ports) -> Outcome:
    """Does nothing and emits nothing: what is left of an event's cost is the runtime's."""
    return Outcome(NOOP, event.id, event.subject, "noop")


@dataclass
class Recorder:
    """Collects what the worker reports per delivery (``Worker.on_result`` runs on the consuming thread)."""

    samples: bool = True
    verdicts: Counter[str] = field(default_factory=Counter)
    types: Counter[str] = field(default_factory=Counter)
    first_start: float | None = None
    last_done: float | None = None
    durations: array[float] = field(default_factory=lambda: array("d"))
    latencies: array[float] = field(default_factory=lambda: array("d"))

    def on_result(self, result: dispatch.Result) -> None:
        now = time.time()
        self.verdicts[result.verdict] += 1
        self.types[result.event.type if result.event else "invalid"] += 1
        start = now - result.duration
        self.first_start = start if self.first_start is None else min(self.first_start, start)
        self.last_done = now
        if self.samples:
            self.durations.append(result.duration)
            if result.event is not None:
                self.latencies.append(now - result.event.time.timestamp())

    def report(self) -> dict[str, Any]:
        return {
            "verdicts": dict(self.verdicts),
            "types": dict(self.types),
            "first_start": self.first_start,
            "last_done": self.last_done,
            "durations": self.durations.tolist(),
            "latencies": self.latencies.tolist(),
        }


class TimedWorker(Worker):
    """The Worker, noting when each delivery arrives and when it is settled (acked, rejected or given back).

    That interval is the runtime's own time per event: decoding, validation, authorisation, routing, the handler,
    the outcome log line, publishing the outcome with confirms, and the ack through the consuming thread.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived: dict[int, float] = {}  # delivery tag -> perf_counter (at most prefetch entries)
        self.started: dict[int, float] = {}  # delivery tag -> perf_counter when a handler thread took it
        self.in_worker = array("d")  # delivery -> settled
        self.handoff = array("d")  # delivery -> a handler thread starts it
        self.after = array("d")  # dispatch done -> settled (outcome publish, ack through the consuming thread)
        self.keep_samples = True

    def _on_message(self, conn: Any, rung: int, ch: Any, method: Any, props: Any, body: bytes) -> None:
        self.arrived[method.delivery_tag] = time.perf_counter()
        super()._on_message(conn, rung, ch, method, props, body)

    def _work(self, conn: Any, ch: Any, rung: int, tag: int, props: Any, body: bytes) -> None:
        self.started[tag] = time.perf_counter()
        super()._work(conn, ch, rung, tag, props, body)

    def _finish(self, ch: Any, tag: int, verdict: str, result: dispatch.Result) -> None:
        super()._finish(ch, tag, verdict, result)
        now = time.perf_counter()
        arrived, started = self.arrived.pop(tag, None), self.started.pop(tag, None)
        if arrived is not None and started is not None and self.keep_samples:
            self.in_worker.append(now - arrived)
            self.handoff.append(started - arrived)
            self.after.append(now - started - result.duration)


for _hook in ("_on_message", "_work", "_finish"):  # the timing hooks must still exist in the Worker they extend
    if not callable(getattr(Worker, _hook, None)):
        raise ImportError(f"functions.runtime.consumer.Worker has no {_hook}: update benchmarks/worker.py")


def peak_rss_kib(pid: int | str = "self") -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a process, in KiB, from /proc."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            out[name] = int(value.split()[0])
    return out


def _no_keep_alive(request: Any, **_: Any) -> None:
    """The S3 clients as before issue 17's keep-alive: LocalStack's gateway closes every connection."""


def build(config: str, *, noop_routes: bool, ledger: bool, old_release: bool = False) -> tuple[Ports, Tally]:
    """The CLI's ports, counted; optionally without ledger and locks, and with every route a no-op."""
    tally = Tally()
    ports = counted(main.build_ports(main.load_settings(config)), tally, old_release=old_release)
    if not ledger:
        ports = replace(ports, ledger=None, locks=None)
    if noop_routes:
        for key in list(ROUTES):
            ROUTES[key] = Route(NOOP, noop)
    return ports, tally


def run(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--noop", action="store_true")
    parser.add_argument("--no-ledger", action="store_true")
    parser.add_argument("--until-idle", action="store_true")
    parser.add_argument("--idle-seconds", type=float, default=1.5)
    parser.add_argument("--no-samples", action="store_true", help="keep no per-event samples (memory runs)")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--no-refill", action="store_true", help="no key pool refill while idle (CPU per event)")
    parser.add_argument("--old-release", action="store_true", help="subject locks read before release (before)")
    parser.add_argument(
        "--close-connections", action="store_true", help="S3 without keep-alive: LocalStack closes each (before)"
    )
    args = parser.parse_args(argv)
    main.setup_logging(args.log_level)
    if args.close_connections:  # before make_client registers it: the S3 clients send no Connection: keep-alive
        s3_adapter._keep_alive = _no_keep_alive
    ports, tally = build(args.config, noop_routes=args.noop, ledger=not args.no_ledger, old_release=args.old_release)
    worker = TimedWorker(
        ports,
        pool_size=args.pool,
        until_idle=args.until_idle,
        idle_seconds=args.idle_seconds,
        refill_idle=not args.no_refill,
    )
    worker.keep_samples = not args.no_samples
    recorder = Recorder(samples=not args.no_samples)
    worker.on_result = recorder.on_result
    started, cpu0 = time.time(), os.times()
    code = worker.run()
    cpu1 = os.times()
    report = {
        "pid": os.getpid(),
        "started": started,
        "stopped": time.time(),
        "counts": worker.counts,
        "calls": tally.snapshot(),
        "cpu_seconds": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        "memory_kib": peak_rss_kib(),
        "in_worker": worker.in_worker.tolist(),
        "handoff": worker.handoff.tolist(),
        "after": worker.after.tolist(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        **recorder.report(),
    }
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    tmp.replace(args.out)
    return code


if __name__ == "__main__":
    raise SystemExit(run())
