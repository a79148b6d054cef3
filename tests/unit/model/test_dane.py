"""The DANE certificate lifecycle (functions/_core/model/dane.py) over in-memory DNS (primary + 2 secondaries), a
state store, the nodes' certificates and an ACME CA, on a controllable clock.

What a DANE client relies on is checked after every step: each node presents a certificate whose TLSA 3 1 1 hash
every authoritative server serves (``dane_ok``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any

import pytest

from functions._core.model import dane, mtasts
from functions._core.model.ports import Ports
from functions._core.platform.errors import EventInvalid, NotPropagated
from tests.fakes.dns import FakeDns
from tests.fakes.mailcow import fake_mailcow
from tests.fakes.pmg import fake_gateway
from tests.fakes.settings import make_settings
from tests.fakes.store import MemoryStore
from tests.fakes.tls import FakeCa, FakeNodeTls

T0 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)
TTL = 60
HOLD = dt.timedelta(seconds=2 * TTL + 1)
ZONE = "faster.test"
NODES = ("pmg1", "pmg2", "pmg3")


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


class Crash(Exception):
    """The process died right after the write before this state put."""


class CrashingStore(MemoryStore):
    """Raises Crash instead of the ``crash_at``-th put of a dane/ state object (the step's write has happened)."""

    def __init__(self) -> None:
        super().__init__()
        self.crash_at: int | None = None
        self.dane_puts = 0

    def put(self, key: str, body: bytes, **kw: Any) -> str:
        if key.startswith("dane/"):
            self.dane_puts += 1
            if self.crash_at is not None and self.dane_puts == self.crash_at:
                raise Crash(key)
        return super().put(key, body, **kw)


@dataclass
class World:
    ports: Ports
    clock: Clock
    dns: FakeDns
    tls: FakeNodeTls
    ca: FakeCa
    store: CrashingStore

    def run(self, node: str, event: str, reason: str = "nudge") -> dane.Result:
        return dane.advance(self.ports, node, dane.Request(event, reason))

    def served(self, node: str) -> dict[str, set[str]]:
        name = f"_25._tcp.{node}.{ZONE}"
        out = {}
        for s in self.dns.servers(ZONE):
            rs = self.dns.query(s, name, "TLSA")
            out[s] = {dane.spki_of_value(v) or "" for v in (rs.values if rs else ())}
        return out

    def dane_ok(self, node: str) -> bool:
        pem = self.tls.presented(node)
        assert pem is not None
        return all(dane.spki_sha256(pem) in hs for hs in self.served(node).values())


def make_world() -> World:
    s = make_settings()
    s = replace(s, dane=replace(s.dane, tlsa_ttl=TTL, enabled=True))
    fake = FakeDns(secondaries=("ns2", "ns3"))
    fake.add_zone(ZONE)
    clock = Clock(T0)
    store = CrashingStore()
    tls = FakeNodeTls(NODES, T0)
    ca = FakeCa(clock)
    client, _ = fake_mailcow()
    ports = Ports(
        mail=client,
        gateway=fake_gateway(s).client,
        dns=fake,
        state=store,
        web=MemoryStore(),
        settings=s,
        clock=clock,
        certs=ca,
        node_tls=tls,
    )
    return World(ports, clock, fake, tls, ca, store)


@pytest.fixture
def world() -> World:
    w = make_world()
    for n in NODES:  # adopt what each node presents: its TLSA published
        assert w.run(n, f"adopt-{n}").status == "done"
        assert w.dane_ok(n)
    return w


def finish(w: World, node: str, event: str, reason: str) -> list[str]:
    """Run a rollover to its end, moving the clock past each wait; every intermediate state is DANE-valid."""
    steps: list[str] = []
    res = w.run(node, event, reason)
    for i in range(10):
        steps += res.steps
        assert all(w.dane_ok(n) for n in NODES), steps
        if res.state.phase == "IDLE":
            return steps
        assert res.until is not None, res
        w.clock.now = max(w.clock.now, res.until) + dt.timedelta(seconds=1)
        res = w.run(node, f"{event}-nudge-{i}")
    raise AssertionError(steps)


def test_first_sight_publishes_the_tlsa_of_the_presented_certificate(world: World) -> None:
    for n in NODES:
        want = dane.spki_sha256(world.tls.chains[n])
        assert world.served(n) == {"primary" if s == "primary" else s: {want} for s in world.dns.servers(ZONE)}


def test_rollover_runs_every_step_and_ends_with_only_the_new_tlsa(world: World) -> None:
    old = dane.spki_sha256(world.tls.presented("pmg1") or "")
    res = world.run("pmg1", "roll-1", "rollover")
    assert res.steps == ("IDLE->NEXT_KEY", "NEXT_KEY->PUBLISHED") and res.status == "pending"
    assert res.until == world.clock.now + dt.timedelta(seconds=2 * TTL)
    new = res.state.next_spki
    assert all(hs == {old, new} for hs in world.served("pmg1").values())
    assert world.ca.issued == []  # nothing is issued before 2 x TTL
    steps = finish(world, "pmg1", "roll-1", "rollover")
    assert steps == ["PUBLISHED->ISSUED", "ISSUED->DEPLOYED", "DEPLOYED->VERIFIED", "VERIFIED->IDLE"]
    assert all(hs == {new} for hs in world.served("pmg1").values())
    assert dane.spki_sha256(world.tls.presented("pmg1") or "") == new
    assert world.ca.challenges == [("dns-01", "pmg1.faster.test")]
    assert world.dns.read_rrset("_acme-challenge.pmg1.faster.test", "TXT") is None  # challenge cleaned up


def test_a_replayed_event_writes_nothing(world: World) -> None:
    finish(world, "pmg1", "roll-1", "rollover")
    puts, updates, uploads = world.store.dane_puts, world.dns.updates, list(world.tls.uploads)
    res = world.run("pmg1", "roll-1", "rollover")
    assert res.steps == () and res.status == "idle"
    assert (world.store.dane_puts, world.dns.updates, world.tls.uploads) == (puts, updates, uploads)


def test_renewal_reuses_the_key_and_leaves_the_tlsa_alone(world: World) -> None:
    finish(world, "pmg1", "roll-1", "rollover")
    spki, before = dane.spki_sha256(world.tls.presented("pmg1") or ""), world.tls.presented("pmg1")
    updates = world.dns.updates
    world.clock.now += dt.timedelta(days=70)  # within renew_before_days of the 90-day certificate
    assert dane.due(dane.load(world.ports, "pmg1")[0], world.ports.settings, world.clock.now) == "scheduled"
    res = world.run("pmg1", "renew-1", "scheduled")
    assert res.steps == ("IDLE->PUBLISHED", "PUBLISHED->ISSUED", "ISSUED->DEPLOYED", "DEPLOYED->IDLE")
    assert world.tls.presented("pmg1") != before
    assert dane.spki_sha256(world.tls.presented("pmg1") or "") == spki
    assert world.dns.updates == updates + 2  # only the DNS-01 challenge (add, remove): the TLSA is untouched
    assert world.dane_ok("pmg1")


def test_a_node_with_pmgs_own_certificate_is_rolled_to_a_key_we_hold(world: World) -> None:
    st, _ = dane.load(world.ports, "pmg2")
    assert dane.due(st, world.ports.settings, world.clock.now) == "rollover"
    res = world.run("pmg2", "sched-1", "scheduled")
    assert res.state.phase == "PUBLISHED" and res.state.next_spki != res.state.current_spki


@pytest.mark.parametrize("crash_at", range(1, 8))
def test_a_crash_after_any_write_resumes_to_the_same_end_state(world: World, crash_at: int) -> None:
    base = world.store.dane_puts
    world.store.crash_at = base + crash_at
    crashed = False
    try:
        finish(world, "pmg1", "roll-1", "rollover")
    except Crash:
        crashed = True
    world.store.crash_at = None
    res = world.run("pmg1", "roll-1", "rollover")  # the broker redelivers the event
    if res.state.phase != "IDLE":
        finish(world, "pmg1", "roll-1-redelivered", "nudge")
    st, _ = dane.load(world.ports, "pmg1")
    assert crashed or crash_at > 6
    assert st.phase == "IDLE" and st.next_spki == ""
    assert all(hs == {st.current_spki} for hs in world.served("pmg1").values())
    assert dane.spki_sha256(world.tls.presented("pmg1") or "") == st.current_spki
    assert all(world.dane_ok(n) for n in NODES)


def test_no_deploy_while_a_secondary_does_not_serve_the_next_tlsa(world: World) -> None:
    world.dns.auto_sync = False
    res_exc = None
    try:
        world.run("pmg1", "roll-1", "rollover")
    except NotPropagated as exc:
        res_exc = exc
    assert res_exc is not None and "ns2" in str(res_exc)
    world.clock.now += HOLD
    with pytest.raises(NotPropagated):
        world.run("pmg1", "n1")
    assert world.ca.issued == [] and world.tls.uploads == []
    assert dane.load(world.ports, "pmg1")[0].phase == "PUBLISHED"
    world.dns.sync()
    world.dns.auto_sync = True
    finish(world, "pmg1", "n2", "nudge")
    assert world.dane_ok("pmg1")


def test_the_old_tlsa_stays_while_the_node_still_presents_the_old_certificate(world: World) -> None:
    old = dane.spki_sha256(world.tls.presented("pmg1") or "")
    world.tls.lag.add("pmg1")  # the upload is stored but the listener keeps the old certificate
    world.run("pmg1", "roll-1", "rollover")
    world.clock.now += HOLD
    with pytest.raises(dane.DaneWait, match="does not present"):
        world.run("pmg1", "n1")
    assert all(old in hs for hs in world.served("pmg1").values()) and world.dane_ok("pmg1")
    world.tls.lag.clear()
    world.tls.reload("pmg1")
    finish(world, "pmg1", "n2", "nudge")
    assert all(old not in hs for hs in world.served("pmg1").values())


def test_withdrawal_is_refused_when_the_node_went_back_to_the_old_certificate(world: World) -> None:
    old_chain = world.tls.presented("pmg1")
    world.run("pmg1", "roll-1", "rollover")
    world.clock.now += HOLD
    assert world.run("pmg1", "n1").state.phase == "VERIFIED"
    world.tls._shown["pmg1"] = old_chain or ""  # someone re-installed the old certificate
    world.clock.now += HOLD
    with pytest.raises(dane.DaneRefused, match="still presents"):
        world.run("pmg1", "n2")
    assert world.dane_ok("pmg1")


def test_one_node_at_a_time(world: World) -> None:
    world.tls.lag.add("pmg1")
    world.run("pmg1", "roll-1", "rollover")
    world.run("pmg2", "roll-2", "rollover")
    world.clock.now += HOLD
    with pytest.raises(dane.DaneWait):
        world.run("pmg1", "n1")  # uploaded, not presented yet: stays DEPLOYED
    assert dane.load(world.ports, "pmg1")[0].phase == "DEPLOYED"
    with pytest.raises(dane.DaneWait, match="one node at a time"):
        world.run("pmg2", "n2")
    assert world.tls.uploads == ["pmg1"]


def test_never_below_the_quorum_of_nodes_with_a_valid_chain(world: World) -> None:
    world.tls.down.add("pmg2")  # pmg3 alone has a valid chain: quorum 2 not met without pmg1
    world.run("pmg1", "roll-1", "rollover")
    world.clock.now += HOLD
    with pytest.raises(dane.DaneWait, match="quorum"):
        world.run("pmg1", "n1")
    assert world.tls.uploads == []
    world.tls.down.clear()
    finish(world, "pmg1", "n2", "nudge")


def test_the_private_keys_are_sealed_in_the_state(world: World) -> None:
    world.run("pmg1", "roll-1", "rollover")
    body = world.store.get("dane/pmg1.json")
    assert body is not None and b"PRIVATE KEY" not in body.body
    assert world.store.get("dane/pmg1.json") is not None


def test_unknown_node_is_refused(world: World) -> None:
    with pytest.raises(EventInvalid):
        world.run("pmg9", "x", "rollover")


def test_status_view_and_expiry_alarm(world: World) -> None:
    views = dane.view(world.ports)
    assert [v.node for v in views] == list(NODES) and all(v.dane_ok for v in views)
    assert dane.expiring(world.ports, views) == []
    world.dns.apply(
        ZONE,
        [
            dane.DnsChange(
                before=world.dns.read_rrset("_25._tcp.pmg3.faster.test", "TLSA"),
                after=dane.RecordSet.of("_25._tcp.pmg3.faster.test", "TLSA", TTL, ["3 1 1 " + "00" * 32]),
            )
        ],
    )
    bad = {v.node: v.dane_ok for v in dane.view(world.ports)}
    assert bad == {"pmg1": True, "pmg2": True, "pmg3": False}
    world.clock.now += dt.timedelta(days=3650 - 10)
    assert dane.expiring(world.ports, dane.view(world.ports)) == list(NODES)


@pytest.mark.parametrize(
    ("verdict", "served", "ok", "shown"),
    [
        ("secure", "match", True, "secure"),
        ("insecure", "match", False, "insecure"),  # no AD: a DANE client ignores the TLSA (opportunistic TLS)
        ("bogus", "match", False, "bogus"),
        ("secure", "other", False, "no match"),  # the resolver still serves an old TLSA (cached)
    ],
)
def test_a_signed_platform_counts_dane_accepted_only_from_a_secure_answer(
    world: World, verdict: str, served: str, ok: bool, shown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = world.ports.settings
    ports = replace(world.ports, settings=replace(s, dns=replace(s.dns, dnssec=True)))
    world.dns.verdicts[ZONE] = verdict
    if served == "other":  # every authoritative server has the right TLSA; the resolver's answer does not
        stale = dane.RecordSet.of("_25._tcp.pmg1.faster.test", "TLSA", TTL, ["3 1 1 " + "00" * 32])
        real = world.dns.resolve
        monkeypatch.setattr(world.dns, "resolve", lambda n, t: stale if n.startswith("_25._tcp.pmg1.") else real(n, t))
    views = {v.node: v for v in dane.view(ports)}
    assert (views["pmg1"].dane_ok, views["pmg1"].validation) == (ok, shown)
    assert all(dane.spki_sha256(world.tls.presented("pmg1") or "") in hs for hs in views["pmg1"].tlsa.values())


def test_a_challenge_value_an_attempt_died_with_is_dropped_by_the_next_order(world: World) -> None:
    """A worker killed between presenting its DNS-01 value and its cleanup leaves the value; the next attempt
    serves only its own (leftovers would pile up until the CA's UDP answer is truncated: "No TXT records found")."""
    name = "_acme-challenge.pmg1.faster.test"
    seen: list[tuple[str, ...]] = []
    present = mtasts.Dns01.present

    def spy(self: mtasts.Dns01, n: str, token: str, value: str) -> None:
        present(self, n, token, value)
        rs = world.dns.read_rrset(name, "TXT")
        seen.append(rs.values if rs else ())

    world.dns.apply(ZONE, [dane.DnsChange(None, dane.RecordSet.of(name, "TXT", 60, ["left-by-a-dead-attempt"]))])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mtasts.Dns01, "present", spy)
        finish(world, "pmg1", "roll-1", "rollover")
    assert seen == [("v-0",)]  # what the CA saw: its own value only
    assert world.dns.read_rrset(name, "TXT") is None
