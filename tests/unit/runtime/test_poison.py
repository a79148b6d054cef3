"""Poison isolation: death records, the solo gate, and the owner-gone rule that frees a dead worker's claims."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from functions._core.platform.errors import PoisonError, StoreUnavailable
from functions._core.platform.idempotency import owner_gone
from functions.runtime.poison import MAX_DEATHS, SOLO_AFTER, DeathRecords, Record, SoloGate, delivery_count, suspect
from tests.fakes.store import MemoryStore

BODY = b'{"id": "e1"}'


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_delivery_count_reads_the_quorum_header_and_tolerates_junk() -> None:
    assert delivery_count({}) == 0
    assert delivery_count({"x-delivery-count": 2}) == 2
    assert delivery_count({"x-delivery-count": "x"}) == 0
    assert delivery_count({"x-delivery-count": None}) == 0
    assert not suspect({}) and not suspect({"x-delivery-count": 1})  # a bystander of one death: no record
    assert suspect({"x-delivery-count": 2})


def test_deaths_on_record_make_it_run_alone_and_solo_deaths_make_it_poison() -> None:
    store = MemoryStore()
    records = DeathRecords(store, owner="w1")
    assert records.read(BODY) == Record()
    seen = []
    for _ in range(SOLO_AFTER + MAX_DEATHS):
        record = records.read(BODY)
        assert records.poison(record, 1) is None
        seen.append(record.alone)
        records.starting(BODY, record)  # ... and the process dies: the record stays
    assert seen == [False] * SOLO_AFTER + [True] * MAX_DEATHS
    record = records.read(BODY)
    assert record == Record(SOLO_AFTER + MAX_DEATHS, MAX_DEATHS)
    error = records.poison(record, 6)
    assert isinstance(error, PoisonError)
    assert (
        f"died {SOLO_AFTER + MAX_DEATHS} times" in error.reason
        and f"{MAX_DEATHS} of them while it ran alone" in error.reason
    )
    records.finished(BODY)
    assert records.read(BODY) == Record() and not store.objects


def test_a_run_that_ends_leaves_no_record() -> None:
    store = MemoryStore()
    records = DeathRecords(store, owner="w1")
    records.starting(BODY, Record())
    assert json.loads(store.objects[records.key(BODY)].body)["deaths"] == 1
    records.finished(BODY)
    assert records.read(BODY) == Record()


def test_store_failures_never_stop_the_work() -> None:
    store = MemoryStore()
    records = DeathRecords(store, owner="w1")
    store.faults = [StoreUnavailable("get: down"), StoreUnavailable("put: down"), StoreUnavailable("delete: down")]
    assert records.read(BODY) == Record()
    records.starting(BODY, Record())
    records.finished(BODY)
    store.put(records.key(BODY), b"{torn")
    assert records.read(BODY) == Record()
    with pytest.raises(ValueError):
        DeathRecords(store, owner="w1", limit=0)


def test_solo_runs_alone_and_waits_for_the_running_ones() -> None:
    gate = SoloGate()
    running: list[str] = []
    overlaps: list[list[str]] = []
    guard = threading.Lock()

    def run(name: str, solo: bool) -> None:
        with gate.hold(solo):
            with guard:
                running.append(name)
                if solo and len(running) > 1 or any(r.startswith("solo") for r in running if r != name):
                    overlaps.append(list(running))
            time.sleep(0.02)
            with guard:
                running.remove(name)

    threads = [
        threading.Thread(target=run, args=(f"{'solo' if i % 3 == 0 else 'n'}{i}", i % 3 == 0)) for i in range(12)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert overlaps == []


def test_owner_gone_only_for_a_dead_process_of_this_host() -> None:
    host = socket.gethostname()
    assert owner_gone(f"{host}:{dead_pid()}")
    assert owner_gone(f"{host}:{dead_pid()}:12345")  # a subject lease's owner carries the thread
    assert not owner_gone(f"{host}:{os.getpid()}")
    assert not owner_gone(f"{host}:1")  # alive (init)
    assert not owner_gone(f"other-{host}:{dead_pid()}")
    assert not owner_gone("w1") and not owner_gone("") and not owner_gone(f"{host}:x")
