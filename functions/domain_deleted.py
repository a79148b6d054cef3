"""domain.deleted: suspend a customer domain, then remove what mailplane made for it once the grace period is over.

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

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any

from functions._core import deletion, state
from functions._core.envelope import Envelope
from functions._core.errors import DnsRefused, EventInvalid
from functions._core.mailset import customer_lines, delegated, policy_key, spf_value
from functions._core.names import is_within
from functions._core.outcome import Outcome
from functions._core.ports import Ports
from functions._core.records import Key, RecordSet

NAME = "domain_deleted"
SYSTEMS = ("mailcow", "pmg", "dns", "store")


@dataclass(frozen=True)
class Steps:
    before: state.DomainState
    after: state.DomainState  # the state to store (unchanged: no write)
    suspend: bool  # deactivate the Mailcow domain
    removal: deletion.Removal | None  # None: removal is not due yet


def _load(event: Envelope, ports: Ports) -> state.DomainState:
    domain, prov = event.subject, ports.settings.provider
    zone = is_within(domain, (prov.zone, *prov.protected_zones))
    if zone is not None:
        raise EventInvalid(f"{domain} is the provider's zone {zone} or lies under it")
    st = state.load(ports.state, domain)
    owner = st.request.get("customer_id")
    if owner is not None and owner != event.data["customer_id"]:
        raise EventInvalid(f"{domain} is not provisioned for customer {event.data['customer_id']}")
    return st


def _dns(
    domain: str, st: state.DomainState, ports: Ports, managed: dict[Key, RecordSet]
) -> tuple[deletion.DnsRemoval | None, tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The DNS removal (None: not our zone to change), lines for a customer hosting the zone, kept lines. A delegated
    domain's keys are removed from the delegation zone; the customer may remove the slot CNAMEs."""
    if delegated(st.request):
        zone = ports.settings.dkim.delegation_zone
        ours = {k: rs for k, rs in managed.items() if k[0].endswith(f".{zone}")}
        theirs = {k: rs for k, rs in managed.items() if k not in ours}
        have = {k: rs for k in ours if (rs := ports.dns.read_rrset(*k)) is not None}
        dns, kept = deletion.plan_dns_removal(zone, have, ours, spf_value(ports.settings))
        return dns, tuple(customer_lines(theirs)), tuple(("dns", k) for k in kept)
    if not st.request.get("dns", {}).get("hosted", True):
        return None, tuple(customer_lines(managed)), ()
    try:
        have = ports.dns.read_zone(domain)
    except DnsRefused:
        return None, (), (("dns", f"= kept zone {domain}: no longer served by our DNS"),)
    dns, kept = deletion.plan_dns_removal(domain, have, managed, spf_value(ports.settings))
    return dns, (), tuple(("dns", k) for k in kept)


def plan_removal(event: Envelope, st: state.DomainState, ports: Ports) -> deletion.Removal:
    """Read every system and plan the removal; raises before anything is written."""
    domain, force = event.subject, bool(event.data.get("force", False))
    have = ports.mail.get_domain(domain)
    boxes = ports.mail.list_mailboxes(domain) if have and have.mailboxes_in_use and force else []
    mail, kept_mail = deletion.plan_mail_removal(domain, have, ports.mail.get_dkim(domain), st.keys, boxes, force=force)
    gw = ports.gateway
    gateway, kept_gw = deletion.plan_gateway_removal(domain, gw.list_relay_domains(), gw.list_transports())
    managed = deletion.managed_records(domain, ports.settings, st.keys, delegated=delegated(st.request))
    dns, instructions, kept_dns = _dns(domain, st, ports, managed)
    kept = (*(("mailcow", k) for k in kept_mail), *(("pmg", k) for k in kept_gw), *kept_dns)
    policy = ports.web.get(policy_key(domain)) is not None
    return deletion.Removal(mail, gateway, dns, policy, tuple(ports.state.list(f"keys/{domain}/")), kept, instructions)


def _active(domain: str, ports: Ports) -> bool:
    """Whether the Mailcow domain is active (and ours: raises OwnershipConflict otherwise)."""
    have = ports.mail.get_domain(domain)
    deletion.plan_mail_removal(domain, have, None, (), [], force=True)  # the ownership guard alone
    return have is not None and have.active


