"""`drift --all` from bulk reads (functions/ops/drift_bulk.py) reports exactly what per-domain `drift DOMAIN` does,
with one listing per system, one zone transfer per zone and server, and each object read once."""

from __future__ import annotations

import io
import json

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from functions import domain_deleted
from functions._core.model import state
from functions._core.model.mailset import policy_key
from functions._core.model.records import RecordSet
from functions._core.platform.envelope import parse
from functions._core.platform.errors import StoreUnavailable
from functions.ops import cli_ops, drift, drift_bulk
from functions.ops.snapshot import ServedZone
from functions.runtime import main
from tests.fakes.dns import FakeDns
from tests.fakes.mailcow import fake_mailcow
from tests.fakes.pmg import fake_gateway
from tests.fakes.recorder import Recorder
from tests.fakes.settings import make_settings
from tests.fakes.store import MemoryStore
from tests.unit.ops.test_plan_drift import World, deleted, provision

CLEAN = tuple(f"ok{i}.test" for i in range(7))
DRIFTED = ("dns.test", "dkim.test", "pmg.test", "policy.test", "mbox.test", "gone.test", "susp.test", "ns2.test")
ALL = (*CLEAN, *DRIFTED)


class NoTransferDns(FakeDns):
    """A secondary (ns3) that answers queries but refuses zone transfers: the bulk run must query it per record."""

    def read_zone_at(self, zone: str, server: str) -> tuple[int, dict[tuple[str, str], RecordSet]] | None:
        return None if server == "ns3" else super().read_zone_at(zone, server)


@pytest.fixture(scope="module")
def provisioned() -> World:
    """Built once per module (provisioning 16 domains takes seconds); the tests only read it."""
    fake_dns = NoTransferDns(secondaries=("ns2", "ns3"))
    for d in ALL:
        fake_dns.add_zone(d)
    store = MemoryStore()
    gw = fake_gateway(make_settings())
    targets = (fake_mailcow()[0], gw.client, fake_dns, store, MemoryStore())
    names = ("mail", "gateway", "dns", "state", "web")
    world = World(fake_dns, {n: Recorder(t) for n, t in zip(names, targets, strict=True)}, store, gw.smtp)
    provision(world, *ALL)
    p = world.ports
    fake_dns.set_rrset("dns.test", RecordSet.of("_dmarc.dns.test", "TXT", 3600, ["v=DMARC1;p=none"]))
    p.mail.edit_domain("mbox.test", {"mailboxes": 3})
    p.mail.delete_dkim("dkim.test")
    p.gateway.delete_transport("pmg.test")
    p.web.put(policy_key("policy.test"), b"version: STSv1\nmode: testing\n")
    domain_deleted.handle(parse(deleted("gone.test", grace_days=0)), p)
    domain_deleted.handle(parse(deleted("susp.test")), p)
    fake_dns.auto_sync = False
    fake_dns.set_rrset("ns2.test", RecordSet.of("autoconfig.ns2.test", "CNAME", 300, ["elsewhere.test."]))
    fake_dns.sync("ns3")  # ns2 still serves the old data: drift on ns2 and the primary differs from ns3
    store.put(state.state_key("half.test"), b'{"domain": "half.test"}')  # a state without a completed request
    return world


@pytest.fixture
def fleet(provisioned: World) -> World:
    for r in provisioned.recorders.values():
        r.reset()
    provisioned.smtp.sessions.clear()
    provisioned.state.faults.clear()
    return provisioned


def test_bulk_run_reports_exactly_what_per_domain_runs_report(fleet: World) -> None:
    domains = drift.managed_domains(fleet.ports)
    assert len(domains) == len(ALL) + 1
    one_by_one = [drift.drift_all([d], fleet.ports)[0] for d in domains]
    bulk = drift_bulk.drift_all(domains, fleet.ports, workers=3, ahead=4)
    want = drift.as_json(one_by_one, all_checks=True)
    assert drift.as_json(bulk, all_checks=True) == want
    assert want["summary"] == {"deleted": 1, "drift": 6, "provisioned": 7, "suspended": 1, "unknown": 1}
    assert {r.domain for r in bulk if r.status == "drift"} == {*DRIFTED} - {"gone.test", "susp.test"}
    assert fleet.writes() == []


