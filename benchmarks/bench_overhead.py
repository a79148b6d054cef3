"""Runtime overhead: a no-op handler through the real broker and the real worker (benchmarks/worker.py --noop).

Throughput: a backlog of no-op domain.created events is drained by ONE worker process (events/s per process).
Latency: with the worker idle and consuming, events are published one by one at a steady rate below its capacity;
each event's ``time`` is stamped just before it is published, and the worker notes the moment it has acked it: the
difference is the overhead of one event (broker hop, decoding and schema validation, authorisation, routing, the
no-op, the outcome log line, the ack). Both without the idempotency ledger (that costs S3 calls, measured apart with
``ledger_events`` events). The worker's own dispatch time (decode to outcome) is reported beside it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pika

from benchmarks.harness import BenchError, Sandbox, created_event
from functions.runtime.amqp import Publisher, params

WORK_QUEUE = "q.work.0"


def bodies(sb: Sandbox, n: int, tag: str) -> Iterator[tuple[str, bytes]]:
    """``n`` valid domain.created bodies for distinct (zone-less) domains: the no-op never looks them up."""
    template = created_event(sb.domain(0, tag))
    for i in range(n):
        domain = sb.domain(i, tag)
        event = {**template, "id": str(uuid.uuid4()), "subject": domain, "data": {**template["data"], "domain": domain}}
        yield "domain.created", json.dumps(event, sort_keys=True).encode()


def wait_depth(sb: Sandbox, queue: str, want: int, timeout: float) -> int:
    """Wait until ``queue`` holds ``want`` messages, or its depth stops growing for 5 s; returns the depth."""
    deadline, depth, last, since = time.monotonic() + timeout, -1, -1, time.monotonic()
    while time.monotonic() < deadline:
        depth = sb.queue_depth(queue)
        if depth >= want:
            return depth
        if depth != last:
            last, since = depth, time.monotonic()
        elif time.monotonic() - since > 5:
            break
        time.sleep(0.25)
    return depth


def fill(sb: Sandbox, n: int, tag: str) -> int:
    """A backlog of ``n`` no-op events in the (empty) work queue, published without per-message confirms; the few
    an unconfirmed publish can lose are topped up. Returns the depth reached.

    Raises:
        BenchError: the backlog cannot be built.
    """
    sb.publish_fast(bodies(sb, n, tag))
    depth = wait_depth(sb, WORK_QUEUE, n, 300)
    for round_ in range(3):
        if depth >= n:
            return depth
        sb.publish_fast(bodies(sb, n - depth, f"{tag}{round_}x"))
        depth = wait_depth(sb, WORK_QUEUE, n, 120)
    if depth < n:
        raise BenchError(f"only {depth} of {n} events reached {WORK_QUEUE}")
    return depth


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))]


def backlog_rate(sb: Sandbox, n: int, pool: int, *, ledger: bool, tag: str) -> dict[str, Any]:
    """Publish ``n`` no-op events, then drain them with one worker; rate and dispatch-time percentiles."""
    fill(sb, n, tag)
    worker = sb.start_worker(f"noop-{tag}", pool=pool, noop=True, ledger=ledger, idle_seconds=1.0)
    report = worker.wait(max(300.0, n / 50))
    done = report["verdicts"].get("done", 0)
    seconds = report["last_done"] - report["first_start"]
    ms = [d * 1000 for d in report["durations"]]
    return {
        "events": n,
        "done": done,
        "seconds": seconds,
        "rate": done / seconds if seconds > 0 else 0.0,
        "dispatch_p50_ms": pct(ms, 50),
        "dispatch_p99_ms": pct(ms, 99),
        "peak_rss_mib": report["memory_kib"]["VmHWM"] / 1024,
        "cpu_ms_per_event": 1000 * report["cpu_seconds"] / done if done else None,
    }


SAMPLES = ("latencies", "durations", "in_worker", "handoff", "after")


def paced_samples(sb: Sandbox, n: int, per_second: float, pool: int, tag: str) -> dict[str, list[float]]:
    """Publish ``n`` events at ``per_second`` to an idle, consuming worker; its per-event samples (ms)."""
    worker = sb.start_worker(f"noop-latency-{tag}", pool=pool, noop=True, ledger=False, until_idle=False)
    try:
        pub = Publisher(params(sb.settings.broker, "billing", sb.password("billing")))
        for _, body in bodies(sb, 50, f"w{tag}"):  # connections up, code paths warm
            pub.publish_event(sb.settings.broker.exchange, json.loads(body), "billing")
        pub.close()
        if wait_depth_zero(sb, 60) != 0:
            raise BenchError("the latency worker did not start consuming")
        publish_paced(sb, n, per_second, tag)
        wait_depth_zero(sb, 60)
        time.sleep(1.0)
    finally:
        report = worker.stop()
    return {key: [x * 1000 for x in report[key][-n:]] for key in SAMPLES}


def paced_latency(sb: Sandbox, n: int, per_second: float, pool: int, rounds: int = 3) -> dict[str, Any]:
    """mailplane and the bare consumer in alternating rounds (both see the same machine), ``n`` events in all.

    Percentiles: publish -> ack for both; for mailplane also delivery -> ack (the runtime's own time), split into
    handoff (delivery -> a handler thread), dispatch (decode -> outcome) and after (-> acked).
    """
    got: dict[str, list[float]] = {key: [] for key in (*SAMPLES, "raw")}
    for r in range(rounds):
        part = n // rounds + (1 if r < n % rounds else 0)
        for key, values in paced_samples(sb, part, per_second, pool, f"l{r}").items():
            got[key] += values
        got["raw"] += raw_paced_samples(sb, part, per_second, f"u{r}")
    out: dict[str, Any] = {"events": len(got["latencies"]), "per_second": per_second, "rounds": rounds}
    names = {"latencies": "", "durations": "dispatch_", "in_worker": "in_worker_", "handoff": "handoff_"}
    names |= {"after": "after_", "raw": "raw_"}
    for key, prefix in names.items():
        out[f"{prefix}p50_ms"], out[f"{prefix}p99_ms"] = pct(got[key], 50), pct(got[key], 99)
    out["max_ms"] = max(got["latencies"]) if got["latencies"] else None
    return out


class RawConsumer:
    """The broker alone: a bare pika consumer on the work queue that parses nothing and acks at once.

    Its figures are the baseline of the same run: what the broker and this machine cost before any runtime code.
    """

    def __init__(self, sb: Sandbox, prefetch: int) -> None:
        self.params = params(sb.settings.broker, "admin", sb.password("admin"))
        self.prefetch = prefetch
        self.latencies: list[float] = []
        self.times: list[float] = []
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(30):
            raise BenchError("the raw consumer did not start")

    def _run(self) -> None:
        conn = pika.BlockingConnection(self.params)
        ch = conn.channel()
        ch.basic_qos(prefetch_count=self.prefetch)

        def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
            ch.basic_ack(method.delivery_tag)
            now = time.time()
            self.times.append(now)
            stamp = json.loads(body)["time"]
            self.latencies.append(now - datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())

        ch.basic_consume(WORK_QUEUE, on_message)
        self.ready.set()
        while not self.stop.is_set():
            conn.process_data_events(time_limit=0.1)
        conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def raw_backlog_rate(sb: Sandbox, n: int) -> dict[str, Any]:
    """The bare consumer draining ``n`` events (same prefetch as the worker): the broker's own rate."""
    fill(sb, n, "q")
    raw = RawConsumer(sb, sb.settings.broker.prefetch)
    deadline = time.monotonic() + max(120.0, n / 100)
    while len(raw.times) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    raw.close()
    seconds = raw.times[-1] - raw.times[0] if len(raw.times) > 1 else 0.0
    return {"events": len(raw.times), "rate": (len(raw.times) - 1) / seconds if seconds > 0 else 0.0}


def raw_paced_samples(sb: Sandbox, n: int, per_second: float, tag: str) -> list[float]:
    """Publish-to-ack (ms) of the bare consumer, at the same pace as ``paced_samples``."""
    raw = RawConsumer(sb, sb.settings.broker.prefetch)
    try:
        publish_paced(sb, n, per_second, tag)
        deadline = time.monotonic() + 60
        while len(raw.latencies) < n and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        raw.close()
    return [x * 1000 for x in raw.latencies[-n:]]


def publish_paced(sb: Sandbox, n: int, per_second: float, tag: str) -> None:
    """Publish ``n`` no-op events with confirms at ``per_second``, each stamped with its publish time."""
    pub = Publisher(params(sb.settings.broker, "billing", sb.password("billing")))
    template = created_event(sb.domain(0, tag))
    start = time.monotonic()
    try:
        for i in range(n):
            domain = sb.domain(i, tag)
            event = {
                **template,
                "id": str(uuid.uuid4()),
                "subject": domain,
                "data": {**template["data"], "domain": domain},
            }
            event["time"] = _now()
            pub.publish_event(sb.settings.broker.exchange, event, "billing")
            pause = start + (i + 1) / per_second - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    finally:
        pub.close()


def wait_depth_zero(sb: Sandbox, timeout: float) -> int:
    deadline, depth = time.monotonic() + timeout, -1
    while time.monotonic() < deadline:
        depth = sb.queue_depth(WORK_QUEUE)
        if depth == 0:
            return 0
        time.sleep(0.1)
    return depth


def _now() -> str:
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns // 1000 % 1_000_000:06d}Z"


def run(
    sb: Sandbox, *, events: int, latency_events: int, per_second: float, ledger_events: int, pool: int
) -> dict[str, Any]:
    return {
        "throughput": backlog_rate(sb, events, pool, ledger=False, tag="o"),
        "raw_throughput": raw_backlog_rate(sb, events),
        "latency": paced_latency(sb, latency_events, per_second, pool),
        "with_ledger": backlog_rate(sb, ledger_events, pool, ledger=True, tag="g"),
        "pool": pool,
    }
