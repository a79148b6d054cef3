"""domain.created through the handler with in-process fakes of every port (same models as the simulators)."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

import pytest

from functions import domain_created
from functions._core.model import state
from functions._core.model.mailset import policy_id, policy_key
from functions._core.model.ports import GatewayTransport, Ports, RelayDomain, TrustedNetwork
from functions._core.model.records import RecordSet
from functions._core.platform.envelope import Envelope, parse
from functions._core.platform.errors import EventInvalid, NotPropagated, OwnershipConflict
from tests.conftest import load_event
from tests.fakes.dns import FakeDns
from tests.fakes.mailcow import fake_mailcow
from tests.fakes.pmg import FakeGateway, fake_gateway, stale_postfix
from tests.fakes.recorder import Recorder
from tests.fakes.settings import make_settings
from tests.fakes.store import MemoryStore

NOW = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)


@dataclass
class World:
    ports: Ports
    mail: Recorder
    gateway: Recorder
    dns: Recorder
    state: Recorder
    web: Recorder
    fake_dns: FakeDns

    def writes(self) -> dict[str, list[str]]:
        return {n: getattr(self, n).writes for n in ("mail", "gateway", "dns", "state", "web")}

    def reset(self) -> None:
        for n in ("mail", "gateway", "dns", "state", "web"):
            getattr(self, n).reset()


@pytest.fixture
def world() -> World:
    fake_dns = FakeDns()
    fake_dns.add_zone("alpha.test")
    fake_dns.add_zone("xn--bcher-shop-9db.test")
    gw = fake_gateway(make_settings())
    mail, gateway, dns = Recorder(fake_mailcow()[0]), Recorder(gw.client), Recorder(fake_dns)
    state, web = Recorder(MemoryStore()), Recorder(MemoryStore())
    ports = Ports(
        mail=mail,
        gateway=gateway,
        dns=dns,
        state=state,
        web=web,
        settings=make_settings(),
        clock=lambda: NOW,
        smtp=gw.smtp,
    )
    return World(ports, mail, gateway, dns, state, web, fake_dns)


def event(name: str = "domain.created", **data: Any) -> Envelope:
    raw = load_event(name)
    raw["data"].update(data)
    return parse(json.dumps(raw).encode(), publisher="billing")


def test_full_provisioning(world: World) -> None:
    out = domain_created.handle(event(), world.ports)
    assert out.status == "provisioned"
    dom = world.ports.mail.get_domain("alpha.test")
    assert dom is not None and (dom.mailboxes, dom.quota_mib) == (10, 51200)
    key = world.ports.mail.get_dkim("alpha.test")
    assert key is not None and key.selector == "fc20261127"
    zone = world.fake_dns.read_zone("alpha.test")
    assert zone[("alpha.test", "MX")].values == ("10 pmg1.faster.test.", "10 pmg2.faster.test.", "10 pmg3.faster.test.")
    assert zone[("fc20261127._domainkey.alpha.test", "TXT")].values[0].endswith(key.public_key_b64)
    assert world.fake_dns.updates == 1  # ONE atomic UPDATE for the zone
    assert any(d.domain == "alpha.test" for d in world.ports.gateway.list_relay_domains())
    assert world.ports.web.get(policy_key("alpha.test")) is not None
    (emitted,) = out.emit
    assert emitted["type"] == "domain.provisioned" and emitted["data"]["status"] == "provisioned"
    assert "PRIVATE KEY" not in json.dumps(emitted) and "PRIVATE KEY" not in json.dumps(out.to_json())


def test_replay_writes_nothing_anywhere(world: World) -> None:
    domain_created.handle(event(), world.ports)
    world.reset()
    out = domain_created.handle(event(), world.ports)
    assert out.status == "provisioned" and out.writes == 0
    assert world.writes() == {"mail": [], "gateway": [], "dns": [], "state": [], "web": []}


def test_other_quotas_converge_with_one_edit(world: World) -> None:
    domain_created.handle(event(), world.ports)
    world.reset()
    plan = dict(load_event("domain.created")["data"]["plan"], mailboxes=25, quota_mib=102400)
    out = domain_created.handle(event(plan=plan), world.ports)
    assert world.mail.writes == ["edit_domain"]
    assert world.gateway.writes == [] and world.dns.writes == []
    assert out.changes["mailcow"] == ("~ domain mailboxes=25", "~ domain quota=102400")
    dom = world.ports.mail.get_domain("alpha.test")
    assert dom is not None and dom.mailboxes == 25
    assert len(world.ports.gateway.list_transports()) == 1


def test_lowering_aliases_to_zero_is_refused_before_any_write(world: World) -> None:
    domain_created.handle(event(), world.ports)
    world.reset()
    plan = dict(load_event("domain.created")["data"]["plan"], aliases=0, mailboxes=25)
    with pytest.raises(EventInvalid, match="Mailcow cannot lower aliases=.* to 0"):
        domain_created.handle(event(plan=plan), world.ports)
    assert world.writes() == {"mail": [], "gateway": [], "dns": [], "state": [], "web": []}
    dom = world.ports.mail.get_domain("alpha.test")
    assert dom is not None and dom.mailboxes != 25  # nothing half-applied either


def test_zero_aliases_on_a_new_domain_is_created_as_asked(world: World) -> None:
    plan = dict(load_event("domain.created")["data"]["plan"], aliases=0)
    assert domain_created.handle(event(plan=plan), world.ports).status == "provisioned"
    dom = world.ports.mail.get_domain("alpha.test")
    assert dom is not None and dom.aliases == 0


def test_customer_records_survive(world: World) -> None:
    www = RecordSet.of("www.alpha.test", "A", 300, ["192.0.2.80"])
    verification = RecordSet.of("alpha.test", "TXT", 300, ["google-site-verification=abc"])
    world.fake_dns.set_rrset("alpha.test", www)
    world.fake_dns.set_rrset("alpha.test", verification)
    domain_created.handle(event(), world.ports)
    zone = world.fake_dns.read_zone("alpha.test")
    assert zone[www.key] == www
    assert "google-site-verification=abc" in zone[("alpha.test", "TXT")].values


def _nothing_written(world: World) -> None:
    assert world.writes() == {"mail": [], "gateway": [], "dns": [], "state": [], "web": []}
    assert world.ports.mail.get_domain("alpha.test") is None


def test_foreign_cname_fails_the_plan_and_changes_nothing(world: World) -> None:
    world.fake_dns.set_rrset("alpha.test", RecordSet.of("autoconfig.alpha.test", "CNAME", 300, ["elsewhere.example."]))
    with pytest.raises(OwnershipConflict, match="autoconfig.alpha.test"):
        domain_created.handle(event(), world.ports)
    _nothing_written(world)


def test_provider_zone_is_refused(world: World) -> None:
    raw = load_event("domain.created")
    raw["subject"] = raw["data"]["domain"] = "mail.faster.test"
    with pytest.raises(EventInvalid, match="provider"):
        domain_created.handle(parse(json.dumps(raw).encode(), publisher="billing"), world.ports)
    _nothing_written(world)


def test_zone_not_served_is_refused(world: World) -> None:
    raw = copy.deepcopy(load_event("domain.created"))
    raw["subject"] = raw["data"]["domain"] = "unknown-zone.test"
    with pytest.raises(EventInvalid, match="not served by our DNS"):
        domain_created.handle(parse(json.dumps(raw).encode(), publisher="billing"), world.ports)
    assert world.writes() == {"mail": [], "gateway": [], "dns": [], "state": [], "web": []}


def test_external_zone_awaits_dns_with_instructions(world: World) -> None:
    out = domain_created.handle(event("domain.created.external"), world.ports)
    assert out.status == "awaiting_dns"
    assert world.dns.writes == [] and world.fake_dns.updates == 0
    lines = out.emit[0]["data"]["instructions"]
    assert any(" MX 10 pmg1.faster.test." in ln for ln in lines)
    assert any("_domainkey.beta.test." in ln and ln.count('"') == 4 for ln in lines)  # 2 strings, one record
    key = world.ports.mail.get_dkim("beta.test")
    assert key is None or key.selector == "dkim"  # never signs with a key the customer has not published


def test_unpropagated_secondary_is_transient_then_converges(world: World) -> None:
    fake = FakeDns(secondaries=("ns2",), auto_sync=False)
    fake.add_zone("alpha.test")
    ports = Ports(
        world.ports.mail,
        world.ports.gateway,
        fake,
        world.ports.state,
        world.ports.web,
        world.ports.settings,
        clock=lambda: NOW,
        smtp=world.ports.smtp,
    )
    with pytest.raises(NotPropagated, match="ns2"):
        domain_created.handle(event(), ports)
    fake.sync()
    assert domain_created.handle(event(), ports).status == "provisioned"
    assert fake.updates == 1  # the retry re-planned and found nothing left to write


def test_an_older_event_does_not_undo_a_newer_one(world: World) -> None:
    newer = load_event("domain.created")
    newer["id"], newer["time"] = "newer", "2026-11-27T10:00:00Z"
    newer["data"]["plan"]["mailboxes"] = 40
    domain_created.handle(parse(json.dumps(newer).encode(), publisher="billing"), world.ports)
    world.reset()
    older = load_event("domain.created")
    older["id"], older["time"] = "older", "2026-11-27T09:00:00Z"
    out = domain_created.handle(parse(json.dumps(older).encode(), publisher="billing"), world.ports)
    assert out.status == "stale" and out.emit == ()
    assert world.writes() == {"mail": [], "gateway": [], "dns": [], "state": [], "web": []}
    dom = world.ports.mail.get_domain("alpha.test")
    assert dom is not None and dom.mailboxes == 40


# ---------------------------------------------------------------- the acceptance gate (SMTP RCPT on every PMG node)


class Ticking:
    """A clock for ports.clock that the test moves."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now


