"""The certificate scheduler behind `mailplane renew-due` (run hourly, like rotate-due): cert.renew when due.

For every gateway node it reads the DANE state (functions/_core/model/dane.py) and asks ``dane.due``: a run in
progress gets a ``nudge`` (every run), a node that needs one gets ``scheduled`` (renewal, same key) or ``rollover``
(a new key: PMG's own certificate, or a key older than ``dane.rollover_days``). One node at a time: no run is started
while another node's run is in progress, and at most one is started per pass. Event ids are deterministic per node
and hour (nudges) or day (starts), so a second pass in the same period publishes duplicates the ledger drops.

With ``mta_sts.serve`` it also publishes cert.renew (``data.domain``, reason ``mta-sts``) for every certificate of
``mta-sts.<domain>`` whose renewal entry (``certs-due/<day>/<name>``, written with the certificate,
``mta_sts.renew_before_days`` before it expires) is due, at most ``mta_sts.renew_max_per_run`` per pass, oldest
first; ids per domain and day.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from functions._core.model import dane, mtasts
from functions._core.model.nodes import short
from functions._core.platform.config import Settings
from functions._core.platform.envelope import build
from functions._core.platform.store import ObjectStore

log = logging.getLogger("mailplane.renew_due")
SOURCE = "urn:mailplane:scheduler"


@dataclass(frozen=True)
class Due:
    node: str
    reason: str  # nudge | scheduled | rollover
    phase: str


def scan(store: ObjectStore, settings: Settings, now: dt.datetime) -> list[Due]:
    """Every node that needs a cert.renew now, in configuration order."""
    out = []
    for host in settings.provider.mx_hosts:
        node = short(host.name)
        st, _ = dane.read(store, node)
        why = dane.due(st, settings, now)
        if why is not None:
            out.append(Due(node, why, st.phase))
    return out


def scan_certs(store: ObjectStore, settings: Settings, now: dt.datetime) -> list[Due]:
    """The MTA-STS certificates due for renewal (``node`` = the domain), at most ``renew_max_per_run``."""
    if not settings.mta_sts.serve:
        return []
    names = mtasts.renewals(store, now.date())[: settings.mta_sts.renew_max_per_run]
    return [Due(n.removeprefix("mta-sts."), "mta-sts", "due") for n in names]


def select(dues: list[Due]) -> list[Due]:
    """Every nudge; one start, and only when no run is in progress (one node at a time)."""
    nudges = [d for d in dues if d.reason == "nudge"]
    starts = [d for d in dues if d.reason != "nudge"]
    return nudges if nudges else starts[:1]


def event_for(due: Due, now: dt.datetime) -> dict[str, Any]:
    if due.reason == "mta-sts":  # the id stays short for any domain length (CloudEvents id limit)
        tag = hashlib.sha256(due.node.encode()).hexdigest()[:16]
        data: dict[str, Any] = {"domain": due.node, "reason": due.reason}
        return build("cert.renew", due.node, data, source=SOURCE, id=f"cert-mta-sts-{tag}-{now:%Y%m%d}", time=now)
    stamp = f"{now:%Y%m%dT%H}" if due.reason == "nudge" else f"{now:%Y%m%d}"
    data = {"node": due.node, "reason": due.reason}
    return build("cert.renew", due.node, data, source=SOURCE, id=f"cert-{due.reason}-{due.node}-{stamp}", time=now)


def run(
    store: ObjectStore, settings: Settings, now: dt.datetime, publish: Callable[[dict[str, Any]], None] | None
) -> list[Due]:
    """Scan, select and publish (``publish`` None = dry run); returns what was selected.

    Raises:
        pika.exceptions.AMQPError: the broker refused or did not confirm a publish.
    """
    chosen = select(scan(store, settings, now)) + scan_certs(store, settings, now)
    for due in chosen:
        if publish is not None:
            publish(event_for(due, now))
    log.info(
        "renew-due: %s published=%s", ", ".join(f"{d.node}:{d.reason}" for d in chosen) or "-", publish is not None
    )
    return chosen


def as_json(chosen: list[Due]) -> str:
    return json.dumps([{"node": d.node, "reason": d.reason, "phase": d.phase} for d in chosen], indent=1)
