"""Gateway node failover (node.down / node.up): node state, quorum guard, DNS and smarthost plans, verification.

A node leaves rotation by ONE compare-and-set UPDATE of the provider's zone (reference/dns.md §7): its host name's
A/AAAA RRsets are deleted, and its addresses are taken out of any round-robin names (``nodes.rotation_names``).
The same UPDATE carries, as prerequisites, the A/AAAA RRsets of every other node counted as serving, so two
concurrent node.down events cannot both pass the quorum guard: the second one's UPDATE fails (NXRRSET), is retried,
re-plans, and is refused. Customer zones, MTA-STS policies and TLSA records are never touched (docs/nodes.md).

The node's state object ``nodes/<host>.json`` (in ``ports.state``) holds the last sequence seen, the in-rotation
flag, the time and event of the last transition, and the stored inverse: exactly what node.down removed. It is
written BEFORE the change it describes (write-ahead), so a crash between the two never loses the inverse.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from functions._core.model.ports import DnsChange, MailPort, Ports
from functions._core.model.records import Key, RecordSet
from functions._core.model.verify import serial_before, until_propagated
from functions._core.platform.config import MxHost, Settings
from functions._core.platform.errors import (
    ConfigError,
    EventInvalid,
    NotPropagated,
    PermanentError,
    PmgRejected,
    PmgUnavailable,
    PreconditionFailed,
    TransientError,
)
from functions._core.platform.store import ObjectStore, put_over

log = logging.getLogger("mailplane.nodes")

ADDRESS_TYPES = ("A", "AAAA")
SMARTHOST_MODES = ("relayhost", "transport", "none")


class QuorumRefused(PermanentError):
    """Taking the node out would leave fewer serving gateways than ``provider.min_mx_in_rotation``."""


class HoldDown(TransientError):
    """The node's last transition is too recent (flap damping): the broker retries the event later."""


class NodeStateConflict(TransientError):
    """Another worker changed the node's state object since it was read: re-read and re-plan."""


# ---------------------------------------------------------------- state


@dataclass(frozen=True)
class Removed:
    """One inverse entry: ``values`` taken out of RRset (name, rtype). ``whole``: the node's own RRset (deleted)."""

    name: str
    rtype: str
    ttl: int
    values: tuple[str, ...]
    whole: bool

    @property
    def key(self) -> Key:
        return (self.name, self.rtype)


@dataclass(frozen=True)
class Smarthost:
    """A Mailcow relayhost or transport that routes outgoing mail through one node."""

    kind: str  # "relayhost" | "transport"
    id: int
    target: str  # relayhost hostname / transport nexthop
    active: bool = True


@dataclass(frozen=True)
class NodeState:
    node: str  # the configured host name
    sequence: int = -1
    in_rotation: bool = True
    dns: tuple[Removed, ...] = ()  # the stored inverse (DNS)
    mailcow: tuple[Smarthost, ...] = ()  # the stored inverse (smarthosts we deactivated)
    changed_at: str = ""  # ISO time of the last transition
    event_id: str = ""  # the event that made the last transition
    changes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # summary of the last transition
    etag: str | None = None

    def body(self) -> bytes:
        data = {
            "node": self.node,
            "sequence": self.sequence,
            "in_rotation": self.in_rotation,
            "dns": [r.__dict__ for r in self.dns],
            "mailcow": [s.__dict__ for s in self.mailcow],
            "changed_at": self.changed_at,
            "event_id": self.event_id,
            "changes": {k: list(v) for k, v in sorted(self.changes.items())},
        }
        return json.dumps(data, sort_keys=True, indent=1).encode()


def state_key(host: str) -> str:
    return f"nodes/{host}.json"


def load(store: ObjectStore, host: str) -> NodeState:
    obj = store.get(state_key(host))
    if obj is None:
        return NodeState(host)
    raw: dict[str, Any] = json.loads(obj.body)
    return NodeState(
        node=host,
        sequence=int(raw.get("sequence", -1)),
        in_rotation=bool(raw.get("in_rotation", True)),
        dns=tuple(Removed(r["name"], r["rtype"], r["ttl"], tuple(r["values"]), r["whole"]) for r in raw.get("dns", [])),
        mailcow=tuple(Smarthost(**s) for s in raw.get("mailcow", [])),
        changed_at=str(raw.get("changed_at", "")),
        event_id=str(raw.get("event_id", "")),
        changes={k: tuple(v) for k, v in raw.get("changes", {}).items()},
        etag=obj.etag,
    )


