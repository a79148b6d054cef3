"""key.rotate through the handler with in-process fakes (the simulators' models) and a controllable clock."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, replace
from typing import Any

import dkim
import pytest

from functions import domain_created, key_rotate
from functions._core.model import rotation, state
from functions._core.model.mailset import desired_records
from functions._core.model.ports import Ports
from functions._core.model.records import RecordSet
from functions._core.model.rotation import REVOKED_TXT, RotationRefused
from functions._core.platform.config import Settings
from functions._core.platform.envelope import Envelope, parse
from functions._core.platform.errors import EventInvalid, NotPropagated, OwnershipConflict
from functions._core.platform.outcome import Outcome
from tests.conftest import load_event
from tests.fakes.dns import FakeDns
from tests.fakes.mailcow import fake_mailcow
from tests.fakes.pmg import fake_gateway
from tests.fakes.recorder import Recorder
from tests.fakes.settings import make_settings
from tests.fakes.store import MemoryStore

T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
ROTATE_AT = dt.datetime(2027, 5, 26, 3, 0, tzinfo=dt.UTC)
HOUR, DAY = dt.timedelta(hours=1), dt.timedelta(days=1)
OLD = "fc20261127"
NEW = "fc20270526"
DOMAIN = "alpha.test"


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@dataclass
class World:
    ports: Ports
    clock: Clock
    fake_dns: FakeDns
    model: Any  # the Mailcow model
    recorders: dict[str, Recorder]
    store: MemoryStore

    def writes(self) -> dict[str, list[str]]:
        return {n: r.writes for n, r in self.recorders.items()}

    def reset(self) -> None:
        for r in self.recorders.values():
            r.reset()

    def with_settings(self, **dkim: Any) -> None:
        s = self.ports.settings
        self.ports = replace(self.ports, settings=replace(s, dkim=replace(s.dkim, **dkim)))


def _settings() -> Settings:
    s = make_settings()
    return replace(s, dkim=replace(s.dkim, propagation_seconds=3600, emergency_propagation_seconds=300))


def make_world(fake_dns: FakeDns | None = None, *, domain_sample: str = "domain.created") -> World:
    fake = fake_dns or FakeDns(secondaries=("ns2",))
    fake.add_zone(DOMAIN)
    client, model = fake_mailcow()
    store = MemoryStore()
    recs = {"mail": Recorder(client), "dns": Recorder(fake), "state": Recorder(store)}
    clock = Clock(T0)
    gw = fake_gateway(_settings())
    ports = Ports(
        smtp=gw.smtp,
        mail=recs["mail"],
        gateway=gw.client,
        dns=recs["dns"],
        state=recs["state"],
        web=MemoryStore(),
        settings=_settings(),
        clock=clock,
    )
    raw = load_event(domain_sample)
    domain_created.handle(parse(json.dumps(raw).encode(), publisher="billing"), ports)
    world = World(ports, clock, fake, model, recs, store)
    world.reset()
    return world


@pytest.fixture
def world() -> World:
    return make_world()


def rotate(world: World, event_id: str, reason: str = "nudge", **data: Any) -> Outcome:
    return key_rotate.handle(rotate_event(event_id, reason, **data), world.ports)


def rotate_event(event_id: str, reason: str = "nudge", domain: str = DOMAIN, **data: Any) -> Envelope:
    raw = load_event("key.rotate")
    raw["id"], raw["subject"] = event_id, domain
    raw["data"] = {"domain": domain, "reason": reason, **data}
    return parse(json.dumps(raw).encode(), publisher="scheduler")


def statuses(world: World, domain: str = DOMAIN) -> dict[str, str]:
    return {k.selector: k.status for k in state.load(world.store, domain).keys}


def txt(world: World, selector: str, domain: str = DOMAIN) -> RecordSet | None:
    return world.fake_dns.zones[domain].get((f"{selector}._domainkey.{domain}", "TXT"))


def mailcow_signature_verifies(world: World, domain: str = DOMAIN) -> bool:
    """Sign a message with the private key Mailcow itself holds for the selector it reports, and verify it with
    dkimpy against EVERY server (the primary and the secondary)."""
    key = world.ports.mail.get_dkim(domain)
    assert key is not None
    pem = world.model.redis["DKIM_PRIV_KEYS"][f"{key.selector}.{domain}"]
    msg = f"From: a@{domain}\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n".encode()
    sig = dkim.sign(msg, key.selector.encode(), domain.encode(), pem.encode(), include_headers=[b"from", b"subject"])
    for server in world.fake_dns.servers(domain):

        def dnsfunc(name: bytes | str, timeout: int = 5, server: str = server) -> bytes | None:
            text = name.decode() if isinstance(name, bytes) else name
            rs = world.fake_dns.query(server, text.rstrip("."), "TXT")
            return rs.values[0].encode() if rs else None

        if not dkim.verify(sig + msg, dnsfunc=dnsfunc, minkey=2048):
            return False
    return True


def replay_writes_nothing(world: World, event: Envelope) -> None:
    """The same event again, and a fresh nudge at the same time: no write anywhere, same outcome status."""
    world.reset()
    serial = world.fake_dns.serials[DOMAIN]
    key_rotate.handle(event, world.ports)
    rotate(world, f"replay-{event.id}")
    assert world.writes() == {"mail": [], "dns": [], "state": []}
    assert world.fake_dns.serials[DOMAIN] == serial


# ---------------------------------------------------------------- the full rotation


def test_full_rotation_step_by_step(world: World) -> None:
    assert mailcow_signature_verifies(world)
    world.clock.now = ROTATE_AT
    start = rotate_event("rot-1", "scheduled", key_id=f"{DOMAIN}:{OLD}")
    out = key_rotate.handle(start, world.ports)
    assert out.status == "pending" and statuses(world) == {OLD: "ACTIVE", NEW: "VISIBLE"}
    assert [e["data"]["transition"] for e in out.emit] == [
        "NONE->GENERATED",
        "GENERATED->PUBLISHED",
        "PUBLISHED->VISIBLE",
    ]
    assert world.fake_dns.updates == 2  # domain.created's one, then ONE UPDATE for the new TXT
    assert txt(world, OLD) is not None and txt(world, NEW) is not None  # both published
    assert mailcow_signature_verifies(world) and world.ports.mail.get_dkim(DOMAIN).selector == OLD  # type: ignore[union-attr]
    replay_writes_nothing(world, start)

    world.clock.now = ROTATE_AT + HOUR - dt.timedelta(seconds=1)  # T_prop not over yet
    assert rotate(world, "n-early").status == "pending" and statuses(world)[NEW] == "VISIBLE"

    world.clock.now = ROTATE_AT + HOUR
    out = rotate(world, "n-switch")
    assert statuses(world) == {OLD: "RETIRING", NEW: "ACTIVE"}
    assert world.ports.mail.get_dkim(DOMAIN).selector == NEW  # type: ignore[union-attr]
    assert mailcow_signature_verifies(world)
    assert txt(world, OLD) is not None  # the retired key stays published: mail in flight still verifies
    assert out.changes["mailcow"] == ("~ dkim fc20270526",)
    replay_writes_nothing(world, rotate_event("n-switch"))

    world.clock.now = ROTATE_AT + HOUR + 7 * DAY - dt.timedelta(seconds=1)
    rotate(world, "n-grace")
    assert txt(world, OLD) is not None and statuses(world)[OLD] == "RETIRING"

    world.clock.now = ROTATE_AT + HOUR + 7 * DAY
    out = rotate(world, "n-withdraw")
    assert txt(world, OLD) is None and statuses(world)[OLD] == "WITHDRAWN"
    assert world.store.get(state.key_blob_key(DOMAIN, OLD)) is not None  # kept for keep_days
    assert mailcow_signature_verifies(world)
    replay_writes_nothing(world, rotate_event("n-withdraw"))

    world.clock.now = ROTATE_AT + HOUR + 37 * DAY
    out = rotate(world, "n-destroy")
    assert statuses(world) == {OLD: "DESTROYED", NEW: "ACTIVE"} and out.status == "idle"
    assert world.store.get(state.key_blob_key(DOMAIN, OLD)) is None
    replay_writes_nothing(world, rotate_event("n-destroy"))


def test_one_run_goes_as_far_as_it_safely_can(world: World) -> None:
    world.with_settings(propagation_seconds=0)
    world.clock.now = ROTATE_AT
    out = rotate(world, "rot-1", "scheduled")
    assert statuses(world) == {OLD: "RETIRING", NEW: "ACTIVE"} and out.status == "pending"
    assert out.detail["next_check"] == "2027-06-02T03:00:00+00:00"  # the retire period
    assert len(out.emit) == 6 and len({e["id"] for e in out.emit}) == 6
    assert mailcow_signature_verifies(world)


def test_new_key_is_2048_bit_split_into_two_strings_of_one_record(world: World) -> None:
    world.clock.now = ROTATE_AT
    rotate(world, "rot-1", "scheduled")
    (value,) = txt(world, NEW).values  # type: ignore[union-attr]
    assert value.startswith("v=DKIM1;k=rsa;") and len(value) > 255  # the adapter splits it into 255 + rest
    pair = state.load_key(world.store, DOMAIN, NEW, world.ports.settings)
    assert len(pair.public_b64) == 392  # RSA-2048 SubjectPublicKeyInfo, base64


def test_selectors_are_never_reused(world: World) -> None:
    world.with_settings(propagation_seconds=0, retire_days=0, keep_days=0)
    world.clock.now = ROTATE_AT
    seen = [OLD]
    for i in range(3):  # three rotations on the same day
        rotate(world, f"rot-{i}", "scheduled")
        rotate(world, f"n-{i}")
        seen.append(rotation.active(state.load(world.store, DOMAIN)).selector)  # type: ignore[union-attr]
    assert seen == [OLD, NEW, NEW + "a", NEW + "b"]
    assert mailcow_signature_verifies(world)


# ---------------------------------------------------------------- guards


def test_never_more_than_two_published_keys(world: World) -> None:
    world.with_settings(propagation_seconds=0)
    world.clock.now = ROTATE_AT
    rotate(world, "rot-1", "scheduled")
    world.reset()
    out = rotate(world, "rot-2", "scheduled")  # the active key is new; the retired one is still published
    assert out.status == "pending" and "withdrawn first" in out.detail["reason"]
    assert world.writes() == {"mail": [], "dns": [], "state": []}
    published = [n for (n, t) in world.fake_dns.zones[DOMAIN] if t == "TXT" and n.endswith("._domainkey." + DOMAIN)]
    assert len(published) == 2


def test_never_withdraws_the_key_mailcow_signs_with(world: World) -> None:
    world.with_settings(propagation_seconds=0)
    world.clock.now = ROTATE_AT
    rotate(world, "rot-1", "scheduled")
    old = state.load_key(world.store, DOMAIN, OLD, world.ports.settings)
    world.ports.mail.import_dkim(DOMAIN, OLD, old.private_pem.reveal(), overwrite=True)  # someone switched back
    world.clock.now += 8 * DAY
    world.reset()
    with pytest.raises(RotationRefused, match="Mailcow signs alpha.test with fc20261127"):
        rotate(world, "n-1")
    assert world.writes()["dns"] == [] and txt(world, OLD) is not None
    assert statuses(world)[OLD] == "RETIRING"


def test_canary_failure_keeps_the_current_key_and_says_why(world: World) -> None:
    world.clock.now = ROTATE_AT
    rotate(world, "rot-1", "scheduled")
    good = txt(world, NEW)
    assert good is not None
    bad = RecordSet.of(good.name, "TXT", good.ttl, [good.values[0][:-12]])  # a truncated key on the secondary
    serial, zone = world.fake_dns.served["ns2"][DOMAIN]
    world.fake_dns.served["ns2"][DOMAIN] = (serial, {**zone, bad.key: bad})
    world.clock.now = ROTATE_AT + HOUR
    world.reset()
    out = rotate(world, "n-1")
    assert out.status == "canary_failed" and "ns2" in out.detail["reason"] and OLD in out.detail["reason"]
    assert world.ports.mail.get_dkim(DOMAIN).selector == OLD  # type: ignore[union-attr]
    assert world.recorders["mail"].writes == [] and statuses(world)[NEW] == "READY"
    assert mailcow_signature_verifies(world)  # ns2 serves a broken NEW, but Mailcow still signs with OLD
    world.fake_dns.sync()
    assert rotate(world, "n-2").status == "pending" and statuses(world)[NEW] == "ACTIVE"


def test_a_lagging_secondary_blocks_visibility_and_the_retry_announces_everything() -> None:
    world = make_world()
    world.fake_dns.auto_sync = False
    world.clock.now = ROTATE_AT
    with pytest.raises(NotPropagated, match="ns2"):
        rotate(world, "rot-1", "scheduled")
    assert statuses(world)[NEW] == "PUBLISHED"
    world.fake_dns.sync()
    out = rotate(world, "rot-1", "scheduled")  # the broker's retry of the same event
    assert [e["data"]["transition"] for e in out.emit] == [
        "NONE->GENERATED",
        "GENERATED->PUBLISHED",
        "PUBLISHED->VISIBLE",
    ]
    assert world.fake_dns.updates == 2


def test_foreign_data_at_the_new_selector_is_left_alone(world: World) -> None:
    name = f"{NEW}._domainkey.{DOMAIN}"
    world.fake_dns.set_rrset(DOMAIN, RecordSet.of(name, "TXT", 300, ["v=DKIM1;k=rsa;p=SOMEONEELSE"]))
    world.clock.now = ROTATE_AT
    with pytest.raises(OwnershipConflict, match=name):
        rotate(world, "rot-1", "scheduled")
    assert txt(world, NEW).values == ("v=DKIM1;k=rsa;p=SOMEONEELSE",)  # type: ignore[union-attr]
    assert world.ports.mail.get_dkim(DOMAIN).selector == OLD  # type: ignore[union-attr]


def test_refused_events(world: World) -> None:
    with pytest.raises(EventInvalid, match="another domain"):
        rotate(world, "x1", "compromised", key_id=f"beta.test:{OLD}")
    with pytest.raises(EventInvalid, match="no DKIM key nosuch"):
        rotate(world, "x2", "compromised", key_id=f"{DOMAIN}:nosuch")
    with pytest.raises(EventInvalid, match="provider's zone"):
        key_rotate.handle(rotate_event("x3", domain="faster.test"), world.ports)
    assert world.writes() == {"mail": [], "dns": [], "state": []}


def test_unprovisioned_domain_is_skipped(world: World) -> None:
    out = key_rotate.handle(rotate_event("x1", "scheduled", domain="nowhere.test"), world.ports)
    assert out.status == "skipped" and out.emit == ()
    assert world.writes() == {"mail": [], "dns": [], "state": []}


def test_a_nudge_never_starts_a_rotation(world: World) -> None:
    world.clock.now = ROTATE_AT + 400 * DAY
    out = rotate(world, "n-1")
    assert out.status == "idle" and statuses(world) == {OLD: "ACTIVE"}


def test_a_redelivered_scheduled_event_does_not_rotate_twice(world: World) -> None:
    world.with_settings(propagation_seconds=0)
    world.clock.now = ROTATE_AT
    first = rotate(world, "rot-1", "scheduled")
    world.clock.now += 30 * DAY
    again = rotate(world, "rot-1", "scheduled")  # no key_id: it must not rotate the key it made
    assert len(statuses(world)) == 2 and {e["id"] for e in again.emit} >= {e["id"] for e in first.emit}
    stale = rotate(world, "rot-2", "scheduled", key_id=f"{DOMAIN}:{OLD}")  # names a key already replaced
    assert len(statuses(world)) == 2 and stale.emit == ()


# ---------------------------------------------------------------- crash safety


class Crash(BaseException):
    """Raised by the wrappers right after a write went through: the process 'dies' there."""


class CrashAfter:
    """Wraps a port; after ``budget[0]`` writes (across every wrapped port) the next write's return raises Crash."""

    WRITES = ("put", "delete", "apply", "import_dkim")

    def __init__(self, target: Any, budget: list[int]) -> None:
        self._target, self._budget = target, budget

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if name not in self.WRITES:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            self._budget[0] -= 1
            if self._budget[0] < 0:
                raise Crash(name)
            return result

        return call


