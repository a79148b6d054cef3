"""domain.adopt through the handler with in-process fakes (the simulators' models), on hand-made domains built
through the systems' APIs as an operator did (tests/handmade.py)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, replace
from typing import Any

import dkim
import httpx
import pytest
import requests
from sim.mailcow import MailcowApp, MailcowModel
from sim.pmg import PmgModel
from sim.pmg.app import PmgNodeApp
from sim.transports import HostRouter, RequestsAdapter, httpx_transport

from functions import domain_adopt, domain_created, key_rotate
from functions._core.model import adoption, state
from functions._core.model.ports import DkimKey, Ports
from functions._core.model.records import RecordSet
from functions._core.platform.envelope import Envelope, parse
from functions._core.platform.errors import EventInvalid, OwnershipConflict
from functions.ops.status import domain_status
from tests.conftest import load_event
from tests.fakes.dns import FakeDns
from tests.fakes.mailcow import FAKE_URL, fake_mailcow
from tests.fakes.pmg import fake_pmg, node_url
from tests.fakes.recorder import Recorder
from tests.fakes.settings import make_settings
from tests.fakes.store import MemoryStore
from tests.handmade import VARIANTS, Operator, Variant, expected
from tests.unit.test_key_rotate import Clock

T0 = dt.datetime(2026, 12, 2, 4, 0, tzinfo=dt.UTC)
D = "handmade.test"
BY_NAME = {v.name: v for v in VARIANTS}


@dataclass
class World:
    ports: Ports
    rec: dict[str, Recorder]
    dns: FakeDns
    mailcow: MailcowModel
    operator: Operator
    clock: Clock

    def writes(self) -> dict[str, list[str]]:
        return {n: r.writes for n, r in self.rec.items()}

    def reset(self) -> None:
        for r in self.rec.values():
            r.reset()

    def build(self, v: Variant, domain: str = D) -> DkimKey:
        return self.operator.build(domain, v, self.ports.settings)

    def mailcow_signs_and_verifies(self, domain: str = D) -> bool:
        """A message signed by Mailcow's key (its data plane) verifies against what the DNS serves."""
        msg = f"From: a@{domain}\r\nTo: b@example.net\r\nSubject: hi\r\nDate: x\r\n\r\nhello\r\n".encode()
        signed = self.mailcow.dkim_sign(domain, msg)
        assert signed is not None

        def txt(name: bytes | str, timeout: int = 5) -> bytes | None:
            rs = self.dns.resolve(name.decode() if isinstance(name, bytes) else name, "TXT")
            return rs.values[0].encode() if rs is not None and len(rs.values) == 1 else None

        return bool(dkim.verify(signed, dnsfunc=txt, minkey=1024))


@pytest.fixture
def world() -> World:
    fake = FakeDns()
    mail, mailcow = fake_mailcow()
    gateway, pmg = fake_pmg()
    clock = Clock(T0)
    rec = {
        "mail": Recorder(mail),
        "gateway": Recorder(gateway),
        "dns": Recorder(fake),
        "state": Recorder(MemoryStore()),
        "web": Recorder(MemoryStore()),
    }
    ports = Ports(settings=_settings(), clock=clock, **rec)  # type: ignore[arg-type]
    return World(ports, rec, fake, mailcow, _operator(mailcow, pmg, fake), clock)


def _settings() -> Any:
    s = make_settings()
    return replace(s, dkim=replace(s.dkim, propagation_seconds=3600, revoke_hours=0))


def _operator(mailcow: MailcowModel, pmg: PmgModel, fake: FakeDns) -> Operator:
    mc = httpx.Client(base_url=FAKE_URL, transport=httpx_transport(MailcowApp(mailcow)))
    mc.headers["X-API-Key"] = mailcow.rw_key
    session = requests.Session()
    router = HostRouter({node_url(n).removeprefix("https://"): PmgNodeApp(pmg, n) for n in pmg.node_names})
    session.mount("https://", RequestsAdapter(router))

    def write_zone(domain: str, records: list[RecordSet], hosted: bool) -> None:
        if hosted:
            fake.add_zone(domain, records)
        else:
            fake.external.update({rs.key: rs for rs in records})

    return Operator(mc, session, node_url(pmg.node_names[0]), pmg.credentials, write_zone)


