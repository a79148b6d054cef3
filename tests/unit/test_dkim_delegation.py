"""DKIM delegation by CNAME (domain.created ``dkim.delegate``, reference/dns.md §5.4), with in-process fakes.

The customer hosts the zone and publishes ``<slot>._domainkey.<domain> CNAME <slot>.<domain>.<delegation zone>.``
once per slot; mailplane publishes, rotates and withdraws the keys in its own delegation zone, so rotation runs
without the customer. Every test checks what a receiver sees: a signature by the key Mailcow reports, verified
with dkimpy through the customer's CNAME.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from typing import Any

import dkim
import pytest

from functions import domain_created, domain_deleted, key_rotate
from functions._core.model import state
from functions._core.model.keys import dkim_txt
from functions._core.model.mailset import desired_records
from functions._core.model.ports import Ports
from functions._core.model.records import RecordSet
from functions._core.platform.envelope import Envelope, parse
from functions._core.platform.errors import EventInvalid, OwnershipConflict
from functions._core.platform.outcome import Outcome
from tests.conftest import load_event
from tests.fakes.dns import FakeDns
from tests.fakes.mailcow import fake_mailcow
from tests.fakes.pmg import fake_gateway, stale_postfix
from tests.fakes.recorder import Recorder
from tests.fakes.settings import make_settings
from tests.fakes.smtp import FakeSmtp
from tests.fakes.store import MemoryStore
from tests.unit.test_key_rotate import Clock, Crash, CrashAfter, World

DOMAIN = "gamma.test"
KZ = "dkim.faster.test"  # dkim.delegation_zone in infra/local/platform.test.toml
SLOTS = ("fca", "fcb", "fcc")
T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def make_world(*, delegation_zone: str = KZ, host_kz: bool = True) -> World:
    fake = FakeDns(secondaries=("ns2",))
    if host_kz:
        fake.add_zone(KZ)
    client, model = fake_mailcow()
    store = MemoryStore()
    recs = {"mail": Recorder(client), "dns": Recorder(fake), "state": Recorder(store)}
    s = make_settings()
    settings = replace(s, dkim=replace(s.dkim, propagation_seconds=0, delegation_zone=delegation_zone))
    gw = fake_gateway(settings)
    ports = Ports(
        smtp=gw.smtp,
        mail=recs["mail"],
        gateway=gw.client,
        dns=recs["dns"],
        state=recs["state"],
        web=MemoryStore(),
        settings=settings,
        clock=Clock(T0),
    )
    assert isinstance(ports.clock, Clock)
    return World(ports, ports.clock, fake, model, recs, store)


def created_event(**data: Any) -> Envelope:
    raw = load_event("domain.created.delegate")
    raw["data"].update(data)
    raw["subject"] = raw["data"]["domain"]
    return parse(json.dumps(raw).encode(), publisher="billing")


def create(world: World, **data: Any) -> Outcome:
    return domain_created.handle(created_event(**data), world.ports)


def rotate_event(event_id: str, reason: str = "nudge", **data: Any) -> Envelope:
    raw = load_event("key.rotate")
    raw["id"], raw["subject"] = event_id, DOMAIN
    raw["data"] = {"domain": DOMAIN, "reason": reason, **data}
    return parse(json.dumps(raw).encode(), publisher="scheduler")


def rotate(world: World, event_id: str, reason: str = "nudge", **data: Any) -> Outcome:
    return key_rotate.handle(rotate_event(event_id, reason, **data), world.ports)


def keys_of(world: World) -> dict[str, str]:
    return {k.selector: k.status for k in state.load(world.store, DOMAIN).keys}


def kz_txt(world: World, slot: str) -> RecordSet | None:
    return world.fake_dns.zones[KZ].get((f"{slot}.{DOMAIN}.{KZ}", "TXT"))


def customer_publishes(world: World) -> None:
    """The customer publishes every line domain.created asked for (the CNAMEs included) in their own DNS."""
    cur = state.load(world.store, DOMAIN).keys[0]
    want = desired_records(DOMAIN, world.ports.settings, cur.selector, cur.public_b64, delegated=True)
    world.fake_dns.external.update({k: rs for k, rs in want.items() if not k[0].startswith("_mailplane.")})


def receivers_verify(world: World) -> bool:
    """A message signed with the key Mailcow holds for the selector it reports verifies with dkimpy through the
    customer's CNAME (a resolver's view) and on every authoritative server of the delegation zone."""
    key = world.ports.mail.get_dkim(DOMAIN)
    assert key is not None
    pem = world.model.redis["DKIM_PRIV_KEYS"][f"{key.selector}.{DOMAIN}"]
    msg = f"From: a@{DOMAIN}\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n".encode()
    sig = dkim.sign(msg, key.selector.encode(), DOMAIN.encode(), pem.encode(), include_headers=[b"from", b"subject"])

    def via_cname(name: bytes | str, timeout: int = 5) -> bytes | None:
        rs = world.fake_dns.resolve((name.decode() if isinstance(name, bytes) else name).rstrip("."), "TXT")
        return rs.values[0].encode() if rs else None

    lookups = [via_cname]
    for server in world.fake_dns.servers(KZ):

        def at(name: bytes | str, timeout: int = 5, server: str = server) -> bytes | None:
            asked = (name.decode() if isinstance(name, bytes) else name).rstrip(".")
            assert asked == f"{key.selector}._domainkey.{DOMAIN}"
            rs = world.fake_dns.query(server, f"{key.selector}.{DOMAIN}.{KZ}", "TXT")
            return rs.values[0].encode() if rs else None

        lookups.append(at)
    return all(dkim.verify(sig + msg, dnsfunc=f, minkey=2048) for f in lookups)


def provisioned_world() -> World:
    world = make_world()
    create(world)
    customer_publishes(world)
    rotate(world, "activate-1")
    world.reset()
    return world


# ---------------------------------------------------------------- domain.created


def test_created_publishes_the_key_in_our_zone_and_asks_the_customer_for_cnames() -> None:
    world = make_world()
    out = create(world)
    assert out.status == "awaiting_dns"
    lines = out.emit[0]["data"]["instructions"]
    assert [ln for ln in lines if "._domainkey." in ln] == [
        f"{s}._domainkey.{DOMAIN}. 3600 IN CNAME {s}.{DOMAIN}.{KZ}." for s in SLOTS
    ]
    assert not any("DKIM1" in ln for ln in lines)  # the key itself is ours to publish
    key = state.load(world.store, DOMAIN).keys[0]
    assert (key.selector, key.status) == ("fca", "PUBLISHED")
    assert kz_txt(world, "fca") == RecordSet.of(f"fca.{DOMAIN}.{KZ}", "TXT", 3600, [dkim_txt(key.public_b64)])
    assert world.fake_dns.updates == 1 and world.fake_dns.log[0][0] == KZ  # ONE UPDATE, in the delegation zone only
    assert out.emit[0]["data"]["verified_servers"] == world.fake_dns.servers(KZ)
    assert world.ports.mail.get_dkim(DOMAIN) is None  # nobody signs before the customer's CNAME is there
    world.reset()
    again = create(world)
    assert again.status == "awaiting_dns" and world.writes() == {"mail": [], "dns": [], "state": []}


def test_a_nudge_activates_the_key_once_the_customer_published_the_cnames() -> None:
    world = make_world()
    create(world)
    world.reset()
    waiting = rotate(world, "n-0")
    assert waiting.status == "manual_action" and world.writes() == {"mail": [], "dns": [], "state": []}
    assert f"fca._domainkey.{DOMAIN}. 3600 IN CNAME fca.{DOMAIN}.{KZ}." in " ".join(waiting.detail["instructions"])

    customer_publishes(world)
    out = rotate(world, "n-1")
    assert out.detail["transitions"] == ["fca: PUBLISHED->ACTIVE"] and out.changes["mailcow"] == ("~ dkim fca",)
    assert [e["data"]["state"] for e in out.emit] == ["ACTIVE"]
    assert keys_of(world) == {"fca": "ACTIVE"} and state.load(world.store, DOMAIN).status == "provisioned"
    assert receivers_verify(world)
    world.reset()
    rotate(world, "n-2")
    create(world)
    assert world.writes() == {"mail": [], "dns": [], "state": []}


def test_rotation_writes_only_the_delegation_zone_and_cycles_the_slots() -> None:
    world = provisioned_world()
    customer_view = dict(world.fake_dns.external)
    when = T0
    expected = ["fcb", "fcc", "fca", "fcb"]  # round robin; a slot is reused once its earlier key is destroyed
    for i, new in enumerate(expected):
        old = next(s for s, st in keys_of(world).items() if st == "ACTIVE")
        when += 200 * DAY
        world.clock.now = when
        out = rotate(world, f"rot-{i}", "scheduled")
        assert keys_of(world)[new] == "ACTIVE" and keys_of(world)[old] == "RETIRING", out.detail
        assert world.ports.mail.get_dkim(DOMAIN).selector == new  # type: ignore[union-attr]
        assert receivers_verify(world)
        assert kz_txt(world, old) is not None  # mail in flight signed with the old key still verifies
        assert {name for name, _ in world.fake_dns.log} == {KZ}  # never a write in the customer's zone
        assert world.fake_dns.external == customer_view
        world.clock.now = when + 7 * DAY
        rotate(world, f"withdraw-{i}")
        assert kz_txt(world, old) is None and keys_of(world)[old] == "WITHDRAWN"
        world.clock.now = when + 37 * DAY
        rotate(world, f"destroy-{i}")
        assert keys_of(world)[old] == "DESTROYED" and receivers_verify(world)
    st = state.load(world.store, DOMAIN)
    assert [k.selector for k in st.keys].count("fcb") == 1  # the destroyed fcb record left when fcb came back
    assert sorted(world.store.list(f"keys/{DOMAIN}/")) == [f"keys/{DOMAIN}/fcb.bin"]


def test_the_canary_refuses_to_switch_while_the_customer_cname_is_missing() -> None:
    world = provisioned_world()
    del world.fake_dns.external[(f"fcb._domainkey.{DOMAIN}", "CNAME")]
    world.clock.now = T0 + 200 * DAY
    out = rotate(world, "rot-1", "scheduled")
    assert out.status == "manual_action" and "fcb._domainkey.gamma.test is missing" in out.detail["reason"]
    assert out.detail["instructions"] == [f"publish: fcb._domainkey.{DOMAIN}. 3600 IN CNAME fcb.{DOMAIN}.{KZ}."]
    assert keys_of(world) == {"fca": "ACTIVE", "fcb": "READY"}
    assert world.ports.mail.get_dkim(DOMAIN).selector == "fca" and receivers_verify(world)  # type: ignore[union-attr]

    wrong = RecordSet.of(f"fcb._domainkey.{DOMAIN}", "CNAME", 3600, ["fcb.elsewhere.example."])
    world.fake_dns.external[wrong.key] = wrong
    assert "pointing elsewhere" in rotate(world, "n-1").detail["reason"]
    customer_publishes(world)
    rotate(world, "n-2")
    assert keys_of(world) == {"fca": "RETIRING", "fcb": "ACTIVE"} and receivers_verify(world)


def test_an_emergency_rotation_revokes_in_the_delegation_zone() -> None:
    world = provisioned_world()
    out = rotate(world, "cmp-1", "compromised", key_id=f"{DOMAIN}:fca")
    assert keys_of(world) == {"fca": "REVOKED", "fcb": "ACTIVE"}, out.detail
    assert kz_txt(world, "fca") == RecordSet.of(f"fca.{DOMAIN}.{KZ}", "TXT", 3600, ["v=DKIM1;k=rsa;p="])
    assert receivers_verify(world)
    audit = sorted(k for k in world.store.objects if k.startswith("audit/"))
    created = state.load(world.store, DOMAIN).keys[0].created_at
    assert audit == [f"audit/{DOMAIN}/fca@{created}/{a}.json" for a in ("compromised", "revoked")]


# ---------------------------------------------------------------- refusals change nothing


@pytest.mark.parametrize(
    ("setup", "data", "reason"),
    [
        ({"delegation_zone": ""}, {}, "not offered"),
        ({"host_kz": False}, {}, "not served by our DNS"),
        ({}, {"domain": ".".join(c * 60 for c in "wxyz") + ".test"}, "too long to delegate"),  # 248 + 21 > 253
    ],
)
def test_refused_delegations_change_nothing(setup: dict[str, Any], data: dict[str, Any], reason: str) -> None:
    world = make_world(**setup)
    with pytest.raises(EventInvalid, match=reason):
        domain_created.handle(created_event(**data), world.ports)
    assert world.writes() == {"mail": [], "dns": [], "state": []}


def test_delegation_cannot_be_switched_on_a_provisioned_domain() -> None:
    world = provisioned_world()
    with pytest.raises(EventInvalid, match="cannot be switched off"):
        create(world, dkim={"delegate": False})
    assert world.writes() == {"mail": [], "dns": [], "state": []}


def test_foreign_data_at_our_delegated_name_is_left_alone() -> None:
    world = make_world()
    foreign = RecordSet.of(f"fca.{DOMAIN}.{KZ}", "TXT", 3600, ["v=DKIM1;k=rsa;p=SOMEONEELSE"])
    world.fake_dns.zones[KZ][foreign.key] = foreign
    with pytest.raises(OwnershipConflict):
        create(world)
    assert world.writes() == {"mail": [], "dns": [], "state": []}


def test_domain_deleted_removes_the_keys_from_the_delegation_zone() -> None:
    world = provisioned_world()
    world.clock.now = T0 + 200 * DAY
    rotate(world, "rot-1", "scheduled")  # fca RETIRING + fcb ACTIVE: two keys published
    raw = load_event("domain.deleted")
    raw["subject"] = raw["data"]["domain"] = DOMAIN
    raw["data"].update(customer_id="C-10045", grace_days=0)
    out = domain_deleted.handle(parse(json.dumps(raw).encode(), publisher="billing"), world.ports)
    assert kz_txt(world, "fca") is None and kz_txt(world, "fcb") is None
    assert world.ports.mail.get_dkim(DOMAIN) is None
    assert f"fca._domainkey.{DOMAIN}. 3600 IN CNAME fca.{DOMAIN}.{KZ}." in out.detail["instructions"]
    assert not list(world.store.list(f"keys/{DOMAIN}/"))


# ---------------------------------------------------------------- crash safety


PHASES = [(200 * DAY, "rot-1", "scheduled"), (207 * DAY, "n-1", "nudge"), (237 * DAY, "n-2", "nudge")]


def _run(world: World, crash_at: int | None) -> int:
    """The phases; with ``crash_at`` the process dies right after that many writes, the same event is delivered
    again, and the later phases run normally. Returns the number of writes."""
    budget, crashed = [10**9 if crash_at is None else crash_at], False
    for offset, event_id, reason in PHASES:
        world.clock.now = T0 + offset
        ports = world.ports
        if not crashed:
            ports = replace(ports, **{n: CrashAfter(getattr(ports, n), budget) for n in ("mail", "dns", "state")})
        try:
            key_rotate.handle(rotate_event(event_id, reason), ports)
        except Crash:
            crashed = True
            assert receivers_verify(world)  # wherever it died, mail still verifies through the CNAME
            key_rotate.handle(rotate_event(event_id, reason), world.ports)
    return 10**9 - budget[0]


def _end(world: World) -> tuple[Any, ...]:
    txts = {n for (n, t) in world.fake_dns.zones[KZ] if t == "TXT"}
    return keys_of(world), txts, world.ports.mail.get_dkim(DOMAIN), sorted(world.store.list(f"keys/{DOMAIN}/"))


def test_a_crash_after_any_write_of_a_delegated_rotation_resumes_to_the_same_end_state() -> None:
    reference = provisioned_world()
    writes = _run(reference, None)
    want = _end(reference)
    assert want[0] == {"fca": "DESTROYED", "fcb": "ACTIVE"} and want[1] == {f"fcb.{DOMAIN}.{KZ}"} and writes >= 8
    for n in range(writes):
        world = provisioned_world()
        _run(world, n)
        got = _end(world)
        assert (got[0], got[1], got[2].selector, got[3]) == (want[0], want[1], "fcb", want[3]), f"crash after {n + 1}"


def test_the_activating_nudge_reloads_a_gateway_that_refuses_the_domain_from_stale_maps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The customer's MX now points at the gateways; a node whose Postfix daemons opened the relay-domain map before
    it had the domain (real Postfix, docs/mail-plane.md) would refuse the first mail: the nudge that activates the
    key reloads that node's postfix through PMG's API, and only that one."""
    world = make_world()
    create(world)
    customer_publishes(world)
    smtp = world.ports.smtp
    assert isinstance(smtp, FakeSmtp)
    reloads = stale_postfix(smtp.model, monkeypatch, {"pmg2"}, DOMAIN)
    out = rotate(world, "n-1")
    assert out.detail["transitions"] == ["fca: PUBLISHED->ACTIVE"]
    assert reloads == ["pmg2:postfix"]
    assert [smtp.model.rcpt(n, "127.0.0.2", f"postmaster@{DOMAIN}")[0] for n in ("pmg1", "pmg2", "pmg3")] == [
        450,
        450,
        450,
    ]