def _end_state(world: World) -> tuple[Any, ...]:
    zone = world.fake_dns.zones[DOMAIN]
    dkim_txt = {n: rs.values for (n, t), rs in zone.items() if t == "TXT" and "._domainkey." in n}
    return statuses(world), dkim_txt, world.ports.mail.get_dkim(DOMAIN).selector  # type: ignore[union-attr]


PHASES: list[tuple[dt.timedelta, str, str]] = [
    (dt.timedelta(0), "rot-1", "scheduled"),
    (HOUR, "n-1", "nudge"),
    (HOUR + 7 * DAY, "n-2", "nudge"),
    (HOUR + 37 * DAY, "n-3", "nudge"),
]


def _run_phases(world: World, phases: list[tuple[dt.timedelta, str, str]], crash_at: int | None) -> int:
    """Run the phases; with ``crash_at`` the process 'dies' right after that many writes (counted across every
    system and phase), then the broker delivers the same event again and the later phases run normally.
    Returns the number of writes the wrapped ports saw."""
    budget = [10**9 if crash_at is None else crash_at]
    crashed = False
    for offset, event_id, reason in phases:
        world.clock.now = ROTATE_AT + offset
        ports = world.ports
        if not crashed:
            wrap: dict[str, Any] = {n: CrashAfter(getattr(ports, n), budget) for n in ("mail", "dns", "state")}
            ports = replace(ports, **wrap)
        try:
            key_rotate.handle(rotate_event(event_id, reason), ports)
        except Crash:
            crashed = True
            assert mailcow_signature_verifies(world)  # whatever step it died in, mail still verifies
            key_rotate.handle(rotate_event(event_id, reason), world.ports)  # the redelivery
    return 10**9 - budget[0]