def adopt_event(domain: str = D, **data: Any) -> Envelope:
    raw = load_event("domain.adopt")
    raw["subject"] = raw["data"]["domain"] = domain
    raw["data"].update(data)
    return parse(json.dumps(raw).encode(), publisher="operator")


def classes(p: adoption.Plan) -> dict[str, str]:
    return {i.item: i.cls for i in p.items}


# ---------------------------------------------------------------- the plan: exactly the expected classes


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_plan_lists_the_expected_classes(world: World, variant: Variant) -> None:
    world.build(variant)
    world.reset()
    p = adoption.plan(D, world.ports)
    assert classes(p) == expected(D, variant, world.ports.settings)
    assert bool(p.refusals) == variant.refused, p.refusals
    assert p.hosted == variant.hosted and p.selector == "dkim"
    assert world.writes() == {n: [] for n in world.rec}  # planning writes nothing


def test_weak_key_is_reported(world: World) -> None:
    world.build(BY_NAME["weak-key"])
    p = adoption.plan(D, world.ports)
    assert (p.key_bits, p.weak_key) == (1024, True)
    (item,) = [i for i in p.items if i.item == "dkim key"]
    assert "1024-bit" in item.risk and "--rotate" in item.action
    out = domain_adopt.handle(adopt_event(), world.ports)
    assert out.detail["weak_key"] == "true" and out.detail["key_bits"] == "1024"


# ---------------------------------------------------------------- applying: only what it must


def test_exact_seed_gets_markers_policy_and_state_only(world: World) -> None:
    world.build(BY_NAME["exact"])
    serial = world.dns.serials[D]
    world.reset()
    assert world.mailcow_signs_and_verifies()
    out = domain_adopt.handle(adopt_event(), world.ports)
    assert out.status == "adopted"
    assert world.writes() == {
        "mail": ["edit_domain"],
        "gateway": ["update_relay_domain", "update_transport"],
        "dns": ["apply"],
        "state": ["put"],
        "web": ["put"],
    }
    assert out.changes["dns"] == ("+ TXT _mailplane.handmade.test",)
    assert world.dns.serials[D] == serial + 1 and world.dns.updates == 1
    dom = world.ports.mail.get_domain(D)
    assert dom is not None and "managed-by mailplane" in dom.description and "handmade exact" in dom.description
    assert all("managed-by mailplane" in d.comment for d in world.ports.gateway.list_relay_domains())
    st = state.load(world.ports.state, D)
    assert st.status == "provisioned" and [(k.selector, k.status, k.adopted) for k in st.keys] == [
        ("dkim", "ACTIVE", True)
    ]
    assert world.ports.state.list(f"keys/{D}/") is not None and not list(world.ports.state.list(f"keys/{D}/"))
    assert world.mailcow_signs_and_verifies()
    (emitted,) = out.emit
    assert emitted["type"] == "domain.provisioned" and emitted["data"]["dkim_selector"] == "dkim"
    assert domain_status(D, world.ports)[0] == "provisioned"


def test_second_adopt_is_a_no_op(world: World) -> None:
    world.build(BY_NAME["spaced-dmarc"])
    domain_adopt.handle(adopt_event(), world.ports)
    world.reset()
    serial = world.dns.serials[D]
    out = domain_adopt.handle(adopt_event(), world.ports)
    assert out.status == "managed" and out.emit == () and out.writes == 0
    assert world.writes() == {n: [] for n in world.rec} and world.dns.serials[D] == serial


def test_equivalent_dmarc_is_left_untouched_and_counts_as_provisioned(world: World) -> None:
    world.build(BY_NAME["spaced-dmarc"])
    before = world.dns.read_zone(D)[(f"_dmarc.{D}", "TXT")]
    out = domain_adopt.handle(adopt_event(), world.ports)
    assert out.changes["dns"] == ("+ TXT _mailplane.handmade.test",)
    assert world.dns.read_zone(D)[(f"_dmarc.{D}", "TXT")] == before
    overall, checks = domain_status(D, world.ports)
    assert overall == "provisioned", [c for c in checks if not c.ok]


