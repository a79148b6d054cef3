"""The worker: the only consuming pika code. decode -> route -> handle -> ack / reject (retry rung) / park.

The main thread owns the consuming connection; handlers run in a bounded pool and hand their verdicts back
through ``add_callback_threadsafe`` (heartbeats never starve; prefetch bounds memory). Acks happen only after the
outcome is published with confirms, so a crash at any point redelivers the event and the idempotent handler (plus
the ledger) converges again. A redelivery runs under its death record (poison.py): alone once deaths were recorded
while it ran, parked as PoisonError once it kept killing the process, so its neighbours stay on their rung. A lost
connection is re-opened with jittered backoff; verdicts for deliveries of the
old connection are dropped (their tags are invalid; the broker redelivers them). SIGTERM stops consuming, lets
in-flight work finish within the grace period, and exits 0 with nothing unacked.
"""

from __future__ import annotations

import functools
import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pika
import pika.exceptions

from functions._core.model.ports import Ports
from functions._core.platform.errors import AutomationError
from functions._core.platform.idempotency import default_owner
from functions.runtime import dispatch, poison
from functions.runtime.amqp import Publisher, params
from functions.runtime.metrics import Metrics
from functions.runtime.settle import Incoming, Settler, effective_publisher

log = logging.getLogger("mailplane.worker")
FATAL_CLOSE_CODES = {403, 530}  # access refused, not allowed: never retried


