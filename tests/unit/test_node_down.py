"""node.down / node.up through the handlers with in-process fakes (same models as the simulators)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from sim.mailcow import MailcowModel
from sim.pmg import PmgModel

from functions import domain_created, node_down, node_up
from functions._core.model import nodes
from functions._core.model.ports import DnsChange, Ports
from functions._core.model.records import RecordSet
from functions._core.platform.config import Settings
from functions._core.platform.envelope import Envelope, parse
from functions._core.platform.errors import (
    DnsConflict,
    DnsServfail,
    EventInvalid,
    MailcowUnavailable,
    NotPropagated,
    TransientError,
)
from functions.runtime import dispatch
from tests.conftest import load_event
from tests.fakes.dns import FakeDns
from tests.fakes.mailcow import fake_mailcow
from tests.fakes.pmg import fake_pmg
from tests.fakes.recorder import Recorder
from tests.fakes.settings import make_settings
from tests.fakes.smtp import FakeSmtp
from tests.fakes.store import MemoryStore

T0 = dt.datetime(2026, 11, 27, 9, 30, tzinfo=dt.UTC)
ZONE = "faster.test"
IPS = {
    "pmg1": ("127.0.1.1", "2001:db8:10:1410::6c"),
    "pmg2": ("127.0.1.2", "2001:db8:0:2006::6c"),
    "pmg3": ("127.0.1.3", "2001:db8:10:1440::6c"),
}
CUSTOMER_MX = RecordSet.of("alpha.test", "MX", 3600, [f"10 pmg{i}.faster.test." for i in (1, 2, 3)])


def provider_records() -> list[RecordSet]:
    out = [RecordSet.of("moo.faster.test", "A", 300, ["127.0.2.1"])]
    for name, (v4, v6) in IPS.items():
        out += [
            RecordSet.of(f"{name}.faster.test", "A", 300, [v4]),
            RecordSet.of(f"{name}.faster.test", "AAAA", 300, [v6]),
            RecordSet.of(f"_25._tcp.{name}.faster.test", "TLSA", 3600, [f"3 1 1 {'ab' * 32}"]),
        ]
    return out


@dataclass
class World:
    ports: Ports
    dns: FakeDns
    mail_model: MailcowModel
    pmg_model: PmgModel
    state: MemoryStore
    recorders: dict[str, Recorder]
    now: list[dt.datetime] = field(default_factory=lambda: [T0])

    def advance(self, seconds: float) -> None:
        self.now[0] += dt.timedelta(seconds=seconds)

    def writes(self) -> dict[str, list[str]]:
        return {k: r.writes for k, r in self.recorders.items()}

    def reset(self) -> None:
        for r in self.recorders.values():
            r.reset()

    def relayhosts(self) -> dict[str, bool]:
        return {r.hostname: r.active for r in self.ports.mail.list_relayhosts()}

    def with_settings(self, settings: Settings) -> None:
        self.ports = dataclasses.replace(self.ports, settings=settings)


def build_world(settings: Settings | None = None) -> World:
    fdns = FakeDns()
    fdns.add_zone(ZONE, provider_records())
    fdns.add_zone("alpha.test", [CUSTOMER_MX])
    mail, mail_model = fake_mailcow()
    for name in IPS:
        mail.add_relayhost(f"[{name}.faster.test]:25")
    gateway, pmg_model = fake_pmg()
    pmg_model.configure(sync_interval_s=0)  # a domain.created here passes the acceptance gate at once
    s = settings or make_settings()
    targets = {h.smtp or f"{h.name}:25": f"pmg{i}" for i, h in enumerate(s.provider.mx_hosts, 1)}
    smtp = FakeSmtp(pmg_model, targets)
    store = MemoryStore()
    rec = {
        "dns": Recorder(fdns),
        "mail": Recorder(mail),
        "gateway": Recorder(gateway),
        "state": Recorder(store),
    }
    world = World(
        Ports(rec["mail"], rec["gateway"], rec["dns"], rec["state"], MemoryStore(), s, smtp=smtp),
        fdns,
        mail_model,
        pmg_model,
        store,
        rec,
    )
    world.ports = dataclasses.replace(world.ports, clock=lambda: world.now[0])
    return world


@pytest.fixture
def world() -> World:
    return build_world()


def node_event(kind: str, node: str, sequence: int, **extra: Any) -> Envelope:
    raw = load_event(kind)
    raw["id"] = f"mon1-{node}-{sequence}-{kind}"
    raw["subject"] = raw["data"]["node"] = node
    raw["data"]["sequence"] = sequence
    raw["data"].update(extra)
    return parse(json.dumps(raw).encode(), publisher="monitoring")


def down(node: str, seq: int) -> Envelope:
    return node_event("node.down", node, seq)


def up(node: str, seq: int) -> Envelope:
    return node_event("node.up", node, seq)


def addresses(world: World, node: str) -> tuple[RecordSet | None, RecordSet | None]:
    zone = world.dns.read_zone(ZONE)
    return zone.get((f"{node}.faster.test", "A")), zone.get((f"{node}.faster.test", "AAAA"))


# ---------------------------------------------------------------- node.down


def test_drain_withdraws_addresses_in_one_update_and_deactivates_the_relayhost(world: World) -> None:
    before = world.dns.read_zone(ZONE)
    out = node_down.handle(down("pmg2", 1041), world.ports)
    assert out.status == "drained"
    assert addresses(world, "pmg2") == (None, None)
    assert world.dns.updates == 1  # ONE compare-and-set UPDATE of the provider zone
    assert world.relayhosts() == {
        "[pmg1.faster.test]:25": True,
        "[pmg2.faster.test]:25": False,
        "[pmg3.faster.test]:25": True,
    }
    after = world.dns.read_zone(ZONE)
    untouched = {k: v for k, v in before.items() if k[0] != "pmg2.faster.test" and k[1] != "SOA"}
    assert all(after[k] == v for k, v in untouched.items())  # TLSA of pmg2 included
    assert world.dns.read_zone("alpha.test")[CUSTOMER_MX.key] == CUSTOMER_MX  # customer MX sets stay
    (emitted,) = out.emit
    assert emitted["type"] == "node.drained" and emitted["subject"] == "pmg2"
    assert emitted["data"]["in_rotation"] == ["pmg1.faster.test", "pmg3.faster.test"]
    assert emitted["data"]["master"] is False
    assert emitted["data"]["changes"] == {
        "dns": ["- A pmg2.faster.test 127.0.1.2", "- AAAA pmg2.faster.test 2001:db8:0:2006::6c"],
        "mailcow": ["~ relayhost 2 [pmg2.faster.test]:25 active=0"],
    }
    st = nodes.load(world.state, "pmg2.faster.test")
    assert (st.in_rotation, st.sequence, st.event_id) == (False, 1041, out.event_id)
    assert [(r.key, r.values) for r in st.dns] == [
        (("pmg2.faster.test", "A"), ("127.0.1.2",)),
        (("pmg2.faster.test", "AAAA"), ("2001:db8:0:2006::6c",)),
    ]


def test_replay_writes_nothing_and_emits_the_same_event(world: World) -> None:
    first = node_down.handle(down("pmg2", 1041), world.ports)
    world.reset()
    again = node_down.handle(down("pmg2", 1041), world.ports)
    assert again.status == "drained" and again.writes == 0
    assert world.writes() == {"dns": [], "mail": [], "gateway": [], "state": []}
    assert again.emit[0]["id"] == first.emit[0]["id"]
    assert again.emit[0]["data"] == first.emit[0]["data"]


def test_second_node_down_is_refused_and_changes_nothing(world: World, caplog: pytest.LogCaptureFixture) -> None:
    node_down.handle(down("pmg2", 10), world.ports)
    world.reset()
    with pytest.raises(nodes.QuorumRefused, match="leave 1 serving gateway") as info:
        node_down.handle(down("pmg3", 11), world.ports)
    assert not info.value.retryable
    assert world.writes() == {"dns": [], "mail": [], "gateway": [], "state": []}
    assert addresses(world, "pmg3")[0] is not None
    assert world.relayhosts()["[pmg3.faster.test]:25"] is True
    assert any(r.levelname == "CRITICAL" and "ALERT" in r.getMessage() for r in caplog.records)


def test_quorum_refusal_is_parked_with_the_reason(world: World) -> None:
    node_down.handle(down("pmg2", 10), world.ports)
    raw = load_event("node.down")
    raw["subject"] = raw["data"]["node"] = "pmg1"
    raw["data"]["sequence"] = 11
    result = dispatch.run(json.dumps(raw).encode(), "monitoring", world.ports)
    assert result.verdict == "park"
    assert "QuorumRefused" in result.reason and "minimum of 2" in result.reason


def test_stale_node_down_is_ignored(world: World) -> None:
    node_down.handle(down("pmg2", 50), world.ports)
    node_up.handle(up("pmg2", 51), _later(world, 5))
    world.reset()
    out = node_down.handle(down("pmg2", 49), world.ports)  # older than the node.up it raced with
    assert out.status == "ignored" and not out.emit
    assert world.writes() == {"dns": [], "mail": [], "gateway": [], "state": []}
    assert addresses(world, "pmg2")[0] is not None


def test_unknown_node_is_refused(world: World) -> None:
    with pytest.raises(EventInvalid, match="not a configured gateway"):
        node_down.handle(down("pmg9", 1), world.ports)


def test_fqdn_node_name_works(world: World) -> None:
    out = node_down.handle(down("pmg3.faster.test", 77), world.ports)
    assert out.status == "drained" and addresses(world, "pmg3") == (None, None)


def test_master_down_is_reported(world: World, caplog: pytest.LogCaptureFixture) -> None:
    out = node_down.handle(down("pmg1", 5), world.ports)  # the simulator's first node is the master
    assert out.detail["master"] is True and "promotes another node" in out.detail["warning"]
    assert out.emit[0]["data"]["master"] is True
    assert any("ALERT" in r.getMessage() and "master" in r.getMessage() for r in caplog.records)


def test_domain_created_retries_while_the_master_is_down(world: World) -> None:
    world.pmg_model.set_down("pmg1")
    world.dns.add_zone("beta.test")
    raw = load_event("domain.created")
    raw["subject"] = raw["data"]["domain"] = "beta.test"
    with pytest.raises(TransientError):
        domain_created.handle(parse(json.dumps(raw).encode(), publisher="billing"), world.ports)


def test_unreachable_pmg_does_not_block_the_drain(world: World) -> None:
    for name in ("pmg1", "pmg2", "pmg3"):
        world.pmg_model.set_down(name)
    out = node_down.handle(down("pmg2", 3), world.ports)
    assert out.status == "drained" and out.detail["master_node"] is None
    assert addresses(world, "pmg2") == (None, None)


def test_concurrent_drains_cannot_both_pass_the_quorum(world: World) -> None:
    """The UPDATE carries the other serving nodes' RRsets as prerequisites: a race loses with NXRRSET."""

    class Racing:
        def __init__(self, fake: FakeDns) -> None:
            self.fake, self.raced = fake, False

        def __getattr__(self, name: str) -> Any:
            return getattr(self.fake, name)

        def apply(self, zone: str, changes: list[DnsChange]) -> int:
            if not self.raced:  # another worker drains pmg3 between our read and our write
                self.raced = True
                for rtype in ("A", "AAAA"):
                    self.fake.delete_rrset(ZONE, ("pmg3.faster.test", rtype))
            return self.fake.apply(zone, changes)

    ports = dataclasses.replace(world.ports, dns=Racing(world.dns))
    with pytest.raises(DnsConflict):
        node_down.handle(down("pmg2", 7), ports)
    assert addresses(world, "pmg2")[0] is not None
    with pytest.raises(nodes.QuorumRefused):  # the broker's retry re-reads and refuses
        node_down.handle(down("pmg2", 7), ports)
    assert addresses(world, "pmg2")[0] is not None


