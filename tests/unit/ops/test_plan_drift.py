"""`mailplane plan` and `mailplane drift` over in-process fakes of every port."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from functions import ROUTES, Route, domain_created, domain_deleted
from functions._core.model.ports import Ports
from functions._core.model.records import RecordSet
from functions._core.platform.envelope import parse
from functions._core.platform.errors import EventInvalid, StoreUnavailable
from functions.ops import cli_ops, drift, drift_bulk, plan
from functions.ops.status import Check, domain_status
from functions.runtime import main
from tests.conftest import load_event
from tests.fakes.dns import FakeDns
from tests.fakes.mailcow import fake_mailcow
from tests.fakes.pmg import fake_gateway
from tests.fakes.recorder import Recorder
from tests.fakes.settings import make_settings
from tests.fakes.smtp import FakeSmtp
from tests.fakes.store import MemoryStore

NOW = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
DOMAINS = ("alpha.test", "beta.test")


@dataclass
class World:
    fake_dns: FakeDns
    recorders: dict[str, Recorder]
    state: MemoryStore
    smtp: FakeSmtp
    now: dt.datetime = NOW

    @property
    def ports(self) -> Ports:
        r = self.recorders
        return Ports(
            r["mail"], r["gateway"], r["dns"], r["state"], r["web"], make_settings(), lambda: self.now, smtp=self.smtp
        )

    def writes(self) -> list[str]:
        return [w for r in self.recorders.values() for w in r.writes]

    def calls(self, system: str, name: str) -> int:
        return self.recorders[system].calls.count(name)


@pytest.fixture
def world() -> World:
    fake_dns = FakeDns()
    for d in DOMAINS:
        fake_dns.add_zone(d)
    store = MemoryStore()
    names = ("mail", "gateway", "dns", "state", "web")
    gw = fake_gateway(make_settings())
    targets = (fake_mailcow()[0], gw.client, fake_dns, store, MemoryStore())
    return World(fake_dns, {n: Recorder(t) for n, t in zip(names, targets, strict=True)}, store, gw.smtp)


def created(domain: str = "alpha.test") -> bytes:
    raw = load_event("domain.created")
    raw["subject"] = raw["data"]["domain"] = domain
    return json.dumps(raw).encode()


def deleted(domain: str = "alpha.test", **data: Any) -> bytes:
    raw = load_event("domain.deleted")
    raw["subject"] = raw["data"]["domain"] = domain
    raw["data"].update(data)
    return json.dumps(raw).encode()


def provision(world: World, *domains: str) -> None:
    for d in domains:
        assert domain_created.handle(parse(created(d)), world.ports).status == "provisioned"
    for r in world.recorders.values():
        r.reset()


def text(renderable_fn: Any, *args: Any, **kwargs: Any) -> str:
    buf = io.StringIO()
    renderable_fn(*args, Console(file=buf, width=200, color_system=None), **kwargs)
    return buf.getvalue()


# ---------------------------------------------------------------- plan


def test_plan_of_a_new_domain_lists_every_change_and_writes_nothing(world: World) -> None:
    result = plan.plan_event(created(), world.ports)
    assert world.writes() == []
    assert "+ domain alpha.test" in result.changes["mailcow"]
    assert "+ relay domain alpha.test" in result.changes["pmg"]
    assert "+ MX alpha.test" in result.changes["dns"]
    assert result.count("+") > 10 and result.count("-") == 0 and not result.is_empty
    shown = text(plan.render, result)
    assert "domain.created alpha.test" in shown and "    + MX alpha.test" in shown
    assert f"Plan: {result.count('+')} to create, 0 to update, 0 to delete." in shown
    assert result.as_json()["summary"] == {"create": result.count("+"), "update": 0, "delete": 0}


def test_plan_after_provisioning_is_empty(world: World) -> None:
    provision(world, "alpha.test")
    result = plan.plan_event(created(), world.ports)
    assert result.is_empty and world.writes() == []
    assert "No changes" in text(plan.render, result)


def test_plan_of_a_deletion_shows_the_removal(world: World) -> None:
    provision(world, "alpha.test")
    result = plan.plan_event(deleted(grace_days=0), world.ports)
    assert world.writes() == []
    assert "- domain alpha.test" in result.changes["mailcow"] and "- MX alpha.test" in result.changes["dns"]
    assert "~ state deleted" in result.changes["store"]
    shown = text(plan.render, result)
    assert "    - relay domain alpha.test" in shown and "to delete." in shown
    suspend = plan.plan_event(deleted(), world.ports)
    assert suspend.changes["mailcow"] == ["~ domain active=0"] and suspend.count("-") == 0


def test_plan_needs_a_dry_run(monkeypatch: pytest.MonkeyPatch, world: World) -> None:
    assert plan.dry_run_for("domain.deleted") is domain_deleted.dry_run
    monkeypatch.setitem(ROUTES, "domain.created", Route("status", domain_status))  # type: ignore[arg-type]
    with pytest.raises(EventInvalid, match="no dry run"):
        plan.plan_event(created(), world.ports)
    with pytest.raises(EventInvalid, match="no handler"):
        plan.dry_run_for("no.such.type")


# ---------------------------------------------------------------- drift


def test_no_drift_after_provisioning(world: World) -> None:
    provision(world, *DOMAINS)
    assert drift.managed_domains(world.ports) == list(DOMAINS)
    results = drift.drift_all(DOMAINS, world.ports)
    assert [r.status for r in results] == ["provisioned", "provisioned"]
    assert drift.exit_code(results) == 0 and world.writes() == []
    assert world.calls("gateway", "list_relay_domains") == 1  # read once for the whole run


def test_a_record_changed_behind_our_back_is_drift(world: World) -> None:
    provision(world, *DOMAINS)
    world.fake_dns.set_rrset("beta.test", RecordSet.of("_dmarc.beta.test", "TXT", 3600, ["v=DMARC1;p=none"]))
    results = drift.drift_all(DOMAINS, world.ports)
    assert [r.status for r in results] == ["provisioned", "drift"]
    assert drift.exit_code(results) == 1
    (bad,) = results[1].failing
    assert (bad.system, bad.item, bad.have) == ("dns", "TXT _dmarc.beta.test", "v=DMARC1;p=none")
    doc = drift.as_json(results, all_checks=False)
    assert doc["drift"] is True and doc["summary"] == {"drift": 1, "provisioned": 1}
    assert doc["domains"][1]["drift"][0]["item"] == "TXT _dmarc.beta.test"
    shown = text(drift.render, results, all_checks=False)
    assert "beta.test: drift" in shown and "_dmarc.beta.test" in shown and "1 with drift" in shown


def test_suspended_removal_due_and_deleted(world: World) -> None:
    provision(world, *DOMAINS)
    domain_deleted.handle(parse(deleted("alpha.test")), world.ports)
    domain_deleted.handle(parse(deleted("beta.test", customer_id="C-10042", grace_days=0)), world.ports)
    assert [r.status for r in drift.drift_all(DOMAINS, world.ports)] == ["suspended", "deleted"]
    world.now = NOW + dt.timedelta(days=31)
    (due,) = drift.drift_all(["alpha.test"], world.ports)
    assert due.status == "removal_due" and "removal due at 2026-12-27" in due.note
    assert drift.exit_code([due]) == 0
    world.ports.mail.edit_domain("alpha.test", {"active": 1})  # re-activated behind mailplane's back
    (active,) = drift.drift_all(["alpha.test"], world.ports)
    assert active.status == "drift" and [c.have for c in active.failing] == ["active"]


def test_unreadable_system_is_an_error(world: World) -> None:
    provision(world, "alpha.test")
    world.state.faults.append(StoreUnavailable("s3 down"))
    results = drift.drift_all(["alpha.test"], world.ports)
    assert results[0].status == "error" and "s3 down" in results[0].note
    assert drift.exit_code(results) == 2


def test_progress_bar_on_large_runs(world: World) -> None:
    provision(world, *DOMAINS)
    buf = io.StringIO()
    err = Console(file=buf, force_terminal=True, width=120)
    assert len(drift.run(list(DOMAINS), world.ports, err, progress_min=2)) == 2
    assert "drift" in buf.getvalue() and "2/2" in buf.getvalue()
    quiet = io.StringIO()
    drift.run(list(DOMAINS), world.ports, Console(file=quiet, force_terminal=True), progress_min=3)
    assert quiet.getvalue() == ""


# ---------------------------------------------------------------- the commands


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, world: World) -> typer.Typer:
    monkeypatch.setattr(main, "load_settings", lambda path=None: make_settings())
    monkeypatch.setattr(main, "build_ports", lambda settings, probe=True: world.ports)
    app = typer.Typer()
    cli_ops.register(app)
    return app


def test_drift_command_exit_codes_and_json(cli: typer.Typer, world: World) -> None:
    provision(world, *DOMAINS)
    runner = CliRunner()
    ok = runner.invoke(cli, ["drift", "--all", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["summary"] == {"provisioned": 2}
    world.fake_dns.delete_rrset("alpha.test", ("autoconfig.alpha.test", "CNAME"))
    bad = runner.invoke(cli, ["drift", "ALPHA.test"])
    assert bad.exit_code == 1 and "autoconfig" in bad.stdout and "1 with drift" in bad.stdout
    assert runner.invoke(cli, ["drift"]).exit_code == 2
    assert runner.invoke(cli, ["drift", "alpha.test", "--all"]).exit_code == 2


def test_drift_report_is_stored_for_the_health_collector(cli: typer.Typer, world: World) -> None:
    provision(world, *DOMAINS)
    world.fake_dns.delete_rrset("alpha.test", ("autoconfig.alpha.test", "CNAME"))
    runner = CliRunner()
    assert runner.invoke(cli, ["drift", "alpha.test", "--report"]).exit_code == 2  # a report covers --all only
    assert world.state.get(drift.REPORT_KEY) is None
    done = runner.invoke(cli, ["drift", "--all", "--report"])
    assert done.exit_code == 0, done.output  # the stored report is the result; the alert comes from it
    stored = json.loads(world.state.get(drift.REPORT_KEY).body)  # type: ignore[union-attr]
    assert stored == {
        "time": NOW.isoformat(timespec="seconds"),
        "summary": {"drift": 1, "provisioned": 1},
        "findings": {"dns": 1},
        "dnssec": {},  # no hosted zone is signed here
    }


def test_plan_command(cli: typer.Typer, world: World, tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_bytes(created())
    runner = CliRunner()
    shown = runner.invoke(cli, ["plan", str(event)])
    assert shown.exit_code == 0 and "+ domain alpha.test" in shown.stdout and world.writes() == []
    doc = runner.invoke(cli, ["plan", str(event), "--json"])
    assert json.loads(doc.stdout)["event"]["subject"] == "alpha.test"
    world.fake_dns.set_rrset("alpha.test", RecordSet.of("autoconfig.alpha.test", "CNAME", 300, ["x.example."]))
    refused = runner.invoke(cli, ["plan", str(event)])
    assert refused.exit_code == 1 and "OwnershipConflict" in refused.output


def test_status_shows_the_smtp_acceptance_per_node(world: World) -> None:
    domain_created.handle(parse(created(), publisher="billing"), world.ports)
    overall, checks = domain_status("alpha.test", world.ports)
    smtp = [c for c in checks if c.item == "RCPT TO:<postmaster@alpha.test>"]
    assert [c.where for c in smtp] == [
        f"pmg{i}.faster.test smtp 127.0.0.1:252{4 + i} from 127.0.0.2" for i in (1, 2, 3)
    ]
    assert overall == "provisioned" and all(c.ok and c.have.startswith("450 4.7.1") for c in smtp)
    model = world.smtp.model
    model.configure(node_sync_interval_s={"pmg3": 3600})
    model.advance(2)  # a later second: the delete below is postmapped on the master
    world.ports.gateway.delete_relay_domain("alpha.test")  # behind mailplane's back; pmg3 keeps relaying it
    model.advance(1)  # pmg2 syncs
    overall, checks = domain_status("alpha.test", world.ports)
    bad = {c.where.split()[0]: c.have for c in checks if c.item.startswith("RCPT") and not c.ok}
    assert overall == "drift" and set(bad) == {"pmg1.faster.test", "pmg2.faster.test"}
    assert all(have.startswith("554 5.7.1") for have in bad.values())


def test_status_and_drift_show_the_chain_of_trust_without_counting_a_missing_ds_as_drift(world: World) -> None:
    ports = dataclasses.replace(world.ports, settings=make_settings(dnssec=True))
    ds = world.fake_dns.sign("alpha.test")
    out = domain_created.handle(parse(created(), publisher="billing"), ports)
    assert out.status == "provisioned"  # the DS the customer has yet to register does not hold mail back
    assert out.emit[0]["data"]["dnssec"] == {"status": "awaiting_ds", "ds": [ds], "parent_ds": []}

    def chain() -> tuple[str, Check]:
        overall, checks = domain_status("alpha.test", ports)
        (found,) = [c for c in checks if c.where == "chain of trust"]
        return overall, found

    overall, check = chain()
    assert overall == "provisioned" and check.ok and check.have.startswith("awaiting_ds: DS to register: " + ds)
    world.fake_dns.parent_ds["alpha.test"] = RecordSet.of("alpha.test", "DS", 60, [ds])
    world.fake_dns.verdicts["alpha.test"] = "secure"
    overall, check = chain()
    assert overall == "provisioned" and check.ok and check.have.startswith("secure:")
    world.fake_dns.parent_ds["alpha.test"] = RecordSet.of("alpha.test", "DS", 60, ["4711 13 2 " + "AB" * 32])
    world.fake_dns.verdicts["alpha.test"] = "bogus"
    overall, check = chain()
    assert overall == "drift" and not check.ok and check.have.startswith("wrong_ds:")
    for run in (drift.drift_all, drift_bulk.drift_all):  # per domain, and `drift --all` from bulk reads
        (result,) = run(["alpha.test"], ports)
        assert result.status == "drift" and [c.where for c in result.failing] == ["chain of trust"]


def test_the_drift_report_counts_hosted_signed_zones_by_chain_of_trust(world: World) -> None:
    ports = dataclasses.replace(world.ports, settings=make_settings(dnssec=True))
    for d in DOMAINS:
        world.fake_dns.sign(d)
        assert domain_created.handle(parse(created(d), publisher="billing"), ports).status == "provisioned"
    world.fake_dns.parent_ds["beta.test"] = RecordSet.of("beta.test", "DS", 60, ["4711 13 2 " + "AB" * 32])
    world.fake_dns.verdicts["beta.test"] = "bogus"
    for run in (drift.drift_all, drift_bulk.drift_all):  # per domain, and `drift --all` from bulk reads
        drift.save_report(world.state, run(list(DOMAINS), ports), NOW)
        stored = json.loads(world.state.get(drift.REPORT_KEY).body)  # type: ignore[union-attr]
        assert stored["dnssec"] == {"awaiting_ds": 1, "wrong_ds": 1}
        assert stored["summary"] == {"drift": 1, "provisioned": 1}
