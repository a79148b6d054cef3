"""The worker: the only consuming pika code. decode -> route -> handle -> ack / reject (retry rung) / park.

The main thread owns the consuming connection; handlers run in a bounded pool and hand their verdicts back
through ``add_callback_threadsafe`` (heartbeats never starve). Acks happen only after the outcome is published
with confirms, so a crash at any point redelivers the event and the idempotent handler converges again.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pika
import pika.exceptions

from functions._core.envelope import build
from functions._core.ports import Ports
from functions.runtime import dispatch
from functions.runtime.amqp import Publisher, params

log = logging.getLogger("mailplane.worker")
SOURCE = "urn:mailplane:worker"


class Worker:
    """Consume every rung of the work queue ladder until stopped (or, with ``until_idle``, until drained)."""

    def __init__(self, ports: Ports, *, pool_size: int = 4, until_idle: bool = False, idle_seconds: float = 1.5):
        self.ports = ports
        self.broker = ports.settings.broker
        self.rungs = len(self.broker.retry_delays)
        self.pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="handler")
        self.publisher = Publisher(params(self.broker))
        self.until_idle, self.idle_seconds = until_idle, idle_seconds
        self.in_flight = 0
        self.stopping = threading.Event()
        self.locks: dict[str, threading.Lock] = {}
        self.locks_guard = threading.Lock()
        self.counts = {"done": 0, "retry": 0, "park": 0}
        self.on_result: Callable[[dispatch.Result], None] | None = None

    def queue(self, rung: int) -> str:
        return f"{self.broker.work_queue_prefix}.{rung}"

    def run(self) -> int:
        """Consume until SIGTERM/SIGINT (or idle); returns the process exit code."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        conn = pika.BlockingConnection(params(self.broker))
        ch = conn.channel()
        ch.basic_qos(prefetch_count=self.broker.prefetch)
        for rung in range(self.rungs + 1):
            ch.basic_consume(self.queue(rung), functools.partial(self._on_message, conn, rung), auto_ack=False)
        idle_since: float | None = None
        try:
            while not self.stopping.is_set():
                conn.process_data_events(time_limit=0.2)
                if self.until_idle:
                    idle = self.in_flight == 0 and self._queues_empty(conn)
                    idle_since = (idle_since or time.monotonic()) if idle else None
                    if idle_since is not None and time.monotonic() - idle_since >= self.idle_seconds:
                        break
            self._drain(conn, ch)
        finally:
            self.pool.shutdown(wait=True)
            if conn.is_open:
                conn.close()
            self.publisher.close()
        return 0

    def _drain(self, conn: Any, ch: Any) -> None:
        """Stop consuming; let in-flight work finish (their acks run here), give back nothing unprocessed."""
        for tag in list(ch.consumer_tags):
            ch.basic_cancel(tag)
        deadline = time.monotonic() + 30
        while self.in_flight and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)

    def _queues_empty(self, conn: Any) -> bool:
        ch = conn.channel()
        try:
            names = [self.queue(r) for r in range(self.rungs + 1)]
            names += [f"q.wait.{r}" for r in range(1, self.rungs + 1)]
            return all(ch.queue_declare(n, passive=True).method.message_count == 0 for n in names)
        finally:
            if ch.is_open:
                ch.close()

    def _on_message(self, conn: Any, rung: int, ch: Any, method: Any, props: Any, body: bytes) -> None:
        self.in_flight += 1
        self.pool.submit(self._work, conn, ch, rung, method.delivery_tag, props, body)

    def _lock(self, subject: str) -> threading.Lock:
        with self.locks_guard:
            return self.locks.setdefault(subject, threading.Lock())

    def _work(self, conn: Any, ch: Any, rung: int, tag: int, props: Any, body: bytes) -> None:
        subject = str((props.headers or {}).get("ce-subject", ""))
        with self._lock(subject):  # two events for one domain never run at once in this process
            result = dispatch.run(body, props.user_id, self.ports, attempt=rung, last_attempt=rung >= self.rungs)
        try:
            verdict = self._settle(result, props, body, rung)
        except pika.exceptions.AMQPError as exc:
            log.warning("cannot publish the outcome (%s); the event will be redelivered", type(exc).__name__)
            verdict = "requeue"
        conn.add_callback_threadsafe(functools.partial(self._finish, ch, tag, verdict, result))

    def _settle(self, result: dispatch.Result, props: Any, body: bytes, rung: int) -> str:
        """Publish what the verdict needs (outcomes or the parked copy) with confirms; return the ack verb."""
        if result.verdict == "done" and result.outcome is not None:
            for event in result.outcome.emit:
                self.publisher.publish_event(self.broker.exchange, event, self.broker.user)
            return "ack"
        if result.verdict == "retry":
            return "reject"
        self._park(result, props, body, rung)
        return "ack"

    def _park(self, result: dispatch.Result, props: Any, body: bytes, rung: int) -> None:
        headers = {
            "x-mailplane-reason": result.reason[:500],
            "x-mailplane-error": type(result.error).__name__,
            "x-mailplane-attempt": rung,
            "x-mailplane-publisher": props.user_id or "",
            "x-mailplane-parked-at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        copy = pika.BasicProperties(
            content_type=props.content_type,
            delivery_mode=2,
            message_id=props.message_id,
            type=props.type,
            user_id=self.broker.user,
            headers={**(props.headers or {}), **headers},
        )
        self.publisher.publish(self.broker.parked_exchange, "parked", body, copy)
        failed = self._failed_event(result, body, rung)
        if failed is not None:
            self.publisher.publish_event(self.broker.exchange, failed, self.broker.user)

    def _failed_event(self, result: dispatch.Result, body: bytes, rung: int) -> dict[str, Any] | None:
        ev = result.event
        etype = ev.type if ev else dispatch._peek(body, "type")
        if not (etype or "").startswith("domain."):
            return None
        domain = ev.subject if ev else (dispatch._peek(body, "subject") or "")
        data: dict[str, Any] = {
            "domain": domain[:300],
            "reason": result.reason[:500],
            "error": type(result.error).__name__,
            "attempt": rung,
            "parked": True,
        }
        if ev is not None and "customer_id" in ev.data:
            data["customer_id"] = ev.data["customer_id"]
        parent = ev.id if ev else (dispatch._peek(body, "id") or body.hex()[:64])
        failed_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{parent}/failed"))  # deterministic, always a valid id
        return build("domain.failed", domain[:300] or "-", data, source=SOURCE, id=failed_id)

    def _finish(self, ch: Any, tag: int, verdict: str, result: dispatch.Result) -> None:
        self.in_flight -= 1
        if not ch.is_open:  # the channel died: the broker redelivers; never ack a stale tag
            return
        if verdict == "ack":
            ch.basic_ack(tag)
        elif verdict == "reject":
            ch.basic_reject(tag, requeue=False)  # dead-lettered to the next rung of the retry ladder
        else:
            ch.basic_nack(tag, requeue=True)
        if verdict != "requeue":
            self.counts["retry" if verdict == "reject" else result.verdict] += 1
        if self.on_result is not None:
            self.on_result(result)