def test_inverse_is_stored_before_the_update(world: World) -> None:
    world.dns.faults.append(DnsServfail("UPDATE faster.test: Timeout"))
    with pytest.raises(DnsServfail):
        node_down.handle(down("pmg2", 8), world.ports)
    st = nodes.load(world.state, "pmg2.faster.test")
    assert not st.in_rotation and {r.key for r in st.dns} == {("pmg2.faster.test", "A"), ("pmg2.faster.test", "AAAA")}
    out = node_down.handle(down("pmg2", 8), world.ports)  # the retry
    assert out.status == "drained" and addresses(world, "pmg2") == (None, None)
    assert len(nodes.load(world.state, "pmg2.faster.test").dns) == 2


def test_mailcow_outage_does_not_delay_the_dns_withdrawal(world: World) -> None:
    world.mail_model.set_faults({"fail_next": [{"path_prefix": "/api/v1/get/relayhost", "status": 503, "count": 8}]})
    with pytest.raises(MailcowUnavailable):
        node_down.handle(down("pmg2", 9), world.ports)
    assert addresses(world, "pmg2") == (None, None)
    world.mail_model.set_faults({})
    out = node_down.handle(down("pmg2", 9), world.ports)
    assert out.status == "drained" and world.relayhosts()["[pmg2.faster.test]:25"] is False
    assert out.emit[0]["data"]["changes"]["mailcow"] == ["~ relayhost 2 [pmg2.faster.test]:25 active=0"]


