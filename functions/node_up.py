"""node.up (monitoring): put a recovered gateway node back, from the inverse node.down stored; report node.restored.

A thin adapter over functions/_core/model/failover.py (``restore``: compare-and-set per RRset, hold-down, Mailcow
smarthosts); this module turns the result into the outcome and node.restored.
"""

from __future__ import annotations

import uuid
from typing import Any

from functions._core.model import failover, nodes
from functions._core.model.ports import Ports
from functions._core.platform.config import MxHost
from functions._core.platform.envelope import Envelope, build
from functions._core.platform.outcome import Outcome

NAME = "node_up"
LOGIC = "functions._core.model.failover"
SOURCE = "urn:mailplane:worker"

dry_run = failover.restore_dry_run


def handle(event: Envelope, ports: Ports) -> Outcome:
    """Restore ``event.subject`` (failover.restore) and report it.

    Raises:
        EventInvalid: the node is not a configured gateway.
        HoldDown: the drain is too recent (retried later).
        DnsConflict: the provider zone changed between read and write (retried: re-read and re-plan).
        NodeStateConflict: the node's state changed concurrently (retried).
        NotPropagated: an authoritative server does not serve the node yet (retried).
    """
    r = failover.restore(event, ports)
    assert r.state is not None  # restore always reports the node's state
    return _outcome(event, r.status, r.host, r.state, r.changes, r.detail)


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