def gate_world(**gateway: Any) -> tuple[Ports, FakeGateway, Ticking]:
    settings = make_settings()
    gw = fake_gateway(settings, **gateway)
    fake_dns = FakeDns()
    for zone in ("alpha.test", "beta.test"):
        fake_dns.add_zone(zone)
    clock = Ticking(NOW)
    ports = Ports(fake_mailcow()[0], gw.client, fake_dns, MemoryStore(), MemoryStore(), settings, clock, smtp=gw.smtp)
    return ports, gw, clock


def test_provisioned_only_when_every_node_accepts_rcpt() -> None:
    ports, gw, _ = gate_world()
    out = domain_created.handle(event(), ports)
    assert out.status == "provisioned"
    checks = out.emit[0]["data"]["acceptance"]
    smtp = [c for c in checks if c["check"] == "smtp rcpt"]
    assert [c["node"] for c in smtp] == ["pmg1.faster.test", "pmg2.faster.test", "pmg3.faster.test"]
    assert all(c["ok"] and c["answer"].startswith("450 4.7.1") and c["source"] == "127.0.0.2" for c in smtp)
    assert gw.smtp.sessions == ["127.0.0.1:2525", "127.0.0.1:2526", "127.0.0.1:2527"]


def test_a_lagging_node_keeps_the_domain_out_of_provisioned_until_it_syncs() -> None:
    ports, gw, clock = gate_world()
    gw.model.configure(node_sync_interval_s={"pmg3": 3600})
    with pytest.raises(NotPropagated, match=r"pmg3\.faster\.test: smtp rcpt 127\.0\.0\.1:2527 from 127\.0\.0\.2: 554"):
        domain_created.handle(event(), ports)
    st = state.load(ports.state, "alpha.test")
    assert st.status != "provisioned" and st.acceptance["since"] == NOW.isoformat(timespec="seconds")
    clock.now += dt.timedelta(seconds=5)
    with pytest.raises(NotPropagated, match=rf"waited 5 of {ports.settings.smtp_probe.max_wait_seconds} s"):
        domain_created.handle(event(), ports)  # the retry: the wait is measured from the first attempt
    gw.model.sync_now()
    assert domain_created.handle(event(), ports).status == "provisioned"
    assert state.load(ports.state, "alpha.test").acceptance == {}


