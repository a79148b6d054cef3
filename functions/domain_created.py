"""domain.created (billing): provision a customer domain on Mailcow, PMG, DNS and the MTA-STS store, verified.

A thin adapter over functions/_core/model/provisioning.py (the logic): this module turns its result into the
outcome and the domain.provisioned event (status provisioned, awaiting_dns with the zone-file lines for a zone
hosted elsewhere, or degraded with the acceptance checks that still failed when the bounded wait ended).
The outbound event's id depends only on the incoming event, so a redelivery announces the same.
"""

from __future__ import annotations

import uuid
from typing import Any

from functions._core.model import provisioning
from functions._core.model.ports import Ports
from functions._core.platform.envelope import Envelope, build
from functions._core.platform.outcome import Outcome

NAME = "domain_created"
LOGIC = "functions._core.model.provisioning"
SOURCE = "urn:mailplane:worker"

desired_mail = provisioning.desired_mail
dry_run = provisioning.dry_run


def handle(event: Envelope, ports: Ports) -> Outcome:
    """Provision ``event.subject`` (provisioning.provision) and report it.

    Raises:
        EventInvalid: the provider's zone, or a zone flagged hosted that our DNS does not serve.
        OwnershipConflict: a managed DNS name holds foreign data.
        NotPropagated: an authoritative server does not serve the plan yet (retried by the broker).
    """
    done = provisioning.provision(event, ports)
    if done.stale_applied is not None:
        return Outcome(NAME, event.id, event.subject, "stale", {}, (), {"applied": done.stale_applied})
    data: dict[str, Any] = {
        "domain": event.subject,
        "customer_id": event.data["customer_id"],
        "status": done.status,
        "dkim_selector": done.selector,
        "changes": done.changes,
        "verified_servers": list(done.servers),
    }
    if done.instructions is not None:
        data["instructions"] = list(done.instructions)
    if done.accepted:  # the acceptance gate: every node's SMTP answer (with the source address) and Mailcow's state
        data["acceptance"] = [c.as_json() for c in done.accepted]
    if done.status == "degraded":
        data["degraded"] = [c.as_json() for c in done.accepted if not c.ok]
    if done.dnssec is not None:  # the DS to register at the parent, and whether a validating resolver trusts it
        data["dnssec"] = done.dnssec.as_json()
    out_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event.source}/{event.id}/{NAME}"))
    emitted = build("domain.provisioned", event.subject, data, source=SOURCE, id=out_id)
    frozen = {k: tuple(v) for k, v in done.changes.items()}
    return Outcome(NAME, event.id, event.subject, done.status, frozen, (emitted,), {"selector": done.selector})