def test_bulk_run_reads_each_system_once_per_fleet_or_once_per_domain(fleet: World) -> None:
    domains = drift.managed_domains(fleet.ports)
    checked = [d for d in domains if d not in ("gone.test", "half.test")]
    drift_bulk.drift_all(domains, fleet.ports, workers=2, ahead=3)
    gw, mail, dns, st = (fleet.recorders[n] for n in ("gateway", "mail", "dns", "state"))
    assert (gw.calls.count("list_relay_domains"), gw.calls.count("list_transports")) == (1, 1)
    assert mail.calls.count("list_domains") == 1 and "get_domain" not in mail.calls
    assert mail.calls.count("get_dkim") == len(checked)
    assert dns.calls.count("read_zone_at") == 3 * len(checked)  # one transfer per zone and server...
    per_domain_queries = dns.calls.count("query") / len(checked)
    assert 5 < per_domain_queries < 30  # ...but ns3 refuses transfers: its records are queried one by one
    web = fleet.recorders["web"]
    assert web.calls.count("etags") == 1 and web.calls.count("get") == 2  # the one policy body, and the stale one
    assert st.calls.count("get") == len(domains)  # each state once (every domain is webmail-ready: no SOGo record)
    batches = -(-len(domains) // drift_bulk.SMTP_BATCH)
    assert len(fleet.smtp.sessions) == 3 * batches < 3 * len(checked) / 4  # one session per node and batch


def test_a_failing_read_is_an_error_for_that_domain_in_a_bulk_run(fleet: World) -> None:
    fleet.state.faults.append(StoreUnavailable("s3 down"))
    results = drift_bulk.drift_all(["ok0.test", "ok1.test"], fleet.ports, workers=1, ahead=1)
    assert [r.status for r in results] == ["error", "provisioned"] and "s3 down" in results[0].note


def test_progress_lines_on_stderr_with_the_rate(fleet: World) -> None:
    buf = io.StringIO()
    err = Console(file=buf, width=200, color_system=None)
    results = drift.run(list(CLEAN), fleet.ports, err, progress_min=2, every=3, runner=drift_bulk.drift_all)
    lines = buf.getvalue().splitlines()
    assert len(results) == 7 and [line.split()[1] for line in lines] == ["3/7", "6/7", "7/7"]
    assert "/s," in lines[0] and "done in" in lines[-1] and "0 drifted" in lines[-1]
    quiet = io.StringIO()
    drift.run(list(CLEAN), fleet.ports, Console(file=quiet), progress_min=8, runner=drift_bulk.drift_all)
    assert quiet.getvalue() == ""


def test_served_zone_answers_like_an_authoritative_server() -> None:
    recs = [
        RecordSet.of("z.test", "SOA", 300, ["ns1.z.test. h.z.test. 1 2 3 4 5"]),
        RecordSet.of("*.z.test", "TXT", 300, ["wild"]),
        RecordSet.of("a.b.z.test", "TXT", 300, ["deep"]),
        RecordSet.of("sub.z.test", "NS", 300, ["ns.sub.z.test."]),
        RecordSet.of("ns.sub.z.test", "A", 300, ["192.0.2.1"]),
        RecordSet.of("c.z.test", "CNAME", 300, ["a.b.z.test."]),
    ]
    zone = ServedZone.of("z.test", {r.key: r for r in recs})
    assert zone.answer("x.z.test", "TXT") == RecordSet.of("x.z.test", "TXT", 300, ["wild"])  # synthesised
    assert zone.answer("x.y.z.test", "TXT") == RecordSet.of("x.y.z.test", "TXT", 300, ["wild"])
    assert zone.answer("b.z.test", "TXT") is None  # an empty non-terminal: NODATA, no wildcard
    assert zone.answer("x.b.z.test", "TXT") is None  # the closest encloser b.z.test has no wildcard
    assert zone.answer("a.b.z.test", "TXT") == recs[2]
    assert zone.answer("ns.sub.z.test", "A") is None and zone.answer("sub.z.test", "NS") is None  # referrals
    assert zone.answer("c.z.test", "TXT") is None and zone.answer("x.z.test", "MX") is None


def test_drift_all_command_uses_the_bulk_reads(fleet: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main, "load_settings", lambda path=None: make_settings())
    monkeypatch.setattr(main, "build_ports", lambda settings, probe=True: fleet.ports)
    app = typer.Typer()
    cli_ops.register(app)
    done = CliRunner().invoke(app, ["drift", "--all", "--json"])
    assert done.exit_code == 1, done.output
    assert json.loads(done.stdout)["summary"]["provisioned"] == 7
    assert fleet.recorders["dns"].calls.count("read_zone_at") > 0
