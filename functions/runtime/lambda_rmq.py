"""AWS Lambda entry point for Amazon MQ for RabbitMQ batches (event source ``aws:rmq``, reference/broker.md §13).

``handler(event, context)`` decodes every record into a ``settle.Incoming`` and runs it through the SAME
``dispatch.run`` as the pika worker (validation, authorisation by the broker-validated ``userId``, routing), then
settles it with the same ``Settler`` (outcome events or the parked copy + domain.failed, published with confirms).

Decoding: records sit under ``rmqMessagesByQueue["<queue>::<vhost>"]``; ``data`` is base64 of the raw body; string
headers arrive as ``{"bytes": [...]}`` and become ``str`` (``bytes`` if not UTF-8), numbers stay numbers;
``basicProperties.userId`` is the validated publisher (missing -> parked as NotAuthorized). The attempt number is the
rung of the queue name (``q.work.2`` -> 2; no trailing number -> 0), as in the worker. A record whose ``data`` is not
base64 is parked without running.

Batch semantics (Lambda has no partial batch response for ``aws:rmq``: ANY error redelivers the WHOLE batch):

* records run one by one, in the order of the batch;
* done and parked records are settled at once (confirmed publishes);
* a record whose verdict is retry (or give-back), or whose settle was not confirmed, is left unsettled; the other
  records still run; then the handler raises ``BatchRetryError`` and Lambda redelivers the whole batch. Records that
  already completed then come back as cheap duplicates: the idempotency ledger replays their stored outcome and
  their outcome events are published again under the same ids (consumers dedupe by ``source`` + ``id``); a parked
  record may be parked twice (its domain.failed has a deterministic id). The queue's ``x-delivery-limit`` + DLX move a
  batch that keeps failing down the retry ladder, so ``rung`` still grows and the last rung parks;
* otherwise the handler returns ``{"batchItemFailures": [], "processed": n, "parked": n, "retry": 0}``
  (``processed`` counts every record run, ``parked`` those parked).

Ports, the publisher and the settler are built ONCE per container, lazily on the first invocation, from
``main.load_settings()`` + ``main.build_ports()``; importing this module does nothing. Tests call ``process`` with
their own ``Runtime`` (any ``run`` function and settler), so they need no broker.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import pika.exceptions

from functions._core.model.ports import Ports
from functions._core.platform.errors import ConfigError, EventInvalid, TransientError
from functions.runtime import dispatch, main
from functions.runtime.amqp import Publisher, params
from functions.runtime.settle import Incoming, Settler, effective_publisher

__all__ = ["BatchRetryError", "Record", "Runtime", "decode", "handler", "process", "rung_of"]

log = logging.getLogger("mailplane.lambda")

EVENT_SOURCE = "aws:rmq"
SETTLED = ("done", "park")


class RunFn(Protocol):
    """``dispatch.run``'s signature."""

    def __call__(
        self, body: bytes, publisher: str | None, ports: Ports, *, attempt: int = 0, last_attempt: bool = True
    ) -> dispatch.Result: ...


class SettlerLike(Protocol):
    """``settle.Settler``'s one method the Lambda uses."""

    def settle(self, result: dispatch.Result, msg: Incoming) -> str: ...


class BatchRetryError(TransientError):
    """At least one record must run again: Lambda redelivers the whole batch."""

    def __init__(self, summary: Mapping[str, int]) -> None:
        super().__init__(", ".join(f"{k}={v}" for k, v in summary.items()))
        self.summary = dict(summary)


@dataclass(frozen=True)
class Runtime:
    """What one container keeps between invocations."""

    ports: Ports
    settler: SettlerLike
    run: RunFn = field(default=dispatch.run)


@dataclass(frozen=True)
class Record:
    """One decoded record; ``error`` is set when it cannot even be run (it is parked with that reason)."""

    queue: str
    vhost: str
    msg: Incoming
    redelivered: bool = False
    error: EventInvalid | None = None


_runtime: Runtime | None = None


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    """The Lambda entry point.

    Raises:
        BatchRetryError: a record must be retried (Lambda redelivers the whole batch).
        ConfigError: bad settings, or an event that is not an ``aws:rmq`` batch.
    """
    request = getattr(context, "aws_request_id", None)
    if request is not None:
        log.info("invocation %s", request)
    return process(event, _container())


def _container() -> Runtime:
    """Build ports, publisher and settler on first use; reuse them for the life of the container."""
    global _runtime
    if _runtime is None:
        main.load_secret_env(os.environ)
        settings = main.load_settings()
        ports = main.build_ports(settings)
        _runtime = Runtime(ports, Settler(Publisher(params(settings.broker)), settings.broker))
    return _runtime