def test_a_node_that_never_catches_up_gives_degraded_naming_it() -> None:
    ports, gw, clock = gate_world()
    gw.model.configure(node_sync_interval_s={"pmg2": 3600})
    with pytest.raises(NotPropagated):
        domain_created.handle(event(), ports)
    clock.now += dt.timedelta(seconds=ports.settings.smtp_probe.max_wait_seconds)
    out = domain_created.handle(event(), ports)
    assert out.status == "degraded"
    (failed,) = out.emit[0]["data"]["degraded"]
    assert (failed["node"], failed["check"], failed["source"]) == ("pmg2.faster.test", "smtp rcpt", "127.0.0.2")
    assert failed["answer"] == "554 5.7.1 <postmaster@alpha.test>: Relay access denied"
    # build() validated the outbound event against schemas/domain.provisioned.schema.json
    st = state.load(ports.state, "alpha.test")
    assert st.status == "degraded" and st.acceptance["failed"][0]["node"] == "pmg2.faster.test"


def test_a_probe_from_inside_the_trusted_networks_is_not_counted() -> None:
    ports, gw, _ = gate_world()
    gw.client.add_network(TrustedNetwork("127.0.0.0/24", "managed-by mailplane; test"))
    with pytest.raises(NotPropagated, match="127.0.0.2 is trusted"):
        domain_created.handle(event(), ports)


