"""domain.deleted through the handler with in-process fakes of every port (same models as the simulators)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, replace
from typing import Any

import pytest
from sim.mailcow import MailcowModel

from functions import ROUTES, domain_created, domain_deleted
from functions._core.model import deletion, state
from functions._core.model.mailset import policy_key, spf_value
from functions._core.model.ports import GatewayTransport, Ports, RelayDomain
from functions._core.model.records import Key, RecordSet
from functions._core.platform.envelope import Envelope, parse
from functions._core.platform.errors import EventInvalid, OwnershipConflict
from tests.conftest import load_event
from tests.fakes.dns import FakeDns
from tests.fakes.mailcow import fake_mailcow
from tests.fakes.pmg import fake_gateway
from tests.fakes.recorder import Recorder
from tests.fakes.settings import make_settings
from tests.fakes.smtp import FakeSmtp
from tests.fakes.store import MemoryStore

NOW = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
SYSTEMS = ("mail", "gateway", "dns", "state", "web")
WWW = RecordSet.of("www.alpha.test", "A", 300, ["192.0.2.80"])
SITE = "google-site-verification=abc"


@dataclass
class World:
    mail: Recorder
    gateway: Recorder
    dns: Recorder
    state: Recorder
    web: Recorder
    fake_dns: FakeDns
    mailcow: MailcowModel
    original: dict[Key, RecordSet]  # the zone before provisioning
    smtp: FakeSmtp
    now: dt.datetime = NOW

    @property
    def ports(self) -> Ports:
        p = (self.mail, self.gateway, self.dns, self.state, self.web)
        return Ports(*p, settings=make_settings(), clock=lambda: self.now, smtp=self.smtp)

    def writes(self) -> dict[str, list[str]]:
        return {n: getattr(self, n).writes for n in SYSTEMS}

    def reset(self) -> None:
        for n in SYSTEMS:
            getattr(self, n).reset()


NO_WRITES: dict[str, list[str]] = {n: [] for n in SYSTEMS}


@pytest.fixture
def world() -> World:
    fake_dns = FakeDns()
    fake_dns.add_zone("alpha.test", [WWW, RecordSet.of("alpha.test", "TXT", 300, [SITE])])
    client, model = fake_mailcow()
    gw = fake_gateway(make_settings())
    w = World(
        Recorder(client),
        Recorder(gw.client),
        Recorder(fake_dns),
        Recorder(MemoryStore()),
        Recorder(MemoryStore()),
        fake_dns,
        model,
        fake_dns.read_zone("alpha.test"),
        gw.smtp,
    )
    out = domain_created.handle(parse(json.dumps(load_event("domain.created")).encode()), w.ports)
    assert out.status == "provisioned"
    w.reset()
    return w


def deleted(name: str = "domain.deleted", **data: Any) -> Envelope:
    raw = load_event(name)
    raw["subject"] = raw["data"]["domain"] = "alpha.test"
    raw["data"]["customer_id"] = "C-10042"
    raw["data"].update(data)
    return parse(json.dumps(raw).encode(), publisher="billing")


def only_customer_records(world: World) -> None:
    """The data of the zone as it was before provisioning (the SOA's serial moved on; the apex TXT keeps the TTL
    provisioning gave it)."""
    zone = {k: v.values for k, v in world.fake_dns.read_zone("alpha.test").items() if k[1] != "SOA"}
    assert zone == {k: v.values for k, v in world.original.items() if k[1] != "SOA"}
    assert set(zone) == {("alpha.test", "NS"), ("ns1.alpha.test", "A"), WWW.key, ("alpha.test", "TXT")}


def nothing_of_the_domain(world: World) -> None:
    ports = world.ports
    assert ports.mail.get_domain("alpha.test") is None and ports.mail.get_dkim("alpha.test") is None
    assert all(d.domain != "alpha.test" for d in ports.gateway.list_relay_domains())
    assert all(t.domain != "alpha.test" for t in ports.gateway.list_transports())
    assert ports.web.get(policy_key("alpha.test")) is None
    assert list(ports.state.list("keys/alpha.test/")) == []


def test_first_event_suspends_and_changes_nothing_else(world: World) -> None:
    out = domain_deleted.handle(deleted(), world.ports)
    assert out.status == "suspended" and out.emit == ()
    assert out.detail == {"suspended_at": "2026-11-27T10:00:00+00:00", "delete_after": "2026-12-27T10:00:00+00:00"}
    assert world.writes() == {**NO_WRITES, "mail": ["edit_domain"], "state": ["put"]}
    dom = world.ports.mail.get_domain("alpha.test")
    assert dom is not None and not dom.active
    st = state.load(world.ports.state, "alpha.test")
    assert (st.status, st.suspended_at) == ("suspended", "2026-11-27T10:00:00+00:00")


def test_replay_while_suspended_writes_nothing(world: World) -> None:
    domain_deleted.handle(deleted(), world.ports)
    world.reset()
    world.now = NOW + dt.timedelta(days=29)
    out = domain_deleted.handle(deleted(), world.ports)
    assert out.status == "suspended" and out.writes == 0 and world.writes() == NO_WRITES


def test_removal_after_the_grace_period_leaves_only_the_customers_records(world: World) -> None:
    networks = world.ports.gateway.list_networks()
    domain_deleted.handle(deleted(), world.ports)
    world.now, updates = NOW + dt.timedelta(days=30), world.fake_dns.updates
    world.reset()
    out = domain_deleted.handle(deleted(), world.ports)
    assert out.status == "deleted"
    only_customer_records(world)
    nothing_of_the_domain(world)
    assert world.fake_dns.updates == updates + 1  # ONE atomic UPDATE
    assert world.ports.gateway.list_networks() == networks  # platform-wide: never removed
    assert world.mail.writes == ["delete_domain", "delete_dkim"]
    assert out.changes["pmg"] == ("- transport alpha.test", "- relay domain alpha.test")
    assert "~ TXT alpha.test (removes 'v=spf1 include:_pmg.faster.test ~all')" in out.changes["dns"]
    assert "- MX alpha.test" in out.changes["dns"] and "- TXT _mailplane.alpha.test" in out.changes["dns"]
    st = state.load(world.ports.state, "alpha.test")
    assert st.status == "deleted" and {k.status for k in st.keys} == {"DESTROYED"}
    assert "PRIVATE KEY" not in json.dumps(out.to_json())

    world.reset()
    replay = domain_deleted.handle(deleted(), world.ports)
    assert replay.status == "deleted" and replay.writes == 0 and world.writes() == NO_WRITES


def test_grace_zero_removes_in_one_delivery(world: World) -> None:
    out = domain_deleted.handle(deleted("domain.deleted.force"), world.ports)
    assert out.status == "deleted"
    only_customer_records(world)
    nothing_of_the_domain(world)
    assert world.mail.writes == ["delete_domain", "delete_dkim"]  # no suspension edit first


def test_settings_default_applies_without_grace_days(world: World) -> None:
    raw = deleted()
    data = {k: v for k, v in raw.data.items() if k != "grace_days"}
    ev = replace(raw, data=data)
    out = domain_deleted.handle(ev, world.ports)
    days = world.ports.settings.deletion.grace_days
    assert out.detail["delete_after"] == (NOW + dt.timedelta(days=days)).isoformat()


def add_mailbox(world: World, local: str) -> None:
    pw = "Correct-Horse-9-Battery"
    attr = {"local_part": local, "domain": "alpha.test", "password": pw, "password2": pw, "quota": 1024}
    assert world.mailcow.add_mailbox(attr).entries[-1]["type"] == "success"


def test_mailboxes_refuse_removal_without_force_and_nothing_changes(world: World) -> None:
    add_mailbox(world, "info")
    with pytest.raises(deletion.DomainNotEmptyError, match="1 mailbox"):
        domain_deleted.handle(deleted(grace_days=0), world.ports)
    assert world.writes() == NO_WRITES
    assert world.ports.mail.get_domain("alpha.test") is not None


def test_force_deletes_the_mailboxes_first(world: World) -> None:
    add_mailbox(world, "info")
    add_mailbox(world, "sales")
    out = domain_deleted.handle(deleted(grace_days=0, force=True), world.ports)
    assert out.changes["mailcow"] == (
        "- mailbox info@alpha.test",
        "- mailbox sales@alpha.test",
        "- domain alpha.test",
        "- dkim key",
    )
    nothing_of_the_domain(world)


def test_records_changed_by_the_customer_are_kept(world: World) -> None:
    theirs = RecordSet.of("alpha.test", "MX", 300, ["10 mx.elsewhere.example."])
    dmarc = RecordSet.of("_dmarc.alpha.test", "TXT", 300, ["v=DMARC1;p=none"])
    world.fake_dns.set_rrset("alpha.test", theirs)
    world.fake_dns.set_rrset("alpha.test", dmarc)
    out = domain_deleted.handle(deleted(grace_days=0), world.ports)
    zone = world.fake_dns.read_zone("alpha.test")
    assert zone[theirs.key] == theirs and zone[dmarc.key] == dmarc
    assert "= kept MX alpha.test (holds data mailplane did not publish)" in out.detail["kept"]
    assert ("_mailplane.alpha.test", "TXT") not in zone


def test_foreign_mailcow_domain_is_refused_before_any_write(world: World) -> None:
    world.mailcow.domains["alpha.test"].description = "hand-made"
    for grace in (0, 30):
        with pytest.raises(OwnershipConflict, match="not managed by mailplane"):
            domain_deleted.handle(deleted(grace_days=grace), world.ports)
    assert world.writes() == NO_WRITES


def test_other_customer_is_refused(world: World) -> None:
    ev = deleted()
    ev = replace(ev, data={**ev.data, "customer_id": "C-99999"})
    with pytest.raises(EventInvalid, match="not provisioned for customer C-99999"):
        domain_deleted.handle(ev, world.ports)
    assert world.writes() == NO_WRITES


def test_unknown_domain_is_absent_and_writes_nothing(world: World) -> None:
    raw = load_event("domain.deleted")
    raw["subject"] = raw["data"]["domain"] = "never-seen.test"
    out = domain_deleted.handle(parse(json.dumps(raw).encode()), world.ports)
    assert out.status == "absent" and out.writes == 0 and world.writes() == NO_WRITES


def test_provider_zone_is_refused(world: World) -> None:
    raw = load_event("domain.deleted")
    raw["subject"] = raw["data"]["domain"] = "mail.faster.test"
    with pytest.raises(EventInvalid, match="provider"):
        domain_deleted.handle(parse(json.dumps(raw).encode()), world.ports)


def test_dry_run_writes_nothing(world: World) -> None:
    plan = domain_deleted.dry_run(deleted(grace_days=0), world.ports)
    assert world.writes() == NO_WRITES
    assert "- domain alpha.test" in plan["mailcow"] and "- relay domain alpha.test" in plan["pmg"]
    assert "- mta-sts policy" in plan["store"] and "~ state deleted" in plan["store"]
    assert domain_deleted.dry_run(deleted(), world.ports)["mailcow"] == ["~ domain active=0"]


def test_routed() -> None:
    assert ROUTES["domain.deleted"].name == "domain_deleted"


def test_external_zone_is_left_to_the_customer() -> None:
    fake_dns = FakeDns()
    client, _ = fake_mailcow()
    store, web = MemoryStore(), MemoryStore()
    gw = fake_gateway(make_settings())
    ports = Ports(client, gw.client, fake_dns, store, web, make_settings(), clock=lambda: NOW, smtp=gw.smtp)
    created = load_event("domain.created.external")
    domain = created["data"]["domain"]
    assert domain_created.handle(parse(json.dumps(created).encode()), ports).status == "awaiting_dns"
    raw = load_event("domain.deleted")
    raw["subject"], raw["data"] = domain, {"domain": domain, "customer_id": created["data"]["customer_id"]}
    raw["data"]["grace_days"] = 0
    out = domain_deleted.handle(parse(json.dumps(raw).encode()), ports)
    assert out.status == "deleted" and out.changes["dns"] == () and fake_dns.updates == 0
    assert any(" MX 10 pmg1.faster.test." in line for line in out.detail["instructions"])
    assert ports.mail.get_domain(domain) is None


# ---------------------------------------------------------------- the pure plans


def test_gateway_entries_without_the_marker_are_kept() -> None:
    plan, kept = deletion.plan_gateway_removal(
        "alpha.test", RelayDomain("alpha.test", "by hand"), GatewayTransport("alpha.test", "x", comment="")
    )
    assert plan == deletion.GatewayRemoval() and len(kept) == 2


def test_apex_txt_keeps_customer_strings_and_deletes_when_only_ours() -> None:
    s = make_settings()
    managed = deletion.managed_records("alpha.test", s, ())
    ours = RecordSet.of("alpha.test", "TXT", 300, [spf_value(s)])
    plan, _ = deletion.plan_dns_removal("alpha.test", {ours.key: ours}, managed, spf_value(s))
    assert [(c.before, c.after) for c in plan.changes] == [(ours, None)]
    mixed = RecordSet.of("alpha.test", "TXT", 300, [spf_value(s), SITE])
    plan, _ = deletion.plan_dns_removal("alpha.test", {mixed.key: mixed}, managed, spf_value(s))
    assert plan.changes[0].after == RecordSet.of("alpha.test", "TXT", 300, [SITE])


def test_a_revoked_dkim_txt_of_ours_is_removed() -> None:
    s = make_settings()
    key = state.KeyRecord("fc20260101", "MIIB", "REVOKED", "2026-01-01T00:00:00+00:00")
    managed = deletion.managed_records("alpha.test", s, [key])
    revoked = RecordSet.of("fc20260101._domainkey.alpha.test", "TXT", 300, [deletion.REVOKED_TXT])
    plan, kept = deletion.plan_dns_removal("alpha.test", {revoked.key: revoked}, managed, spf_value(s))
    assert [c.before for c in plan.changes] == [revoked] and kept == []


def test_removal_reloads_postfix_on_every_node_after_the_maps_changed(world: World) -> None:
    """PMG only postmaps the removed relay domain; postfix daemons that opened the map before keep relaying it until
    they restart. The removal reloads every node's postfix, after the map writes and their settle."""
    domain_deleted.handle(deleted("domain.deleted.force"), world.ports)
    calls = world.gateway.calls
    reloads = [c for c in calls if c.startswith("reload_postfix")]
    assert len(reloads) == 3
    assert calls.index(reloads[0]) > max(i for i, c in enumerate(calls) if c.startswith(("delete_", "settle")))
