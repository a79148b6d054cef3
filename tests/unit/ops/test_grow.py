"""node.add (provider zone, policies, MX, in that order; waves; resumable; idempotent) and node.retire's tail."""

from __future__ import annotations

import dataclasses

import pytest
from sim.pmg.model import DEFAULT_NODES

from functions._core.model import dane, fleet, state
from functions._core.model.mailset import MARKER_NAME, desired_records, mta_sts_policy, policy_key
from functions._core.model.ports import DnsChange
from functions._core.model.records import RecordSet
from functions._core.platform.config import MxHost, Settings
from functions._core.platform.errors import DnsConflict, EventInvalid
from functions.ops import grow, retire
from functions.ops.probe import Check
from tests.fakes.pmg import fake_pmg, quick_model
from tests.fakes.settings import make_settings
from tests.fakes.tls import FakeNodeTls, self_signed
from tests.unit.test_node_down import T0, World, build_world

PMG4 = MxHost("pmg4.faster.test", "127.0.1.4", "2001:db8:10:1450::6c", joining=True)
SPF3 = (
    "v=spf1 ip4:127.0.1.1 ip4:127.0.1.2 ip4:127.0.1.3 "
    "ip6:2001:db8:10:1410::6c ip6:2001:db8:0:2006::6c ip6:2001:db8:10:1440::6c -all"
)
MX4 = "10 pmg4.faster.test."


def healthy(host: MxHost, settings: Settings) -> Check:
    return Check(True, True)


def four(settings: Settings) -> Settings:
    provider = dataclasses.replace(settings.provider, mx_hosts=(*settings.provider.mx_hosts, PMG4))
    return dataclasses.replace(settings, provider=provider)


def add_domain(world: World, zone: str, three: Settings, *, marked: bool = True) -> None:
    want = desired_records(zone, three, "fc20261127", "QUJD")
    records = [rs for k, rs in want.items() if marked or not k[0].startswith(MARKER_NAME)]
    world.dns.add_zone(zone, records)
    world.ports.web.put(policy_key(zone), mta_sts_policy(three).encode(), content_type="text/plain")
    st = state.DomainState(zone, request={"dns": {"hosted": True}}, status="provisioned")
    state.save(world.state, st, state.DomainState(zone))


@pytest.fixture
def world() -> World:
    three = make_settings()
    w = build_world(four(three))
    w.dns.set_rrset("faster.test", RecordSet.of("_pmg.faster.test", "TXT", 300, [SPF3]))
    gateway, _ = fake_pmg(quick_model(nodes=(*DEFAULT_NODES, ("pmg4", "192.0.2.14"))))
    w.ports = dataclasses.replace(w.ports, gateway=gateway)
    for i in range(14):
        add_domain(w, f"d{i:02d}.test", three)
    add_domain(w, "foreign.test", three, marked=False)
    return w


def plan(world: World, **kw: object) -> grow.AddPlan:
    return grow.plan_add(world.ports, "pmg4", check=healthy, **kw)  # type: ignore[arg-type]


def mx(world: World, zone: str) -> tuple[str, ...]:
    return world.dns.read_zone(zone)[(zone, "MX")].values


def test_a_joining_node_is_not_in_new_domains_mx_or_policy(world: World) -> None:
    s = world.ports.settings
    assert "pmg4" not in mta_sts_policy(s)
    assert all("pmg4" not in v for v in desired_records("x.test", s, "sel", "QUJD")[("x.test", "MX")].values)
    assert "mx: pmg4.faster.test" in mta_sts_policy(fleet.with_host(s, PMG4))


def test_plan_adopts_the_hand_written_spf_and_writes_nothing(world: World) -> None:
    updates = world.dns.updates
    p = plan(world)
    assert p.health == () and p.provider.refused == ()
    assert p.provider.adopted and "adopted" in p.provider.adopted[0]
    keys = [c.key for c in p.provider.changes]
    assert keys == [("pmg4.faster.test", "A"), ("pmg4.faster.test", "AAAA"), ("_pmg.faster.test", "TXT")]
    spf = p.provider.changes[2].after
    assert spf is not None and "ip4:127.0.1.4" in spf.values[0] and "ip6:2001:db8:10:1450::6c" in spf.values[0]
    assert [c.zone for c in p.mx] == [f"d{i:02d}.test" for i in range(14)]
    assert len(p.policies) == 14
    assert "foreign.test: no mailplane ownership marker; not ours to change" in p.skipped
    assert world.dns.updates == updates and world.recorders["state"].writes == []