def test_two_domains_in_one_second_are_both_accepted_on_the_master() -> None:
    ports, gw, _ = gate_world()  # map_writes = "retouch" (the setting's default)
    assert domain_created.handle(event(), ports).status == "provisioned"
    raw = load_event("domain.created")
    raw["id"], raw["subject"], raw["data"]["domain"] = "4b1f7a52-6a0e-4f8e-9c1d-0d6a2b3c4e5f", "beta.test", "beta.test"
    assert domain_created.handle(parse(json.dumps(raw).encode(), publisher="billing"), ports).status == "provisioned"


@pytest.mark.parametrize(("map_writes", "lost"), [("retouch", False), ("space", False), ("off", True)])
def test_map_writes_setting_decides_whether_a_same_second_write_is_lost(map_writes: str, lost: bool) -> None:
    gw = fake_gateway(make_settings(), map_writes=map_writes)
    for domain in ("a.test", "b.test"):
        gw.client.add_relay_domain(RelayDomain(domain, "managed-by mailplane"))
    gw.client.settle()
    codes = [gw.model.rcpt("pmg1", "127.0.0.2", f"postmaster@{d}")[0] for d in ("a.test", "b.test")]
    assert codes == ([450, 554] if lost else [450, 450])


def test_waits_for_a_debounced_sogo_restart_requested_after_the_add() -> None:
    from functions._core.model import state
    from functions.ops.status import as_json, domain_status

    now = [NOW]
    fake_dns = FakeDns()
    fake_dns.add_zone("alpha.test")
    mail, model = fake_mailcow()
    gw = fake_gateway(make_settings())
    base = make_settings(sogo_restart_interval=20)  # the gate waits longer than the SOGo interval, as in production
    patient = dataclasses.replace(base, smtp_probe=dataclasses.replace(base.smtp_probe, max_wait_seconds=35))
    ports = Ports(
        mail=mail,
        gateway=gw.client,
        dns=fake_dns,
        state=MemoryStore(),
        web=MemoryStore(),
        settings=patient,
        clock=lambda: now[0],
        smtp=gw.smtp,
    )
    with pytest.raises(NotPropagated, match="mailcow webmail ready: SOGo restart 1 is due at"):
        domain_created.handle(event(), ports)
    assert "alpha.test" in model.domains and model.sogo_restarts == 0
    assert state.load(ports.state, "alpha.test").webmail == {"after": 0}  # recorded when the domain was added
    now[0] += dt.timedelta(seconds=10)
    with pytest.raises(NotPropagated, match="mailcow webmail ready"):  # a retry within the interval: still waiting
        domain_created.handle(event(), ports)
    now[0] += dt.timedelta(seconds=11)
    out = domain_created.handle(event(), ports)
    assert out.status == "provisioned" and model.sogo_restarts == 1 and model.sogo_domains == {"alpha.test"}
    overall, checks = domain_status("alpha.test", ports)
    web = next(c for c in checks if c.where == "sogo restarts")
    assert overall == "provisioned" and web.ok and web.have.startswith("ready: SOGo restart 1")
    (note,) = as_json("alpha.test", overall, checks)["notes"]  # the API log exposure, where operators read
    assert "API log" in note and "read-only" in note


