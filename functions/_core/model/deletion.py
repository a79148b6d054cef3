"""Deletion, the logic of domain.deleted: suspend, then remove what mailplane made once the grace period is over.

The planners (frozen plans computed from what the systems hold now) come first, then the steps that read the
systems (``plan``), and the writes (``run``). The handler (functions/domain_deleted.py) reports the result.

Only what mailplane made goes: entries carrying the managed-by marker, RRsets that hold exactly mailplane's data
(TTL ignored), our SPF string out of the apex TXT RRset, Mailcow's DKIM key when it is one of ours. Anything else
at those places is kept and reported. Trusted networks are platform-wide and never part of a removal.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from functions._core.model import acceptance, mtasts, state
from functions._core.model.keys import REVOKED_TXT
from functions._core.model.mailset import customer_lines, delegated, desired_records, dkim_record, policy_key, spf_value
from functions._core.model.ports import DkimKey, DnsChange, GatewayTransport, MailDomain, Ports, RelayDomain
from functions._core.model.records import Key, RecordSet
from functions._core.model.state import KeyRecord
from functions._core.platform.config import Settings
from functions._core.platform.envelope import Envelope
from functions._core.platform.errors import DnsRefused, EventInvalid, OwnershipConflict, PermanentError
from functions._core.platform.names import is_within

MANAGED_MARK = "managed-by mailplane"  # what the adapters write into Mailcow descriptions and PMG comments


class DomainNotEmptyError(PermanentError):
    """The Mailcow domain still has mailboxes and the event does not force their deletion."""


@dataclass(frozen=True)
class MailRemoval:
    domain: str | None = None  # the Mailcow domain to delete
    mailboxes: tuple[str, ...] = ()  # deleted first (force only)
    dkim: bool = False  # Mailcow's key is one of ours: delete it too (delete/domain leaves it behind)

    def summary(self) -> list[str]:
        out = [f"- mailbox {m}" for m in self.mailboxes]
        out += [f"- domain {self.domain}"] if self.domain else []
        return out + (["- dkim key"] if self.dkim else [])


@dataclass(frozen=True)
class GatewayRemoval:
    relay_domain: str | None = None  # PMG keys, exactly as listed
    transport: str | None = None

    def summary(self) -> list[str]:
        out = [f"- transport {self.transport}"] if self.transport else []
        return out + ([f"- relay domain {self.relay_domain}"] if self.relay_domain else [])


@dataclass(frozen=True)
class DnsRemoval:
    zone: str
    changes: tuple[DnsChange, ...] = ()  # ONE compare-and-set UPDATE

    def summary(self) -> list[str]:
        out = []
        for c in self.changes:
            rtype, name = c.key[1], c.key[0]
            if c.after is None:
                out.append(f"- {rtype} {name}")
            else:
                gone = sorted(set(c.before.values if c.before else ()) - set(c.after.values))
                out.append(f"~ {rtype} {name} (removes {', '.join(repr(v) for v in gone)})")
        return out


@dataclass(frozen=True)
class Removal:
    mail: MailRemoval
    gateway: GatewayRemoval
    dns: DnsRemoval | None  # None: the zone is not ours to change
    policy: bool  # the MTA-STS policy object exists
    blobs: tuple[str, ...]  # sealed private keys in the state store
    kept: tuple[tuple[str, str], ...]  # (system, line): left in place, with the reason
    instructions: tuple[str, ...]  # zone hosted elsewhere: lines the customer may remove
    cert: str | None = None  # the mta-sts.<domain> certificate (stored sealed and/or on the web host)

    def changes(self) -> dict[str, list[str]]:
        store = ["- mta-sts policy"] if self.policy else []
        store += [f"- certificate {self.cert}"] if self.cert else []
        store += [f"- sealed key {b.rsplit('/', 1)[-1].removesuffix('.bin')}" for b in self.blobs]
        dns = self.dns.summary() if self.dns else []
        return {"mailcow": self.mail.summary(), "pmg": self.gateway.summary(), "dns": dns, "store": store}


def managed_records(
    domain: str, settings: Settings, keys: Iterable[KeyRecord], *, delegated: bool = False, mode: str | None = None
) -> dict[Key, RecordSet]:
    """Every RRset mailplane may have published for ``domain``: the record set plus the DKIM TXT of every key (a
    delegated domain: the slot CNAMEs in the customer's zone, the TXTs in the delegation zone)."""
    base = desired_records(domain, settings, "-", "", delegated=delegated, mode=mode)
    out = {k: rs for k, rs in base.items() if not (k[0].endswith(f"._domainkey.{domain}") and k[1] == "TXT")}
    for key in keys:
        rs = dkim_record(domain, settings, key.selector, key.text, delegated=delegated)
        out[rs.key] = rs
    return out


def plan_mail_removal(
    domain: str,
    have: MailDomain | None,
    have_key: DkimKey | None,
    ours: Iterable[KeyRecord],
    mailboxes: list[str],
    *,
    force: bool,
) -> tuple[MailRemoval, list[str]]:
    """The Mailcow domain (ours only), its mailboxes when forced, and its DKIM key when it is one of ours.

    Raises:
        OwnershipConflict: the Mailcow domain does not carry mailplane's marker.
        DomainNotEmptyError: mailboxes exist and ``force`` is false.
    """
    kept: list[str] = []
    if have is not None and MANAGED_MARK not in have.description:
        raise OwnershipConflict(f"Mailcow domain {domain} is not managed by mailplane (no marker in its description)")
    if have is not None and have.mailboxes_in_use and not force:
        raise DomainNotEmptyError(
            f"Mailcow domain {domain} still has {have.mailboxes_in_use} mailbox(es); send force=true to delete them"
        )
    dkim = have_key is not None and any(
        (k.selector, k.public_b64) == (have_key.selector, have_key.public_key_b64) for k in ours
    )
    if have_key is not None and not dkim:
        kept.append(f"= kept dkim key {have_key.selector} (not a key mailplane stored)")
    boxes = tuple(mailboxes) if have is not None and force else ()
    return MailRemoval(domain if have is not None else None, boxes, dkim), kept


def plan_gateway_removal(
    domain: str, relay: RelayDomain | None, transport: GatewayTransport | None
) -> tuple[GatewayRemoval, list[str]]:
    """The relay domain and the transport of ``domain`` (as PMG holds them under that key, per-item reads), each
    only if it carries the managed-by comment."""
    kept: list[str] = []
    if relay is not None and MANAGED_MARK not in relay.comment:
        kept.append(f"= kept relay domain {relay.domain} (not managed by mailplane)")
        relay = None
    if transport is not None and MANAGED_MARK not in transport.comment:
        kept.append(f"= kept transport {transport.domain} (not managed by mailplane)")
        transport = None
    return GatewayRemoval(relay.domain if relay else None, transport.domain if transport else None), kept


def plan_dns_removal(
    zone: str, have: Mapping[Key, RecordSet], managed: Mapping[Key, RecordSet], spf: str
) -> tuple[DnsRemoval, list[str]]:
    """Delete each managed RRset that holds exactly mailplane's data (a DKIM TXT of ours also when revoked); take
    only ``spf`` out of the apex TXT."""
    changes: list[DnsChange] = []
    kept: list[str] = []
    for key, want in sorted(managed.items()):
        cur = have.get(key)
        if cur is None:
            continue
        if key == (zone, "TXT"):
            rest = [v for v in cur.values if v != spf]
            if len(rest) < len(cur.values):
                after = RecordSet.of(cur.name, "TXT", cur.ttl, rest) if rest else None
                changes.append(DnsChange(before=cur, after=after))
        elif cur.values == want.values or (want.values[0].startswith("v=DKIM1") and cur.values == (REVOKED_TXT,)):
            changes.append(DnsChange(before=cur, after=None))
        else:
            kept.append(f"= kept {key[1]} {key[0]} (holds data mailplane did not publish)")
    return DnsRemoval(zone, tuple(changes)), kept


SYSTEMS = ("mailcow", "pmg", "dns", "store")


@dataclass(frozen=True)
class Steps:
    before: state.DomainState
    after: state.DomainState  # the state to store (unchanged: no write)
    suspend: bool  # deactivate the Mailcow domain
    removal: Removal | None  # None: removal is not due yet


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
) -> tuple[DnsRemoval | None, tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The DNS removal (None: not our zone to change), lines for a customer hosting the zone, kept lines. A delegated
    domain's keys are removed from the delegation zone; the customer may remove the slot CNAMEs."""
    if delegated(st.request):
        zone = ports.settings.dkim.delegation_zone
        ours = {k: rs for k, rs in managed.items() if k[0].endswith(f".{zone}")}
        theirs = {k: rs for k, rs in managed.items() if k not in ours}
        have = {k: rs for k in ours if (rs := ports.dns.read_rrset(*k)) is not None}
        dns, kept = plan_dns_removal(zone, have, ours, spf_value(ports.settings))
        return dns, tuple(customer_lines(theirs)), tuple(("dns", k) for k in kept)
    if not st.request.get("dns", {}).get("hosted", True):
        return None, tuple(customer_lines(managed)), ()
    try:
        have = ports.dns.read_zone(domain)
    except DnsRefused:
        return None, (), (("dns", f"= kept zone {domain}: no longer served by our DNS"),)
    dns, kept = plan_dns_removal(domain, have, managed, spf_value(ports.settings))
    return dns, (), tuple(("dns", k) for k in kept)


def plan_removal(event: Envelope, st: state.DomainState, ports: Ports) -> Removal:
    """Read every system and plan the removal; raises before anything is written."""
    domain, force = event.subject, bool(event.data.get("force", False))
    have = ports.mail.get_domain(domain)
    boxes = ports.mail.list_mailboxes(domain) if have and have.mailboxes_in_use and force else []
    mail, kept_mail = plan_mail_removal(domain, have, ports.mail.get_dkim(domain), st.keys, boxes, force=force)
    gw = ports.gateway
    gateway, kept_gw = plan_gateway_removal(domain, gw.get_relay_domain(domain), gw.get_transport(domain))
    mode = st.mta_sts_mode(ports.settings)
    managed = managed_records(domain, ports.settings, st.keys, delegated=delegated(st.request), mode=mode)
    dns, instructions, kept_dns = _dns(domain, st, ports, managed)
    kept = (*(("mailcow", k) for k in kept_mail), *(("pmg", k) for k in kept_gw), *kept_dns)
    policy = ports.web.get(policy_key(domain)) is not None
    blobs = tuple(ports.state.list(f"keys/{domain}/"))
    cert = mtasts.cert_name(domain) if mtasts.has_cert(ports, domain) else None
    return Removal(mail, gateway, dns, policy, blobs, kept, instructions, cert)


def _active(domain: str, ports: Ports) -> bool:
    """Whether the Mailcow domain is active (and ours: raises OwnershipConflict otherwise)."""
    have = ports.mail.get_domain(domain)
    plan_mail_removal(domain, have, None, (), [], force=True)  # the ownership guard alone
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


def apply_removal(domain: str, r: Removal, ports: Ports) -> None:
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
    if r.gateway.transport or r.gateway.relay_domain:
        ports.gateway.settle()  # PMG's 1-s postmap rule: the removals must reach the master's postfix maps too
        # daemons that opened the maps before keep relaying the domain until they restart: reload every node (the
        # other nodes' maps change only at their next sync, which this does not wait for: removal has no gate)
        acceptance.reload_postfix(ports, [h.name for h in ports.settings.provider.mx_hosts])
    if r.policy:
        ports.web.delete(policy_key(domain))
    if r.cert:  # after the policy: senders then fail closed (no policy), never on a policy without a certificate
        mtasts.remove_cert(ports, domain)
    for blob in r.blobs:
        ports.state.delete(blob)


def run(event: Envelope, ports: Ports) -> Steps | None:
    """Suspend ``event.subject``, or remove it once due (None: mailplane never provisioned it).

    Raises:
        EventInvalid: the provider's zone, or a domain provisioned for another customer.
        OwnershipConflict: the Mailcow domain does not carry mailplane's marker.
        DomainNotEmptyError: the Mailcow domain has mailboxes and ``force`` is false.
        DnsConflict: the zone or the state changed while planning (retried: re-read and re-plan).
    """
    steps = plan(event, ports)  # raises, with nothing written, when the event must be refused
    if steps is None:
        return None
    if steps.suspend:
        ports.mail.edit_domain(event.subject, {"active": 0})
    if steps.removal is not None:
        apply_removal(event.subject, steps.removal, ports)
    state.save(ports.state, steps.after, steps.before)
    return steps