@pytest.mark.parametrize("emergency", [False, True], ids=["scheduled", "compromised"])
def test_a_crash_after_any_write_resumes_to_the_same_end_state(emergency: bool) -> None:
    phases = list(PHASES)
    if emergency:
        phases[0] = (dt.timedelta(0), "c-1", "compromised")
        phases[2] = (HOUR + 49 * HOUR, "n-2", "nudge")
    reference = make_world()
    writes = _run_phases(reference, phases, None)
    want = _end_state(reference)
    assert want[0] == {OLD: "DESTROYED", NEW: "ACTIVE"} and set(want[1]) == {f"{NEW}._domainkey.{DOMAIN}"}
    assert writes >= 10
    for n in range(writes):
        world = make_world()
        _run_phases(world, phases, n)
        got = _end_state(world)
        assert (got[0], set(got[1]), got[2]) == (want[0], set(want[1]), want[2]), f"crash after write {n + 1}"
        assert world.store.get(state.key_blob_key(DOMAIN, OLD)) is None


def test_dying_after_every_single_write_still_converges(world: World) -> None:
    """Each delivery dies right after its first write; the next delivery must make progress (no step may write
    again what is already there, or the rotation would never finish)."""
    deaths = 0
    for offset, event_id, reason in PHASES:
        world.clock.now = ROTATE_AT + offset
        for _ in range(30):
            budget = [0]
            wrap: dict[str, Any] = {n: CrashAfter(getattr(world.ports, n), budget) for n in ("mail", "dns", "state")}
            try:
                key_rotate.handle(rotate_event(event_id, reason), replace(world.ports, **wrap))
                break
            except Crash:
                deaths += 1
                assert mailcow_signature_verifies(world)
        else:
            pytest.fail(f"no progress in {event_id}")
    assert deaths == 12 and statuses(world) == {OLD: "DESTROYED", NEW: "ACTIVE"}