def test_mailcow_api_log_keeps_the_imported_key_but_mailplane_logs_never_do(caplog: pytest.LogCaptureFixture) -> None:
    """What is exposed (docs/dkim.md): Mailcow's API log holds the PEM mailplane had to send; mailplane's own log
    lines hold no key material."""
    from functions._core.model import state

    fake_dns = FakeDns()
    fake_dns.add_zone("alpha.test")
    mail, model = fake_mailcow()
    gw = fake_gateway(make_settings())
    ports = Ports(
        mail, gw.client, fake_dns, MemoryStore(), MemoryStore(), make_settings(), clock=lambda: NOW, smtp=gw.smtp
    )
    with caplog.at_level(logging.DEBUG):
        assert domain_created.handle(event(), ports).status == "provisioned"
    st = state.load(ports.state, "alpha.test")
    pem = state.load_key(ports.state, "alpha.test", st.keys[-1].selector, ports.settings).private_pem.reveal()
    imports = [e for e in model.api_logs(None) or [] if e["uri"] == "/api/v1/add/dkim_import"]
    assert len(imports) == 1 and json.loads(imports[0]["data"][len("attr='") : -1])["private_key_file"] == pem
    body = "".join(pem.splitlines()[1:-1])
    assert caplog.records and "PRIVATE KEY" not in caplog.text and body[:64] not in caplog.text


def test_pmg_maps_settle_while_the_dns_gate_runs_and_before_the_smtp_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    """PMG's 1-s postmap rule is waited out after the DNS gate (the second boundary passes meanwhile), before the
    first RCPT; a DNS gate that raises still leaves every map write effective (the retry may run elsewhere)."""
    ports, gw, _ = gate_world()
    order: list[str] = []
    settle, read, rcpt = gw.client.settle, ports.dns.read_zone_at, gw.smtp.rcpt
    monkeypatch.setattr(gw.client, "settle", lambda: (order.append("settle"), settle())[1])
    monkeypatch.setattr(ports.dns, "read_zone_at", lambda *a: (order.append("dns gate"), read(*a))[1])
    monkeypatch.setattr(gw.smtp, "rcpt", lambda *a: (order.append("smtp"), rcpt(*a))[1])
    assert domain_created.handle(event(), ports).status == "provisioned"
    assert order.index("settle") > max(i for i, o in enumerate(order) if o == "dns gate")
    assert order.index("settle") < order.index("smtp") and order.count("settle") == 1

    order.clear()
    lagging = FakeDns(secondaries=("ns2",), auto_sync=False)  # a secondary that never transfers: the DNS gate raises
    lagging.add_zone("beta.test")
    s = ports.settings
    dns = dataclasses.replace(s.dns, propagation_wait=0)
    ports = dataclasses.replace(ports, dns=lagging, settings=dataclasses.replace(s, dns=dns))
    raw = load_event("domain.created")
    raw["id"], raw["subject"], raw["data"]["domain"] = "4b1f7a52-6a0e-4f8e-9c1d-0d6a2b3c4e5f", "beta.test", "beta.test"
    with pytest.raises(NotPropagated):
        domain_created.handle(parse(json.dumps(raw).encode(), publisher="billing"), ports)
    assert order == ["settle"]  # after the DNS gate raised, before the retry; no RCPT yet
    assert gw.model.rcpt("pmg1", "127.0.0.2", "postmaster@beta.test")[0] == 450  # the relay domain is in effect


def test_a_promoted_domain_keeps_enforce_when_domain_created_is_replayed(world: World) -> None:
    from functions.ops import enforce

    s = world.ports.settings
    world.ports = dataclasses.replace(
        world.ports, settings=dataclasses.replace(s, policy=dataclasses.replace(s.policy, mta_sts_mode="testing"))
    )
    domain_created.handle(event(), world.ports)
    policy = world.ports.web.get(policy_key("alpha.test"))
    assert policy is not None and b"mode: testing" in policy.body
    enforce.apply(world.ports, enforce.plan(world.ports, "alpha.test"), "test")
    world.reset()
    out = domain_created.handle(event(), world.ports)
    assert out.status == "provisioned" and world.writes()["web"] == [] and world.writes()["dns"] == []
    policy = world.ports.web.get(policy_key("alpha.test"))
    assert policy is not None and b"mode: enforce" in policy.body


