"""`mailplane dlq list|show|replay`: inspect parked events and re-inject them at attempt 0, as the operator.

Replayed events go to the `work` exchange with routing key "0" (the first rung) and keep the original publisher in
the `x-mailplane-publisher` header, which the worker honours only for the replayer identity; the parked copy is
acked only after the broker confirmed the re-injected one. Replaying twice is harmless: the first replay removed
the message from the parked queue, and the ledger makes a re-run of a completed event a no-op.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pika

from functions._core.platform.config import Settings
from functions.runtime.amqp import Credential, params

PARKING_HEADERS = ("x-mailplane-reason", "x-mailplane-error", "x-mailplane-attempt", "x-mailplane-parked-at")


@dataclass(frozen=True)
class Parked:
    tag: int
    message_id: str
    type: str
    subject: str
    reason: str
    error: str
    attempt: int
    publisher: str
    parked_at: str
    body: bytes

    def matches(self, text: str | None) -> bool:
        if not text:
            return True
        hay = " ".join((self.message_id, self.type, self.subject, self.reason, self.error, self.publisher)).lower()
        return text.lower() in hay

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("tag", "body")}


def _broker_reason(headers: dict[str, Any]) -> str:
    """Messages the broker dead-lettered itself (delivery limit of the last rung) carry only x-death."""
    deaths = headers.get("x-death") or []
    if not deaths:
        return ""
    first = deaths[0]
    return f"dead-lettered by the broker: {first.get('reason', '?')} in {first.get('queue', '?')}"


def _parked(method: Any, props: Any, body: bytes) -> Parked:
    h = props.headers or {}
    try:
        etype = str(json.loads(body).get("type", ""))
    except (ValueError, AttributeError):
        etype = ""
    return Parked(
        method.delivery_tag,
        props.message_id or "",
        etype,
        str(h.get("ce-subject", "")),
        str(h.get("x-mailplane-reason", "")) or _broker_reason(h),
        str(h.get("x-mailplane-error", "")),
        int(h.get("x-mailplane-attempt", 0)),
        str(h.get("x-mailplane-publisher", "")),
        str(h.get("x-mailplane-parked-at", "")),
        body,
    )


@contextmanager
def parked_messages(settings: Settings, password: Credential, user: str) -> Iterator[tuple[Any, list[Parked]]]:
    """Every parked message, held unacked on one channel; those not acked return to the queue on exit."""
    conn = pika.BlockingConnection(params(settings.broker, user, password))
    try:
        ch = conn.channel()
        items: list[Parked] = []
        while True:
            method, props, body = ch.basic_get(settings.broker.parked_queue, auto_ack=False)
            if method is None:
                break
            items.append(_parked(method, props, body))
        yield ch, items
    finally:
        if conn.is_open:
            conn.close()


def replay(settings: Settings, password: Credential, user: str, *, text: str | None, ids: set[str]) -> list[Parked]:
    """Re-inject the matching parked events at attempt 0; returns what was replayed."""
    done: list[Parked] = []
    with parked_messages(settings, password, user) as (ch, items):
        ch.confirm_delivery()
        for p in items:
            if (ids and p.message_id not in ids) or not p.matches(text):
                continue
            headers = {"ce-subject": p.subject, "x-mailplane-publisher": p.publisher, "x-mailplane-replayed": 1}
            props = pika.BasicProperties(
                content_type="application/cloudevents+json",
                delivery_mode=2,
                message_id=p.message_id,
                user_id=user,
                headers=headers,
            )
            ch.basic_publish("work", "0", p.body, props, mandatory=True)
            ch.basic_ack(p.tag)
            done.append(p)
    return done
