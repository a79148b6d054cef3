"""The worker: the only consuming pika code. decode -> route -> handle -> ack / reject (retry rung) / park.

The main thread owns the consuming connection; handlers run in a bounded pool and hand their verdicts back
through ``add_callback_threadsafe`` (heartbeats never starve). Acks happen only after the outcome is published
with confirms, so a crash at any point redelivers the event and the idempotent handler converges again.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pika
import pika.exceptions

from functions._core.ports import Ports
from functions.runtime import dispatch
from functions.runtime.amqp import Publisher, params
from functions.runtime.settle import Incoming, Settler

log = logging.getLogger("mailplane.worker")


class Worker:
    """Consume every rung of the work queue ladder until stopped (or, with ``until_idle``, until drained)."""

    def __init__(self, ports: Ports, *, pool_size: int = 4, until_idle: bool = False, idle_seconds: float = 1.5):
        self.ports = ports
        self.broker = ports.settings.broker
        self.rungs = len(self.broker.retry_delays)
        self.pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="handler")
        self.publisher = Publisher(params(self.broker))
        self.settler = Settler(self.publisher, self.broker)
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
        msg = Incoming(body, props.user_id, rung, props.message_id, props.content_type, props.type, props.headers or {})
        try:
            verdict = self.settler.settle(result, msg)
        except pika.exceptions.AMQPError as exc:
            log.warning("cannot publish the outcome (%s); the event will be redelivered", type(exc).__name__)
            verdict = "requeue"
        if verdict == "requeue":
            time.sleep(1.0)  # given back unprocessed: do not spin while another worker holds the lease
        conn.add_callback_threadsafe(functools.partial(self._finish, ch, tag, verdict, result))

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