def test_not_propagated_is_retried_until_every_server_serves_it() -> None:
    world = build_world()
    world.dns.secondaries, world.dns.auto_sync = ("ns2",), False
    world.dns.served = {"ns2": {}}
    world.dns.sync()
    with pytest.raises(NotPropagated, match="ns2"):
        node_down.handle(down("pmg2", 4), world.ports)
    world.dns.sync()
    out = node_down.handle(down("pmg2", 4), world.ports)
    assert out.status == "drained" and out.detail["verified_servers"] == ["primary", "ns2"]


def test_rotation_names_lose_only_the_nodes_addresses() -> None:
    base = make_settings()
    world = build_world(
        dataclasses.replace(base, nodes=dataclasses.replace(base.nodes, rotation_names=("smtp.faster.test",)))
    )
    rr = RecordSet.of("smtp.faster.test", "A", 300, [v4 for v4, _ in IPS.values()])
    world.dns.set_rrset(ZONE, rr)
    node_down.handle(down("pmg2", 1), world.ports)
    assert world.dns.read_zone(ZONE)[rr.key].values == ("127.0.1.1", "127.0.1.3")
    node_up.handle(up("pmg2", 2), _later(world, 5))
    assert world.dns.read_zone(ZONE)[rr.key].values == rr.values


