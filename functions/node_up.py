"""node.up: put a recovered gateway node back, from the inverse node.down stored; report node.restored.

Exactly what node.down removed is restored, each RRset with compare-and-set against the zone as it is now, so
changes made in between are kept (a repointed host name is left alone and reported). Mailcow smarthost entries are
reactivated only if they still carry the same id and target. A node.up within ``nodes.hold_down_seconds`` of the
drain raises HoldDown (retried by the broker): flapping is damped, and a newer node.down in the meantime makes the
held node.up stale.
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

NAME = "node_up"
SOURCE = "urn:mailplane:worker"

log = logging.getLogger("mailplane.node_up")


@dataclass(frozen=True)
class Restore:
    dns: nodes.DnsNodePlan
    smarthosts: tuple[nodes.Smarthost, ...]
    kept: tuple[str, ...]
    checks: list[tuple[tuple[str, str], tuple[str, ...], bool]]
    in_rotation: list[str]


def plan(event: Envelope, ports: Ports, host: MxHost, before: nodes.NodeState) -> Restore:
    """Read the provider zone and Mailcow; plan the restore (nothing is written)."""
    s = ports.settings
    zone = ports.dns.read_zone(s.provider.zone)
    dns = nodes.plan_restore_dns(before.dns, zone)
    have = nodes.read_smarthosts(ports.mail, s.nodes.smarthost) if before.mailcow else []
    todo, kept = nodes.plan_restore_smarthosts(before.mailcow, have)
    states = nodes.load_all(ports, replace(before, in_rotation=True))
    serving = nodes.serving(nodes.applied(zone, dns.changes), states, s.provider.mx_hosts)
    return Restore(dns, todo, (*dns.kept, *kept), nodes.restore_checks(before.dns, zone), serving)


def dry_run(event: Envelope, ports: Ports) -> dict[str, list[str]]:
    """The changes ``handle`` would make on each system; nothing is written (the hold-down is not checked).

    Raises:
        EventInvalid: the node is not a configured gateway.
    """
    host = nodes.find_host(ports.settings, event.data["node"])
    before = nodes.load(ports.state, host.name)
    if nodes.is_stale(before, event.data["sequence"]) or before.in_rotation:
        return {"dns": [], "mailcow": []}
    r = plan(event, ports, host, before)
    kept = [f"= {line}" for line in r.kept]
    return {"dns": [*r.dns.summary(), *kept], "mailcow": nodes.smarthost_lines(r.smarthosts, active=True)}


def handle(event: Envelope, ports: Ports) -> Outcome:
    """Restore ``event.subject``; see the module docstring.

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
        return _outcome(event, "ignored", host, before, {}, {"last_sequence": before.sequence})
    if before.in_rotation:
        if before.event_id == event.id:  # a redelivery of the event that restored it: report it again
            zone = ports.dns.read_zone(ports.settings.provider.zone)
            serving = nodes.serving(zone, nodes.load_all(ports), ports.settings.provider.mx_hosts)
            return _outcome(event, "restored", host, before, {}, {"in_rotation": serving, **_master(ports)})
        nodes.save(ports.state, replace(before, sequence=max(before.sequence, seq)), before)
        return _outcome(event, "unchanged", host, before, {}, {})
    nodes.guard_hold_down(before, ports.clock(), ports.settings.nodes.hold_down_seconds)
    return _restore(event, ports, host, before)


def _restore(event: Envelope, ports: Ports, host: MxHost, before: nodes.NodeState) -> Outcome:
    """Plan, apply (DNS, then Mailcow), verify, then mark the node in rotation and clear the inverse."""
    r = plan(event, ports, host, before)
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
    return _outcome(event, "restored", host, stored, changes, detail)


def _master(ports: Ports) -> dict[str, Any]:
    return {"master_node": nodes.master_name(ports)}


def _outcome(
    event: Envelope,
    status: str,
    host: MxHost,
    st: nodes.NodeState,
    changes: dict[str, tuple[str, ...]],
    detail: dict[str, Any],
) -> Outcome:
    detail = {"node": host.name, "sequence": event.data["sequence"], **detail}
    emit: tuple[dict[str, Any], ...] = ()
    if status == "restored":
        master = detail.setdefault("master_node", None)
        data = {
            "node": event.data["node"],
            "sequence": event.data["sequence"],
            "master": master is not None and nodes.short(master) == nodes.short(host.name),
            "changes": {k: list(st.changes.get(k, ())) for k in ("dns", "mailcow")},
            "in_rotation": detail.get("in_rotation", []),
        }
        out_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event.source}/{event.id}/{NAME}"))
        emit = (build("node.restored", event.subject, data, source=SOURCE, id=out_id),)
    return Outcome(NAME, event.id, event.subject, status, changes, emit, detail)