def test_apply_order_provider_then_policies_then_mx_and_a_replay_writes_nothing(world: World) -> None:
    world.dns.log.clear()
    report = grow.apply_add(world.ports, plan(world))
    assert not report.halted and report.phases == {"provider": 3, "policies": 14, "mx": 14}
    kinds = [
        ("provider" if z == "faster.test" else c.key[1] if c.key[1] == "MX" else "policy") for z, c in world.dns.log
    ]
    first_policy, first_mx = kinds.index("policy"), kinds.index("MX")
    assert set(kinds[:first_policy]) == {"provider"} and "MX" not in kinds[:first_mx]
    assert set(kinds[first_mx:]) == {"MX"}
    grown = fleet.with_host(world.ports.settings, PMG4)
    body, txt = fleet.policy_body_and_txt(grown)
    for i in range(14):
        zone = f"d{i:02d}.test"
        assert MX4 in mx(world, zone) and len(mx(world, zone)) == 4
        assert world.dns.read_zone(zone)[(f"_mta-sts.{zone}", "TXT")].values == (txt,)
        got = world.ports.web.get(policy_key(zone))
        assert got is not None and got.body == body
    assert MX4 not in mx(world, "foreign.test")
    assert world.dns.read_zone("faster.test")[("pmg4.faster.test", "A")].values == ("127.0.1.4",)
    again = plan(world)
    assert again.empty
    updates, web = world.dns.updates, list(world.ports.web.list(""))
    assert grow.apply_add(world.ports, again).phases == {"policies": 0, "mx": 0}
    assert world.dns.updates == updates and list(world.ports.web.list("")) == web


def test_a_different_hand_written_spf_or_address_is_refused_unless_forced(world: World) -> None:
    world.dns.set_rrset("faster.test", RecordSet.of("_pmg.faster.test", "TXT", 300, ["v=spf1 ip4:192.0.2.9 -all"]))
    p = plan(world)
    assert "_pmg.faster.test" in p.provider.refused[0] and "--force" in p.provider.refused[0]
    updates = world.dns.updates
    with pytest.raises(grow.NodeNotReady):
        grow.apply_add(world.ports, p)
    assert world.dns.updates == updates
    forced = plan(world, force=True)
    assert forced.provider.refused == ()
    world.dns.set_rrset("faster.test", RecordSet.of("pmg4.faster.test", "A", 300, ["192.0.2.99"]))
    assert any("A pmg4.faster.test is 192.0.2.99" in r for r in plan(world).provider.refused)


def test_an_unhealthy_or_unclustered_node_is_refused_before_any_write(world: World) -> None:
    sick = grow.plan_add(world.ports, "pmg4", check=lambda h, s: Check(False, True, "SMTP refused"))
    assert sick.health and "not healthy" in sick.health[0]
    with pytest.raises(grow.NodeNotReady):
        grow.apply_add(world.ports, sick)
    world.ports = dataclasses.replace(world.ports, gateway=fake_pmg()[0])  # a 3-node cluster: pmg4 unknown
    assert any("not a member of the PMG cluster" in h for h in plan(world).health)
    with pytest.raises(EventInvalid):
        grow.plan_add(world.ports, "pmg9", check=healthy)


def test_a_crashed_run_resumes_in_order(world: World) -> None:
    def crash(phase: str, report: grow.AddReport) -> None:
        if phase == "policies":
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        grow.apply_add(world.ports, plan(world), progress=crash)
    assert all(MX4 not in mx(world, f"d{i:02d}.test") for i in range(14))  # MX never before the policies
    stored = world.state.get(grow.progress_key("pmg4.faster.test"))
    assert stored is not None and b'"phase": "policies"' in stored.body
    rest = plan(world)
    assert rest.provider.changes == () and rest.policies == () and len(rest.mx) == 14
    assert grow.apply_add(world.ports, rest).phases["mx"] == 14


def test_a_failed_policy_canary_stops_before_mx(world: World) -> None:
    p = plan(world)
    world.dns.faults = [DnsConflict("zone changed")]  # the first UPDATE without the provider's: a policy's TXT
    report = grow.apply_add(world.ports, dataclasses.replace(p, provider=fleet.ProviderPlan()))
    assert report.halted.startswith("policies") and report.phases.get("mx") is None


