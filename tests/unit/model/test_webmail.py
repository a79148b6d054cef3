"""Webmail readiness: a debounced SOGo restart per burst, a domain ready only after a restart requested after its add.

Workers are played one call at a time against one shared store and one Mailcow model (the simulator's SOGo view),
with a clock the test moves.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from functions._core.model import state, webmail
from functions._core.model.ports import MailDomain, Ports
from functions._core.platform.errors import MailcowUnavailable
from tests.fakes.dns import FakeDns
from tests.fakes.mailcow import fake_mailcow
from tests.fakes.pmg import fake_pmg
from tests.fakes.settings import make_settings
from tests.fakes.store import MemoryStore

T0 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)
INTERVAL = 30.0


class World:
    def __init__(self, interval: float = INTERVAL) -> None:
        self.now = T0
        self.mail, self.model = fake_mailcow()
        self.ports = Ports(
            self.mail,
            fake_pmg()[0],
            FakeDns(),
            MemoryStore(),
            MemoryStore(),
            make_settings(sogo_restart_interval=interval),
            clock=lambda: self.now,
        )

    def tick(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)

    def add(self, domain: str) -> state.DomainState:
        """What provisioning does: add the Mailcow domain, then record the mark."""
        self.mail.add_domain(MailDomain(domain, "d", 10, 10, 1024, 512, 256))
        st = state.save(self.ports.state, state.DomainState(domain), state.DomainState(domain))
        return webmail.mark_added(self.ports, st, added=True)

    def settle(self, domain: str) -> webmail.Webmail:
        return webmail.settle(self.ports, domain, state.load(self.ports.state, domain))

    @property
    def restarts(self) -> int:
        return self.model.sogo_restarts


def test_a_burst_gets_exactly_one_restart_after_the_interval() -> None:
    w = World()
    names = [f"d{i}.test" for i in range(20)]
    for name in names:
        w.add(name)
        w.tick(0.05)
    first = w.settle(names[0])
    assert not first.ready and "due at" in first.waiting  # the burst is pending, nothing restarted yet
    for _ in range(3):  # every worker retries within the interval: still one pending burst, no restart
        assert not any(w.settle(n).ready for n in names)
        w.tick(5)
    assert w.restarts == 0 and w.model.sogo_domains == set()
    w.tick(INTERVAL)
    results = [w.settle(n) for n in names]
    assert all(r.ready for r in results) and w.restarts == 1
    assert [r.restarted for r in results] == [True] + [False] * 19  # the first retry after the interval ran it
    assert w.model.sogo_domains == set(names)
    assert state.load(w.ports.state, names[5]).webmail["ready_by"] == 1


def test_a_domain_added_after_the_restart_needs_a_later_one_not_before_the_interval() -> None:
    w = World()
    w.add("a.test")
    w.settle("a.test")
    w.tick(INTERVAL)
    assert w.settle("a.test").ready and w.restarts == 1
    w.add("b.test")  # added after restart 1 was requested: not covered by it
    assert not w.settle("b.test").ready
    w.tick(INTERVAL - 1)
    assert not w.settle("b.test").ready and w.restarts == 1
    w.tick(1)
    assert w.settle("b.test").ready and w.restarts == 2
    assert w.model.sogo_domains == {"a.test", "b.test"}
    assert w.settle("a.test").ready and w.restarts == 2  # ready stays ready, no more restarts


def test_restarts_are_spaced_by_the_interval_even_for_a_new_burst() -> None:
    w = World()
    w.add("a.test")
    w.settle("a.test")
    w.tick(INTERVAL)
    w.settle("a.test")
    w.add("b.test")
    w.tick(INTERVAL + 5)  # b's burst starts now, long after restart 1: it still gathers for one interval
    assert not w.settle("b.test").ready
    w.tick(INTERVAL)
    assert w.settle("b.test").ready and w.restarts == 2


def test_a_restart_claimed_by_another_worker_covers_the_waiting_ones() -> None:
    w = World()
    w.add("a.test")
    w.add("b.test")
    w.settle("a.test")
    w.tick(INTERVAL)
    rec = webmail.load_restarts(w.ports.state)
    claim = dataclasses.replace(rec, requested=1, requested_at=w.now.isoformat(), pending_since=None)
    w.ports.state.put(webmail.RECORD, claim.body(), if_match=rec.etag)  # a worker claimed it, still restarting
    running = w.settle("b.test")
    assert not running.ready and "is running" in running.waiting and w.restarts == 0  # no second restart
    w.ports.mail.restart_sogo()  # that worker's restart finishes and is recorded
    done = dataclasses.replace(webmail.load_restarts(w.ports.state), succeeded=1, succeeded_at=w.now.isoformat())
    w.ports.state.put(webmail.RECORD, done.body())
    assert w.settle("b.test").ready and w.settle("a.test").ready and w.restarts == 1


def test_a_failed_restart_leaves_the_burst_pending_and_is_retried_after_the_interval() -> None:
    w = World()
    w.add("a.test")
    w.settle("a.test")
    w.tick(INTERVAL)
    w.model.set_faults({"sogo_restart_fail": 1})
    with pytest.raises(MailcowUnavailable, match="Error: "):
        w.settle("a.test")
    rec = webmail.load_restarts(w.ports.state)
    assert (rec.requested, rec.failed, rec.succeeded) == (1, 1, 0) and rec.pending_since is not None
    assert not w.settle("a.test").ready  # not "running": the failed one is over; due again one interval later
    assert webmail.readiness(w.ports, state.load(w.ports.state, "a.test"))[1].endswith(rec.last_error or "?")
    w.tick(INTERVAL)
    assert w.settle("a.test").ready and w.restarts == 1 and w.model.sogo_domains == {"a.test"}


def test_interval_zero_restarts_at_once_and_sogo_off_never() -> None:
    w = World(interval=0)
    w.add("a.test")
    assert w.settle("a.test").ready and w.restarts == 1
    off = World()
    off.ports = dataclasses.replace(
        off.ports,
        settings=dataclasses.replace(
            off.ports.settings, mailcow=dataclasses.replace(off.ports.settings.mailcow, sogo_restart=False)
        ),
    )
    off.add("a.test")
    assert off.settle("a.test").ready and off.restarts == 0


def test_readiness_reads_only() -> None:
    w = World()
    w.add("a.test")
    ok, what = webmail.readiness(w.ports, state.load(w.ports.state, "a.test"))
    assert not ok and what.startswith("waiting")
    assert webmail.load_restarts(w.ports.state).pending_since is None  # status never starts a burst
    ok, what = webmail.readiness(w.ports, state.DomainState("old.test", status="provisioned"))
    assert not ok and what.startswith("unknown")
    w.settle("a.test")
    w.tick(INTERVAL)
    w.settle("a.test")
    ok, what = webmail.readiness(w.ports, state.load(w.ports.state, "a.test"))
    assert ok and what.startswith("ready: SOGo restart 1")


def test_a_re_created_domain_does_not_inherit_readiness_from_before_its_deletion() -> None:
    w = World(interval=0)
    w.add("a.test")
    assert w.settle("a.test").ready and w.restarts == 1
    st = state.load(w.ports.state, "a.test")
    deleted = state.save(w.ports.state, dataclasses.replace(st, status="deleted"), st)
    # re-created; the worker crashed after the add, so the retry does not see "added"
    again = webmail.mark_added(w.ports, deleted, added=False)
    assert again.webmail == {"after": 1}
    assert webmail.mark_added(w.ports, again, added=False) == again  # kept across retries
    assert w.settle("a.test").ready and w.restarts == 2