def test_missing_records_are_added_in_one_update(world: World) -> None:
    world.build(BY_NAME["no-mta-sts-tlsrpt"])
    serial = world.dns.serials[D]
    out = domain_adopt.handle(adopt_event(), world.ports)
    assert sorted(out.changes["dns"]) == [
        "+ CNAME mta-sts.handmade.test",
        "+ TXT _mailplane.handmade.test",
        "+ TXT _mta-sts.handmade.test",
        "+ TXT _smtp._tls.handmade.test",
    ]
    assert world.dns.updates == 1 and world.dns.serials[D] == serial + 1
    assert domain_status(D, world.ports)[0] == "provisioned"


def test_different_record_is_left_unless_fixed(world: World) -> None:
    world.build(BY_NAME["hard-fail-spf"])
    hard = f"v=spf1 include:{world.ports.settings.policy.spf_include} -all"
    world.dns.set_rrset(D, RecordSet.of(D, "TXT", 3600, [hard, "verify=1"]))
    domain_adopt.handle(adopt_event(), world.ports)
    assert hard in world.dns.read_zone(D)[(D, "TXT")].values
    overall, checks = domain_status(D, world.ports)
    assert overall == "drift" and {c.item for c in checks if not c.ok} == {f"TXT {D}"}


def test_fix_replaces_the_named_different_record_only(world: World) -> None:
    world.build(BY_NAME["hard-fail-spf"])
    inc = world.ports.settings.policy.spf_include
    world.dns.set_rrset(D, RecordSet.of(D, "TXT", 3600, [f"v=spf1 include:{inc} -all", "verify=1"]))
    out = domain_adopt.handle(adopt_event(fix=["@/TXT"]), world.ports)
    assert sorted(out.changes["dns"]) == ["+ TXT _mailplane.handmade.test", "~ TXT handmade.test"]
    apex = world.dns.read_zone(D)[(D, "TXT")]
    assert set(apex.values) == {f"v=spf1 include:{inc} ~all", "verify=1"}  # the customer's string stays
    assert domain_status(D, world.ports)[0] == "provisioned"


def test_fix_naming_a_record_that_is_not_different_is_refused(world: World) -> None:
    world.build(BY_NAME["exact"])
    world.reset()
    with pytest.raises(EventInvalid, match="names no record"):
        domain_adopt.handle(adopt_event(fix=["_dmarc"]), world.ports)
    assert world.writes() == {n: [] for n in world.rec}


def test_foreign_cname_refuses_with_nothing_changed(world: World) -> None:
    world.build(BY_NAME["foreign-autoconfig"])
    world.reset()
    with pytest.raises(OwnershipConflict, match="autoconfig.handmade.test holds foreign data"):
        domain_adopt.handle(adopt_event(), world.ports)
    assert world.writes() == {n: [] for n in world.rec}


def test_transport_to_another_host_is_a_contradiction(world: World) -> None:
    v = BY_NAME["no-pmg-relay"]
    world.build(v)
    world.operator.pmg_post("/config/domains", {"domain": D, "comment": "hand"})
    body = {"domain": D, "host": "old-mail.example.net", "port": 25, "protocol": "smtp", "use_mx": 0}
    world.operator.pmg_post("/config/transport", body)
    world.reset()
    with pytest.raises(OwnershipConflict, match="contradiction"):
        domain_adopt.handle(adopt_event(), world.ports)
    assert world.writes() == {n: [] for n in world.rec}


def test_missing_relay_and_transport_are_added(world: World) -> None:
    world.build(BY_NAME["no-pmg-relay"])
    world.reset()
    domain_adopt.handle(adopt_event(), world.ports)
    assert world.rec["gateway"].writes == ["add_relay_domain", "add_transport"]
    (t,) = [t for t in world.ports.gateway.list_transports() if t.domain == D]
    assert t.host == world.ports.settings.mailcow.host and "managed-by mailplane" in t.comment