def test_retire_reverses_it_and_waits_for_max_age_before_the_policies(world: World) -> None:
    grow.apply_add(world.ports, plan(world))
    rp = retire.plan_retire(world.ports, "pmg4")
    assert len(rp.changes) == 14
    first = grow.retire_tail(world.ports, "pmg4")
    assert "still name" in first.waiting  # MX first
    assert not retire.apply_retire(world.ports, rp).failed
    tail = grow.retire_tail(world.ports, "pmg4")
    assert "max_age" in tail.waiting
    assert "pmg4" in world.ports.web.get(policy_key("d00.test")).body.decode()  # type: ignore[union-attr]
    world.advance(world.ports.settings.policy.mta_sts_max_age + 1)
    done = grow.retire_tail(world.ports, "pmg4")
    assert not done.waiting and not done.report.halted and done.report.phases["policies"] == 14
    zone = world.dns.read_zone("faster.test")
    assert ("pmg4.faster.test", "A") not in zone and ("pmg4.faster.test", "AAAA") not in zone
    assert fleet.same_spf(zone[("_pmg.faster.test", "TXT")].values[0], SPF3)
    assert "pmg4" not in world.ports.web.get(policy_key("d00.test")).body.decode()  # type: ignore[union-attr]
    updates = world.dns.updates
    grow.retire_tail(world.ports, "pmg4")
    assert world.dns.updates == updates  # a second run writes nothing


def test_undo_add_takes_everything_back_without_waiting(world: World) -> None:
    grow.apply_add(world.ports, plan(world))
    mxr, tail = grow.undo_add(world.ports, "pmg4")
    assert len(mxr.applied) == 14 and not tail.waiting and not tail.report.halted
    assert all(MX4 not in mx(world, f"d{i:02d}.test") for i in range(14))
    assert ("pmg4.faster.test", "A") not in world.dns.read_zone("faster.test")


def test_spf_equivalence() -> None:
    assert fleet.same_spf("v=spf1 ip4:1.2.3.4 ip6:::1 -all", "v=spf1 ip6:::1  ip4:1.2.3.4 -all")
    assert not fleet.same_spf("v=spf1 ip4:1.2.3.4 ~all", "v=spf1 ip4:1.2.3.4 -all")
    assert fleet.spf_for([("1.2.3.4", ""), ("", "::1")]) == "v=spf1 ip4:1.2.3.4 ip6:::1 -all"


