"""Failover, the logic of node.down and node.up: take a failed gateway node out of rotation behind the quorum
guard, and put it back from the inverse stored when it was drained.

node.down (``drain``), ordered so the DNS withdrawal never waits on Mailcow or PMG:
1. read the provider zone and every node's state; ignore an event older than the node's last one;
2. plan the ONE compare-and-set UPDATE (the node's A/AAAA, its addresses in round-robin names); guard the quorum
   (QuorumRefused before anything is written); write the inverse to the node's state; apply the UPDATE;
3. deactivate the node's Mailcow smarthost entries (inverse stored first);
4. verify that every authoritative server stopped serving the node; ask PMG whether the node is the master.
A redelivered event re-reads, plans nothing, verifies again and reports the same.

node.up (``restore``): exactly what node.down removed is restored, each RRset with compare-and-set against the zone
as it is now, so changes made in between are kept (a repointed host name is left alone and reported). Mailcow
smarthost entries are reactivated only if they still carry the same id and target. A node.up within
``nodes.hold_down_seconds`` of the drain raises HoldDown (retried by the broker): flapping is damped, and a newer
node.down in the meantime makes the held node.up stale.

The handlers (functions/node_down.py, functions/node_up.py) turn a ``Result`` into the outcome and node.drained /
node.restored. The node model itself (state, plans, quorum guard) is functions/_core/model/nodes.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from functions._core.model import nodes
from functions._core.model.ports import Ports
from functions._core.platform.config import MxHost
from functions._core.platform.envelope import Envelope

log = logging.getLogger("mailplane.failover")


@dataclass(frozen=True)
class Result:
    """What a drain or restore did: the status for the outcome, the node, and the details to report."""

    status: str  # drained | restored | unchanged | ignored
    host: MxHost
    detail: dict[str, Any]
    drained: Drained | None = None  # node.down: what this run changed
    state: nodes.NodeState | None = None  # node.up: the node's state after the run
    changes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # node.up: what this run changed


@dataclass(frozen=True)
class Drained:
    state: nodes.NodeState
    serial: int | None  # new serial of the provider zone, None when nothing was sent
    left: list[str]  # nodes serving after the change
    dns: list[str]  # what this run changed
    mailcow: list[str]


def _drain_dns(event: Envelope, ports: Ports, host: MxHost, before: nodes.NodeState) -> Drained:
    s = ports.settings
    zone = ports.dns.read_zone(s.provider.zone)
    states = nodes.load_all(ports, before)
    now_serving = nodes.serving(zone, states, s.provider.mx_hosts)
    left = [n for n in now_serving if n != host.name]
    plan = nodes.plan_drain_dns(host, zone, s.nodes.rotation_names, left)
    if plan.changes:
        nodes.guard_quorum(host, now_serving, s.provider.min_mx_in_rotation)  # raises before any write
    inverse = nodes.merge_removed(() if before.in_rotation else before.dns, plan.removed)
    new = replace(before, sequence=max(before.sequence, event.data["sequence"]), in_rotation=False, dns=inverse)
    if before.event_id == event.id:  # a retry of the transition this event started
        new = replace(
            new, changes={**before.changes, "dns": nodes.merge_lines(before.changes.get("dns", ()), plan.summary())}
        )
    elif before.in_rotation or plan.changes:  # a transition
        changes = {"dns": tuple(plan.summary()), "mailcow": ()}
        new = replace(new, changed_at=nodes.iso(ports.clock()), event_id=event.id, changes=changes)
    stored = nodes.save(ports.state, new, before)  # write-ahead: the inverse is stored before the change
    serial = ports.dns.apply(s.provider.zone, [*plan.changes, *plan.guards]) if plan.changes else None
    return Drained(stored, serial, left, plan.summary(), [])


def _drain_smarthosts(event: Envelope, ports: Ports, host: MxHost, done: Drained) -> Drained:
    s = ports.settings
    target = nodes.smarthost_target(s, host)
    todo = nodes.plan_drain_smarthosts(nodes.read_smarthosts(ports.mail, s.nodes.smarthost), target)
    if not todo:
        return done
    st, lines = done.state, nodes.smarthost_lines(todo, active=False)
    new = replace(st, mailcow=tuple({(e.kind, e.id): e for e in (*st.mailcow, *todo)}.values()))
    if st.event_id == event.id:
        new = replace(new, changes={**st.changes, "mailcow": nodes.merge_lines(st.changes.get("mailcow", ()), lines)})
    stored = nodes.save(ports.state, new, st)
    for entry in todo:
        nodes.set_active(ports.mail, entry, False)
    return replace(done, state=stored, mailcow=lines)


def drain_dry_run(event: Envelope, ports: Ports) -> dict[str, list[str]]:
    """The changes ``handle`` would make on each system; nothing is written.

    Raises:
        EventInvalid: the node is not a configured gateway.
        QuorumRefused: the event would be refused.
    """
    s = ports.settings
    host = nodes.find_host(s, event.data["node"])
    before = nodes.load(ports.state, host.name)
    if nodes.is_stale(before, event.data["sequence"]):
        return {"dns": [f"= ignored: sequence older than {before.sequence}"], "mailcow": []}
    zone = ports.dns.read_zone(s.provider.zone)
    now_serving = nodes.serving(zone, nodes.load_all(ports, before), s.provider.mx_hosts)
    plan = nodes.plan_drain_dns(host, zone, s.nodes.rotation_names, [n for n in now_serving if n != host.name])
    if plan.changes:
        nodes.guard_quorum(host, now_serving, s.provider.min_mx_in_rotation)
    target = nodes.smarthost_target(s, host)
    todo = nodes.plan_drain_smarthosts(nodes.read_smarthosts(ports.mail, s.nodes.smarthost), target)
    return {"dns": plan.summary(), "mailcow": nodes.smarthost_lines(todo, active=False)}


def drain(event: Envelope, ports: Ports) -> Result:
    """Drain ``event.subject``: DNS first, then the Mailcow smarthosts; verify; ask PMG for the master.

    Raises:
        EventInvalid: the node is not a configured gateway.
        QuorumRefused: fewer than the minimum of nodes would be left serving (parked for a human).
        DnsConflict: the provider zone changed between read and write (retried: re-read and re-plan).
        NodeStateConflict: the node's state changed concurrently (retried).
        NotPropagated: an authoritative server still serves the node (retried).
    """
    host = nodes.find_host(ports.settings, event.data["node"])
    before = nodes.load(ports.state, host.name)
    if nodes.is_stale(before, event.data["sequence"]):
        log.info("node.down %s: sequence %s older than %s; ignored", host.name, event.data["sequence"], before.sequence)
        return Result("ignored", host, {"last_sequence": before.sequence})
    done = _drain_smarthosts(event, ports, host, _drain_dns(event, ports, host, before))
    if done.state.event_id != event.id:  # already out of rotation by an earlier event: only the sequence moved
        return Result("unchanged", host, {"in_rotation": done.left}, drained=done)
    servers = nodes.verify_dns(ports, ports.settings.provider.zone, nodes.drained_checks(done.state.dns), done.serial)
    master = nodes.master_name(ports)
    detail: dict[str, Any] = {"in_rotation": done.left, "verified_servers": servers, "master_node": master}
    if master is not None and nodes.short(master) == nodes.short(host.name):
        detail["warning"] = nodes.master_warning(host)
        log.critical("ALERT node.down %s: %s", host.name, detail["warning"])
    return Result("drained", host, detail, drained=done)


@dataclass(frozen=True)
class Restore:
    dns: nodes.DnsNodePlan
    smarthosts: tuple[nodes.Smarthost, ...]
    kept: tuple[str, ...]
    checks: list[tuple[tuple[str, str], tuple[str, ...], bool]]
    in_rotation: list[str]


def plan_restore(ports: Ports, host: MxHost, before: nodes.NodeState) -> Restore:
    """Read the provider zone and Mailcow; plan the restore (nothing is written)."""
    s = ports.settings
    zone = ports.dns.read_zone(s.provider.zone)
    dns = nodes.plan_restore_dns(before.dns, zone)
    have = nodes.read_smarthosts(ports.mail, s.nodes.smarthost) if before.mailcow else []
    todo, kept = nodes.plan_restore_smarthosts(before.mailcow, have)
    states = nodes.load_all(ports, replace(before, in_rotation=True))
    serving = nodes.serving(nodes.applied(zone, dns.changes), states, s.provider.mx_hosts)
    return Restore(dns, todo, (*dns.kept, *kept), nodes.restore_checks(before.dns, zone), serving)


def restore_dry_run(event: Envelope, ports: Ports) -> dict[str, list[str]]:
    """The changes ``handle`` would make on each system; nothing is written (the hold-down is not checked).

    Raises:
        EventInvalid: the node is not a configured gateway.
    """
    host = nodes.find_host(ports.settings, event.data["node"])
    before = nodes.load(ports.state, host.name)
    if nodes.is_stale(before, event.data["sequence"]) or before.in_rotation:
        return {"dns": [], "mailcow": []}
    r = plan_restore(ports, host, before)
    kept = [f"= {line}" for line in r.kept]
    return {"dns": [*r.dns.summary(), *kept], "mailcow": nodes.smarthost_lines(r.smarthosts, active=True)}


def restore(event: Envelope, ports: Ports) -> Result:
    """Restore ``event.subject`` from the inverse node.down stored.

    Raises:
        EventInvalid: the node is not a configured gateway.
        HoldDown: the drain is too recent (retried later).
        DnsConflict: the provider zone changed between read and write (retried: re-read and re-plan).
        NodeStateConflict: the node's state changed concurrently (retried).
        NotPropagated: an authoritative server does not serve the node yet (retried).
    """
    host = nodes.find_host(ports.settings, event.data["node"])
    seq = event.data["sequence"]
    before = nodes.load(ports.state, host.name)
    if nodes.is_stale(before, seq):
        log.info("node.up %s: sequence %s older than %s; ignored", host.name, seq, before.sequence)
        return Result("ignored", host, {"last_sequence": before.sequence}, state=before)
    if before.in_rotation:
        if before.event_id == event.id:  # a redelivery of the event that restored it: report it again
            zone = ports.dns.read_zone(ports.settings.provider.zone)
            serving = nodes.serving(zone, nodes.load_all(ports), ports.settings.provider.mx_hosts)
            return Result("restored", host, {"in_rotation": serving, **_master(ports)}, state=before)
        nodes.save(ports.state, replace(before, sequence=max(before.sequence, seq)), before)
        return Result("unchanged", host, {}, state=before)
    nodes.guard_hold_down(before, ports.clock(), ports.settings.nodes.hold_down_seconds)
    return _restore(event, ports, host, before)


def _restore(event: Envelope, ports: Ports, host: MxHost, before: nodes.NodeState) -> Result:
    """Plan, apply (DNS, then Mailcow), verify, then mark the node in rotation and clear the inverse."""
    r = plan_restore(ports, host, before)
    serial = ports.dns.apply(ports.settings.provider.zone, list(r.dns.changes)) if r.dns.changes else None
    for entry in r.smarthosts:
        nodes.set_active(ports.mail, entry, True)
    servers = nodes.verify_dns(ports, ports.settings.provider.zone, r.checks, serial) if r.checks else []
    changes = {"dns": tuple(r.dns.summary()), "mailcow": tuple(nodes.smarthost_lines(r.smarthosts, active=True))}
    after = replace(
        before,
        sequence=max(before.sequence, event.data["sequence"]),
        in_rotation=True,
        dns=(),
        mailcow=(),
        changed_at=nodes.iso(ports.clock()),
        event_id=event.id,
        changes=changes,
    )
    stored = nodes.save(ports.state, after, before)
    for line in r.kept:
        log.warning("node.up %s: %s", host.name, line)
    detail = {"in_rotation": r.in_rotation, "verified_servers": servers, "kept": list(r.kept), **_master(ports)}
    return Result("restored", host, detail, state=stored, changes=changes)


def _master(ports: Ports) -> dict[str, Any]:
    return {"master_node": nodes.master_name(ports)}