def _iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="seconds")


def plan(event: Envelope, ports: Ports) -> Steps | None:
    """What this delivery does (None: mailplane never provisioned the domain); raises before any write."""
    st, now = _load(event, ports), ports.clock()
    if st.etag is None:
        return None
    days = event.data.get("grace_days")
    grace = dt.timedelta(days=ports.settings.deletion.grace_days if days is None else int(days))
    if st.status in ("suspended", "deleted") and st.suspended_at:
        since, after = dt.datetime.fromisoformat(st.suspended_at), st
    else:
        since = now
        after = replace(st, status="suspended", suspended_at=_iso(now), delete_after=_iso(now + grace))
    if st.status != "deleted" and now < since + grace:
        return Steps(st, after, after is not st and _active(event.subject, ports), None)
    keys = tuple(replace(k, status="DESTROYED") for k in st.keys)
    return Steps(st, replace(after, status="deleted", keys=keys), False, plan_removal(event, st, ports))


def changes(steps: Steps | None, *, kept: bool = False) -> dict[str, list[str]]:
    """The change lines per system (with ``kept``: also what stays, as ``= kept ...`` lines)."""
    out: dict[str, list[str]] = {k: [] for k in SYSTEMS}
    if steps is None:
        return out
    if steps.suspend:
        out["mailcow"].append("~ domain active=0")
    if steps.removal is not None:
        for system, lines in steps.removal.changes().items():
            out[system] += lines
        for system, line in steps.removal.kept if kept else ():
            out[system].append(line)
    if steps.after.body() != steps.before.body():
        out["store"].append(f"~ state {steps.after.status}")
    return out


def dry_run(event: Envelope, ports: Ports) -> dict[str, list[str]]:
    """The changes ``handle`` would make on each system; nothing is written."""
    return changes(plan(event, ports), kept=True)


def apply_removal(domain: str, r: deletion.Removal, ports: Ports) -> None:
    """Mailcow first (the likeliest refusal), then PMG, the ONE DNS update, the policy and the sealed keys."""
    for username in r.mail.mailboxes:
        ports.mail.delete_mailbox(username)
    if r.mail.domain:
        ports.mail.delete_domain(domain)
    if r.mail.dkim:
        ports.mail.delete_dkim(domain)
    if r.gateway.transport:
        ports.gateway.delete_transport(r.gateway.transport)
    if r.gateway.relay_domain:
        ports.gateway.delete_relay_domain(r.gateway.relay_domain)
    if r.dns and r.dns.changes:
        ports.dns.apply(r.dns.zone, list(r.dns.changes))
    if r.policy:
        ports.web.delete(policy_key(domain))
    for blob in r.blobs:
        ports.state.delete(blob)


def handle(event: Envelope, ports: Ports) -> Outcome:
    """Suspend ``event.subject``, or remove it once due; see the module docstring.

    Raises:
        EventInvalid: the provider's zone, or a domain provisioned for another customer.
        OwnershipConflict: the Mailcow domain does not carry mailplane's marker.
        DomainNotEmptyError: the Mailcow domain has mailboxes and ``force`` is false.
        DnsConflict: the zone or the state changed while planning (retried: re-read and re-plan).
    """
    steps = plan(event, ports)  # raises, with nothing written, when the event must be refused
    if steps is None:
        return Outcome(NAME, event.id, event.subject, "absent", {k: () for k in SYSTEMS})
    if steps.suspend:
        ports.mail.edit_domain(event.subject, {"active": 0})
    if steps.removal is not None:
        apply_removal(event.subject, steps.removal, ports)
    state.save(ports.state, steps.after, steps.before)
    detail: dict[str, Any] = {"suspended_at": steps.after.suspended_at, "delete_after": steps.after.delete_after}
    if steps.removal is not None:
        detail["kept"] = [line for _, line in steps.removal.kept]
        detail["instructions"] = list(steps.removal.instructions)
    frozen = {k: tuple(v) for k, v in changes(steps).items()}
    return Outcome(NAME, event.id, event.subject, steps.after.status, frozen, (), detail)
