"""Decode, authorise, route and run one event: the part every entry point shares (worker, Lambda, invoke)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from functions import ROUTES
from functions._core.model.ports import Ports
from functions._core.platform.envelope import MAX_BODY, Envelope, parse
from functions._core.platform.errors import AutomationError, EventInvalid, NotAuthorized, PermanentError, TransientError
from functions._core.platform.idempotency import LeaseHeld
from functions._core.platform.outcome import Outcome

log = logging.getLogger("mailplane.outcome")


@dataclass(frozen=True)
class Result:
    """What happened to one delivery: ``verdict`` is done, retry, park or requeue (given back unprocessed)."""

    verdict: str
    outcome: Outcome | None = None
    event: Envelope | None = None
    error: AutomationError | None = None
    duration: float = 0.0

    @property
    def reason(self) -> str:
        return self.error.reason if self.error else ""


def authorize(event: Envelope, publishers: dict[str, tuple[str, ...]]) -> None:
    """Only the broker-validated user_id counts.

    Raises:
        NotAuthorized: no user_id, or a publisher not allowed to send this type.
    """
    if not event.publisher:
        raise NotAuthorized(f"{event.type} {event.id} carries no validated user_id")
    allowed = publishers.get(event.type, ())
    if event.publisher not in allowed:
        raise NotAuthorized(f"publisher {event.publisher!r} may not send {event.type}")


def run(body: bytes, publisher: str | None, ports: Ports, *, attempt: int = 0, last_attempt: bool = True) -> Result:
    """Run one event through its handler; never raises for event or system faults (the verdict says what to do)."""
    start = time.monotonic()
    event: Envelope | None = None
    try:
        event = parse(body, publisher=publisher)
        authorize(event, dict(ports.settings.broker.publishers))
        route = ROUTES.get(event.type)
        if route is None:
            raise EventInvalid(f"no handler for inbound type {event.type}")
        outcome = _handle_once(route.name, route.handle, event, ports)
        result = Result("done", outcome, event, duration=time.monotonic() - start)
    except LeaseHeld as exc:  # another worker holds this event: try again after the next rung's delay
        result = Result("requeue" if last_attempt else "retry", None, event, exc, time.monotonic() - start)
    except PermanentError as exc:
        result = Result("park", None, event, exc, time.monotonic() - start)
    except TransientError as exc:
        result = Result("park" if last_attempt else "retry", None, event, exc, time.monotonic() - start)
    except Exception as exc:  # a bug or an unmapped library error: retried, then parked; never lost
        log.exception("unexpected error in %s", event.type if event else "event")
        err = TransientError(f"unexpected {type(exc).__name__}")
        result = Result("park" if last_attempt else "retry", None, event, err, time.monotonic() - start)
    _log(result, body, attempt)
    return result


def refused(body: bytes, error: PermanentError, *, attempt: int) -> Result:
    """The verdict for a delivery refused without running it (a poison message): park, logged like any outcome."""
    result = Result("park", None, None, error)
    _log(result, body, attempt)
    return result


def _handle_once(name: str, handle: Callable[[Envelope, Ports], Outcome], event: Envelope, ports: Ports) -> Outcome:
    """Run the handler under the idempotency ledger: a completed duplicate returns its stored outcome untouched."""
    if ports.ledger is None:
        return handle(event, ports)
    with ports.ledger.claim(name, event) as claim:  # literal NAME, never derived from code location
        if claim.completed and claim.result is not None:
            return Outcome.from_json(claim.result)
        with ports.locks.hold(event.subject) if ports.locks else nullcontext():
            outcome = handle(event, ports)
        claim.complete(outcome.to_json())
        return outcome


def _log(result: Result, body: bytes, attempt: int) -> None:
    """One JSON line per outcome, fit for Wazuh: no payload, no secrets."""
    ev, out = result.event, result.outcome
    line: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "program": "mailplane",
        "event_id": ev.id if ev else peek(body, "id"),
        "type": ev.type if ev else peek(body, "type"),
        "subject": ev.subject if ev else peek(body, "subject"),
        "publisher": ev.publisher if ev else None,
        "attempt": attempt,
        "outcome": out.status if out else result.verdict,
        "duration_ms": round(result.duration * 1000, 1),
        "changes": {k: len(v) for k, v in out.changes.items()} if out else {},
    }
    if result.error:
        line["reason"] = result.error.reason
    log.info("%s", json.dumps(line, sort_keys=True))


def peek(body: bytes, field: str) -> str | None:
    """``field`` of a body that did not parse as an event, as a bounded string, or None; never raises."""
    if len(body) > MAX_BODY:
        return None
    try:
        value = json.loads(body).get(field)
        return str(value)[:200] if value is not None else None
    except (ValueError, AttributeError, RecursionError):  # RecursionError: JSON nested deeper than the stack
        return None
