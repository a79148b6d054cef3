"""The idempotency ledger against MemoryStore: claim, replay, refuse, lease, takeover, release, races."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from functions._core.platform.envelope import Envelope, parse
from functions._core.platform.errors import EventInvalid, StoreUnavailable, StoreUnreadable, TransientError
from functions._core.platform.idempotency import COMPLETED, IN_PROGRESS, LeaseHeld, Ledger, ledger_key
from functions._core.platform.store import StoredObject
from tests.conftest import load_event
from tests.fakes.store import MemoryStore

NAME = "domain_created"
T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
LEASE = dt.timedelta(minutes=5)
KEEP = dt.timedelta(hours=1)
OUTCOME = {"function": NAME, "event_id": "b1f0c6de-3a43-4d0e-9a55-1f0b7c8e2a01", "status": "provisioned"}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta) -> None:
        self.now += delta


class AtomicStore(MemoryStore):
    """MemoryStore with each call atomic across threads, as S3 is per key."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def get(self, key: str) -> StoredObject | None:
        with self.lock:
            return super().get(key)

    def put(self, key: str, body: bytes, **kwargs: Any) -> str:
        with self.lock:
            return super().put(key, body, **kwargs)

    def delete(self, key: str) -> None:
        with self.lock:
            super().delete(key)


class HookedStore(MemoryStore):
    """Runs ``before_get`` / ``after_get`` once, to interleave another writer at an exact point."""

    def __init__(self) -> None:
        super().__init__()
        self.before_get: Callable[[], None] | None = None
        self.after_get: Callable[[], None] | None = None

    def get(self, key: str) -> StoredObject | None:
        hook, self.before_get = self.before_get, None
        if hook is not None:
            hook()
        found = super().get(key)
        hook, self.after_get = self.after_get, None
        if hook is not None:
            hook()
        return found


def event(name: str = "domain.created", **data: Any) -> Envelope:
    raw = load_event(name)
    raw["data"].update(data)
    return parse(json.dumps(raw).encode(), publisher="billing")


def ledger(store: MemoryStore, owner: str = "w1", clock: Callable[[], dt.datetime] | None = None) -> Ledger:
    return Ledger(store, owner=owner, clock=clock if clock is not None else (lambda: T0), lease=LEASE, keep=KEEP)


def stored(store: MemoryStore, ev: Envelope | None = None) -> dict[str, Any]:
    obj = store.objects[ledger_key(NAME, ev if ev is not None else event())]
    doc: dict[str, Any] = json.loads(obj.body)
    return doc


# --- key ------------------------------------------------------------------------------------------------------------


def test_key_is_function_name_plus_hash_of_source_and_id() -> None:
    ev = event()
    digest = hashlib.sha256(b"urn:mailplane:billing/b1f0c6de-3a43-4d0e-9a55-1f0b7c8e2a01").hexdigest()
    assert ledger_key(NAME, ev) == f"idem/domain_created/{digest}.json"
    assert ledger(MemoryStore(), "a").key(NAME, ev) == ledger(MemoryStore(), "b").key(NAME, ev)


@pytest.mark.parametrize("bad", ["functions.domain_created.handle", "DomainCreated", "", "a/b", "handle()"])
def test_key_refuses_code_locations(bad: str) -> None:
    with pytest.raises(ValueError, match="literal handler NAME"):
        ledger_key(bad, event())


def test_settings_are_checked() -> None:
    store = MemoryStore()
    with pytest.raises(ValueError):
        Ledger(store, owner="", lease=LEASE, keep=KEEP)
    with pytest.raises(ValueError):
        Ledger(store, owner="w", lease=dt.timedelta(0), keep=KEEP)
    with pytest.raises(ValueError):
        Ledger(store, owner="w", lease=KEEP, keep=LEASE)
    naive = Ledger(store, owner="w", clock=lambda: dt.datetime(2026, 1, 1), lease=LEASE, keep=KEEP)
    with pytest.raises(ValueError, match="timezone-aware"), naive.claim(NAME, event()):
        pass


# --- claim, complete, replay ----------------------------------------------------------------------------------------


