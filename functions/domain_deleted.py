"""domain.deleted (billing): suspend a customer domain, then remove what mailplane made for it after the grace
period. A thin adapter over functions/_core/model/deletion.py (the logic); this module reports the result.

The first domain.deleted deactivates the Mailcow domain and records ``suspended`` (``suspended_at``, ``delete_after``)
in the state; the event is then complete. Removal happens when a domain.deleted for the suspended domain arrives
after the grace period: ``grace_days`` of that event, else ``deletion.grace_days`` (0 = at once, in the same
delivery). Billing or the scheduler re-sends the event with a new id, or an operator publishes one (`mailplane
publish`) for the domains `mailplane drift` lists as ``removal_due``.

Removal takes only what mailplane manages: the Mailcow domain (refused while it has mailboxes, unless ``force``) and
its DKIM key, the PMG relay domain and transport carrying the managed-by comment, the managed DNS RRsets in ONE
compare-and-set UPDATE (the customer's own records and apex TXT strings stay), the MTA-STS policy and the sealed
keys; the state becomes a tombstone (``deleted``, keys DESTROYED) so selectors are never reused. Everything is read,
planned and guarded before the first write: a refusal changes nothing and is parked with its reason. A replay plans
nothing. No outbound event: the outcome line and the ledger carry the result (a parked refusal publishes
domain.failed like every domain.* event).
"""

from __future__ import annotations

from typing import Any

from functions._core.model import deletion
from functions._core.model.ports import Ports
from functions._core.platform.envelope import Envelope
from functions._core.platform.outcome import Outcome

NAME = "domain_deleted"
LOGIC = "functions._core.model.deletion"

dry_run = deletion.dry_run


def handle(event: Envelope, ports: Ports) -> Outcome:
    """Suspend ``event.subject``, or remove it once due (deletion.run), and report it.

    Raises:
        EventInvalid: the provider's zone, or a domain provisioned for another customer.
        OwnershipConflict: the Mailcow domain does not carry mailplane's marker.
        DomainNotEmptyError: the Mailcow domain has mailboxes and ``force`` is false.
        DnsConflict: the zone or the state changed while planning (retried: re-read and re-plan).
    """
    steps = deletion.run(event, ports)
    if steps is None:
        return Outcome(NAME, event.id, event.subject, "absent", {k: () for k in deletion.SYSTEMS})
    detail: dict[str, Any] = {"suspended_at": steps.after.suspended_at, "delete_after": steps.after.delete_after}
    if steps.removal is not None:
        detail["kept"] = [line for _, line in steps.removal.kept]
        detail["instructions"] = list(steps.removal.instructions)
    frozen = {k: tuple(v) for k, v in deletion.changes(steps).items()}
    return Outcome(NAME, event.id, event.subject, steps.after.status, frozen, (), detail)
