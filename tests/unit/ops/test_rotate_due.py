"""rotate-due: when domains are due, the per-domain jitter, the per-run cap, and the events it publishes."""

from __future__ import annotations

import collections
import datetime as dt
import json
from dataclasses import replace
from typing import Any

import pytest

from functions._core.model import rotation, state
from functions._core.model.state import DomainState, KeyRecord
from functions._core.platform.config import Settings
from functions._core.platform.envelope import parse
from functions.ops import rotate_due
from tests.fakes.settings import make_settings
from tests.fakes.store import MemoryStore

T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
HOUR, DAY = dt.timedelta(hours=1), dt.timedelta(days=1)


def settings(**dkim: Any) -> Settings:
    s = make_settings()
    return replace(s, dkim=replace(s.dkim, **dkim))


def put_domain(store: MemoryStore, domain: str, *keys: KeyRecord, status: str = "provisioned") -> None:
    st = DomainState(domain, {"dns": {"hosted": True}}, tuple(keys), status)
    state.save(store, st, DomainState(domain))


def active_since(when: dt.datetime, selector: str = "fc20261127") -> KeyRecord:
    return KeyRecord(selector, "MIIB", "ACTIVE", when.isoformat(timespec="seconds"))


def test_jitter_is_stable_and_within_the_window() -> None:
    s = settings(rotate_jitter_days=30).dkim
    offsets = [rotation.jitter(f"d{i}.test", s) for i in range(2000)]
    assert all(dt.timedelta(0) <= o < 30 * DAY for o in offsets)
    assert offsets == [rotation.jitter(f"d{i}.test", s) for i in range(2000)]
    assert rotation.jitter("a.test", settings(rotate_jitter_days=0).dkim) == dt.timedelta(0)


def test_due_kinds() -> None:
    s = settings(rotate_jitter_days=0, propagation_seconds=3600).dkim
    st = DomainState("a.test", {}, (active_since(T0),), "provisioned")
    assert rotation.due(st, s) == ("start", T0 + 180 * DAY)
    visible = KeyRecord("fc20270526", "MIIC", "VISIBLE", "2027-05-26T03:00:00+00:00")
    assert rotation.due(replace(st, keys=(*st.keys, visible)), s) == (
        "nudge",
        dt.datetime(2027, 5, 26, 4, tzinfo=dt.UTC),
    )
    retiring = replace(active_since(T0), status="RETIRING", changed_at="2027-05-26T04:00:00+00:00")
    st2 = replace(st, keys=(retiring, active_since(T0 + 180 * DAY, "fc20270526")))
    assert rotation.due(st2, s) == ("nudge", dt.datetime(2027, 6, 2, 4, tzinfo=dt.UTC))
    assert rotation.due(replace(st, status="suspended"), s) is None
    assert rotation.due(replace(st, status="awaiting_dns"), s) is None


def test_only_due_domains_are_published_nudges_first_and_uncapped() -> None:
    store, s = MemoryStore(), settings(rotate_jitter_days=0, rotate_max_per_run=1)
    put_domain(store, "old1.test", active_since(T0))
    put_domain(store, "old2.test", active_since(T0 + HOUR))
    put_domain(store, "young.test", active_since(T0 + 100 * DAY))
    put_domain(store, "busy.test", active_since(T0), KeyRecord("fc20270526", "MIIC", "GENERATED", T0.isoformat()))
    put_domain(store, "busy2.test", active_since(T0), KeyRecord("fc20270526", "MIIC", "PUBLISHED", T0.isoformat()))
    put_domain(store, "gone.test", active_since(T0), status="suspended")
    store.put("domains/broken.test.json", b"{not json")
    sent: list[dict[str, Any]] = []
    report = rotate_due.run(store, s, T0 + 181 * DAY, sent.append)
    assert [(d.domain, d.kind) for d in report.due] == [
        ("busy.test", "nudge"),
        ("busy2.test", "nudge"),
        ("old1.test", "start"),
    ]
    # through the due index (built by this first run): young.test (not due) and gone.test (suspended) are not read
    assert report.deferred == 1 and report.scanned == 5 and report.errors == ("broken.test: JSONDecodeError",)
    full = rotate_due.run(store, s, T0 + 181 * DAY, None, full_scan=True)
    assert full.due == report.due and full.scanned == 7 and full.errors == report.errors
    assert [e["data"]["reason"] for e in sent] == ["nudge", "nudge", "scheduled"]
    assert sent[2]["data"]["key_id"] == "old1.test:fc20261127"
    assert all(e["source"] == "urn:mailplane:scheduler" and e["type"] == "key.rotate" for e in sent)
    for e in sent:  # each one passes the same validation the worker applies
        assert parse(json.dumps(e).encode(), publisher="scheduler").subject == e["subject"]
    again = rotate_due.run(store, s, T0 + 181 * DAY + dt.timedelta(minutes=5), None)  # dry run, same hour
    assert [rotate_due.event_for(d, T0 + 181 * DAY)["id"] for d in again.due] == [e["id"] for e in sent]


