"""Adoption, the logic of domain.adopt: take over a domain an operator configured by hand, without breaking its mail.

Read every system (Mailcow, PMG, the zone or the public DNS, the MTA-STS store), class each object and record
(functions/_core/model/adoption_items.py), then refuse or apply. A refused adoption (a foreign record, Mailcow and
PMG contradicting each other, no DKIM key) changes nothing anywhere. Otherwise: the ownership markers are written
(Mailcow description, PMG comments, the ``_mailplane`` TXT in the same UPDATE as the data), missing objects and
records are added (ONE compare-and-set UPDATE), same and equivalent ones are left alone, different ones are replaced
only when named in ``fix``; then the state is recorded LAST, with Mailcow's key as the ACTIVE key under its existing
selector. mailplane never holds that private key: the next key.rotate moves the domain to a dated selector with the
usual canary and keeps the old TXT published until it is retired (functions/_core/model/rotation.py). A domain
with a state object is managed already: adopting it again writes nothing.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from functions._core.model import state
from functions._core.model.adoption_items import Item, classify, dns_item, fix_name
from functions._core.model.mailset import MARKER_NAME, customer_lines, desired_records, mta_sts_policy, policy_key
from functions._core.model.ports import (
    DkimKey,
    DnsChange,
    GatewayTransport,
    MailDomain,
    Ports,
    RelayDomain,
    TrustedNetwork,
)
from functions._core.model.records import Key, RecordSet
from functions._core.model.verify import server_mismatches, until_propagated
from functions._core.platform.errors import EventInvalid, NotPropagated, OwnershipConflict

MARK = "managed-by mailplane"  # what the adapters write into Mailcow descriptions and PMG comments
WEAK_BITS = 2048
ADOPT_HINT = "take it over with `mailplane adopt {domain}` (docs/adoption.md)"


@dataclass(frozen=True)
class Writes:
    """Everything adoption would write, planned before the first write."""

    mail_description: str | None = None  # the Mailcow description to mark (None: marked already)
    networks: tuple[TrustedNetwork, ...] = ()
    add_relay: RelayDomain | None = None
    mark_relay: RelayDomain | None = None
    add_transport: GatewayTransport | None = None
    mark_transport: GatewayTransport | None = None
    policy: bytes | None = None
    dns: tuple[DnsChange, ...] = ()

    def summary(self) -> dict[str, list[str]]:
        pmg = [f"+ trusted network {n.cidr}" for n in self.networks]
        pmg += [f"+ relay domain {self.add_relay.domain}"] if self.add_relay else []
        pmg += [f"~ relay domain {self.mark_relay.domain} marked"] if self.mark_relay else []
        pmg += [f"+ transport -> {self.add_transport.host}:25"] if self.add_transport else []
        pmg += [f"~ transport {self.mark_transport.domain} marked"] if self.mark_transport else []
        return {
            "mailcow": ["~ domain description marked"] if self.mail_description is not None else [],
            "pmg": pmg,
            "dns": [f"{'+' if c.before is None else '~'} {c.key[1]} {c.key[0]}" for c in self.dns],
            "store": ["+ mta-sts policy"] if self.policy is not None else [],
        }


@dataclass(frozen=True)
class Plan:
    domain: str
    managed: bool  # a state object exists: nothing to adopt
    hosted: bool = True
    selector: str = ""
    public_b64: str = ""
    key_bits: int = 0
    dkim_text: str | None = None  # the DKIM TXT as published when it differs from Mailcow's format
    mail: MailDomain | None = None
    items: tuple[Item, ...] = ()
    refusals: tuple[str, ...] = ()
    writes: Writes = field(default_factory=Writes)
    instructions: tuple[str, ...] = ()  # zone hosted elsewhere: what the customer must publish

    @property
    def weak_key(self) -> bool:
        return 0 < self.key_bits < WEAK_BITS

    def as_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "managed": self.managed,
            "hosted": self.hosted,
            "selector": self.selector,
            "key_bits": self.key_bits,
            "refusals": list(self.refusals),
            "items": [item.__dict__ for item in self.items],
            "changes": self.writes.summary(),
            "instructions": list(self.instructions),
        }


def key_bits(public_b64: str) -> int:
    """The RSA modulus size of a base64 SubjectPublicKeyInfo (0 when it is not an RSA key)."""
    try:
        key = load_der_public_key(base64.b64decode(public_b64))
    except ValueError:
        return 0
    return key.key_size if isinstance(key, rsa.RSAPublicKey) else 0


# ---------------------------------------------------------------- discovery and the guard of domain.created


def candidates(ports: Ports) -> list[str]:
    """Domains in Mailcow or PMG (relay domains) without a state object: what `mailplane adopt --all` looks at.
    A zone on our primary alone is not a candidate: DNS offers no way to list the zones a server serves, and a
    zone without a Mailcow domain carries no mail to take over."""
    names = {d.domain.lower() for d in ports.mail.list_domains()}
    names |= {d.domain.lower() for d in ports.gateway.list_relay_domains()}
    return sorted(n for n in names if ports.state.get(state.state_key(n)) is None)


def unmanaged_reason(domain: str, have: MailDomain | None, relay: RelayDomain | None) -> str | None:
    """Why ``domain`` exists unmanaged (``have``: its Mailcow domain, ``relay``: its PMG relay domain, as read; one
    without the ownership marker), or None. domain.created refuses such a domain with this reason instead of taking
    it over silently."""
    where = []
    if have is not None and MARK not in have.description:
        where.append("Mailcow")
    if relay is not None and MARK not in relay.comment:
        where.append("PMG")
    if not where:
        return None
    return f"{domain} exists unmanaged in {' and '.join(where)} (configured by hand); " + ADOPT_HINT.format(
        domain=domain
    )


def adopted_key_reason(domain: str, st: state.DomainState) -> str | None:
    """domain.created needs the sealed private key of the current key; an adopted key has none until rotated."""
    cur = st.current
    if cur is None or not cur.adopted:
        return None
    return (
        f"{domain} was adopted and Mailcow signs with the adopted key {cur.selector}, whose private key mailplane "
        "does not hold: rotate it first (`mailplane adopt --rotate` or key.rotate), then domain.created applies"
    )


# ---------------------------------------------------------------- planning


def plan(domain: str, ports: Ports, fix: tuple[str, ...] = ()) -> Plan:
    """Read every system and class what it holds; nothing is written.

    Raises:
        EventInvalid: ``fix`` names a record that is not different.
    """
    if ports.state.get(state.state_key(domain)) is not None:
        return Plan(domain, managed=True)
    mail = ports.mail.get_domain(domain)
    key = ports.mail.get_dkim(domain) if mail is not None else None
    mail_items, description = _mail_items(mail, key)
    gw_items, gw_writes, gw_refusals = _gateway(domain, ports)
    dns = _dns(domain, ports, key, fix)
    policy_item, policy = _policy(domain, ports, "mta-sts-policy" in dns.fixed)
    pub = key.public_key_b64 if key else ""
    return Plan(
        domain,
        False,
        dns.hosted,
        key.selector if key else "",
        pub,
        key_bits(pub) if pub else 0,
        dns.dkim_text,
        mail,
        (*mail_items, *gw_items, *dns.items, policy_item),
        (*_mail_refusals(domain, mail, key), *gw_refusals, *dns.refusals),
        replace(gw_writes, mail_description=description, policy=policy, dns=dns.changes),
        dns.lines,
    )


def _mail_refusals(domain: str, mail: MailDomain | None, key: DkimKey | None) -> list[str]:
    if mail is None:
        return [f"{domain} is not a Mailcow domain: nothing to adopt (new domains come with domain.created)"]
    out = [f"{domain} is inactive in Mailcow: activate it or leave it unmanaged"] if not mail.active else []
    if key is None:
        out.append(f"Mailcow holds no DKIM key for {domain}: generate one in Mailcow, then adopt")
    return out


@dataclass(frozen=True)
class _Dns:
    """The DNS part of a plan."""

    hosted: bool
    items: tuple[Item, ...] = ()
    refusals: tuple[str, ...] = ()
    changes: tuple[DnsChange, ...] = ()
    fixed: frozenset[str] = frozenset()
    lines: tuple[str, ...] = ()  # zone hosted elsewhere: what the customer publishes
    dkim_text: str | None = None  # an equivalent DKIM TXT, recorded as published


def _dns(domain: str, ports: Ports, key: DkimKey | None, fix: tuple[str, ...]) -> _Dns:
    """Class every managed record against the zone (ours) or the public DNS (hosted elsewhere).

    Raises:
        EventInvalid: ``fix`` names a record that is not different.
    """
    hosted = ports.dns.hosts_zone(domain)
    if key is None:
        return _Dns(hosted, fixed=frozenset(_chosen(fix, [], domain)))
    want = desired_records(domain, ports.settings, key.selector, key.public_key_b64)
    if not hosted:  # the ownership marker lives only in zones we serve
        want = {k: rs for k, rs in want.items() if not k[0].startswith(MARKER_NAME + ".")}
    have = _read_dns(domain, want, ports, hosted=hosted)
    items = [_dns_item(k, rs, have, domain, hosted) for k, rs in sorted(want.items())]
    fixed = _chosen(fix, items, domain)
    dkim = next(i for i in items if i.item == f"TXT {key.selector}._domainkey.{domain}")
    dkim_key = (f"{key.selector}._domainkey.{domain}", "TXT")
    published = have.get(dkim_key)
    return _Dns(
        hosted,
        tuple(items),
        tuple(f"{i.item} holds foreign data ({i.have})" for i in items if i.cls == "foreign"),
        _dns_changes(want, have, items, fixed, domain) if hosted else (),
        frozenset(fixed),
        () if hosted else _instructions(want, items, fixed),
        published.values[0]
        if dkim.cls == "equivalent" and published and published.values != want[dkim_key].values
        else None,
    )


def _mail_items(mail: MailDomain | None, key: DkimKey | None) -> tuple[list[Item], str | None]:
    if mail is None:
        return [Item("mailcow", "domain", "missing", "absent", "present", "refuse the adoption", "none")], None
    marked = MARK in mail.description
    summary = f"{mail.mailboxes} mailboxes, {mail.aliases} aliases, {mail.quota_mib} MiB"
    items = [
        Item(
            "mailcow",
            "domain",
            "same",
            summary,
            summary,
            "leave; quotas are recorded as they are" + ("" if marked else "; mark ours (description)"),
        )
    ]
    if key is None:
        items.append(Item("mailcow", "dkim key", "missing", "absent", "a key", "refuse the adoption", "none"))
    else:
        bits = key_bits(key.public_key_b64)
        weak = 0 < bits < WEAK_BITS
        items.append(
            Item(
                "mailcow",
                "dkim key",
                "same",
                f"{key.selector} ({bits} bits)",
                f"{key.selector} (active, adopted)",
                "adopt as the active key under its selector (no private key needed); the next rotation moves to a "
                "dated selector" + ("; adopt --rotate rotates now" if weak else ""),
                f"a {bits}-bit key is weak (2048 bits recommended): rotate soon" if weak else "none",
            )
        )
    return items, None if marked else (mail.description or MARK)


def _gateway(domain: str, ports: Ports) -> tuple[list[Item], Writes, list[str]]:
    """PMG's relay domain, transport and trusted networks: items, writes (networks, add/mark relay, add/mark
    transport) and refusals (a transport to another host contradicts Mailcow)."""
    gw, mc = ports.gateway, ports.settings.mailcow
    relay_item, add_relay, mark_relay = _relay(domain, gw.get_relay_domain(domain))
    transport_item, add_t, mark_t = _transport(domain, gw.get_transport(domain), mc.host)
    missing = _networks(ports)
    items = [relay_item, transport_item]
    for net in (TrustedNetwork(f"{mc.ipv4}/32", MARK), TrustedNetwork(f"{mc.ipv6}/128", MARK)):
        cls, action = ("missing", "add") if net in missing else ("same", "leave")
        items.append(
            Item("pmg", f"trusted network {net.cidr}", cls, "" if net in missing else net.cidr, net.cidr, action)
        )
    refusals = []
    if transport_item.cls == "foreign":
        refusals.append(
            f"PMG transport of {domain} goes to {transport_item.have}, not to Mailcow {mc.host}:25 (contradiction)"
        )
    return items, Writes(None, tuple(missing), add_relay, mark_relay, add_t, mark_t), refusals


def _relay(domain: str, relay: RelayDomain | None) -> tuple[Item, RelayDomain | None, RelayDomain | None]:
    """The relay domain's item (PMG's entry under the key ``domain``), and the entry to add or to mark (its
    comment gets the marker)."""
    if relay is None:
        item = Item("pmg", "relay domain", "missing", "absent", domain, "add", "PMG refuses mail for it today")
        return item, RelayDomain(domain, f"{MARK} adopted"), None
    mark = None if MARK in relay.comment else RelayDomain(relay.domain, relay.comment)
    return Item("pmg", "relay domain", "same", domain, domain, "leave" + ("; mark" if mark else "")), None, mark


def _transport(
    domain: str, found: GatewayTransport | None, host: str
) -> tuple[Item, GatewayTransport | None, GatewayTransport | None]:
    """The transport's item (foreign when it leads elsewhere than Mailcow), and the entry to add or to mark."""
    want = f"{host}:25"
    if found is None:
        item = Item("pmg", "transport", "missing", "absent", want, "add", "mail stays at PMG until then")
        return item, GatewayTransport(domain, host, 25, "smtp", False, f"{MARK} adopted"), None
    if (found.host.lower(), found.port, found.protocol) != (host.lower(), 25, "smtp"):
        shown = f"{found.protocol}:{found.host}:{found.port}"
        return (
            Item("pmg", "transport", "foreign", shown, want, "refuse the adoption", "mail goes elsewhere"),
            None,
            None,
        )
    mark = None if MARK in found.comment else found
    return Item("pmg", "transport", "same", want, want, "leave" + ("; mark" if mark else "")), None, mark


