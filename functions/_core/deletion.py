"""What domain.deleted removes on each system: frozen plans computed from what the systems hold now; no I/O.

Only what mailplane made goes: entries carrying the managed-by marker, RRsets that hold exactly mailplane's data
(TTL ignored), our SPF string out of the apex TXT RRset, Mailcow's DKIM key when it is one of ours. Anything else
at those places is kept and reported. Trusted networks are platform-wide and never part of a removal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from functions._core.config import Settings
from functions._core.errors import OwnershipConflict, PermanentError
from functions._core.keys import REVOKED_TXT, dkim_txt
from functions._core.mailset import desired_records, dkim_record
from functions._core.ports import DkimKey, DnsChange, GatewayTransport, MailDomain, RelayDomain
from functions._core.records import Key, RecordSet
from functions._core.state import KeyRecord

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

    def changes(self) -> dict[str, list[str]]:
        store = ["- mta-sts policy"] if self.policy else []
        store += [f"- sealed key {b.rsplit('/', 1)[-1].removesuffix('.bin')}" for b in self.blobs]
        dns = self.dns.summary() if self.dns else []
        return {"mailcow": self.mail.summary(), "pmg": self.gateway.summary(), "dns": dns, "store": store}


def managed_records(
    domain: str, settings: Settings, keys: Iterable[KeyRecord], *, delegated: bool = False
) -> dict[Key, RecordSet]:
    """Every RRset mailplane may have published for ``domain``: the record set plus the DKIM TXT of every key (a
    delegated domain: the slot CNAMEs in the customer's zone, the TXTs in the delegation zone)."""
    base = desired_records(domain, settings, "-", "", delegated=delegated)
    out = {k: rs for k, rs in base.items() if not (k[0].endswith(f"._domainkey.{domain}") and k[1] == "TXT")}
    for key in keys:
        rs = dkim_record(domain, settings, key.selector, dkim_txt(key.public_b64), delegated=delegated)
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
    domain: str, relay_domains: list[RelayDomain], transports: list[GatewayTransport]
) -> tuple[GatewayRemoval, list[str]]:
    """The relay domain and the transport of ``domain``, each only if it carries the managed-by comment."""
    kept: list[str] = []
    relay = next((d for d in relay_domains if d.domain.lower() == domain), None)
    transport = next((t for t in transports if t.domain.lower() == domain), None)
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
