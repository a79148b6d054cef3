"""node.down: take a failed gateway node out of rotation, behind the quorum guard; report node.drained.

Steps, ordered so the DNS withdrawal never waits on Mailcow or PMG:
1. read the provider zone and every node's state; ignore an event older than the node's last one;
2. plan the ONE compare-and-set UPDATE (the node's A/AAAA, its addresses in round-robin names); guard the quorum
   (QuorumRefused before anything is written); write the inverse to the node's state; apply the UPDATE;
3. deactivate the node's Mailcow smarthost entries (inverse stored first);
4. verify that every authoritative server stopped serving the node; ask PMG whether the node is the master.
A redelivered event re-reads, plans nothing, verifies again and emits the same node.drained.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from typing import Any

from functions._core import nodes
from functions._core.config import MxHost
from functions._core.envelope import Envelope, build
from functions._core.outcome import Outcome
from functions._core.ports import Ports

NAME = "node_down"
SOURCE = "urn:mailplane:worker"

log = logging.getLogger("mailplane.node_down")


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


def dry_run(event: Envelope, ports: Ports) -> dict[str, list[str]]:
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


def handle(event: Envelope, ports: Ports) -> Outcome:
    """Drain ``event.subject``; see the module docstring.

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
        return _outcome(event, "ignored", None, host, {"last_sequence": before.sequence})
    done = _drain_smarthosts(event, ports, host, _drain_dns(event, ports, host, before))
    if done.state.event_id != event.id:  # already out of rotation by an earlier event: only the sequence moved
        return _outcome(event, "unchanged", done, host, {"in_rotation": done.left})
    servers = nodes.verify_dns(ports, ports.settings.provider.zone, nodes.drained_checks(done.state.dns), done.serial)
    master = nodes.master_name(ports)
    detail: dict[str, Any] = {"in_rotation": done.left, "verified_servers": servers, "master_node": master}
    if master is not None and nodes.short(master) == nodes.short(host.name):
        detail["warning"] = nodes.master_warning(host)
        log.critical("ALERT node.down %s: %s", host.name, detail["warning"])
    return _outcome(event, "drained", done, host, detail)


def _outcome(event: Envelope, status: str, done: Drained | None, host: MxHost, detail: dict[str, Any]) -> Outcome:
    changes = {"dns": tuple(done.dns), "mailcow": tuple(done.mailcow)} if done else {}
    detail = {"node": host.name, "sequence": event.data["sequence"], "master": "warning" in detail, **detail}
    emit: tuple[dict[str, Any], ...] = ()
    if status == "drained" and done is not None:
        data = {
            "node": event.data["node"],
            "sequence": event.data["sequence"],
            "master": detail["master"],
            "changes": {k: list(done.state.changes.get(k, ())) for k in ("dns", "mailcow")},
            "in_rotation": done.left,
        }
        out_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event.source}/{event.id}/{NAME}"))
        emit = (build("node.drained", event.subject, data, source=SOURCE, id=out_id),)
    return Outcome(NAME, event.id, event.subject, status, changes, emit, detail)
