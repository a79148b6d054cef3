"""The due index: which domains need a key.rotate on which day, so that `mailplane rotate-due` reads only those.

One empty-ish object per domain and due day, ``index/due/<YYYY-MM-DD>/<domain>`` (UTC day of ``rotation.due``),
created with If-None-Match (create-only: two writers of one entry write the same fact). It is a hint, never the
truth: rotate-due reads the state of every entry up to today and repairs what it finds wrong. Invariant: every
domain with a due time D has an entry on a day <= D's day. Kept by ``IndexedStore``, the state store the workers
use (runtime/main.py), for every state write on every path (provisioning, adoption, rotation, deletion, webmail):

1. before the state write, the entry for the new due day (write-ahead: a crash after the state write leaves it);
2. the state write itself (compare-and-set on the ETag, unchanged);
3. after it, the same entry again (create-only, normally a 412): it closes the race with a concurrent repair that
   deleted the entry between 1 and 2 (the repair re-reads the state after deleting, see ``settle``).

The old day's entry is not deleted at write time (that would race with a concurrent writer moving the domain back to
that day); it becomes stale and rotate-due removes it when its day comes (one state read). A crash between 1 and 2
leaves an entry for a day the state does not have: also stale, also removed on its day. Entries beyond their day are
listed in day order (S3 lists keys in UTF-8 order) and the listing stops at the first day after today, so a run reads
what is due and nothing else. ``rebuild`` recreates the index from the states (`rotate-due --rebuild-index`; done
automatically when the marker ``index/due.json`` is missing, e.g. the first run after an upgrade).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from functions._core.model import rotation, state
from functions._core.platform.config import DkimSettings
from functions._core.platform.errors import AutomationError, PreconditionFailed
from functions._core.platform.store import ObjectStore, StoredObject

PREFIX = "index/due/"
MARKER = "index/due.json"
STATES = "domains/"
UNREADABLE = dt.date.min  # the day of a state that cannot be parsed: before every other, so always listed


def entry_key(day: dt.date, domain: str) -> str:
    return f"{PREFIX}{day.isoformat()}/{domain}"


def due_day(st: state.DomainState, dkim: DkimSettings) -> dt.date | None:
    """The UTC day this domain next needs a key.rotate; None when it needs none (not provisioned, deleted)."""
    found = rotation.due(st, dkim)
    return None if found is None else found[1].astimezone(dt.UTC).date()


def mark(store: ObjectStore, day: dt.date, domain: str) -> None:
    """Create the entry (create-only; an existing one is the same fact)."""
    try:
        store.put(entry_key(day, domain), json.dumps({"domain": domain}).encode(), if_none_match=True)
    except PreconditionFailed:
        pass


def entries(store: ObjectStore, until: dt.date) -> Iterator[tuple[dt.date, str]]:
    """(day, domain) of every entry on a day <= ``until``, oldest day first; stops reading at the first later day."""
    for key in store.list(PREFIX):
        day_text, _, domain = key[len(PREFIX) :].partition("/")
        try:
            day = dt.date.fromisoformat(day_text)
        except ValueError:
            continue  # not an entry (nothing else is written under the prefix)
        if day > until:
            return
        if domain:
            yield day, domain


def settle(store: ObjectStore, domain: str, days: Iterable[dt.date], dkim: DkimSettings) -> state.DomainState:
    """Make the index right for one domain: its state's due day has an entry, the listed ``days`` that are not
    its due day lose theirs. Re-reads the state after deleting, so that a writer that moved the domain to a
    deleted day meanwhile still has its entry. Returns the state read last.

    Raises:
        StoreUnavailable: the store failed (the next run settles again).
    """
    st = state.load(store, domain)
    want = due_day(st, dkim)
    if want is not None:
        mark(store, want, domain)
    stale = [d for d in set(days) if d != want]
    for day in stale:
        store.delete(entry_key(day, domain))
    if stale:
        st = state.load(store, domain)
        again = due_day(st, dkim)
        if again is not None and again != want:
            mark(store, again, domain)
    return st


def built(store: ObjectStore) -> bool:
    return store.get(MARKER) is not None


def rebuild(store: ObjectStore, dkim: DkimSettings, now: dt.datetime, *, threads: int = 8) -> tuple[int, int]:
    """Recreate the index from every state: an entry per due domain, stale entries removed, then the marker.
    Returns (entries written or confirmed, stale entries removed). Safe while workers run (``settle``).

    Raises:
        StoreUnavailable: the store failed (run it again).
    """
    names = [k[len(STATES) : -len(".json")] for k in store.list(STATES) if k.endswith(".json")]

    def one(domain: str) -> dt.date | None:
        try:
            day = due_day(state.load(store, domain), dkim)
        except (AutomationError, ValueError, KeyError, TypeError):
            day = UNREADABLE  # listed at every run, so that rotate-due reports it until it is fixed
        if day is not None:
            mark(store, day, domain)
        return day

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        wanted = dict(zip(names, pool.map(one, names), strict=True))
    stale: dict[str, list[dt.date]] = {}
    for day, domain in entries(store, dt.date.max):
        if wanted.get(domain) != day:
            stale.setdefault(domain, []).append(day)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(lambda d: settle(store, d, stale[d], dkim), stale))
    store.put(MARKER, json.dumps({"built_at": rotation.iso(now), "version": 1}).encode())
    return sum(1 for d in wanted.values() if d not in (None, UNREADABLE)), sum(len(v) for v in stale.values())


class IndexedStore:
    """The state store with the due index kept on every write of a domain's state (see the module docstring).
    Every other key passes through unchanged."""

    def __init__(self, inner: ObjectStore, dkim: DkimSettings) -> None:
        self.inner, self._dkim = inner, dkim

    def get(self, key: str) -> StoredObject | None:
        return self.inner.get(key)

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/json",
    ) -> str:
        day = self._day(key, body)
        domain = key[len(STATES) : -len(".json")]
        if day is not None:
            mark(self.inner, day, domain)  # 1. write-ahead
        etag = self.inner.put(key, body, if_none_match=if_none_match, if_match=if_match, content_type=content_type)
        if day is not None:
            mark(self.inner, day, domain)  # 3. after a concurrent repair's delete
        return etag

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str) -> Iterator[str]:
        return self.inner.list(prefix)

    def _day(self, key: str, body: bytes) -> dt.date | None:
        if not (key.startswith(STATES) and key.endswith(".json")) or "/" in key[len(STATES) :]:
            return None
        try:
            return due_day(state.parse(key[len(STATES) : -len(".json")], body, None), self._dkim)
        except (ValueError, KeyError, TypeError):
            return UNREADABLE  # the write goes through; rotate-due reports the state at every run