# ---------------------------------------------------------------- node.up


def _later(world: World, seconds: float) -> Ports:
    world.advance(seconds)
    return world.ports


def test_up_restores_exactly_what_down_removed(world: World) -> None:
    before = world.dns.read_zone(ZONE)
    node_down.handle(down("pmg2", 1041), world.ports)
    out = node_up.handle(up("pmg2", 1042), _later(world, 5))
    assert out.status == "restored"
    after = world.dns.read_zone(ZONE)
    assert {k: v for k, v in after.items() if k[1] != "SOA"} == {k: v for k, v in before.items() if k[1] != "SOA"}
    assert all(world.relayhosts().values())
    (emitted,) = out.emit
    assert emitted["type"] == "node.restored"
    assert emitted["data"]["in_rotation"] == ["pmg1.faster.test", "pmg2.faster.test", "pmg3.faster.test"]
    assert emitted["data"]["changes"]["dns"] == [
        "+ A pmg2.faster.test 127.0.1.2",
        "+ AAAA pmg2.faster.test 2001:db8:0:2006::6c",
    ]
    st = nodes.load(world.state, "pmg2.faster.test")
    assert st.in_rotation and st.dns == () and st.mailcow == ()


def test_up_replay_writes_nothing(world: World) -> None:
    node_down.handle(down("pmg2", 1), world.ports)
    first = node_up.handle(up("pmg2", 2), _later(world, 5))
    world.reset()
    again = node_up.handle(up("pmg2", 2), world.ports)
    assert again.status == "restored" and again.writes == 0
    assert world.writes() == {"dns": [], "mail": [], "gateway": [], "state": []}
    assert again.emit[0]["id"] == first.emit[0]["id"]
    assert again.emit[0]["data"] == first.emit[0]["data"]


def test_hold_down_damps_a_flapping_node(world: World) -> None:
    base = world.ports.settings
    world.with_settings(dataclasses.replace(base, nodes=dataclasses.replace(base.nodes, hold_down_seconds=300)))
    node_down.handle(down("pmg2", 1), world.ports)
    world.reset()
    with pytest.raises(nodes.HoldDown, match="hold-down is 300 s") as info:
        node_up.handle(up("pmg2", 2), _later(world, 60))
    assert info.value.retryable
    assert world.writes() == {"dns": [], "mail": [], "gateway": [], "state": []}
    node_down.handle(down("pmg2", 3), world.ports)  # it failed again meanwhile
    assert node_up.handle(up("pmg2", 2), _later(world, 600)).status == "ignored"  # the held node.up is now stale
    assert addresses(world, "pmg2") == (None, None)
    assert node_up.handle(up("pmg2", 4), world.ports).status == "restored"


def test_up_does_not_clobber_changes_made_in_between(world: World) -> None:
    node_down.handle(down("pmg2", 1), world.ports)
    repointed = RecordSet.of("pmg2.faster.test", "A", 300, ["127.0.1.1"])  # an operator pointed it at pmg1
    world.dns.set_rrset(ZONE, repointed)
    world.ports.mail.edit_relayhost(2, hostname="[other.example]:25")
    out = node_up.handle(up("pmg2", 2), _later(world, 5))
    zone = world.dns.read_zone(ZONE)
    assert zone[repointed.key] == repointed
    assert zone[("pmg2.faster.test", "AAAA")].values == ("2001:db8:0:2006::6c",)
    assert len(out.detail["kept"]) == 2
    assert world.relayhosts()["[other.example]:25"] is False


def test_stale_up_is_ignored(world: World) -> None:
    node_down.handle(down("pmg2", 10), world.ports)
    out = node_up.handle(up("pmg2", 9), _later(world, 5))
    assert out.status == "ignored" and not out.emit
    assert addresses(world, "pmg2") == (None, None)


def test_up_of_a_node_in_rotation_only_records_the_sequence(world: World) -> None:
    out = node_up.handle(up("pmg2", 3), world.ports)
    assert out.status == "unchanged" and not out.emit
    assert world.recorders["dns"].writes == [] and world.recorders["mail"].writes == []
    assert nodes.load(world.state, "pmg2.faster.test").sequence == 3
