"""domain.adopt (operator): take over a domain configured by hand, without breaking its mail.

A thin adapter over functions/_core/model/adoption.py (the logic): this module turns its result into the outcome
and, for a domain adopted now, the domain.provisioned event (status provisioned). A domain mailplane manages
already (a state object exists) is left alone: the outcome is ``managed`` and nothing is written or announced.
"""

from __future__ import annotations

import uuid
from typing import Any

from functions._core.model import adoption
from functions._core.model.ports import Ports
from functions._core.platform.envelope import Envelope, build
from functions._core.platform.outcome import Outcome

NAME = "domain_adopt"
LOGIC = "functions._core.model.adoption"
SOURCE = "urn:mailplane:worker"
UNASSIGNED = "unassigned"  # customer_id of an adopted domain the operator did not name one for


def _fix(event: Envelope) -> tuple[str, ...]:
    return tuple(str(f) for f in event.data.get("fix", ()))


def dry_run(event: Envelope, ports: Ports) -> dict[str, list[str]]:
    """The changes ``handle`` would make on each system (or why it would refuse); nothing is written."""
    found = adoption.plan(event.subject, ports, _fix(event))
    if found.managed:
        return {"managed": [f"{event.subject} is managed by mailplane already: nothing to adopt"]}
    changes = found.writes.summary()
    if found.refusals:
        return {"refused": list(found.refusals)}
    return {**changes, "store": [*changes["store"], "+ state adopted"]}


def handle(event: Envelope, ports: Ports) -> Outcome:
    """Adopt ``event.subject`` (adoption.adopt) and report it.

    Raises:
        OwnershipConflict: a foreign record, or Mailcow and PMG contradict each other (nothing written).
        EventInvalid: not a Mailcow domain, no DKIM key, or ``fix`` names a record that is not different.
        NotPropagated: an authoritative server does not serve the UPDATE yet (retried by the broker).
    """
    customer = str(event.data.get("customer_id") or UNASSIGNED)
    done = adoption.adopt(event.subject, ports, customer_id=customer, event_id=event.id, fix=_fix(event))
    if done.status == "managed":
        return Outcome(NAME, event.id, event.subject, "managed", {}, (), {"note": "managed already"})
    p = done.plan
    data: dict[str, Any] = {
        "domain": event.subject,
        "customer_id": customer,
        "status": "provisioned",
        "dkim_selector": p.selector,
        "changes": done.changes,
        "verified_servers": list(done.servers),
    }
    if not p.hosted and p.instructions:
        data["instructions"] = list(p.instructions)
    out_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event.source}/{event.id}/{NAME}"))
    emitted = build("domain.provisioned", event.subject, data, source=SOURCE, id=out_id)
    frozen = {k: tuple(v) for k, v in done.changes.items()}
    detail = {"selector": p.selector, "key_bits": str(p.key_bits), "weak_key": str(p.weak_key).lower()}
    return Outcome(NAME, event.id, event.subject, "adopted", frozen, (emitted,), detail)
