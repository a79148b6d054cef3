"""The rotation scheduler behind `mailplane rotate-due` (run hourly by a systemd timer or a Kubernetes CronJob).

It reads the state of every domain the due index lists up to today (functions/_core/model/due_index.py; every
domain's state with ``full_scan``), asks ``rotation.due`` when it next needs a key.rotate, and publishes one as
the ``scheduler`` publisher for each domain that is due: ``nudge`` for a rotation in progress (every one that is
due), ``scheduled`` to begin one (at most ``max_start`` per run, the longest overdue first). A rotation becomes due
``rotate_after_days`` plus a stable per-domain jitter of up to ``rotate_jitter_days`` after its key became active,
so thousands of domains created together never rotate in the same hour. Event ids are deterministic per domain and
hour (nudges) or day and key (starts): a second run in the same period publishes duplicates the ledger drops.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from functions._core.model import due_index, rotation, state
from functions._core.platform.config import Settings
from functions._core.platform.envelope import build
from functions._core.platform.errors import AutomationError
from functions._core.platform.store import ObjectStore

log = logging.getLogger("mailplane.rotate_due")

SOURCE = "urn:mailplane:scheduler"
PREFIX = "domains/"
MAX_ID = 128  # CloudEvents id limit in schemas/envelope.schema.json


@dataclass(frozen=True, order=True)
class Due:
    """When ``domain`` next needs a key.rotate: ``kind`` is ``start`` (begin a rotation) or ``nudge`` (continue)."""

    at: dt.datetime
    domain: str
    kind: str
    selector: str  # the active key


@dataclass(frozen=True)
class Report:
    scanned: int
    due: tuple[Due, ...]  # selected in this run, in publishing order
    deferred: int  # starts that were due but over max_start (they come first in the next run)
    errors: tuple[str, ...] = field(default_factory=tuple)


def scan(store: ObjectStore, settings: Settings, *, threads: int = 8) -> tuple[list[Due], list[str], int]:
    """Every domain's next due time (due or not), the domains whose state could not be read, and how many
    domains were read (a domain that is not provisioned has no due time)."""
    names = [k[len(PREFIX) : -len(".json")] for k in store.list(PREFIX) if k.endswith(".json")]
    return (*_read(names, lambda domain: state.load(store, domain), settings, threads), len(names))


def scan_due(
    store: ObjectStore, settings: Settings, now: dt.datetime, *, threads: int = 8
) -> tuple[list[Due], list[str], int]:
    """Like ``scan``, but through the due index (functions/_core/model/due_index.py): only the states of domains
    with an entry up to today are read, and each entry that proves wrong is repaired. Builds the index first when
    its marker is missing. Returns the dues found (due or not yet), unreadable domains, states read."""
    if not due_index.built(store):
        due_index.rebuild(store, settings.dkim, now, threads=threads)
    days: dict[str, list[dt.date]] = {}
    for day, domain in due_index.entries(store, now.astimezone(dt.UTC).date()):
        days.setdefault(domain, []).append(day)

    def load(domain: str) -> state.DomainState:
        return due_index.settle(store, domain, days[domain], settings.dkim)

    return (*_read(list(days), load, settings, threads), len(days))


def _read(
    domains: list[str], load: Callable[[str], state.DomainState], settings: Settings, threads: int
) -> tuple[list[Due], list[str]]:
    """Each domain's state by ``load``, side by side: the dues found (sorted) and the domains that could not be read."""

    def one(domain: str) -> Due | str | None:
        try:
            st = load(domain)
        except (AutomationError, ValueError, KeyError, TypeError) as exc:
            return f"{domain}: {type(exc).__name__}"
        return _due_of(st, settings)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(pool.map(one, domains))
    return sorted(r for r in results if isinstance(r, Due)), [r for r in results if isinstance(r, str)]


def _due_of(st: state.DomainState, settings: Settings) -> Due | None:
    found = rotation.due(st, settings.dkim)
    cur = rotation.active(st) or rotation.pending(st)  # pending: a zone hosted elsewhere awaiting the customer
    if found is None or cur is None:
        return None
    return Due(found[1], st.domain, found[0], cur.selector)


def select(dues: Iterable[Due], now: dt.datetime, max_start: int) -> tuple[list[Due], int]:
    """Every nudge that is due; the ``max_start`` longest-overdue starts. Returns (selected, deferred starts)."""
    ready = sorted(d for d in dues if d.at <= now)
    nudges = [d for d in ready if d.kind == "nudge"]
    starts = [d for d in ready if d.kind == "start"]
    return nudges + starts[: max(0, max_start)], max(0, len(starts) - max(0, max_start))


def event_for(due: Due, now: dt.datetime) -> dict[str, Any]:
    """The key.rotate for one due domain (published as the scheduler)."""
    if due.kind == "start":
        key_id = f"{due.domain}:{due.selector}"
        data = {
            "domain": due.domain,
            "reason": "scheduled",
            "key_id": key_id if len(key_id) <= MAX_ID else due.selector,
        }
        stamp = f"{due.selector}-{now:%Y%m%d}"
    else:
        data = {"domain": due.domain, "reason": "nudge"}
        stamp = f"{now:%Y%m%dT%H}"
    prefix = "rotate" if due.kind == "start" else "nudge"
    event_id = f"{prefix}-{due.domain}-{stamp}"
    if len(event_id) > MAX_ID:
        event_id = f"{prefix}-{hashlib.sha256(due.domain.encode()).hexdigest()[:40]}-{stamp}"[:MAX_ID]
    return build("key.rotate", due.domain, data, source=SOURCE, id=event_id, time=now)


def run(
    store: ObjectStore,
    settings: Settings,
    now: dt.datetime,
    publish: Callable[[dict[str, Any]], None] | None,
    *,
    max_start: int | None = None,
    full_scan: bool = False,
) -> Report:
    """Scan (the due index, or every state with ``full_scan``), select and publish (``publish`` None = dry run). A
    failed publish stops the run (the next one retries).

    Raises:
        pika.exceptions.AMQPError: the broker refused or did not confirm a publish.
    """
    limit = settings.dkim.rotate_max_per_run if max_start is None else max_start
    dues, errors, scanned = scan(store, settings) if full_scan else scan_due(store, settings, now)
    chosen, deferred = select(dues, now, limit)
    for due in chosen:
        if publish is not None:
            publish(event_for(due, now))
    log.info(
        "rotate-due: scanned=%d nudges=%d starts=%d deferred=%d errors=%d published=%s",
        scanned,
        sum(1 for d in chosen if d.kind == "nudge"),
        sum(1 for d in chosen if d.kind == "start"),
        deferred,
        len(errors),
        publish is not None,
    )
    return Report(scanned, tuple(chosen), deferred, tuple(errors))


def as_json(report: Report) -> str:
    return json.dumps(
        {
            "scanned": report.scanned,
            "deferred": report.deferred,
            "errors": list(report.errors),
            "due": [{"domain": d.domain, "kind": d.kind, "at": rotation.iso(d.at)} for d in report.due],
        },
        indent=1,
    )