def _networks(ports: Ports) -> list[TrustedNetwork]:
    mc = ports.settings.mailcow
    want = (TrustedNetwork(f"{mc.ipv4}/32", MARK), TrustedNetwork(f"{mc.ipv6}/128", MARK))
    have = [n for n in (ports.gateway.get_network(w.cidr) for w in want) if n is not None]  # per CIDR
    got = {ipaddress.ip_network(n.cidr, strict=False) for n in have}
    return [n for n in want if ipaddress.ip_network(n.cidr, strict=False) not in got]


def _read_dns(domain: str, want: Mapping[Key, RecordSet], ports: Ports, *, hosted: bool) -> dict[Key, RecordSet]:
    """The zone in one AXFR (ours), or each managed name from the public DNS (hosted elsewhere; CNAMEs included)."""
    if hosted:
        return ports.dns.read_zone(domain)
    have: dict[Key, RecordSet] = {}
    for name, rtype in want:
        for t in {rtype, "CNAME"} if name != domain else {rtype}:
            rs = ports.dns.resolve(name, t)
            if rs is not None and rs.name == name:
                have[(name, t)] = rs
    return have


def _dns_item(key: Key, want: RecordSet, have: Mapping[Key, RecordSet], domain: str, hosted: bool) -> Item:
    cls, cur = classify(key, want, have, domain)
    return dns_item(key, want, cls, cur, domain, hosted=hosted)