def process(event: Mapping[str, Any], rt: Runtime) -> dict[str, Any]:
    """Run and settle every record in order (see the module docstring for the batch semantics).

    Raises:
        BatchRetryError: at least one record was not settled; every other record was.
        ConfigError: the event is not an ``aws:rmq`` batch.
    """
    counts = {"processed": 0, "parked": 0, "retry": 0}
    last_rung = len(rt.ports.settings.broker.retry_delays)
    for rec in decode(event):
        counts["processed"] += 1
        outcome = _one(rec, rt, last_rung)
        if outcome != "done":
            counts[outcome] += 1
    log.info("batch: %s", json.dumps(counts, sort_keys=True))
    if counts["retry"]:
        raise BatchRetryError(counts)
    return {"batchItemFailures": [], **counts}


def _one(rec: Record, rt: Runtime, last_rung: int) -> str:
    """Run and settle one record; returns done, parked or retry."""
    msg = rec.msg
    if rec.error is not None:
        result = dispatch.Result("park", error=rec.error)
        log.warning("undecodable record on %s: %s", rec.queue, rec.error.reason)
    else:
        publisher = effective_publisher(msg.user_id, msg.headers, rt.ports.settings.broker)
        result = rt.run(msg.body, publisher, rt.ports, attempt=msg.rung, last_attempt=msg.rung >= last_rung)
    if result.verdict not in SETTLED:
        return "retry"
    try:
        verdict = rt.settler.settle(result, msg)
    except pika.exceptions.AMQPError as exc:
        log.warning("cannot publish the outcome (%s); the batch will be redelivered", type(exc).__name__)
        return "retry"
    if verdict != "ack":
        return "retry"
    return "parked" if result.verdict == "park" else "done"


# --- decoding -------------------------------------------------------------------------------------------------------


def decode(event: Mapping[str, Any]) -> Iterator[Record]:
    """Yield the records of an ``aws:rmq`` batch in order.

    Raises:
        ConfigError: not an ``aws:rmq`` batch (wrong eventSource, no ``rmqMessagesByQueue``, a record not an object).
    """
    if event.get("eventSource") != EVENT_SOURCE:
        raise ConfigError(f"not an {EVENT_SOURCE} event: eventSource={str(event.get('eventSource'))[:80]!r}")
    by_queue = event.get("rmqMessagesByQueue")
    if not isinstance(by_queue, Mapping):
        raise ConfigError(f"{EVENT_SOURCE} event without rmqMessagesByQueue")
    for key, records in by_queue.items():
        queue, _, vhost = str(key).rpartition("::") if "::" in str(key) else (str(key), "", "")
        if not isinstance(records, list):
            raise ConfigError(f"{EVENT_SOURCE} queue {queue!r}: records must be a list")
        for raw in records:
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{EVENT_SOURCE} queue {queue!r}: a record must be an object")
            yield _record(queue, vhost, raw)


def rung_of(queue: str) -> int:
    """The retry rung of a work queue: the number after its last '.' (``q.work.2`` -> 2); otherwise 0."""
    tail = queue.rpartition(".")[2]
    return int(tail) if tail.isascii() and tail.isdigit() else 0


def _record(queue: str, vhost: str, raw: Mapping[str, Any]) -> Record:
    props = raw.get("basicProperties")
    props = props if isinstance(props, Mapping) else {}
    data = raw.get("data")
    error: EventInvalid | None = None
    try:
        body = base64.b64decode(data if isinstance(data, str) else "", validate=True)
    except (binascii.Error, ValueError):
        body, error = str(data).encode("utf-8", "replace")[:4096], EventInvalid("record: data is not base64")
    headers = props.get("headers")
    msg = Incoming(
        body=body,
        user_id=_text(props.get("userId")),
        rung=rung_of(queue),
        message_id=_text(props.get("messageId")),
        content_type=_text(props.get("contentType")),
        type=_text(props.get("type")),
        headers={str(k): _header(v) for k, v in headers.items()} if isinstance(headers, Mapping) else {},
    )
    return Record(queue, vhost, msg, bool(raw.get("redelivered")), error)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _header(value: Any) -> Any:
    """``{"bytes": [...]}`` -> str (bytes if not UTF-8); tables and arrays recursively; anything else as is."""
    if isinstance(value, Mapping):
        octets = value.get("bytes")
        if len(value) == 1 and isinstance(octets, list) and all(isinstance(b, int) and 0 <= b < 256 for b in octets):
            raw = bytes(octets)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw
        return {str(k): _header(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_header(v) for v in value]
    return value
