"""Per-system plans: frozen values computed from (have, want); pure functions, no I/O. Empty plan = success."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from functions._core.model.mailset import MARKER_NAME, MARKER_VALUE, SPF_PREFIX
from functions._core.model.ports import DkimKey, DnsChange, GatewayTransport, MailDomain, RelayDomain, TrustedNetwork
from functions._core.model.records import Key, RecordSet
from functions._core.platform.errors import EventInvalid, OwnershipConflict

# ---------------------------------------------------------------- Mailcow

_EDITABLE = {
    "description": "description",
    "mailboxes": "mailboxes",
    "aliases": "aliases",
    "quota_mib": "quota",
    "maxquota_mib": "maxquota",
    "defquota_mib": "defquota",
}
# Mailcow's edit/domain reads these with !empty(): 0 means "unchanged", so an edit cannot lower them to 0
# (add/domain stores 0 as given). reference/mailcow.md §4; the simulator's model does the same.
_NO_EDIT_TO_ZERO = ("aliases", "quota", "maxquota")


@dataclass(frozen=True)
class MailPlan:
    add: MailDomain | None = None
    edit: Mapping[str, int | str] = field(default_factory=dict)
    dkim_import: DkimKey | None = None  # applied only after the DNS gate

    def summary(self) -> list[str]:
        out = [f"+ domain {self.add.domain}"] if self.add else []
        out += [f"~ domain {k}={v}" for k, v in sorted(self.edit.items())]
        out += [f"+ dkim {self.dkim_import.selector}"] if self.dkim_import else []
        return out


def plan_mail(want: MailDomain, have: MailDomain | None, want_key: DkimKey, have_key: DkimKey | None) -> MailPlan:
    """Add the domain or edit the fields that differ; import the DKIM key unless Mailcow already signs with it.

    Raises:
        EventInvalid: the edit would set a field to 0 that Mailcow's edit/domain cannot set to 0 (it ignores it):
            refused before anything is written, instead of a Mailcow call that silently changes nothing.
    """
    key = None if have_key == want_key else want_key
    if have is None:
        return MailPlan(add=want, dkim_import=key)
    edit: dict[str, int | str] = {
        api: getattr(want, attr) for attr, api in _EDITABLE.items() if getattr(want, attr) != getattr(have, attr)
    }
    zeroed = [api for api in _NO_EDIT_TO_ZERO if edit.get(api) == 0]
    if zeroed:
        raise EventInvalid(
            f"{want.domain}: Mailcow cannot lower {', '.join(f'{f}={getattr(have, _attr(f))}' for f in zeroed)} to 0"
            " on an existing domain (edit/domain ignores 0 for it); nothing was changed"
        )
    if want.active != have.active:
        edit["active"] = int(want.active)
    return MailPlan(edit=edit, dkim_import=key)


def _attr(api: str) -> str:
    return next(attr for attr, name in _EDITABLE.items() if name == api)


# ---------------------------------------------------------------- PMG


@dataclass(frozen=True)
class GatewayPlan:
    add_domain: RelayDomain | None = None
    add_transport: GatewayTransport | None = None
    update_transport: GatewayTransport | None = None
    add_networks: tuple[TrustedNetwork, ...] = ()

    def summary(self) -> list[str]:
        out = [f"+ relay domain {self.add_domain.domain}"] if self.add_domain else []
        if self.add_transport:
            out.append(f"+ transport {self.add_transport.domain} -> {self.add_transport.host}:25")
        if self.update_transport:
            out.append(f"~ transport {self.update_transport.domain} -> {self.update_transport.host}")
        return out + [f"+ trusted network {n.cidr}" for n in self.add_networks]


def _same_transport(a: GatewayTransport, b: GatewayTransport) -> bool:
    return (a.host.lower(), a.port, a.protocol, a.use_mx) == (b.host.lower(), b.port, b.protocol, b.use_mx)


def plan_gateway(
    domain: RelayDomain,
    transport: GatewayTransport,
    networks: tuple[TrustedNetwork, ...],
    have_domain: RelayDomain | None,
    have_t: GatewayTransport | None,
    have_networks: list[TrustedNetwork],
) -> GatewayPlan:
    """Relay domain, transport and trusted networks from what PMG holds under their keys (per-item reads);
    comments on existing entries are left alone."""
    have_n = {ipaddress.ip_network(n.cidr, strict=False) for n in have_networks}
    return GatewayPlan(
        add_domain=None if have_domain is not None else domain,
        add_transport=transport if have_t is None else None,
        update_transport=transport if have_t is not None and not _same_transport(have_t, transport) else None,
        add_networks=tuple(n for n in networks if ipaddress.ip_network(n.cidr, strict=False) not in have_n),
    )


# ---------------------------------------------------------------- DNS


@dataclass(frozen=True)
class DnsPlan:
    zone: str
    changes: tuple[DnsChange, ...] = ()
    expected: Mapping[Key, RecordSet] = field(default_factory=dict)  # what the zone serves after applying

    def summary(self) -> list[str]:
        return [f"{'+' if c.before is None else '~'} {c.key[1]} {c.key[0]}" for c in self.changes]


def plan_dns(zone: str, have: Mapping[Key, RecordSet], want: Mapping[Key, RecordSet]) -> DnsPlan:
    """Create or fix the managed RRsets; never touch anything else.

    The apex TXT RRset is merged (the customer's non-SPF strings stay). A managed name holding foreign data — a
    CNAME where we need data, data where we need a CNAME, or other values in a managed RRset of a zone that does
    not carry our ownership marker — fails the whole plan.

    Raises:
        OwnershipConflict: listing every conflicting name.
    """
    marker = have.get((f"{MARKER_NAME}.{zone}", "TXT"))
    owned = marker is not None and MARKER_VALUE in marker.values
    conflicts: list[str] = []
    changes: list[DnsChange] = []
    expected: dict[Key, RecordSet] = {}
    for key, rs in sorted(want.items()):
        cur = have.get(key)
        conflicts += _shape_conflicts(key, have)
        if key == (zone, "TXT"):
            rs, foreign_spf = _merge_apex_txt(cur, rs)
            if foreign_spf and not owned:
                conflicts.append(f"{zone} TXT already holds another SPF record")
        expected[key] = rs
        if cur == rs:
            continue
        if cur is None or owned or cur.values == rs.values or key == (zone, "TXT"):
            changes.append(DnsChange(before=cur, after=rs))
        else:
            conflicts.append(f"{key[0]} {key[1]} holds data mailplane does not own")
    if conflicts:
        raise OwnershipConflict("; ".join(sorted(set(conflicts))))
    return DnsPlan(zone, tuple(changes), expected)


def _shape_conflicts(key: Key, have: Mapping[Key, RecordSet]) -> list[str]:
    name, rtype = key
    others = sorted(t for (n, t) in have if n == name and t != rtype and t not in ("RRSIG", "NSEC", "NSEC3"))
    if rtype == "CNAME" and others:
        return [f"{name} holds {'/'.join(others)} records; a CNAME cannot be added there"]
    if rtype != "CNAME" and (name, "CNAME") in have:
        return [f"{name} is a CNAME; {rtype} records cannot be added there"]
    return []


def _merge_apex_txt(cur: RecordSet | None, want: RecordSet) -> tuple[RecordSet, bool]:
    if cur is None:
        return want, False
    keep = [v for v in cur.values if not v.startswith(SPF_PREFIX)]
    foreign_spf = any(v.startswith(SPF_PREFIX) and v not in want.values for v in cur.values)
    return RecordSet.of(want.name, "TXT", want.ttl, keep + list(want.values)), foreign_spf
