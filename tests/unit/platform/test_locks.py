from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from functions._core.platform.errors import StoreUnreadable
from functions._core.platform.idempotency import LeaseHeld
from functions._core.platform.locks import SubjectLocks
from functions._core.platform.store import StoredObject
from tests.fakes.store import MemoryStore

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_a_held_subject_refuses_a_second_holder_and_frees_on_exit() -> None:
    store = MemoryStore()
    locks = SubjectLocks(store, lease=timedelta(seconds=30), clock=lambda: T0)
    with locks.hold("alpha.test"):
        with pytest.raises(LeaseHeld), locks.hold("alpha.test"):
            pass
        with locks.hold("beta.test"):  # other subjects run in parallel
            pass
    with locks.hold("alpha.test"):  # released
        pass
    assert list(store.list("locks/")) == []


def test_an_expired_lease_is_taken_over() -> None:
    store = MemoryStore()
    now = [T0]
    locks = SubjectLocks(store, lease=timedelta(seconds=30), clock=lambda: now[0])
    crashed = locks.hold("alpha.test")
    crashed.__enter__()  # a holder that never releases (killed)
    now[0] = T0 + timedelta(seconds=31)
    with locks.hold("alpha.test"):
        pass


def test_concurrent_holders_never_overlap() -> None:
    store = MemoryStore()
    locks = SubjectLocks(store, lease=timedelta(seconds=30))
    inside, overlaps, refused = [0], [0], [0]
    guard = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(20):
            try:
                with locks.hold("alpha.test"):
                    with guard:
                        inside[0] += 1
                        overlaps[0] += inside[0] > 1
                    time.sleep(0.001)
                    with guard:
                        inside[0] -= 1
            except LeaseHeld:
                with guard:
                    refused[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps[0] == 0 and refused[0] > 0


def test_a_lease_of_a_dead_process_of_this_host_is_taken_over_at_once() -> None:
    store = MemoryStore()
    locks = SubjectLocks(store, lease=timedelta(seconds=30), clock=lambda: T0)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    key = locks.key("alpha.test")
    until = (T0 + timedelta(seconds=30)).isoformat()
    store.put(
        key,
        json.dumps({"subject": "alpha.test", "owner": f"{socket.gethostname()}:{proc.pid}:7", "until": until}).encode(),
    )
    with locks.hold("alpha.test"):  # its holder was killed: no wait for the lease
        pass
    store.put(
        key, json.dumps({"subject": "alpha.test", "owner": f"{socket.gethostname()}:1:7", "until": until}).encode()
    )
    with pytest.raises(LeaseHeld), locks.hold("alpha.test"):  # alive: held
        pass


def test_a_torn_lease_is_held_for_a_lease_from_its_last_write_then_taken_over() -> None:
    class Torn(MemoryStore):
        def get(self, key: str) -> StoredObject | None:
            obj = super().get(key)
            if obj is not None and obj.body == b"torn":
                raise StoreUnreadable(f"get {key}: ResponseStreamingError", etag=obj.etag, modified=T0.timestamp())
            return obj

    store = Torn()
    now = [T0 + timedelta(seconds=10)]
    locks = SubjectLocks(store, lease=timedelta(seconds=30), clock=lambda: now[0])
    store.put(locks.key("alpha.test"), b"torn")
    with pytest.raises(LeaseHeld, match="unreadable lease"), locks.hold("alpha.test"):
        pass
    now[0] = T0 + timedelta(seconds=31)
    with locks.hold("alpha.test"):
        pass
    assert list(store.list("locks/")) == []


def test_a_release_within_half_the_lease_deletes_without_reading() -> None:
    store = MemoryStore()
    locks = SubjectLocks(store, lease=timedelta(seconds=30), clock=lambda: T0)
    with locks.hold("alpha.test"):
        pass
    assert store.gets == 0 and list(store.list("locks/")) == []


def test_a_release_after_half_the_lease_checks_it_is_still_ours() -> None:
    """Past half its lease a block may have lost it to another worker: that worker's lease is never deleted."""
    store = MemoryStore()
    now = [T0]
    locks = SubjectLocks(store, lease=timedelta(seconds=30), clock=lambda: now[0])
    with locks.hold("alpha.test"):
        now[0] = T0 + timedelta(seconds=31)  # expired: another worker takes it over
        other = SubjectLocks(store, lease=timedelta(seconds=30), clock=lambda: now[0])
        taken = other.hold("alpha.test")
        taken.__enter__()
    assert store.gets >= 1 and list(store.list("locks/")) == [locks.key("alpha.test")]  # the other's, kept