def save(store: ObjectStore, new: NodeState, before: NodeState) -> NodeState:
    """Write ``new`` conditionally on ``before``'s ETag (nothing when unchanged); returns the stored state.

    Raises:
        NodeStateConflict: another worker wrote the state since it was read.
    """
    if before.etag is not None and new.body() == before.body():
        return before
    try:
        etag = put_over(store, state_key(new.node), new.body(), before.etag)
    except PreconditionFailed:
        raise NodeStateConflict(f"state of node {new.node} changed concurrently; re-planning") from None
    return replace(new, etag=etag)


def short(name: str) -> str:
    return name.split(".", 1)[0].lower()


def find_host(settings: Settings, node: str) -> MxHost:
    """The configured gateway named ``node`` (its host name or first label).

    Raises:
        EventInvalid: no such gateway node.
    """
    for host in settings.provider.mx_hosts:
        if node.lower() in (host.name.lower(), short(host.name)):
            return host
    raise EventInvalid(f"{node} is not a configured gateway node")


def is_stale(st: NodeState, sequence: int) -> bool:
    """True when an event with ``sequence`` is older than the node's last recorded one."""
    return sequence < st.sequence


def age_seconds(st: NodeState, now: dt.datetime) -> float | None:
    if not st.changed_at:
        return None
    return (now - dt.datetime.fromisoformat(st.changed_at)).total_seconds()


def guard_hold_down(st: NodeState, now: dt.datetime, hold: int) -> None:
    """Flap damping for node.up.

    Raises:
        HoldDown: the node's last transition is younger than ``hold`` seconds.
    """
    age = age_seconds(st, now)
    if age is not None and age < hold:
        raise HoldDown(f"{st.node} left rotation {age:.0f} s ago; hold-down is {hold} s")


def load_all(ports: Ports, known: NodeState | None = None) -> dict[str, NodeState]:
    """Every configured node's state; ``known`` (already read, or as it will be) stands in for its node."""
    hosts = ports.settings.provider.mx_hosts
    found = {h.name: load(ports.state, h.name) for h in hosts if known is None or h.name != known.node}
    return found if known is None else {**found, known.node: known}


# ---------------------------------------------------------------- quorum


def serving(zone: Mapping[Key, RecordSet], states: Mapping[str, NodeState], hosts: Iterable[MxHost]) -> list[str]:
    """Nodes in rotation: their A or AAAA is in the provider zone and their state does not say otherwise."""
    return [
        h.name
        for h in hosts
        if any((h.name, t) in zone for t in ADDRESS_TYPES) and states.get(h.name, NodeState(h.name)).in_rotation
    ]


def guard_quorum(host: MxHost, now_serving: list[str], minimum: int) -> list[str]:
    """The nodes left serving without ``host``.

    Raises:
        QuorumRefused: fewer than ``minimum`` would be left (logged as an ALERT).
    """
    left = [n for n in now_serving if n != host.name]
    if len(left) < minimum:
        reason = (
            f"taking {host.name} out would leave {len(left)} serving gateway(s) ({', '.join(left) or 'none'}), "
            f"fewer than the minimum of {minimum}: a second concurrent outage needs a human"
        )
        log.critical("ALERT node.down refused: %s", reason)
        raise QuorumRefused(reason)
    return left


# ---------------------------------------------------------------- DNS plans


@dataclass(frozen=True)
class DnsNodePlan:
    changes: tuple[DnsChange, ...] = ()  # what changes, in the summary
    guards: tuple[DnsChange, ...] = ()  # unchanged RRsets sent as prerequisites only (compare-and-set)
    removed: tuple[Removed, ...] = ()  # the inverse of ``changes`` (drain)
    kept: tuple[str, ...] = ()  # restore: entries changed since the drain, left as they are

    def summary(self) -> list[str]:
        return [_describe(c) for c in self.changes]


def _describe(c: DnsChange) -> str:
    name, rtype = c.key
    before = set(c.before.values) if c.before else set()
    after = set(c.after.values) if c.after else set()
    gone, added = sorted(before - after), sorted(after - before)
    if c.after is None:
        return f"- {rtype} {name} {' '.join(gone)}"
    if c.before is None:
        return f"+ {rtype} {name} {' '.join(added)}"
    return f"~ {rtype} {name} " + " ".join([*(f"-{v}" for v in gone), *(f"+{v}" for v in added)])