class Killed(BaseException):
    """The worker process dies here (nothing after this point runs)."""


def test_a_run_that_died_before_its_settle_is_repaired_by_the_next_run_without_a_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker killed between PMG's map writes and their settle leaves the writes inside one second with another
    (never postmapped). The redelivery writes nothing to PMG (its entries exist); when a node then refuses RCPT it
    rewrites the maps unchanged through the domain's entries, settles, and passes without going down the ladder."""
    ports, gw, _ = gate_world()
    gw.client.add_relay_domain(RelayDomain("other.test", "managed-by mailplane"))  # the same second, just before
    gw.client.add_transport(GatewayTransport("other.test", "moo.faster.test", 25, "smtp", True, "managed-by mailplane"))

    def killed() -> None:  # the first run dies before its settle
        raise Killed

    monkeypatch.setattr(gw.client, "settle", killed)
    with pytest.raises(Killed):
        domain_created.handle(event(), ports)
    assert gw.model.rcpt("pmg1", "127.0.0.2", "postmaster@alpha.test")[0] == 554  # lost in PMG's second
    monkeypatch.undo()
    touched: list[str] = []
    retouch = gw.client.retouch
    monkeypatch.setattr(gw.client, "retouch", lambda d: (touched.append(d), retouch(d))[1])
    out = domain_created.handle(event(), ports)  # the redelivery (attempt 0 again)
    assert out.status == "provisioned" and touched == ["alpha.test"]
    assert gw.model.rcpt("pmg1", "127.0.0.2", "postmaster@alpha.test")[0] == 450


def test_the_initial_mta_sts_mode_asked_in_domain_created_becomes_the_domains_own(world: World) -> None:
    """data.mta_sts.mode (the platform says enforce): the policy and its _mta-sts id say testing, the state keeps the
    mode, and a later domain.created without it (a quota change) changes neither the policy nor the id."""
    assert world.ports.settings.policy.mta_sts_mode == "enforce"
    out = domain_created.handle(event(mta_sts={"mode": "testing"}), world.ports)
    assert out.status == "provisioned"
    policy = world.ports.web.get(policy_key("alpha.test"))
    assert policy is not None and b"mode: testing\n" in policy.body
    txt = world.ports.dns.read_rrset("_mta-sts.alpha.test", "TXT")
    assert txt is not None and txt.values == (f"v=STSv1; id={policy_id(policy.body.decode())};",)
    assert state.load(world.ports.state, "alpha.test").mta_sts["mode"] == "testing"
    later = load_event("domain.created")
    later["id"], later["time"] = "9d3f1c2e-0b7a-4c55-8e21-5a6b7c8d9e0f", "2026-12-03T09:00:00Z"
    later["data"]["plan"]["mailboxes"] += 1
    world.reset()
    out = domain_created.handle(parse(json.dumps(later).encode(), publisher="billing"), world.ports)
    assert out.status == "provisioned" and world.writes()["web"] == [] and world.writes()["dns"] == []
    assert state.load(world.ports.state, "alpha.test").mta_sts_mode(world.ports.settings) == "testing"


def test_an_unknown_mta_sts_mode_is_refused_before_anything_is_written(world: World) -> None:
    with pytest.raises(EventInvalid, match="mta_sts"):
        event(mta_sts={"mode": "none"})


def _stale(gw: FakeGateway, monkeypatch: pytest.MonkeyPatch, nodes: set[str]) -> list[str]:
    return stale_postfix(gw.model, monkeypatch, nodes, "alpha.test")


def test_a_node_whose_postfix_still_refuses_a_mapped_domain_is_reloaded_and_the_gate_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ports, gw, _ = gate_world()
    reloads = _stale(gw, monkeypatch, {"pmg2"})
    out = domain_created.handle(event(), ports)
    assert out.status == "provisioned"
    assert reloads == ["pmg2:postfix"]  # only the node that answered "Relay access denied", through the API