# ---------------------------------------------------------------- emergency


def test_emergency_rotation_revokes_then_withdraws_with_an_audit_trail(world: World) -> None:
    world.clock.now = ROTATE_AT
    event = rotate_event("c-1", "compromised", key_id=f"{DOMAIN}:{OLD}")
    out = key_rotate.handle(event, world.ports)
    assert out.status == "pending" and statuses(world)[NEW] == "VISIBLE"
    assert "propagation wait until 2027-05-26T03:05:00" in out.detail["reason"]  # emergency T_prop: 300 s, not 1 h
    assert world.ports.mail.get_dkim(DOMAIN).selector == OLD  # type: ignore[union-attr]  # still signing: never broken
    replay_writes_nothing(world, event)

    world.clock.now = ROTATE_AT + dt.timedelta(minutes=5)
    out = rotate(world, "n-1")
    assert statuses(world) == {OLD: "REVOKED", NEW: "ACTIVE"}
    assert txt(world, OLD).values == (REVOKED_TXT,)  # type: ignore[union-attr]  # empty p=: revoked
    assert mailcow_signature_verifies(world)
    assert [e["data"]["transition"] for e in out.emit][-2:] == ["ACTIVE->RETIRING", "RETIRING->REVOKED"]

    world.clock.now += 47 * HOUR
    rotate(world, "n-2")
    assert statuses(world)[OLD] == "REVOKED"
    world.clock.now += HOUR
    rotate(world, "n-3")
    assert statuses(world)[OLD] == "WITHDRAWN" and txt(world, OLD) is None
    audit = sorted(k for k in world.store.objects if k.startswith("audit/"))
    assert audit == [f"audit/{DOMAIN}/{OLD}/{a}.json" for a in ("compromised", "revoked", "withdrawn")]
    record = json.loads(world.store.objects[audit[0]].body)
    assert record["event"] == "c-1" and record["publisher"] == "scheduler" and record["reason"] == "compromised"
    history = state.load(world.store, DOMAIN).history
    assert any(h["transition"] == "COMPROMISED" and h["selector"] == OLD for h in history)