def test_event_ids_stay_within_the_envelope_limit() -> None:
    long = ".".join(["a" * 60] * 4) + ".test"
    due = rotate_due.Due(T0, long, "start", "fc20261127")
    event = rotate_due.event_for(due, T0)
    assert len(event["id"]) <= 128 and event["id"].startswith("rotate-")


@pytest.mark.parametrize(("jitter_days", "cap", "peak"), [(30, 100, 12), (2, 25, 25)])
def test_a_thousand_domains_created_together_rotate_spread_out(jitter_days: int, cap: int, peak: int) -> None:
    """1,000 domains whose keys became active in the same second: hourly runs start at most ``cap`` rotations,
    every domain exactly once, none before rotate_after_days, spread over the jitter window."""
    store, s = MemoryStore(), settings(rotate_jitter_days=jitter_days, rotate_max_per_run=cap)
    domains = [f"bulk{i:04d}.test" for i in range(1000)]
    for d in domains:
        put_domain(store, d, active_since(T0))
    first = T0 + 180 * DAY
    dues, errors, scanned = rotate_due.scan(store, s)  # one scan: each domain's due time from its state
    assert scanned == 1000 and not errors and {d.kind for d in dues} == {"start"}
    started: dict[str, dt.datetime] = {}
    per_hour: collections.Counter[dt.datetime] = collections.Counter()
    now = first - 2 * HOUR
    while len(started) < len(domains) and now < first + (jitter_days + 10) * DAY:  # the hourly runs
        chosen, _ = rotate_due.select((d for d in dues if d.domain not in started), now, cap)
        for due in chosen:
            started[due.domain] = now
            per_hour[now] += 1
        now += HOUR
    assert len(started) == 1000
    assert min(started.values()) >= first and max(per_hour.values()) <= min(cap, peak)
    assert max(started.values()) <= first + jitter_days * DAY + HOUR  # the cap delays, it does not starve
    window_hours = jitter_days * 24
    assert len(per_hour) >= min(window_hours, 1000 // cap) * 0.5  # spread over many hours, not a burst
    by_day = collections.Counter((t - first).days for t in started.values())
    assert max(by_day.values()) <= max(2 * 1000 / jitter_days, cap * 24)


def test_a_started_rotation_is_nudged_not_started_again() -> None:
    store, s = MemoryStore(), settings(rotate_jitter_days=0)
    put_domain(store, "a.test", active_since(T0))
    now = T0 + 181 * DAY
    assert [d.kind for d in rotate_due.run(store, s, now, None).due] == ["start"]
    st = state.load(store, "a.test")
    new = KeyRecord("fc20270526", "MIIC", "GENERATED", now.isoformat(), event="x")
    state.save(store, replace(st, keys=(*st.keys, new)), st)
    assert [d.kind for d in rotate_due.run(store, s, now + HOUR, None).due] == ["nudge"]


def test_a_domain_awaiting_the_customers_dns_is_nudged_every_run_until_it_is_active() -> None:
    """A zone hosted elsewhere keeps its key PUBLISHED until the customer's records are there; every run nudges it
    (key.rotate then activates the key, see tests/unit/test_dkim_delegation.py)."""
    s, store = settings(rotate_jitter_days=0), MemoryStore()
    published = KeyRecord("fca", "MIIB", "PUBLISHED", T0.isoformat(timespec="seconds"))
    put_domain(store, "waits.test", published, status="awaiting_dns")
    put_domain(store, "fine.test", active_since(T0))
    dues, errors, scanned = rotate_due.scan(store, s)
    assert scanned == 2 and not errors
    assert [(d.domain, d.kind, d.selector) for d in dues if d.at <= T0 + HOUR] == [("waits.test", "nudge", "fca")]
    assert rotation.due(DomainState("w.test", {}, (published,), "awaiting_dns"), s.dkim) == ("nudge", T0)