def _chosen(fix: tuple[str, ...], items: list[Item], domain: str) -> set[str]:
    """The --fix names, normalised (``NAME`` or ``NAME/TYPE``, relative to the domain or absolute).

    Raises:
        EventInvalid: a name that matches no different record.
    """
    fixable = {i.fix for i in items if i.fix} | {"mta-sts-policy"}
    chosen: set[str] = set()
    for raw in fix:
        name, _, rtype = raw.strip().rstrip(".").lower().partition("/")
        name = domain if name in ("@", domain) else name if name.endswith("." + domain) else f"{name}.{domain}"
        hits = {f for f in fixable if f == f"{name}/{rtype.upper()}" or (not rtype and f.split("/")[0] == name)}
        if raw.strip().lower() == "mta-sts-policy":
            hits = {"mta-sts-policy"}
        if not hits:
            raise EventInvalid(f"--fix {raw[:80]!r} names no record of {domain} that is different")
        chosen |= hits
    return chosen


def _dns_changes(
    want: Mapping[Key, RecordSet], have: Mapping[Key, RecordSet], items: list[Item], fixed: set[str], domain: str
) -> tuple[DnsChange, ...]:
    """Missing records, and different ones named by --fix; the apex TXT keeps the customer's other strings."""
    out = []
    for (key, rs), item in zip(sorted(want.items()), items, strict=True):
        if item.cls != "missing" and not (item.cls == "different" and fix_name(key) in fixed):
            continue
        cur = have.get(key)
        after = rs
        if key == (domain, "TXT") and cur is not None:
            keep = [v for v in cur.values if not v.startswith("v=spf1")]
            after = RecordSet.of(rs.name, "TXT", cur.ttl, keep + list(rs.values))
        out.append(DnsChange(before=cur, after=after))
    return tuple(out)