def test_cli_plan_shows_the_phases_and_refuses_an_unhealthy_node(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.ops import cli_grow

    code = cli_grow.add(world.ports, "pmg4", apply=False, approve=None, undo=False, force=False, json_out=False)
    text = capsys.readouterr().out
    assert code == 1 and "not healthy" in text  # the real prober check: nothing listens for pmg4 here
    assert (
        "1. provider zone" in text and "2. MTA-STS policies" in text and "3. MX +pmg4.faster.test: 14 zone(s)" in text
    )
    updates = world.dns.updates
    with pytest.raises(grow.NodeNotReady):
        cli_grow.add(world.ports, "pmg4", apply=True, approve=None, undo=False, force=False, json_out=False)
    assert world.dns.updates == updates


def test_a_policy_changed_since_planning_fails_alone_and_mx_waits(world: World) -> None:
    p = plan(world)
    world.ports.web.put(policy_key("d05.test"), b"version: STSv1\nmode: testing\n", content_type="text/plain")
    report = grow.apply_add(world.ports, p)
    assert [f.split(":")[0] for f in report.failed] == ["d05.test"] and report.phases["policies"] == 13
    assert "mx" not in report.phases and all(MX4 not in mx(world, f"d{i:02d}.test") for i in range(14))
    rerun = plan(world)
    assert [c.zone for c in rerun.policies] == ["d05.test"]  # converges on the next run
    assert not grow.apply_add(world.ports, rerun).halted
    assert all(MX4 in mx(world, f"d{i:02d}.test") for i in range(14))


# ---------------------------------------------------------------- DANE: the new node's TLSA before any MX

TLSA4 = "_25._tcp.pmg4.faster.test"


@pytest.fixture
def dworld(world: World) -> tuple[World, FakeNodeTls]:
    """The same fleet with DANE on, a primary and two secondaries, and the nodes' STARTTLS certificates."""
    s = world.ports.settings
    tls = FakeNodeTls([f"pmg{i}" for i in range(1, 5)], T0)
    on = dataclasses.replace(s, dane=dataclasses.replace(s.dane, enabled=True))
    world.ports = dataclasses.replace(world.ports, settings=on, node_tls=tls)
    world.dns.secondaries = ("ns2", "ns3")
    world.dns.sync()
    return world, tls


def presented(tls: FakeNodeTls) -> str:
    pem = tls.presented("pmg4")
    assert pem is not None
    return dane.spki_sha256(pem)


def served_tlsa(world: World) -> dict[str, tuple[str, ...]]:
    out = {}
    for server in world.dns.servers("faster.test"):
        rs = world.dns.query(server, TLSA4, "TLSA")
        out[server] = rs.values if rs else ()
    return out


def new_certificate(tls: FakeNodeTls) -> None:
    """PMG's own ACME replaced the node's certificate, with a new key (what breaks DANE)."""
    cert, key = self_signed("pmg4", T0)
    tls.upload("pmg4", key, cert)


def test_dane_the_tlsa_is_served_everywhere_before_the_first_mx_wave_and_a_replay_writes_nothing(
    dworld: tuple[World, FakeNodeTls], monkeypatch: pytest.MonkeyPatch
) -> None:
    world, tls = dworld
    want = dane.tlsa_value(presented(tls))
    p = plan(world)
    assert p.dane == "adopt" and p.health == () and p.provider.refused == ()
    tlsa = [c for c in p.provider.changes if c.key == (TLSA4, "TLSA")]
    assert len(tlsa) == 1 and tlsa[0].before is None and tlsa[0].after is not None
    assert tlsa[0].after.values == (want,)
    seen_at_first_mx: list[dict[str, tuple[str, ...]]] = []
    real_apply = world.dns.apply

    def apply(zone: str, changes: list[DnsChange]) -> int:
        if not seen_at_first_mx and any(c.key[1] == "MX" for c in changes):
            seen_at_first_mx.append(served_tlsa(world))
        return real_apply(zone, changes)

    monkeypatch.setattr(world.dns, "apply", apply)
    report = grow.apply_add(world.ports, p)
    assert not report.halted and report.phases == {"provider": 4, "policies": 14, "mx": 14}
    assert seen_at_first_mx == [{"primary": (want,), "ns2": (want,), "ns3": (want,)}]
    assert [k for z, c in world.dns.log if z == "faster.test" for k in [c.key]].count((TLSA4, "TLSA")) == 1
    st, etag = dane.read(world.state, "pmg4")
    assert st.current_spki == presented(tls) and st.phase == "IDLE"  # cert.renew owns the TLSA from now on
    again = plan(world)
    assert again.empty and again.dane == "owned" and again.provider.changes == ()
    updates = world.dns.updates
    assert grow.apply_add(world.ports, again).phases == {"policies": 0, "mx": 0}
    assert world.dns.updates == updates and dane.read(world.state, "pmg4")[1] == etag


def test_dane_a_tlsa_not_matching_what_the_node_presents_blocks_the_mx_phase(
    dworld: tuple[World, FakeNodeTls],
) -> None:
    world, tls = dworld

    def renewed_behind_our_back(phase: str, report: grow.AddReport) -> None:
        if phase == "policies":
            new_certificate(tls)

    report = grow.apply_add(world.ports, plan(world), progress=renewed_behind_our_back)
    assert report.halted.startswith("mx: DANE clients would refuse pmg4.faster.test")
    assert presented(tls) in report.halted and "mx" not in report.phases
    assert all(MX4 not in mx(world, f"d{i:02d}.test") for i in range(14))
    rerun = plan(world)  # cert.renew owns the TLSA now: node.add does not rewrite it, and still writes no MX
    assert rerun.dane == "owned" and rerun.provider.changes == () and len(rerun.mx) == 14
    assert grow.apply_add(world.ports, rerun).halted.startswith("mx: DANE")
    assert all(MX4 not in mx(world, f"d{i:02d}.test") for i in range(14))


def test_dane_the_mx_gate_asks_every_authoritative_server(dworld: tuple[World, FakeNodeTls]) -> None:
    world, tls = dworld
    stale = RecordSet.of(TLSA4, "TLSA", 3600, ["3 1 1 " + "cd" * 32])

    def ns3_lags(phase: str, report: grow.AddReport) -> None:
        if phase == "policies":  # ns3 stops transferring and still serves an old TLSA
            world.dns.auto_sync = False
            world.dns.served["ns3"]["faster.test"][1][(TLSA4, "TLSA")] = stale

    report = grow.apply_add(world.ports, plan(world), progress=ns3_lags)
    assert report.halted.startswith("mx: DANE") and "ns3" in report.halted and "primary" not in report.halted
    assert all(MX4 not in mx(world, f"d{i:02d}.test") for i in range(14))
    world.dns.auto_sync = True
    world.dns.sync()  # ns3 catches up: the same command continues
    assert grow.apply_add(world.ports, plan(world)).phases["mx"] == 14


def test_dane_a_node_without_starttls_or_with_a_foreign_tlsa_is_refused_before_any_write(
    dworld: tuple[World, FakeNodeTls],
) -> None:
    world, tls = dworld
    updates = world.dns.updates
    tls.down.add("pmg4")
    p = plan(world)
    assert any("presents no certificate over STARTTLS" in h for h in p.health)
    with pytest.raises(grow.NodeNotReady):
        grow.apply_add(world.ports, p)
    tls.down.clear()
    foreign = RecordSet.of(TLSA4, "TLSA", 3600, ["3 1 1 " + "ef" * 32])
    world.dns.set_rrset("faster.test", foreign)
    p = plan(world)
    assert any(r.startswith(f"TLSA {TLSA4} holds 3 1 1 {'ef' * 32}") for r in p.provider.refused)
    with pytest.raises(grow.NodeNotReady):
        grow.apply_add(world.ports, p)
    assert world.dns.updates == updates and dane.read(world.state, "pmg4")[1] is None
    forced = plan(world, force=True)
    (change,) = [c for c in forced.provider.changes if c.key == (TLSA4, "TLSA")]
    assert change.before == foreign and change.after is not None
    assert change.after.values == (dane.tlsa_value(presented(tls)),)


def test_dane_retire_withdraws_the_tlsa_last_with_the_addresses(dworld: tuple[World, FakeNodeTls]) -> None:
    world, tls = dworld
    assert not grow.apply_add(world.ports, plan(world)).halted
    assert not retire.apply_retire(world.ports, retire.plan_retire(world.ports, "pmg4")).failed
    assert "max_age" in grow.retire_tail(world.ports, "pmg4").waiting
    assert all(v for v in served_tlsa(world).values())  # MX gone, TLSA kept while policies may still name the node
    world.advance(world.ports.settings.policy.mta_sts_max_age + 1)
    st, etag = dane.read(world.state, "pmg4")
    world.state.put(dane.state_key("pmg4"), dataclasses.replace(st, phase="NEXT_KEY").to_json(), if_match=etag)
    world.dns.log.clear()
    busy = grow.retire_tail(world.ports, "pmg4")
    assert "cert.renew run is in NEXT_KEY" in busy.report.halted and busy.report.phases["policies"] == 14
    assert all(v for v in served_tlsa(world).values())  # not withdrawn while a run is in progress
    _, etag = dane.read(world.state, "pmg4")
    world.state.put(dane.state_key("pmg4"), st.to_json(), if_match=etag)
    done = grow.retire_tail(world.ports, "pmg4")
    assert not done.waiting and not done.report.halted
    order = [(z, c.key, c.after is None) for z, c in world.dns.log]
    last = [k for z, k, _ in order if z == "faster.test"]
    assert set(last) == {
        ("_pmg.faster.test", "TXT"),
        ("pmg4.faster.test", "A"),
        ("pmg4.faster.test", "AAAA"),
        (TLSA4, "TLSA"),
    }
    assert order[-len(last) :] == [o for o in order if o[0] == "faster.test"]  # one UPDATE, after every policy
    assert served_tlsa(world) == {"primary": (), "ns2": (), "ns3": ()}
    assert dane.read(world.state, "pmg4")[0].current_spki == ""  # the lifecycle forgot the node
    updates = world.dns.updates
    grow.retire_tail(world.ports, "pmg4")
    assert world.dns.updates == updates


def test_dane_undo_add_withdraws_the_tlsa_and_a_new_add_adopts_afresh(dworld: tuple[World, FakeNodeTls]) -> None:
    world, tls = dworld
    assert not grow.apply_add(world.ports, plan(world)).halted
    mxr, tail = grow.undo_add(world.ports, "pmg4")
    assert len(mxr.applied) == 14 and not tail.waiting and not tail.report.halted
    assert served_tlsa(world) == {"primary": (), "ns2": (), "ns3": ()}
    new_certificate(tls)
    again = plan(world)
    assert again.dane == "adopt"
    (change,) = [c for c in again.provider.changes if c.key == (TLSA4, "TLSA")]
    assert change.after is not None and change.after.values == (dane.tlsa_value(presented(tls)),)
