"""The worker's in-process per-subject locks: one subject at a time, other subjects never wait, memory bounded."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from functions.runtime.consumer import SubjectMutexes


def test_one_subject_runs_one_at_a_time_and_entries_are_dropped() -> None:
    mutexes = SubjectMutexes()
    inside, most = 0, 0
    count = threading.Lock()

    def work(_: int) -> None:
        nonlocal inside, most
        with mutexes.hold("a.test"):
            with count:
                inside += 1
                most = max(most, inside)
            threading.Event().wait(0.002)
            with count:
                inside -= 1

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(work, range(40)))
    assert most == 1
    assert len(mutexes) == 0  # the last user removed the entry


def test_other_subjects_do_not_wait() -> None:
    mutexes = SubjectMutexes()
    held, release = threading.Event(), threading.Event()

    def hold_a() -> None:
        with mutexes.hold("a.test"):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=hold_a)
    thread.start()
    assert held.wait(5)
    done = threading.Event()

    def take_b() -> None:
        with mutexes.hold("b.test"):
            done.set()

    threading.Thread(target=take_b).start()
    assert done.wait(5)  # b ran while a was held
    assert len(mutexes) == 1
    release.set()
    thread.join(5)
    assert len(mutexes) == 0


def test_an_exception_releases_the_lock_and_the_entry() -> None:
    mutexes = SubjectMutexes()
    with pytest.raises(RuntimeError), mutexes.hold("a.test"):
        raise RuntimeError("handler failed")
    assert len(mutexes) == 0
    with mutexes.hold("a.test"):
        assert len(mutexes) == 1
