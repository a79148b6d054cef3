"""node.down (monitoring): take a failed gateway node out of rotation, behind the quorum guard; report node.drained.

A thin adapter over functions/_core/model/failover.py (``drain``: the steps and their order); this module turns the
result into the outcome and node.drained, whose id depends only on the incoming event.
"""

from __future__ import annotations

import uuid
from typing import Any

from functions._core.model import failover
from functions._core.model.ports import Ports
from functions._core.platform.config import MxHost
from functions._core.platform.envelope import Envelope, build
from functions._core.platform.outcome import Outcome

NAME = "node_down"
LOGIC = "functions._core.model.failover"
SOURCE = "urn:mailplane:worker"

dry_run = failover.drain_dry_run


def handle(event: Envelope, ports: Ports) -> Outcome:
    """Drain ``event.subject`` (failover.drain) and report it.

    Raises:
        EventInvalid: the node is not a configured gateway.
        QuorumRefused: fewer than the minimum of nodes would be left serving (parked for a human).
        DnsConflict: the provider zone changed between read and write (retried: re-read and re-plan).
        NodeStateConflict: the node's state changed concurrently (retried).
        NotPropagated: an authoritative server still serves the node (retried).
    """
    r = failover.drain(event, ports)
    return _outcome(event, r.status, r.drained, r.host, r.detail)


def _outcome(
    event: Envelope, status: str, done: failover.Drained | None, host: MxHost, detail: dict[str, Any]
) -> Outcome:
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