def test_without_the_reload_a_stale_node_keeps_the_domain_out_of_provisioned(monkeypatch: pytest.MonkeyPatch) -> None:
    ports, gw, _ = gate_world()
    _stale(gw, monkeypatch, {"pmg2"})
    monkeypatch.setattr(gw.client, "reload_postfix", lambda node: None)
    with pytest.raises(NotPropagated, match=r"pmg2\.faster\.test: smtp rcpt .*554 5\.7\.1"):
        domain_created.handle(event(), ports)


def test_a_node_that_does_not_answer_is_not_reloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    ports, gw, _ = gate_world()
    reloads = _stale(gw, monkeypatch, set())
    gw.model.configure(down=["pmg3"])
    with pytest.raises(NotPropagated, match=r"pmg3\.faster\.test: smtp rcpt .*no SMTP answer"):
        domain_created.handle(event(), ports)
    assert reloads == []


class ServerLog(FakeDns):
    """FakeDns that logs which server each SOA question and zone transfer went to."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.asked: list[tuple[str, str]] = []

    def serial(self, zone: str, server: str) -> int | None:
        self.asked.append(("serial", server))
        return super().serial(zone, server)

    def read_zone_at(self, zone: str, server: str) -> tuple[int, dict[Any, RecordSet]] | None:
        self.asked.append(("axfr", server))
        return super().read_zone_at(zone, server)

    def read_zone(self, zone: str) -> dict[Any, RecordSet]:
        self.asked.append(("plan axfr", "primary"))
        return super().read_zone(zone)


def test_the_dns_gate_asks_a_passed_server_once_and_a_lagging_one_its_serial_only(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions._core.model import verify

    fake = ServerLog(secondaries=("ns2",), auto_sync=False)
    fake.add_zone("alpha.test")
    settings = world.ports.settings
    settings = dataclasses.replace(settings, dns=dataclasses.replace(settings.dns, propagation_wait=5.0))
    ports = dataclasses.replace(world.ports, dns=fake, settings=settings)
    rounds: list[float] = []

    def sleep(seconds: float) -> None:  # ns2 transfers the UPDATE after the gate's second round
        rounds.append(seconds)
        if len(rounds) == 2:
            fake.sync()

    wait = verify.until_propagated
    monkeypatch.setattr(verify, "until_propagated", lambda w, check: wait(w, check, sleep=sleep))
    fake.asked.clear()
    assert domain_created.handle(event(), ports).status == "provisioned"
    gate = fake.asked  # questions by server (the plan reads the zone with read_zone, not logged)
    assert len(rounds) == 2
    assert gate.count(("axfr", "ns2")) == 1  # transferred once, when its SOA showed the UPDATE
    assert gate.count(("serial", "ns2")) == 3  # one SOA question per round
    assert gate.count(("axfr", "primary")) == 1  # passed in round 1, not asked again


def waiting_for_pmg3() -> tuple[Ports, FakeGateway, Ticking, ServerLog]:
    """A domain.created whose first attempt passed the DNS gate and waits for pmg3's sync (NotPropagated)."""
    ports, gw, clock = gate_world()
    fake = ServerLog()
    fake.add_zone("alpha.test")
    ports = dataclasses.replace(ports, dns=fake)
    gw.model.configure(node_sync_interval_s={"pmg3": 3600})
    with pytest.raises(NotPropagated, match="pmg3"):
        domain_created.handle(event(), ports)
    return ports, gw, clock, fake


def test_a_retry_waiting_for_acceptance_skips_the_dns_gate_it_passed_while_the_serial_holds() -> None:
    ports, gw, clock, fake = waiting_for_pmg3()
    verified = state.load(ports.state, "alpha.test").acceptance["dns"]
    assert verified == {"serial": fake.serials["alpha.test"], "servers": fake.servers("alpha.test")}
    fake.asked.clear()
    clock.now += dt.timedelta(seconds=5)
    with pytest.raises(NotPropagated, match="pmg3"):
        domain_created.handle(event(), ports)
    assert ("axfr", "primary") not in fake.asked  # the retry: the same serial, no second DNS gate
    gw.model.sync_now()
    out = domain_created.handle(event(), ports)
    assert out.status == "provisioned" and out.emit[0]["data"]["verified_servers"] == verified["servers"]
    assert ("axfr", "primary") not in fake.asked