def _policy(domain: str, ports: Ports, fix: bool) -> tuple[Item, bytes | None]:
    body = mta_sts_policy(ports.settings).encode()
    have = ports.web.get(policy_key(domain))
    if have is None:
        return Item("store", "mta-sts policy", "missing", "absent", "current", "add"), body
    if have.body == body:
        return Item("store", "mta-sts policy", "same", "current", "current", "leave as is"), None
    action = "replace (--fix mta-sts-policy)" if fix else "leave as is; replaced only with --fix mta-sts-policy"
    risk = "senders that cached the old policy keep it until max_age"
    return Item("store", "mta-sts policy", "different", "other content", "current", action, risk), body if fix else None


def _instructions(want: Mapping[Key, RecordSet], items: list[Item], fixed: set[str]) -> tuple[str, ...]:
    wanted = {
        key: rs
        for (key, rs), item in zip(sorted(want.items()), items, strict=True)
        if item.cls == "missing" or (item.cls == "different" and fix_name(key) in fixed)
    }
    return tuple(f"publish: {line}" for line in customer_lines(wanted))


# ---------------------------------------------------------------- applying


@dataclass(frozen=True)
class Adopted:
    status: str  # adopted | managed (nothing to do)
    plan: Plan
    changes: dict[str, list[str]]
    servers: tuple[str, ...] = ()