def test_first_claim_writes_in_progress_with_a_lease() -> None:
    store = MemoryStore()
    with ledger(store).claim(NAME, event()) as claim:
        assert not claim.completed and claim.result is None and claim.attempt == 1
        doc = stored(store)
        assert doc["status"] == IN_PROGRESS and doc["owner"] == "w1" and doc["attempt"] == 1
        assert doc["lease_until"] == "2026-11-27T10:05:00.000Z" and doc["expires_at"] == "2026-11-27T11:00:00.000Z"
        assert doc["result"] is None and doc["completed_at"] is None
        assert len(doc["payload_hash"]) == 64 and doc["event_id"] == event().id
        claim.complete(OUTCOME)
    doc = stored(store)
    assert doc["status"] == COMPLETED and doc["result"] == OUTCOME
    assert doc["completed_at"] == "2026-11-27T10:00:00.000Z" and doc["expires_at"] == "2026-11-27T11:00:00.000Z"
    assert doc["lease_until"] == doc["completed_at"]  # a lease expiry is always written
    assert claim.completed and claim.result == OUTCOME


def test_completed_record_is_replayed_without_writes() -> None:
    store = MemoryStore()
    clock = Clock()
    with ledger(store, clock=clock).claim(NAME, event()) as claim:
        claim.complete(OUTCOME)
    clock.advance(dt.timedelta(minutes=30))
    puts = store.puts
    with ledger(store, "w2", clock).claim(NAME, event()) as replay:
        assert replay.completed and replay.result == OUTCOME
    assert store.puts == puts and stored(store)["status"] == COMPLETED  # the replay left the record alone
    with pytest.raises(RuntimeError), ledger(store, "w2", clock).claim(NAME, event()) as again:
        again.complete(OUTCOME)


def test_replay_ignores_key_order_and_idn_spelling() -> None:
    store = MemoryStore()
    with ledger(store).claim(NAME, event()) as claim:
        claim.complete(OUTCOME)
    raw = load_event("domain.created")
    reordered = parse(json.dumps(dict(reversed(list(raw.items())))).encode(), publisher="billing")
    with ledger(store, "w2").claim(NAME, reordered) as replay:
        assert replay.completed


def test_same_id_different_body_is_refused() -> None:
    store = MemoryStore()
    with ledger(store).claim(NAME, event()) as claim:
        claim.complete(OUTCOME)
    changed = event(customer_id="C-99999")
    with pytest.raises(EventInvalid, match="same id, different body"), ledger(store, "w2").claim(NAME, changed):
        pass
    assert stored(store)["result"] == OUTCOME  # untouched


def test_same_id_different_body_is_refused_while_in_progress() -> None:
    store = MemoryStore()
    with ledger(store).claim(NAME, event()):
        with pytest.raises(EventInvalid), ledger(store, "w2").claim(NAME, event(customer_id="C-99999")):
            pass
        assert stored(store)["status"] == IN_PROGRESS  # the refusal did not release our claim


def test_outcome_may_hold_read_only_mappings() -> None:
    store = MemoryStore()
    with ledger(store).claim(NAME, event()) as claim:
        claim.complete({**OUTCOME, "detail": {"plan": event().data["plan"]}})  # event data is a MappingProxyType
    assert stored(store)["result"]["detail"]["plan"]["mailboxes"] == 10
    other = MemoryStore()
    with pytest.raises(TypeError), ledger(other).claim(NAME, event()) as claim:
        claim.complete({"detail": {1, 2}})
    assert other.objects == {}  # not JSON: nothing completed, the claim released


def test_other_functions_have_their_own_records() -> None:
    store = MemoryStore()
    with ledger(store).claim(NAME, event()) as claim:
        claim.complete(OUTCOME)
    with ledger(store).claim("key_rotate", event()) as other:
        assert not other.completed
        other.complete({"status": "rotated"})
    assert len(store.objects) == 2


# --- leases ---------------------------------------------------------------------------------------------------------


def test_valid_lease_is_held() -> None:
    store = MemoryStore()
    clock = Clock()
    with ledger(store, "w1", clock).claim(NAME, event()):
        clock.advance(LEASE - dt.timedelta(seconds=1))
        with pytest.raises(LeaseHeld, match="held by w1") as info, ledger(store, "w2", clock).claim(NAME, event()):
            pass
        assert isinstance(info.value, TransientError)
        assert stored(store)["owner"] == "w1"


def test_claim_of_a_dead_process_of_this_host_is_taken_over_at_once() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    store = MemoryStore()
    dead = f"{socket.gethostname()}:{proc.pid}"
    ledger(store, dead).claim(NAME, event()).__enter__()  # killed mid-run: the record stays IN_PROGRESS
    with ledger(store, "w2").claim(NAME, event()) as claim:  # no wait for the lease
        assert claim.attempt == 2
        claim.complete(OUTCOME)
    other = MemoryStore()
    ledger(other, f"{socket.gethostname()}:1").claim(NAME, event()).__enter__()  # a live process of this host
    with pytest.raises(LeaseHeld), ledger(other, "w2").claim(NAME, event()):
        pass


