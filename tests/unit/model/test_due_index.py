"""The due index of rotate-due: kept on every state write, right after a crash at either side of the state write,
repaired from the states when it is wrong, rebuilt when its marker is missing."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest

from functions._core.model import due_index, state
from functions._core.model.state import DomainState, KeyRecord
from functions._core.platform.config import Settings
from functions._core.platform.store import StoredObject
from functions.ops import rotate_due
from tests.fakes.settings import make_settings
from tests.fakes.store import MemoryStore

T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


class CrashError(Exception):
    """The process died here."""


class Crashing(MemoryStore):
    """A store whose process dies at the n-th put of a key under ``prefix`` (before it lands)."""

    def __init__(self) -> None:
        super().__init__()
        self.crash_at: tuple[str, int] | None = None

    def put(self, key: str, body: bytes, **kw: Any) -> str:
        if self.crash_at is not None and key.startswith(self.crash_at[0]):
            prefix, n = self.crash_at
            self.crash_at = (prefix, n - 1)
            if n <= 1:
                self.crash_at = None
                raise CrashError(key)
        return super().put(key, body, **kw)


def settings() -> Settings:
    s = make_settings()
    return replace(s, dkim=replace(s.dkim, rotate_jitter_days=0, rotate_max_per_run=100))


def active(when: dt.datetime, selector: str = "fc20261127") -> KeyRecord:
    return KeyRecord(selector, "MIIB", "ACTIVE", when.isoformat(timespec="seconds"))


def provision(store: Any, domain: str, when: dt.datetime) -> None:
    st = DomainState(domain, {"dns": {"hosted": True}}, (active(when),), "provisioned")
    state.save(store, st, state.load(store, domain))


def index(store: MemoryStore) -> set[str]:
    return {k for k in store.objects if k.startswith(due_index.PREFIX)}


def due(store: MemoryStore, s: Settings, now: dt.datetime) -> list[str]:
    return [d.domain for d in rotate_due.run(store, s, now, None).due]


def built(store: MemoryStore, s: Settings) -> None:
    due_index.rebuild(store, s.dkim, T0)  # the marker: from now on rotate-due trusts the index


def test_every_state_write_keeps_an_entry_on_the_due_day() -> None:
    raw, s = MemoryStore(), settings()
    built(raw, s)
    provision(due_index.IndexedStore(raw, s.dkim), "a.test", T0)
    assert index(raw) == {due_index.entry_key((T0 + 180 * DAY).date(), "a.test")}
    assert due(raw, s, T0 + 179 * DAY) == []
    assert due(raw, s, T0 + 180 * DAY) == ["a.test"]


def test_only_the_entries_up_to_today_are_read() -> None:
    raw, s = MemoryStore(), settings()
    built(raw, s)
    store = due_index.IndexedStore(raw, s.dkim)
    for i in range(20):
        provision(store, f"d{i}.test", T0 + i * DAY)
    report = rotate_due.run(raw, s, T0 + 182 * DAY, None)
    assert [d.domain for d in report.due] == ["d0.test", "d1.test", "d2.test"]
    assert report.scanned == 3  # the 17 others were not read


def test_crash_after_the_state_write_before_the_index_write() -> None:
    """The write-ahead entry landed before the state: the domain is due on its day although the process died."""
    raw, s = Crashing(), settings()
    built(raw, s)
    raw.crash_at = (due_index.PREFIX, 2)  # the entry again after the state write: never happens
    with pytest.raises(CrashError):
        provision(due_index.IndexedStore(raw, s.dkim), "a.test", T0)
    assert state.load(raw, "a.test").status == "provisioned"
    assert due(raw, s, T0 + 180 * DAY) == ["a.test"]


def test_crash_after_the_index_write_before_the_state_write() -> None:
    """An entry for a state that was never written: read once on its day, found stale, removed; nothing due."""
    raw, s = Crashing(), settings()
    built(raw, s)
    store = due_index.IndexedStore(raw, s.dkim)
    provision(store, "a.test", T0)
    raw.crash_at = ("domains/", 1)  # a rotation that moved the due day earlier: the state write never lands
    moved = replace(state.load(raw, "a.test"), keys=(active(T0 - 100 * DAY),))
    with pytest.raises(CrashError):
        state.save(store, moved, state.load(raw, "a.test"))
    early = due_index.entry_key((T0 + 80 * DAY).date(), "a.test")
    assert early in index(raw)
    report = rotate_due.run(raw, s, T0 + 81 * DAY, None)
    assert report.due == () and report.scanned == 1
    assert index(raw) == {due_index.entry_key((T0 + 180 * DAY).date(), "a.test")}  # repaired
    assert due(raw, s, T0 + 180 * DAY) == ["a.test"]


def test_a_moved_due_day_leaves_a_stale_entry_that_its_day_removes() -> None:
    raw, s = MemoryStore(), settings()
    built(raw, s)
    store = due_index.IndexedStore(raw, s.dkim)
    provision(store, "a.test", T0)
    st = state.load(raw, "a.test")
    state.save(store, replace(st, keys=(active(T0 + 10 * DAY),)), st)  # e.g. a new key became active later
    assert len(index(raw)) == 2
    assert due(raw, s, T0 + 180 * DAY) == []
    assert index(raw) == {due_index.entry_key((T0 + 190 * DAY).date(), "a.test")}
    assert due(raw, s, T0 + 190 * DAY) == ["a.test"]


def test_a_deleted_domain_leaves_the_index_on_its_day() -> None:
    raw, s = MemoryStore(), settings()
    built(raw, s)
    store = due_index.IndexedStore(raw, s.dkim)
    provision(store, "a.test", T0)
    st = state.load(raw, "a.test")
    state.save(store, replace(st, status="suspended"), st)
    assert due(raw, s, T0 + 200 * DAY) == [] and index(raw) == set()


def test_the_index_is_rebuilt_from_the_states() -> None:
    """States written without the index (an older version, a restore): the missing marker rebuilds it once;
    `--rebuild-index` after the marker exists finds them too, and removes entries no state backs."""
    raw, s = MemoryStore(), settings()
    provision(raw, "old.test", T0)  # no index at all
    assert due(raw, s, T0 + 180 * DAY) == ["old.test"]
    assert due_index.built(raw)
    provision(raw, "late.test", T0)  # written without the index after it was built
    assert due(raw, s, T0 + 180 * DAY) == ["old.test"]
    raw.put(due_index.entry_key(T0.date(), "ghost.test"), b"{}")  # no state backs it
    indexed, removed = due_index.rebuild(raw, s.dkim, T0 + 180 * DAY)
    assert (indexed, removed) == (2, 1)
    assert due(raw, s, T0 + 180 * DAY) == ["late.test", "old.test"]


def test_a_repair_racing_a_writer_keeps_the_writers_entry() -> None:
    """rotate-due deletes a stale entry on the day a concurrent writer moves the domain to: the writer's second
    create (after its state write) or the repair's re-read puts it back."""
    raw, s = MemoryStore(), settings()
    built(raw, s)
    store = due_index.IndexedStore(raw, s.dkim)
    provision(store, "a.test", T0 + 10 * DAY)  # due on day 190
    stale_day = (T0 + 180 * DAY).date()
    raw.put(due_index.entry_key(stale_day, "a.test"), b"{}")  # e.g. left by an earlier crash

    class Racing(MemoryStore):
        """While the repair deletes the stale entry, a writer moves the domain to exactly that day."""

        def delete(self, key: str) -> None:
            raw.delete(key)
            st = state.load(raw, "a.test")
            state.save(store, replace(st, keys=(active(T0),)), st)

        def get(self, key: str) -> StoredObject | None:
            return raw.get(key)

        def put(self, key: str, body: bytes, **kw: Any) -> str:
            return raw.put(key, body, **kw)

    due_index.settle(Racing(), "a.test", [stale_day], s.dkim)
    assert due_index.entry_key(stale_day, "a.test") in index(raw)
    assert due(raw, s, T0 + 180 * DAY) == ["a.test"]


def test_an_unreadable_state_is_reported_at_every_run() -> None:
    raw, s = MemoryStore(), settings()
    built(raw, s)
    store = due_index.IndexedStore(raw, s.dkim)
    store.put("domains/broken.test.json", b"{not json")
    for hour in range(2):
        report = rotate_due.run(raw, s, T0 + hour * dt.timedelta(hours=1), None)
        assert report.errors == ("broken.test: JSONDecodeError",)


def test_a_replayed_write_and_a_repeated_run_change_nothing() -> None:
    """A handler that replays its state write (same state again) and rotate-due run twice in the same hour: the
    index and the due list stay as they were."""
    raw, s = MemoryStore(), settings()
    built(raw, s)
    store = due_index.IndexedStore(raw, s.dkim)
    provision(store, "a.test", T0)
    provision(store, "b.test", T0 + 30 * DAY)
    before = index(raw)
    st = state.load(raw, "a.test")
    state.save(store, DomainState(st.domain, st.request, st.keys, st.status), st)  # the replay
    provision(store, "a.test", T0)
    assert index(raw) == before
    now = T0 + 181 * DAY
    assert due(raw, s, now) == due(raw, s, now) == ["a.test"]
    assert index(raw) == before