def test_emergency_withdraws_a_retiring_key_at_once_to_stay_within_two(world: World) -> None:
    world.with_settings(propagation_seconds=0, emergency_propagation_seconds=0)
    world.clock.now = ROTATE_AT
    rotate(world, "rot-1", "scheduled")
    world.clock.now += DAY  # OLD still retiring (7 days) when NEW is found compromised
    out = rotate(world, "c-1", "compromised")
    st = statuses(world)
    assert st == {OLD: "WITHDRAWN", NEW: "REVOKED", "fc20270527": "ACTIVE"}
    assert out.status == "pending" and mailcow_signature_verifies(world)
    assert txt(world, OLD) is None and txt(world, NEW).values == (REVOKED_TXT,)  # type: ignore[union-attr]


def test_a_compromised_successor_is_withdrawn_before_it_ever_signs(world: World) -> None:
    world.clock.now = ROTATE_AT
    rotate(world, "rot-1", "scheduled")
    rotate(world, "c-1", "compromised", key_id=f"{DOMAIN}:{NEW}")
    assert statuses(world) == {OLD: "ACTIVE", NEW: "WITHDRAWN"} and txt(world, NEW) is None
    assert world.ports.mail.get_dkim(DOMAIN).selector == OLD  # type: ignore[union-attr]