def adopt(domain: str, ports: Ports, *, customer_id: str, event_id: str, fix: tuple[str, ...] = ()) -> Adopted:
    """Adopt ``domain``; see the module docstring.

    Raises:
        OwnershipConflict: a foreign record or contradicting objects (nothing written).
        EventInvalid: ``fix`` names a record that is not different; the domain is not in Mailcow or has no key.
        NotPropagated: an authoritative server does not serve the UPDATE yet (retried; the state is not written).
    """
    found = plan(domain, ports, fix)
    if found.managed:
        return Adopted("managed", found, {})
    if found.refusals:
        refuse = (
            OwnershipConflict if any("foreign" in r or "contradiction" in r for r in found.refusals) else EventInvalid
        )
        raise refuse(f"{domain} cannot be adopted: " + "; ".join(found.refusals))
    serial = _apply(found, ports)
    servers = _gate(found, ports, serial)
    _record(found, ports, customer_id, event_id)
    changes = found.writes.summary()
    changes["store"].append("+ state adopted")
    return Adopted("adopted", found, changes, tuple(servers))


def _apply(p: Plan, ports: Ports) -> int | None:
    w, gw = p.writes, ports.gateway
    if w.mail_description is not None:
        ports.mail.edit_domain(p.domain, {"description": w.mail_description})  # the adapter adds the marker
    for net in w.networks:
        gw.add_network(net)
    if w.add_relay:
        gw.add_relay_domain(w.add_relay)
    if w.mark_relay:
        gw.update_relay_domain(w.mark_relay)
    if w.add_transport:
        gw.add_transport(w.add_transport)
    if w.mark_transport:
        gw.update_transport(w.mark_transport)
    if w.policy is not None:
        ports.web.put(policy_key(p.domain), w.policy, content_type="text/plain")
    return ports.dns.apply(p.domain, list(w.dns)) if w.dns else None


def _gate(p: Plan, ports: Ports, serial: int | None) -> list[str]:
    """Every authoritative server serves what the UPDATE wrote (none to check without one)."""
    if serial is None:
        return []
    expected = {c.key: c.after for c in p.writes.dns if c.after is not None}
    servers = ports.dns.servers(p.domain)

    def check() -> list[str]:  # every server asked again in place for up to dns.propagation_wait (secondaries lag)
        problems = [m for s in servers for m in server_mismatches(ports.dns, p.domain, s, expected, serial)]
        if problems:
            raise NotPropagated("; ".join(problems[:6]))
        return servers

    return until_propagated(ports.settings.dns.propagation_wait, check)


def _record(p: Plan, ports: Ports, customer_id: str, event_id: str) -> None:
    """The state, written last: Mailcow's key ACTIVE under its selector, adopted (no sealed private key)."""
    assert p.mail is not None
    at = ports.clock().isoformat(timespec="seconds")
    m = p.mail
    request = {
        "domain": p.domain,
        "customer_id": customer_id,
        "plan": {
            "name": "adopted",
            "mailboxes": m.mailboxes,
            "aliases": m.aliases,
            "quota_mib": m.quota_mib,
            "mailbox_quota_mib": m.maxquota_mib,
            "default_mailbox_quota_mib": m.defquota_mib,
        },
        "dns": {"hosted": p.hosted},
        "adopted": {"at": at, "event": event_id, "selector": p.selector, "key_bits": p.key_bits},
    }
    key = state.KeyRecord(p.selector, p.public_b64, "ACTIVE", at, changed_at=at, adopted=True, txt=p.dkim_text)
    before = state.DomainState(p.domain)
    state.save(ports.state, state.DomainState(p.domain, request, (key,), "provisioned"), before)
