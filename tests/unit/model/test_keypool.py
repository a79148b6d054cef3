"""The sealed key pool (functions/_core/model/keypool.py): taken by compare-and-set, sealed at rest, crash-safe, and
an empty or failing pool falls back to generating the key inline."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import logging
import threading
from typing import Any

import pytest

from functions import domain_created
from functions._core.model import keys, state
from functions._core.model.keypool import PREFIX, TOMBSTONE, KeyPool
from functions._core.model.ports import Ports
from functions._core.platform.config import Secret
from functions._core.platform.envelope import Envelope, parse
from functions._core.platform.errors import StoreUnavailable, TransientError
from functions._core.platform.store import StoredObject
from tests.conftest import load_event
from tests.fakes.dns import FakeDns
from tests.fakes.mailcow import fake_mailcow
from tests.fakes.pmg import fake_gateway
from tests.fakes.recorder import Recorder
from tests.fakes.settings import make_settings
from tests.fakes.store import MemoryStore

NOW = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
KEK = make_settings().dkim.key_encryption_key


def pool(store: MemoryStore, size: int = 4, batch: int = 1) -> KeyPool:
    return KeyPool(store, KEK, size=size, bits=2048, batch=batch)


def event(domain: str = "alpha.test", **data: Any) -> Envelope:
    raw = load_event("domain.created")
    raw["subject"] = domain
    raw["id"] = f"id-{domain}"
    raw["data"].update(data, domain=domain)
    return parse(json.dumps(raw).encode(), publisher="billing")


def make_ports(store: MemoryStore, kp: KeyPool | None, *zones: str) -> tuple[Ports, Recorder]:
    fake_dns = FakeDns()
    for z in zones or ("alpha.test",):
        fake_dns.add_zone(z)
    settings = make_settings()
    gw = fake_gateway(settings)
    gateway = Recorder(gw.client)
    ports = Ports(
        mail=fake_mailcow()[0],
        gateway=gateway,
        dns=fake_dns,
        state=store,
        web=MemoryStore(),
        settings=settings,
        clock=lambda: NOW,
        smtp=gw.smtp,
        keypool=kp,
    )
    return ports, gateway


def live(store: MemoryStore) -> list[str]:
    return [k for k, o in store.objects.items() if k.startswith(PREFIX) and o.body != TOMBSTONE]


def stored_public(ports: Ports, domain: str) -> str:
    st = state.load(ports.state, domain)
    assert st.current is not None
    return state.load_key(ports.state, domain, st.current.selector, ports.settings).public_b64


# ------------------------------------------------------------------------------------------------ the pool itself


def test_refill_fills_to_the_target_and_take_returns_a_working_key() -> None:
    store = MemoryStore()
    kp = pool(store, size=3)
    assert kp.refill().added == 3 and kp.refill().added == 0
    pair = kp.take("sel1")
    assert pair is not None and pair.selector == "sel1"
    # the private and the public half belong together: a signature by one verifies with the other
    assert keys.probe_verifies("alpha.test", "sel1", pair.private_pem, lambda name: pair.txt.encode())
    assert len(live(store)) == 2


def test_two_takers_of_one_entry_never_get_the_same_key() -> None:
    """Both read the one entry (same ETag) before either writes: exactly one compare-and-set wins."""
    store = MemoryStore()
    pool(store, size=1).refill()
    barrier = threading.Barrier(2)
    real_get = store.get
    first = threading.local()

    def racing_get(key: str) -> StoredObject | None:
        obj = real_get(key)
        if key.startswith(PREFIX) and not getattr(first, "done", False):
            first.done = True
            barrier.wait(timeout=5)  # both hold the same ETag before either writes
        return obj

    store.get = racing_get  # type: ignore[method-assign]
    got: list[keys.KeyPair | None] = [None, None]

    def taker(i: int) -> None:
        got[i] = pool(store, size=1).take(f"s{i}")

    threads = [threading.Thread(target=taker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [g for g in got if g is not None]
    assert len(winners) == 1  # the loser falls back (None: the caller generates)
    assert live(store) == []


def test_concurrent_takers_get_distinct_keys_until_the_pool_is_empty() -> None:
    store = MemoryStore()
    pool(store, size=12).refill()
    taken: list[str] = []
    guard = threading.Lock()

    def taker() -> None:
        kp = pool(store, size=12)
        for _ in range(8):
            pair = kp.take("s")
            if pair is not None:
                with guard:
                    taken.append(pair.public_b64)

    threads = [threading.Thread(target=taker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == len(set(taken)) == 12  # every key once, none twice
    assert live(store) == []


def test_sealed_at_rest_bound_to_its_entry_and_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = MemoryStore()
    kp = pool(store, size=2)
    kp.refill()
    bodies = {name: store.objects[name].body for name in live(store)}
    a, b = live(store)
    for body in bodies.values():
        assert b"PRIVATE KEY" not in body
    # the key material itself (its PEM's base64 lines) appears in no stored blob; a fixed marker such as b"MII" could
    # occur by chance in ciphertext, so the check uses the keys taken from a copy of the pool
    copy = MemoryStore()
    copy.objects.update(store.objects)
    taken = [pool(copy, size=2).take("s") for _ in range(2)]
    for pair in taken:
        assert pair is not None
        lines = [ln for ln in pair.private_pem.reveal().splitlines() if ln and not ln.startswith("-----")]
        assert all(ln.encode() not in body for ln in lines for body in bodies.values())
    store.objects[b] = store.objects[a]  # a blob under another entry's name is refused (associated data)
    other = KeyPool(store, Secret(base64.b64encode(b"x" * 32).decode()), size=2)
    assert other.take("s") is None  # wrong key-encryption key: nothing usable (falls back to generating)
    assert "PRIVATE KEY" not in caplog.text


def test_take_tombstones_the_entry_and_the_idle_step_sweeps_it() -> None:
    store = MemoryStore()
    kp = pool(store, size=1)
    kp.refill()
    (name,) = live(store)
    assert kp.take("s") is not None
    assert store.objects[name].body == TOMBSTONE  # the sealed key is gone from the store the moment it is taken
    result = kp.refill()
    assert result.swept == 1 and result.added == 1 and name not in store.objects


def test_another_process_s_tombstone_is_cleaned_up_by_the_next_taker() -> None:
    store = MemoryStore()
    store.objects[f"{PREFIX}dead.bin"] = StoredObject(TOMBSTONE, '"t"')  # a taker that crashed before its sweep
    assert pool(store, size=1).take("s") is None
    assert f"{PREFIX}dead.bin" not in store.objects


def test_refill_stops_when_the_worker_gets_busy() -> None:
    store = MemoryStore()
    calls = iter([True, True, False])
    assert pool(store, size=10).refill(keep_going=lambda: next(calls)).added == 2


def test_a_batch_entry_serves_one_taker_its_keys_one_domain_each() -> None:
    store = MemoryStore()
    a, b = pool(store, size=8, batch=4), pool(store, size=8, batch=4)
    assert a.refill().added == 8 and len(live(store)) == 2 and a.count() == 8
    got = [p.public_b64 for p in (a.take("s"), b.take("s"), a.take("s"), b.take("s")) if p is not None]
    assert len(got) == len(set(got)) == 4  # each took one entry (4 keys), and hands its keys out once each
    assert live(store) == []
    more = [a.take("s"), a.take("s")]
    assert all(p is not None for p in more) and a.take("s") is None  # the rest of its 4, then the pool is empty
    publics = got + [p.public_b64 for p in more if p is not None]
    assert len(set(publics)) == 6


def test_size_zero_is_off() -> None:
    store = MemoryStore()
    assert pool(store, size=0).take("s") is None and store.gets == 0


# ------------------------------------------------------------------------------------------------ in domain.created


def test_domain_created_uses_a_pooled_key_resealed_for_the_domain() -> None:
    store = MemoryStore()
    kp = pool(store, size=2)
    kp.refill()
    pooled = {
        public
        for n in live(store)
        for _, public in kp._unseal(n, store.objects[n].body)  # the public halves in the pool
    }
    ports, _ = make_ports(store, kp)
    assert domain_created.handle(event(), ports).status == "provisioned"
    assert stored_public(ports, "alpha.test") in pooled
    dkim = ports.mail.get_dkim("alpha.test")
    assert dkim is not None and dkim.public_key_b64 == stored_public(ports, "alpha.test")
    assert len(live(store)) == 1


def test_empty_pool_falls_back_to_generating() -> None:
    store = MemoryStore()
    ports, _ = make_ports(store, pool(store, size=5))
    assert domain_created.handle(event(), ports).status == "provisioned"
    assert stored_public(ports, "alpha.test")


def test_a_failing_pool_store_falls_back_to_generating() -> None:
    store = MemoryStore()
    broken = MemoryStore()
    broken.faults = [StoreUnavailable("pool listing timed out")]
    ports, _ = make_ports(store, KeyPool(broken, KEK, size=5))
    assert domain_created.handle(event(), ports).status == "provisioned"


def test_dry_run_takes_nothing_from_the_pool() -> None:
    store = MemoryStore()
    kp = pool(store, size=2)
    kp.refill()
    ports, _ = make_ports(store, kp)
    domain_created.dry_run(event(), ports)
    assert len(live(store)) == 2


def test_crash_after_take_loses_no_domain_key_and_reuses_no_key() -> None:
    """The first attempt takes a key, then fails before storing it: that key is spent (never handed out again), the
    retry takes another; a second domain never gets either."""
    store = MemoryStore()
    kp = pool(store, size=2)
    kp.refill()
    ports, _ = make_ports(store, kp, "alpha.test", "beta.test")
    real = ports.web

    class Crashing:  # the policy read in the plan comes after the take and before the key is stored
        def __getattr__(self, name: str) -> Any:
            if name == "get":
                raise TransientError("worker killed here (simulated)")
            return getattr(real, name)

    with pytest.raises(TransientError):
        domain_created.handle(event(), dataclasses.replace(ports, web=Crashing()))
    assert len(live(store)) == 1 and state.load(store, "alpha.test").current is None
    assert domain_created.handle(event(), ports).status == "provisioned"
    alpha = stored_public(ports, "alpha.test")
    assert live(store) == []
    assert domain_created.handle(event("beta.test"), ports).status == "provisioned"  # pool empty: generated
    assert stored_public(ports, "beta.test") != alpha


def test_crash_after_the_key_is_stored_reuses_it_without_another_take() -> None:
    store = MemoryStore()
    kp = pool(store, size=3)
    kp.refill()
    ports, _ = make_ports(store, kp)
    real = ports.mail

    class Crashing:
        def __getattr__(self, name: str) -> Any:
            if name == "add_domain":
                raise TransientError("worker killed here (simulated)")
            return getattr(real, name)

    with pytest.raises(TransientError):
        domain_created.handle(event(), dataclasses.replace(ports, mail=Crashing()))
    first = stored_public(ports, "alpha.test")
    assert len(live(store)) == 2
    assert domain_created.handle(event(), ports).status == "provisioned"
    assert stored_public(ports, "alpha.test") == first and len(live(store)) == 2


def test_replay_with_a_pooled_key_changes_nothing() -> None:
    store = MemoryStore()
    kp = pool(store, size=2)
    kp.refill()
    ports, _ = make_ports(store, kp)
    domain_created.handle(event(), ports)
    snapshot = dict(store.objects)
    web = dict(ports.web.objects)  # type: ignore[attr-defined]
    out = domain_created.handle(event(), ports)
    assert out.status == "provisioned" and out.writes == 0
    assert store.objects == snapshot and ports.web.objects == web  # type: ignore[attr-defined]
    assert len(live(store)) == 1  # the replay took no key