def node_addresses(host: MxHost, zone: Mapping[Key, RecordSet]) -> set[str]:
    """The node's configured addresses plus whatever its host name holds now."""
    found = {v for t in ADDRESS_TYPES if (rs := zone.get((host.name, t))) for v in rs.values}
    return found | {a for a in (host.ipv4, host.ipv6) if a}


def plan_drain_dns(
    host: MxHost, zone: Mapping[Key, RecordSet], rotation_names: Iterable[str], left: list[str]
) -> DnsNodePlan:
    """Delete the node's A/AAAA; remove its addresses from round-robin names; guard the others' RRsets."""
    changes: list[DnsChange] = []
    removed: list[Removed] = []
    addresses = node_addresses(host, zone)
    for rtype in ADDRESS_TYPES:
        rs = zone.get((host.name, rtype))
        if rs is not None:
            changes.append(DnsChange(rs, None))
            removed.append(Removed(rs.name, rtype, rs.ttl, rs.values, whole=True))
    for name in rotation_names:
        for rtype in ADDRESS_TYPES:
            rs = zone.get((name.rstrip(".").lower(), rtype))
            gone = tuple(v for v in rs.values if v in addresses) if rs else ()
            if rs is None or not gone:
                continue
            rest = [v for v in rs.values if v not in gone]
            changes.append(DnsChange(rs, RecordSet.of(rs.name, rtype, rs.ttl, rest) if rest else None))
            removed.append(Removed(rs.name, rtype, rs.ttl, gone, whole=False))
    changed = {c.key for c in changes}
    guards = [
        DnsChange(rs, rs)
        for other in left
        for t in ADDRESS_TYPES
        if (rs := zone.get((other, t))) is not None and rs.key not in changed
    ]
    return DnsNodePlan(tuple(changes), tuple(guards) if changes else (), tuple(removed))


def plan_restore_dns(inverse: Iterable[Removed], zone: Mapping[Key, RecordSet]) -> DnsNodePlan:
    """Put back exactly what was removed, against the zone as it is now (compare-and-set on the current RRset).

    The node's own RRset is re-created only if it is still absent; if someone wrote it meanwhile (repointed the
    name, say), it is left alone and reported. Round-robin names get the node's values added to what they hold now.
    """
    changes: list[DnsChange] = []
    kept: list[str] = []
    for r in inverse:
        cur = zone.get(r.key)
        if cur is None:
            changes.append(DnsChange(None, RecordSet.of(r.name, r.rtype, r.ttl, r.values)))
        elif r.whole and cur.values != r.values:
            kept.append(f"{r.rtype} {r.name} was changed since the drain ({' '.join(cur.values)}); left as it is")
        elif not set(r.values) <= set(cur.values):
            changes.append(DnsChange(cur, RecordSet.of(r.name, r.rtype, cur.ttl, [*cur.values, *r.values])))
    return DnsNodePlan(tuple(changes), (), (), tuple(kept))


def merge_removed(stored: Iterable[Removed], planned: Iterable[Removed]) -> tuple[Removed, ...]:
    """The inverse after a retry: a key planned again takes the values it holds now; the others keep theirs."""
    out = {r.key: r for r in stored}
    out.update({r.key: r for r in planned})
    return tuple(out.values())


# ---------------------------------------------------------------- smarthosts (Mailcow)


def smarthost_target(settings: Settings, host: MxHost) -> str:
    """The Mailcow relayhost hostname / transport nexthop of ``host``.

    Raises:
        ConfigError: an unknown smarthost mode or a bad ``smarthost_format``.
    """
    nodes = settings.nodes
    if nodes.smarthost not in SMARTHOST_MODES:
        raise ConfigError(f"setting nodes.smarthost must be one of {', '.join(SMARTHOST_MODES)}")
    try:
        return nodes.smarthost_format.format(host=host.name).strip().lower()
    except (KeyError, IndexError, ValueError):
        raise ConfigError("setting nodes.smarthost_format may only use {host}") from None


def read_smarthosts(mail: MailPort, mode: str) -> list[Smarthost]:
    """Every Mailcow relayhost (or transport), as Smarthost entries; nothing in mode "none"."""
    if mode == "relayhost":
        return [Smarthost("relayhost", r.id, r.hostname.strip().lower(), r.active) for r in mail.list_relayhosts()]
    if mode == "transport":
        return [Smarthost("transport", t.id, t.nexthop.strip().lower(), t.active) for t in mail.list_transports()]
    return []


def plan_drain_smarthosts(have: Iterable[Smarthost], target: str) -> tuple[Smarthost, ...]:
    """The active entries that route through the node: deactivate them."""
    return tuple(s for s in have if s.target == target and s.active)