def test_zone_hosted_elsewhere_writes_no_dns(world: World) -> None:
    world.build(BY_NAME["hosted-elsewhere"])
    world.reset()
    out = domain_adopt.handle(adopt_event(), world.ports)
    assert world.rec["dns"].writes == [] and out.changes["dns"] == ()
    assert "instructions" not in out.emit[0]["data"]  # the customer has every record already
    st = state.load(world.ports.state, D)
    assert st.request["dns"] == {"hosted": False} and st.status == "provisioned"


def test_no_dkim_key_in_mailcow_is_refused(world: World) -> None:
    world.operator.mailcow_post("add/domain", {"domain": D, "key_size": 0, "dkim_selector": ""})
    world.dns.add_zone(D)
    with pytest.raises(EventInvalid, match="no DKIM key"):
        domain_adopt.handle(adopt_event(), world.ports)


# ---------------------------------------------------------------- domain.created, discovery, rotation


def test_domain_created_for_an_unmanaged_domain_names_adopt(world: World) -> None:
    world.build(BY_NAME["exact"])
    world.reset()
    raw = load_event("domain.created")
    raw["subject"] = raw["data"]["domain"] = D
    with pytest.raises(EventInvalid, match=r"exists unmanaged in Mailcow and PMG.*`mailplane adopt handmade.test`"):
        domain_created.handle(parse(json.dumps(raw).encode(), publisher="billing"), world.ports)
    assert world.writes() == {n: [] for n in world.rec}


def test_candidates_are_the_domains_without_state(world: World) -> None:
    world.build(BY_NAME["exact"])
    world.build(BY_NAME["exact"], "other.test")
    world.operator.pmg_post("/config/domains", {"domain": "relay-only.test", "comment": "x"})
    domain_adopt.handle(adopt_event("other.test"), world.ports)
    assert adoption.candidates(world.ports) == [D, "relay-only.test"]


def _rotate(world: World, reason: str = "scheduled", **data: Any) -> Any:
    raw = load_event("key.rotate")
    raw["id"] = f"rot-{world.clock.now:%H%M%S}-{reason}"
    raw["subject"] = raw["data"]["domain"] = D
    raw["data"].update(reason=reason, **data)
    return key_rotate.handle(parse(json.dumps(raw).encode(), publisher="scheduler"), world.ports)


def test_rotation_moves_an_adopted_key_to_a_dated_selector_without_a_gap(world: World) -> None:
    world.build(BY_NAME["weak-key"])
    spaced = "v=DKIM1; k=rsa; t=s; s=email; p=" + world.ports.mail.get_dkim(D).public_key_b64  # type: ignore[union-attr]
    world.dns.set_rrset(D, RecordSet.of(f"dkim._domainkey.{D}", "TXT", 3600, [spaced]))  # typed with spaces
    domain_adopt.handle(adopt_event(), world.ports)
    assert state.load(world.ports.state, D).keys[0].txt == spaced
    assert world.mailcow_signs_and_verifies()
    _rotate(world, key_id=f"{D}:dkim")
    sel = {k.selector: k.status for k in state.load(world.ports.state, D).keys}
    new = next(s for s in sel if s != "dkim")
    assert sel == {"dkim": "ACTIVE", new: "VISIBLE"} and new.startswith("fc2026")
    assert world.mailcow_signs_and_verifies()  # still the old key, still published
    world.clock.now = T0 + dt.timedelta(hours=1)
    _rotate(world, "nudge")
    key = world.ports.mail.get_dkim(D)
    assert key is not None and key.selector == new and adoption.key_bits(key.public_key_b64) == 2048
    assert world.mailcow_signs_and_verifies()
    assert world.dns.read_zone(D)[(f"dkim._domainkey.{D}", "TXT")].values == (spaced,)  # retired, still served
    world.clock.now = T0 + dt.timedelta(days=8)
    _rotate(world, "nudge")
    assert (f"dkim._domainkey.{D}", "TXT") not in world.dns.read_zone(D)  # the operator's record withdrawn
    assert {k.selector: k.status for k in state.load(world.ports.state, D).keys}["dkim"] == "WITHDRAWN"
    assert world.mailcow_signs_and_verifies()