class SubjectMutexes:
    """One lock per subject while someone holds or waits for it, dropped with the last user: events for different
    subjects never wait for each other (striped locks made 10 % of handler time a wait at a shared stripe), and memory
    stays bounded by the number of handler threads.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entries: dict[str, tuple[threading.Lock, list[int]]] = {}  # subject -> (lock, [users])

    def __len__(self) -> int:
        """Subjects currently held or waited for."""
        with self._guard:
            return len(self._entries)

    @contextmanager
    def hold(self, subject: str) -> Iterator[None]:
        """Hold ``subject``'s lock for the block (blocking while another thread holds it)."""
        with self._guard:
            lock, users = self._entries.setdefault(subject, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users[0] -= 1
                if users[0] == 0:
                    del self._entries[subject]


class Worker:
    """Consume every rung of the work queue ladder until stopped (or, with ``until_idle``, until drained)."""

    def __init__(
        self,
        ports: Ports,
        *,
        pool_size: int = 4,
        until_idle: bool = False,
        idle_seconds: float = 1.5,
        grace_seconds: float = 30.0,
        metrics: Metrics | None = None,
        refill_idle: bool = True,
    ) -> None:
        """``refill_idle``: top up the key pool (``ports.keypool``) while idle."""
        self.ports = ports
        self.refill_idle = refill_idle
        self.broker = ports.settings.broker
        self.rungs = len(self.broker.retry_delays)
        self.pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="handler")
        self.publisher = Publisher(params(self.broker))
        self.settler = Settler(self.publisher, self.broker)
        self.until_idle, self.idle_seconds, self.grace = until_idle, idle_seconds, grace_seconds
        self.stopping = threading.Event()
        self._in_flight = 0
        self._guard = threading.Lock()
        self.locks = SubjectMutexes()
        self.gate = poison.SoloGate()
        self.deaths = poison.DeathRecords(ports.state, owner=default_owner())
        self.counts = {"done": 0, "retry": 0, "park": 0, "requeue": 0, "reconnects": 0}
        self.on_result: Callable[[dispatch.Result], None] | None = None
        self.metrics = metrics
        self._consumed = False  # the current session got as far as consuming (a later loss backs off from 0.5 s)
        self._last_activity = time.monotonic()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _flight(self, delta: int) -> None:
        with self._guard:
            self._in_flight += delta
            self._last_activity = time.monotonic()
        if self.metrics is not None:
            self.metrics.in_flight.inc(delta)

    def queue(self, rung: int) -> str:
        return f"{self.broker.work_queue_prefix}.{rung}"

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> int:
        """Consume until SIGTERM/SIGINT (or idle), reconnecting after connection loss; returns the exit code."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
        delay = 0.5
        if self.ports.keypool is not None and self.refill_idle:
            threading.Thread(target=self._refill_when_idle, name="keypool", daemon=True).start()
        try:
            while not self.stopping.is_set():
                try:
                    if self._session():
                        break
                    delay = 0.5
                except pika.exceptions.ConnectionClosedByBroker as exc:
                    if exc.reply_code in FATAL_CLOSE_CODES:
                        raise
                    delay = self._backoff(exc, 0.5 if self._consumed else delay)
                except (pika.exceptions.AMQPConnectionError, pika.exceptions.StreamLostError, OSError) as exc:
                    delay = self._backoff(exc, 0.5 if self._consumed else delay)
        finally:
            # deliveries still queued in the pool went back to the broker with the connection: never run them now
            # (their acks could only be dropped); wait only for the handlers already running
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.publisher.close()
        return 0

    def idle(self) -> bool:
        """Nothing in flight, and nothing arrived for ``idle_seconds``."""
        return self._in_flight == 0 and time.monotonic() - self._last_activity >= self.idle_seconds

    def _refill_when_idle(self) -> None:
        """Top up the key pool one key at a time while the worker is idle (generation never delays an event by
        more than one key's ~50 ms)."""
        pool = self.ports.keypool
        assert pool is not None
        full_since: float | None = None  # activity time when the pool was last found full: no LIST until new work
        while not self.stopping.wait(self.idle_seconds):
            if not self.idle() or full_since == self._last_activity:
                continue
            seen = self._last_activity
            try:
                result = pool.refill(keep_going=self.idle)
            except AutomationError as exc:  # the store is down: the events will say so; try again later
                log.warning("key pool refill failed: %s", exc.reason)
                continue
            full_since = seen if result.found + result.added >= pool.size else None

    def _backoff(self, exc: BaseException, delay: float) -> float:
        self.counts["reconnects"] += 1
        pause = random.uniform(0.5, 1.0) * delay
        log.warning("broker connection lost (%s); reconnecting in %.1f s", type(exc).__name__, pause)
        self.stopping.wait(pause)
        return min(delay * 2, 4.0)  # capped: back within seconds of the broker's return

    def _session(self) -> bool:
        """One connection's life: consume until stopped or idle (True), or raise on connection loss."""
        self._consumed = False
        conn = pika.BlockingConnection(params(self.broker))
        try:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=self.broker.prefetch)
            for rung in range(self.rungs + 1):
                ch.basic_consume(self.queue(rung), functools.partial(self._on_message, conn, rung), auto_ack=False)
            log.info(
                "consuming %s.0..%d (prefetch %d)", self.broker.work_queue_prefix, self.rungs, self.broker.prefetch
            )
            self._consumed = True
            idle_since: float | None = None
            while not self.stopping.is_set():
                conn.process_data_events(time_limit=0.2)
                if self.until_idle:
                    idle = self.in_flight == 0 and self._queues_empty(conn)
                    idle_since = (idle_since or time.monotonic()) if idle else None
                    if idle_since is not None and time.monotonic() - idle_since >= self.idle_seconds:
                        break
            self._drain(conn, ch)
            return True
        finally:
            if conn.is_open:
                conn.close()  # whatever is still unacked goes back to its queue

    def _drain(self, conn: Any, ch: Any) -> None:
        """Stop consuming; let in-flight work finish (their acks run here) within the grace period."""
        for tag in list(ch.consumer_tags):
            ch.basic_cancel(tag)
        deadline = time.monotonic() + self.grace
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
        self._flight(+1)
        self.pool.submit(self._work, conn, ch, rung, method.delivery_tag, props, body)

    def _work(self, conn: Any, ch: Any, rung: int, tag: int, props: Any, body: bytes) -> None:
        if not ch.is_open:  # its connection is gone: the broker redelivers it; running it now is wasted work
            self._flight(-1)
            return
        headers = props.headers or {}
        publisher = effective_publisher(props.user_id, headers, self.broker)
        result = self._run(body, publisher, rung, headers)
        msg = Incoming(body, publisher, rung, props.message_id, props.content_type, props.type, headers)
        try:
            verdict = self.settler.settle(result, msg)
        except pika.exceptions.AMQPError as exc:
            log.warning("cannot publish the outcome (%s); the event will be redelivered", type(exc).__name__)
            verdict = "requeue"
        if verdict == "requeue":
            time.sleep(1.0)  # given back unprocessed: do not spin while another worker holds the lease
        try:
            conn.add_callback_threadsafe(functools.partial(self._finish, ch, tag, verdict, result))
        except pika.exceptions.AMQPError:  # the connection is gone: the broker redelivers this event
            self._flight(-1)

    def _run(self, body: bytes, publisher: str | None, rung: int, headers: dict[str, Any]) -> dispatch.Result:
        """Run one delivery; a redelivery under its death record (poison.py): alone once it has deaths on
        record, refused (parked) once it died too often alone."""
        subject = str(headers.get("ce-subject", "")).lower()
        count, suspect = poison.delivery_count(headers), poison.suspect(headers)
        record = self.deaths.read(body) if suspect else poison.Record()
        error = self.deaths.poison(record, count)
        if error is not None:
            log.error("poison: %s", error.reason)
            self.deaths.finished(body)
            return dispatch.refused(body, error, attempt=rung)
        with self.gate.hold(solo=record.alone):
            if suspect:
                self.deaths.starting(body, record)
            with self.locks.hold(subject):  # two events for one subject never run at once in this process
                result = dispatch.run(body, publisher, self.ports, attempt=rung, last_attempt=rung >= self.rungs)
            if suspect:
                self.deaths.finished(body)
        return result

    def _finish(self, ch: Any, tag: int, verdict: str, result: dispatch.Result) -> None:
        self._flight(-1)
        if not ch.is_open:  # the channel died: the broker redelivers; never ack a stale tag
            return
        if verdict == "ack":
            ch.basic_ack(tag)
        elif verdict == "reject":
            ch.basic_reject(tag, requeue=False)  # dead-lettered to the next rung of the retry ladder
        else:
            ch.basic_nack(tag, requeue=True)
        self.counts[{"reject": "retry", "requeue": "requeue"}.get(verdict, result.verdict)] += 1
        if self.metrics is not None:
            self.metrics.observe(result)
        if self.on_result is not None:
            self.on_result(result)