# ---------------------------------------------------------------- zones hosted elsewhere


def test_external_zone_asks_for_the_manual_steps() -> None:
    world = make_world(domain_sample="domain.created.external")
    domain = "beta.test"
    st = state.load(world.store, domain)
    pair = state.load_key(world.store, domain, st.keys[0].selector, world.ports.settings)
    world.fake_dns.external.update(desired_records(domain, world.ports.settings, pair.selector, pair.public_b64))
    raw = load_event("domain.created.external")
    domain_created.handle(parse(json.dumps(raw).encode(), publisher="billing"), world.ports)
    assert state.load(world.store, domain).status == "provisioned"
    world.with_settings(propagation_seconds=0)
    world.clock.now = ROTATE_AT
    world.reset()

    out = key_rotate.handle(rotate_event("rot-1", "scheduled", domain=domain), world.ports)
    assert out.status == "manual_action" and world.recorders["dns"].writes == []
    (line,) = out.detail["instructions"]
    assert line.startswith(f"publish: {NEW}._domainkey.{domain}. 3600 IN TXT ") and line.count('"') == 4
    again = key_rotate.handle(rotate_event("n-1", domain=domain), world.ports)
    assert again.status == "manual_action" and again.detail["instructions"] == [line]

    new = state.load(world.store, domain).keys[-1]
    rs = RecordSet.of(f"{NEW}._domainkey.{domain}", "TXT", 3600, [f"v=DKIM1;k=rsa;t=s;s=email;p={new.public_b64}"])
    world.fake_dns.external[rs.key] = rs  # the customer published it
    out = key_rotate.handle(rotate_event("n-2", domain=domain), world.ports)
    assert statuses(world, domain)[NEW] == "ACTIVE" and world.ports.mail.get_dkim(domain).selector == NEW  # type: ignore[union-attr]
    world.clock.now += 8 * DAY
    out = key_rotate.handle(rotate_event("n-3", domain=domain), world.ports)
    assert out.status == "manual_action" and out.detail["instructions"][0].startswith(f"delete: {pair.selector}.")
    del world.fake_dns.external[(f"{pair.selector}._domainkey.{domain}", "TXT")]
    key_rotate.handle(rotate_event("n-4", domain=domain), world.ports)
    assert statuses(world, domain)[pair.selector] == "WITHDRAWN"


