"""The idempotency ledger on LocalStack S3 (conditional writes for real): claim, replay, refuse, takeover, race.

Every test uses fresh event ids and removes its ledger objects afterwards.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from functions._core.platform.config import Settings, StoreSettings
from functions._core.platform.envelope import Envelope, parse
from functions._core.platform.errors import EventInvalid
from functions._core.platform.idempotency import COMPLETED, IN_PROGRESS, LeaseHeld, Ledger
from functions.adapters.s3 import S3Store, probe_conditional_writes
from tests.conftest import load_event

pytestmark = pytest.mark.stack

NAME = "domain_created"
BUCKET = "mailplane-state"
LEASE = dt.timedelta(minutes=5)
KEEP = dt.timedelta(hours=1)


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


class Stores:
    """S3Stores on the state bucket (one boto3 client each); ``keys`` are removed after the test."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.keys: list[str] = []

    def new(self) -> S3Store:
        return S3Store(self.settings, BUCKET)


@pytest.fixture
def stores(stack_env: dict[str, str]) -> Iterator[Stores]:
    made = Stores(Settings.load(stack_env["MAILPLANE_CONFIG"], stack_env).store)
    yield made
    cleaner = made.new()
    for key in made.keys:
        cleaner.delete(key)


def event(**data: Any) -> Envelope:
    raw = load_event("domain.created")
    raw["id"] = f"ledger-test-{uuid.uuid4()}"
    raw["data"].update(data)
    return parse(json.dumps(raw).encode(), publisher="billing")


def same_id(ev: Envelope, **data: Any) -> Envelope:
    raw = dict(ev.raw)
    raw["data"] = {**raw["data"], **data}
    return parse(json.dumps(raw).encode(), publisher="billing")


def ledger(store: S3Store, owner: str, clock: Clock | None = None) -> Ledger:
    return Ledger(store, owner=owner, clock=clock if clock is not None else Clock(), lease=LEASE, keep=KEEP)


def record(store: S3Store, key: str) -> dict[str, Any]:
    obj = store.get(key)
    assert obj is not None
    doc: dict[str, Any] = json.loads(obj.body)
    return doc


def test_store_passes_the_probe(stores: Stores) -> None:
    probe_conditional_writes(stores.new())


def test_claim_complete_replay_refuse(stores: Stores) -> None:
    store, ev = stores.new(), event()
    first = ledger(store, "w1")
    stores.keys.append(first.key(NAME, ev))
    with first.claim(NAME, ev) as claim:
        assert not claim.completed
        assert record(store, claim.key)["status"] == IN_PROGRESS
        claim.complete({"status": "provisioned", "event_id": ev.id})
    assert record(store, claim.key)["status"] == COMPLETED
    with ledger(stores.new(), "w2").claim(NAME, ev) as replay:
        assert replay.completed and replay.result == {"status": "provisioned", "event_id": ev.id}
    with (
        pytest.raises(EventInvalid, match="same id, different body"),
        ledger(store, "w2").claim(NAME, same_id(ev, customer_id="C-99999")),
    ):
        pass


def test_held_lease_then_takeover_after_expiry(stores: Stores) -> None:
    store, ev, clock = stores.new(), event(), Clock()
    old = ledger(store, "w1", clock).claim(NAME, ev)
    stores.keys.append(old.key)
    old.__enter__()
    with pytest.raises(LeaseHeld), ledger(stores.new(), "w2", clock).claim(NAME, ev):
        pass
    clock.now += LEASE
    with ledger(stores.new(), "w2", clock).claim(NAME, ev) as new:
        assert new.attempt == 2 and record(store, new.key)["owner"] == "w2"
        with pytest.raises(LeaseHeld):  # If-Match with the stale ETag -> 412
            old.complete({"status": "late"})
        new.complete({"status": "provisioned"})
    assert record(store, new.key)["result"] == {"status": "provisioned"}


def test_exception_releases(stores: Stores) -> None:
    store, ev = stores.new(), event()
    claim = ledger(store, "w1").claim(NAME, ev)
    stores.keys.append(claim.key)
    with pytest.raises(RuntimeError), claim:
        raise RuntimeError("handler failed")
    assert store.get(claim.key) is None


def race(stores: Stores, ev: Envelope) -> dict[str, str]:
    """Two workers with their own clients claim ``ev`` at once; the winner keeps its claim. Returns owner -> result."""
    barrier = threading.Barrier(2)
    results: dict[str, str] = {}

    def worker(owner: str) -> None:
        claim = ledger(stores.new(), owner).claim(NAME, ev)
        barrier.wait()
        try:
            claim.__enter__()
            results[owner] = "won"
        except LeaseHeld:
            results[owner] = "held"
        except Exception as exc:  # surfaced by the caller's assertion
            results[owner] = repr(exc)

    threads = [threading.Thread(target=worker, args=(owner,)) for owner in ("w1", "w2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_two_threads_race_exactly_one_wins(stores: Stores) -> None:
    for _ in range(5):
        ev = event()
        key = ledger(stores.new(), "x").key(NAME, ev)
        stores.keys.append(key)
        results = race(stores, ev)
        assert sorted(results.values()) == ["held", "won"], results
        winner = next(owner for owner, result in results.items() if result == "won")
        assert record(stores.new(), key)["owner"] == winner