def test_expired_lease_is_taken_over_and_the_old_owner_loses() -> None:
    store = MemoryStore()
    clock = Clock()
    old = ledger(store, "w1", clock).claim(NAME, event())
    old.__enter__()
    clock.advance(LEASE)
    with ledger(store, "w2", clock).claim(NAME, event()) as new:
        assert not new.completed and new.attempt == 2
        doc = stored(store)
        assert (doc["owner"], doc["attempt"], doc["status"]) == ("w2", 2, IN_PROGRESS)
        assert doc["lease_until"] == "2026-11-27T10:10:00.000Z"
        with pytest.raises(LeaseHeld, match="lease lost"):
            old.complete({"status": "late"})
        old.__exit__(None, None, None)  # must not delete the new owner's record
        assert stored(store)["owner"] == "w2"
        new.complete(OUTCOME)
    assert stored(store)["result"] == OUTCOME


def test_lost_lease_is_logged_loudly(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    clock = Clock()
    with ledger(store, "w1", clock).claim(NAME, event()) as old:
        clock.advance(LEASE + dt.timedelta(seconds=1))
        with ledger(store, "w2", clock).claim(NAME, event()) as new:
            with caplog.at_level(logging.ERROR, "mailplane.idempotency"), pytest.raises(LeaseHeld):
                old.complete(OUTCOME)
            new.complete(OUTCOME)
    assert any(r.levelno == logging.ERROR and "LEASE LOST" in r.getMessage() for r in caplog.records)


def test_expired_completed_record_runs_again() -> None:
    store = MemoryStore()
    clock = Clock()
    with ledger(store, "w1", clock).claim(NAME, event()) as claim:
        claim.complete(OUTCOME)
    clock.advance(KEEP)
    with ledger(store, "w2", clock).claim(NAME, event(customer_id="C-1")) as again:
        assert not again.completed and again.attempt == 2  # past expires_at even a new body may run
        again.complete({"status": "again"})


def test_unreadable_record_is_taken_over() -> None:
    store = MemoryStore()
    store.put(ledger_key(NAME, event()), b"{not json")
    with ledger(store).claim(NAME, event()) as claim:
        assert claim.attempt == 1
        claim.complete(OUTCOME)
    assert stored(store)["status"] == COMPLETED


class TornStore(MemoryStore):
    """An object whose body cannot be fetched (LocalStack's torn object after an aborted PUT): every get of it
    raises StoreUnreadable with its real ETag, as S3Store does after its in-place retries."""

    def __init__(self, torn: str, modified: dt.datetime) -> None:
        super().__init__()
        self.torn, self.modified = torn, modified

    def get(self, key: str) -> StoredObject | None:
        obj = super().get(key)
        if key == self.torn and obj is not None and obj.body == b"torn":
            raise StoreUnreadable(
                f"get {key}: ResponseStreamingError", etag=obj.etag, modified=self.modified.timestamp()
            )
        return obj


def test_record_whose_body_cannot_be_fetched_is_held_for_a_lease_then_taken_over() -> None:
    key = ledger_key(NAME, event())
    store = TornStore(key, modified=T0)
    store.put(key, b"torn")
    clock = Clock()
    with pytest.raises(LeaseHeld, match="unreadable record, held until"):  # it may be a live claim
        ledger(store, clock=clock).claim(NAME, event()).__enter__()
    clock.advance(LEASE)
    with ledger(store, clock=clock).claim(NAME, event()) as claim:  # then it is a lost one: taken over (If-Match)
        claim.complete(OUTCOME)
    assert stored(store)["status"] == COMPLETED
    with ledger(store, clock=clock).claim(NAME, event()) as again:
        assert again.completed and again.result == OUTCOME


def test_losing_the_takeover_race_gives_back() -> None:
    store = HookedStore()
    clock = Clock()
    ledger(store, "w1", clock).claim(NAME, event()).__enter__()  # claimed and abandoned (a crashed worker)
    clock.advance(LEASE)

    def rival() -> None:
        ledger(store, "w3", clock).claim(NAME, event()).__enter__()  # takes it over between our get and put

    store.after_get = rival
    with pytest.raises(LeaseHeld, match="lost the race"), ledger(store, "w2", clock).claim(NAME, event()):
        pass
    assert stored(store)["owner"] == "w3"


def test_record_released_between_put_and_get_is_claimed_again() -> None:
    store = HookedStore()
    holder = ledger(store, "w1").claim(NAME, event())
    holder.__enter__()
    store.before_get = lambda: holder.__exit__(None, None, None)  # released right after our put-if-absent failed
    with ledger(store, "w2").claim(NAME, event()) as claim:  # put 412 -> get: None -> put-if-absent again
        assert not claim.completed and claim.attempt == 1
        claim.complete(OUTCOME)
    assert stored(store)["owner"] == "w2"


# --- release --------------------------------------------------------------------------------------------------------


def test_exception_releases_the_claim_and_propagates() -> None:
    store = MemoryStore()
    with pytest.raises(StoreUnavailable, match="boom"), ledger(store).claim(NAME, event()):
        raise StoreUnavailable("boom")
    assert store.objects == {}
    with ledger(store, "w2").claim(NAME, event()) as retry:  # a retry can run
        assert not retry.completed and retry.attempt == 1
        retry.complete(OUTCOME)


def test_leaving_without_complete_releases(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    with caplog.at_level(logging.WARNING, "mailplane.idempotency"), ledger(store).claim(NAME, event()):
        pass
    assert store.objects == {} and "without complete()" in caplog.text


def test_failed_release_does_not_mask_the_error(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    with pytest.raises(KeyError), ledger(store).claim(NAME, event()):
        store.faults.append(StoreUnavailable("down"))
        raise KeyError("handler bug")
    assert "cannot release" in caplog.text
    assert stored(store)["status"] == IN_PROGRESS  # left to its lease expiry


def test_failed_complete_releases() -> None:
    store = MemoryStore()
    with pytest.raises(StoreUnavailable), ledger(store).claim(NAME, event()) as claim:
        store.faults.append(StoreUnavailable("down"))
        claim.complete(OUTCOME)
    assert store.objects == {}


def test_store_failure_on_enter_propagates() -> None:
    store = MemoryStore()
    store.faults.append(StoreUnavailable("down"))
    with pytest.raises(StoreUnavailable), ledger(store).claim(NAME, event()):
        pass
    assert store.objects == {}


# --- concurrency ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("round_", range(20))
def test_two_threads_race_exactly_one_wins(round_: int) -> None:
    store = AtomicStore()
    ev = event()
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}
    inside = threading.Event()
    loser_done = threading.Event()

    def worker(owner: str) -> None:
        claim = ledger(store, owner).claim(NAME, ev)
        barrier.wait()
        try:
            with claim:
                outcomes[owner] = "replayed" if claim.completed else "won"
                inside.set()
                loser_done.wait(5)  # hold the claim until the other thread has tried
                claim.complete({"winner": owner})
        except LeaseHeld:
            outcomes[owner] = "held"
            inside.wait(5)
            loser_done.set()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes.values()) == ["held", "won"], outcomes
    winner = next(o for o, v in outcomes.items() if v == "won")
    assert stored(store, ev)["result"] == {"winner": winner}


def test_sweep_deletes_only_expired_records_and_nothing_else() -> None:
    """The sweep for stores without a lifecycle rule: records past expires_at go, the rest and foreign objects stay."""
    from functions._core.platform.idempotency import sweep

    store = MemoryStore()
    for i, when in enumerate((T0, T0 + 2 * KEEP)):
        raw = load_event("domain.created")
        raw["id"] = f"sweep-{i}"
        ev = parse(json.dumps(raw).encode(), publisher="billing")
        with ledger(store, clock=lambda when=when: when).claim(NAME, ev) as claim:
            claim.complete(OUTCOME)
    store.put("idem/domain_created/junk.json", b"{not a record")
    store.put("domains/a.test.json", b"{}")
    now = T0 + KEEP + dt.timedelta(minutes=1)  # the first record expired, the second not yet
    dry = sweep(store, now, apply=False)
    assert (dry.expired, dry.kept, dry.unreadable) == (1, 1, 1) and len(store.objects) == 4
    done = sweep(store, now, apply=True)
    assert done == dry and len(store.objects) == 3
    assert "domains/a.test.json" in store.objects and "idem/domain_created/junk.json" in store.objects
    assert sweep(store, now, apply=True).expired == 0
