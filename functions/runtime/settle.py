"""After a handler ran: publish the outcome, or the parked copy and domain.failed, with confirms.

Shared by the worker and the Lambda adapter, so both park the same way (broker.md §4: "park now" = publish a
copy to the parked exchange with confirms, then ack; never a requeue loop).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pika

from functions._core.platform.config import BrokerSettings
from functions._core.platform.envelope import build
from functions.runtime import dispatch
from functions.runtime.amqp import Publisher

SOURCE = "urn:mailplane:worker"
REPLAY_HEADER = "x-mailplane-publisher"  # the original validated publisher, kept on parked copies


def effective_publisher(user_id: str | None, headers: Mapping[str, Any], broker: BrokerSettings) -> str | None:
    """The broker-validated user_id; for an operator's replay from the parked queue, the original publisher
    recorded in the parked copy (so a replay never authorizes what the original publisher could not send)."""
    if user_id and user_id == broker.replayer and REPLAY_HEADER in headers:
        return str(headers[REPLAY_HEADER]) or None
    return user_id or None


@dataclass(frozen=True)
class Incoming:
    """One delivery as received, whatever the transport (pika or aws:rmq)."""

    body: bytes
    user_id: str | None
    rung: int  # attempt number = the work queue's rung
    message_id: str | None = None
    content_type: str | None = None
    type: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)


class Settler:
    def __init__(self, publisher: Publisher, broker: BrokerSettings) -> None:
        self.publisher, self.broker = publisher, broker

    def settle(self, result: dispatch.Result, msg: Incoming) -> str:
        """Publish what the verdict needs; return "ack" (done or parked), "reject" (next retry rung) or "requeue".

        Raises:
            pika.exceptions.AMQPError: the broker did not confirm; the caller must not ack.
        """
        if result.verdict == "done" and result.outcome is not None:
            for event in result.outcome.emit:
                self.publisher.publish_event(self.broker.exchange, event, self.broker.user)
            return "ack"
        if result.verdict == "retry":
            return "reject"
        if result.verdict == "requeue":
            return "requeue"
        self.park(result, msg)
        return "ack"

    def park(self, result: dispatch.Result, msg: Incoming) -> None:
        headers = {
            "x-mailplane-reason": result.reason[:500],
            "x-mailplane-error": type(result.error).__name__,
            "x-mailplane-attempt": msg.rung,
            "x-mailplane-publisher": msg.user_id or "",
            "x-mailplane-parked-at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        copy = pika.BasicProperties(
            content_type=msg.content_type,
            delivery_mode=2,
            message_id=msg.message_id,
            type=msg.type,
            user_id=self.broker.user,
            headers={**msg.headers, **headers},
        )
        self.publisher.publish(self.broker.parked_exchange, "parked", msg.body, copy)
        failed = failed_event(result, msg)
        if failed is not None:
            self.publisher.publish_event(self.broker.exchange, failed, self.broker.user)


def failed_event(result: dispatch.Result, msg: Incoming) -> dict[str, Any] | None:
    """domain.failed for a parked domain.* event (deterministic id, so a re-park publishes the same event)."""
    ev, body = result.event, msg.body
    etype = ev.type if ev else dispatch.peek(body, "type")
    if not (etype or "").startswith("domain."):
        return None
    domain = ev.subject if ev else (dispatch.peek(body, "subject") or "")
    data: dict[str, Any] = {
        "domain": domain[:300],
        "reason": result.reason[:500],
        "error": type(result.error).__name__,
        "attempt": msg.rung,
        "parked": True,
    }
    if ev is not None and "customer_id" in ev.data:
        data["customer_id"] = ev.data["customer_id"]
    parent = ev.id if ev else (dispatch.peek(body, "id") or body.hex()[:64])
    failed_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{parent}/failed"))
    return build("domain.failed", domain[:300] or "-", data, source=SOURCE, id=failed_id)