# ---------------------------------------------------------------- compatibility and secrecy


def test_domain_created_replayed_after_a_rotation_writes_nothing(world: World) -> None:
    world.with_settings(propagation_seconds=0)
    world.clock.now = ROTATE_AT
    rotate(world, "rot-1", "scheduled")
    world.reset()
    raw = load_event("domain.created")
    assert domain_created.handle(parse(json.dumps(raw).encode(), publisher="billing"), world.ports).status == (
        "provisioned"
    )
    assert world.writes() == {"mail": [], "dns": [], "state": []}


def test_no_key_material_in_outcomes_events_or_state(world: World) -> None:
    world.with_settings(propagation_seconds=0)
    world.clock.now = ROTATE_AT
    outs = [rotate(world, "c-1", "compromised"), rotate(world, "n-1")]
    pem = state.load_key(world.store, DOMAIN, NEW, world.ports.settings).private_pem.reveal()
    body = pem.split("-----")[2].replace("\n", "")[:64]
    texts = [json.dumps(o.to_json()) for o in outs] + [o.decode(errors="replace") for o in _bodies(world)]
    assert all("PRIVATE KEY" not in t and body not in t for t in texts)


def _bodies(world: World) -> list[bytes]:
    return [o.body for o in world.store.objects.values()]


def test_emitted_events_match_the_schema_and_have_stable_ids(world: World) -> None:
    world.with_settings(propagation_seconds=0)
    world.clock.now = ROTATE_AT
    out = rotate(world, "rot-1", "scheduled")
    again = rotate(world, "rot-1", "scheduled")
    assert [e["id"] for e in out.emit] == [e["id"] for e in again.emit]
    first = out.emit[0]
    assert first["type"] == "key.rotated" and first["source"] == "urn:mailplane:worker"
    assert first["data"] == {
        "domain": DOMAIN,
        "selector": NEW,
        "previous_selector": OLD,
        "transition": "NONE->GENERATED",
        "state": "GENERATED",
    }


def test_due_follows_the_state(world: World) -> None:
    s = world.ports.settings.dkim
    kind, when = rotation.due(state.load(world.store, DOMAIN), s)  # type: ignore[misc]
    assert kind == "start" and T0 + 180 * DAY <= when < T0 + 210 * DAY
    world.clock.now = ROTATE_AT
    rotate(world, "rot-1", "scheduled")
    assert rotation.due(state.load(world.store, DOMAIN), s) == ("nudge", ROTATE_AT + HOUR)