def plan_restore_smarthosts(
    inverse: Iterable[Smarthost], have: Iterable[Smarthost]
) -> tuple[tuple[Smarthost, ...], tuple[str, ...]]:
    """Reactivate exactly the entries node.down deactivated, if they are still ours (same id and target)."""
    now = {(s.kind, s.id): s for s in have}
    todo: list[Smarthost] = []
    kept: list[str] = []
    for s in inverse:
        cur = now.get((s.kind, s.id))
        if cur is None or cur.target != s.target:
            kept.append(f"{s.kind} {s.id} {s.target} was changed or deleted since the drain; left as it is")
        elif not cur.active:
            todo.append(cur)
    return tuple(todo), tuple(kept)


def set_active(mail: MailPort, entry: Smarthost, active: bool) -> None:
    if entry.kind == "relayhost":
        mail.edit_relayhost(entry.id, active=active)
    else:
        mail.edit_transport(entry.id, active=active)


def smarthost_lines(entries: Iterable[Smarthost], active: bool) -> list[str]:
    return [f"~ {s.kind} {s.id} {s.target} active={int(active)}" for s in entries]


# ---------------------------------------------------------------- verification and the PMG master


def verify_dns(
    ports: Ports, zone: str, checks: Iterable[tuple[Key, tuple[str, ...], bool]], min_serial: int | None
) -> list[str]:
    """Every authoritative server serves (present=True) or no longer serves (False) each (key, values).

    Every server is asked again for up to ``dns.propagation_wait`` seconds until all of them pass.

    Raises:
        NotPropagated: listing the first mismatches (transient: the broker retries).
    """
    listed = list(checks)
    return until_propagated(ports.settings.dns.propagation_wait, lambda: _verify_dns(ports, zone, listed, min_serial))


def _verify_dns(
    ports: Ports, zone: str, checks: list[tuple[Key, tuple[str, ...], bool]], min_serial: int | None
) -> list[str]:
    servers = ports.dns.servers(zone)
    problems: list[str] = []
    for server in servers:
        serial = ports.dns.serial(zone, server)
        if serial is None:
            problems.append(f"{server}: does not serve {zone}")
            continue
        if min_serial is not None and serial_before(serial, min_serial):
            problems.append(f"{server}: serial {serial} older than {min_serial}")
            continue
        for (name, rtype), values, present in checks:
            got = ports.dns.query(server, name, rtype)
            have = set(got.values) if got else set()
            if (present and not set(values) <= have) or (not present and have & set(values)):
                problems.append(f"{server}: {rtype} {name} is {sorted(have) or 'absent'}")
    if problems:
        raise NotPropagated("; ".join(problems[:6]))
    return servers


def drained_checks(inverse: Iterable[Removed]) -> list[tuple[Key, tuple[str, ...], bool]]:
    return [(r.key, r.values, False) for r in inverse]


def master_name(ports: Ports) -> str | None:
    """The PMG cluster master's name, or None when the cluster cannot be asked (that never blocks a failover)."""
    try:
        nodes = ports.gateway.cluster_nodes()
    except (PmgUnavailable, PmgRejected) as exc:
        log.warning("node: cannot read the PMG cluster (%s); master unknown", exc.reason)
        return None
    return next((n.name for n in nodes if n.role == "master"), None)


def master_warning(host: MxHost) -> str:
    return (
        f"{host.name} is the PMG cluster master: configuration writes (domain.created, relay domains, transports) "
        "fail until an operator promotes another node (pmgcm promote; PMG has no API for it); "
        "domain.created retries meanwhile (PmgUnavailable is transient)"
    )


def iso(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).isoformat(timespec="seconds")


def restore_checks(
    inverse: Iterable[Removed], zone: Mapping[Key, RecordSet]
) -> list[tuple[Key, tuple[str, ...], bool]]:
    """What every server must serve after a restore: the inverse entries not left alone by ``plan_restore_dns``."""
    out = []
    for r in inverse:
        cur = zone.get(r.key)
        if cur is None or not r.whole or cur.values == r.values:
            out.append((r.key, r.values, True))
    return out


def applied(zone: Mapping[Key, RecordSet], changes: Iterable[DnsChange]) -> dict[Key, RecordSet]:
    """The zone as it reads after ``changes`` (for the in-rotation list of the outcome)."""
    out = dict(zone)
    for c in changes:
        out.pop(c.key, None)
        if c.after is not None:
            out[c.key] = c.after
    return out


def merge_lines(old: Iterable[str], new: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*old, *new]))