def test_a_retry_after_the_zone_changed_passes_the_dns_gate_again() -> None:
    ports, gw, _, fake = waiting_for_pmg3()
    fake.set_rrset("alpha.test", RecordSet.of("www.alpha.test", "A", 300, ["192.0.2.80"]))  # the customer's edit
    fake.asked.clear()
    gw.model.sync_now()
    assert domain_created.handle(event(), ports).status == "provisioned"
    assert ("axfr", "primary") in fake.asked  # a new serial: every server asked again
    assert state.load(ports.state, "alpha.test").acceptance == {}


def _calls(monkeypatch: pytest.MonkeyPatch, target: Any, *names: str) -> list[str]:
    """Log every call of ``target``'s methods ``names`` (they still run)."""
    log: list[str] = []
    for name in names:
        method = getattr(target, name)
        monkeypatch.setattr(target, name, lambda *a, _n=name, _m=method, **k: (log.append(_n), _m(*a, **k))[1])
    return log


def test_a_retry_waiting_for_a_nodes_sync_resumes_at_the_acceptance_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The retry of a run that wrote everything and passed the DNS gate re-plans nothing: no zone transfer, no PMG
    read or write (no re-touch: that run settled its writes), one SOA question; the key is imported at the end."""
    ports, gw, clock, fake = waiting_for_pmg3()
    assert ports.mail.get_dkim("alpha.test") is None  # imported only once the gate passes
    pmg = _calls(monkeypatch, gw.client, "get_relay_domain", "get_transport", "get_network", "retouch", "settle")
    mail = _calls(monkeypatch, ports.mail, "get_domain", "get_dkim", "import_dkim")
    fake.asked.clear()
    clock.now += dt.timedelta(seconds=5)
    with pytest.raises(NotPropagated, match="pmg3"):
        domain_created.handle(event(), ports)
    assert fake.asked == [] and pmg == [] and set(mail) == {"get_domain"}  # the gate's Mailcow check only
    gw.model.sync_now()
    out = domain_created.handle(event(), ports)
    assert out.status == "provisioned" and out.emit[0]["data"]["changes"]["mailcow"] == [
        f"+ dkim {out.emit[0]['data']['dkim_selector']}"
    ]
    assert fake.asked == [] and pmg == [] and mail[-2:] == ["get_dkim", "import_dkim"]
    st = state.load(ports.state, "alpha.test")
    assert st.status == "provisioned" and st.acceptance == {} and st.current is not None
    assert st.current.status == "ACTIVE" and ports.mail.get_dkim("alpha.test") is not None


def test_a_resumed_retry_that_finds_a_write_undone_re_plans_and_repairs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A check that passed in the recorded run and fails now (the Mailcow domain was removed meanwhile) sends the
    retry down the full path, which adds the domain again."""
    ports, gw, clock, _ = waiting_for_pmg3()
    ports.mail.delete_domain("alpha.test")
    adds = _calls(monkeypatch, ports.mail, "add_domain")
    clock.now += dt.timedelta(seconds=5)
    with pytest.raises(NotPropagated, match="pmg3"):  # re-planned and added again; still waiting for pmg3
        domain_created.handle(event(), ports)
    assert adds == ["add_domain"] and ports.mail.get_domain("alpha.test") is not None
    gw.model.sync_now()
    assert domain_created.handle(event(), ports).status == "provisioned"


def test_a_first_run_reads_the_mailcow_and_pmg_domain_once_for_the_ownership_check_and_the_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ports, gw, _ = gate_world()
    pmg = _calls(monkeypatch, gw.client, "get_relay_domain")
    mail = _calls(monkeypatch, ports.mail, "get_domain", "add_domain")
    assert domain_created.handle(event(), ports).status == "provisioned"
    assert pmg == ["get_relay_domain"]
    assert mail[:2] == ["get_domain", "add_domain"]  # the gate's own Mailcow check comes after the add
