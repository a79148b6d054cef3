"""Planned retirement of a node: plan, waves, compare-and-set per zone, error budget, undo."""

from __future__ import annotations

import dataclasses
import json

import pytest

from functions._core.model import state
from functions._core.model.mailset import MARKER_NAME, MARKER_VALUE
from functions._core.model.records import RecordSet
from functions._core.platform.errors import EventInvalid
from functions.ops import retire
from tests.unit.test_node_down import World, build_world

MX3 = [f"10 pmg{i}.faster.test." for i in (1, 2, 3)]


def add_customer(world: World, zone: str, mx: list[str] = MX3, *, marked: bool = True, hosted: bool = True) -> None:
    records = [RecordSet.of(zone, "MX", 3600, mx)]
    if marked:
        records.append(RecordSet.of(f"{MARKER_NAME}.{zone}", "TXT", 3600, [MARKER_VALUE]))
    world.dns.add_zone(zone, records)
    st = state.DomainState(zone, request={"dns": {"hosted": hosted}}, status="provisioned")
    state.save(world.state, st, state.DomainState(zone))


@pytest.fixture
def world() -> World:
    w = build_world()
    for i in range(15):
        add_customer(w, f"c{i:02d}.test")
    add_customer(w, "custom-mx.test", [*MX3, "20 backup.customer.example."])
    add_customer(w, "foreign.test", marked=False)
    add_customer(w, "two.test", ["10 pmg1.faster.test.", "10 pmg2.faster.test.", "10 pmg3.faster.test."])
    add_customer(w, "elsewhere.test", hosted=False)
    return w


def mx(world: World, zone: str) -> tuple[str, ...]:
    return world.dns.read_zone(zone)[(zone, "MX")].values


def test_plan_respects_ownership_and_the_two_mx_minimum(world: World) -> None:
    add_customer(world, "small.test", ["10 pmg1.faster.test.", "10 pmg3.faster.test."])
    updates = world.dns.updates
    plan = retire.plan_retire(world.ports, "pmg3")
    assert plan.node == "pmg3.faster.test"
    zones = [c.zone for c in plan.changes]
    assert zones == [f"c{i:02d}.test" for i in range(15)] + ["custom-mx.test", "two.test"]
    assert plan.skipped == (
        "foreign.test: no mailplane ownership marker; not ours to change",
        "small.test: would be left with 1 MX host(s), fewer than 2",
    )
    custom = next(c for c in plan.changes if c.zone == "custom-mx.test")
    assert custom.after.values == ("10 pmg1.faster.test.", "10 pmg2.faster.test.", "20 backup.customer.example.")
    assert world.dns.updates == updates and world.recorders["state"].writes == []  # planning writes nothing
    assert retire.plan_retire(world.ports, "pmg3.faster.test").digest == plan.digest


def test_apply_goes_in_waves_and_stores_the_undo_plan(world: World) -> None:
    plan = retire.plan_retire(world.ports, "pmg3")
    seen: list[tuple[int, int]] = []
    report = retire.apply_retire(
        world.ports, plan, approved=plan.digest, progress=lambda n, ok, f: seen.append((n, len(ok)))
    )
    assert report.waves == [1, 10, 6] and seen == [(1, 1), (2, 10), (3, 6)]
    assert not report.failed and not report.halted
    assert all("pmg3" not in v for c in plan.changes for v in mx(world, c.zone))
    assert "20 backup.customer.example." in mx(world, "custom-mx.test")  # customer-added MX stay
    assert mx(world, "foreign.test") == tuple(MX3)
    stored = world.state.get(report.undo_key)
    assert stored is not None and json.loads(stored.body)["applied"] == report.applied


def test_a_changed_plan_is_refused_before_any_write(world: World) -> None:
    plan = retire.plan_retire(world.ports, "pmg3")
    updates = world.dns.updates
    with pytest.raises(retire.PlanChanged):
        retire.apply_retire(world.ports, plan, approved="0000000000000000")
    assert world.dns.updates == updates


def test_zones_changed_since_planning_fail_alone_and_the_budget_halts(world: World) -> None:
    plan = retire.plan_retire(world.ports, "pmg3")
    for zone in ("c01.test", "c02.test", "c03.test"):  # changed by someone else after the plan was approved
        world.dns.set_rrset(zone, RecordSet.of(zone, "MX", 3600, [*MX3, "20 other.example."]))
    report = retire.apply_retire(world.ports, plan)
    assert [f.split(":")[0] for f in report.failed] == ["c01.test", "c02.test", "c03.test"]
    assert all("NXRRSET" in f for f in report.failed)
    assert report.halted.startswith("error budget spent") and report.waves == [1, 10]
    assert "10 pmg3.faster.test." in mx(world, "c01.test") and mx(world, "c11.test") == tuple(MX3)  # wave 3 never ran
    assert "10 pmg3.faster.test." not in mx(world, "c04.test")


def test_a_failed_canary_halts_at_once(world: World) -> None:
    plan = retire.plan_retire(world.ports, "pmg3")
    world.dns.set_rrset("c00.test", RecordSet.of("c00.test", "MX", 3600, [*MX3, "20 other.example."]))
    report = retire.apply_retire(world.ports, plan)
    assert report.halted == "the first wave (canary) failed" and report.applied == [] and report.waves == [1]


def test_an_interrupted_run_resumes_where_it_stopped(world: World) -> None:
    plan = retire.plan_retire(world.ports, "pmg3")

    def crash(number: int, ok: list[str], failed: list[str]) -> None:
        if number == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retire.apply_retire(world.ports, plan, progress=crash)
    updates = world.dns.updates
    report = retire.apply_retire(world.ports, plan)
    assert len(report.applied) == len(plan.changes) and world.dns.updates == updates + 6


def test_undo_puts_the_node_back_without_clobbering(world: World) -> None:
    plan = retire.plan_retire(world.ports, "pmg3")
    report = retire.apply_retire(world.ports, plan)
    world.dns.set_rrset("c05.test", RecordSet.of("c05.test", "MX", 3600, [*MX3[:2], "30 new.customer.example."]))
    restored, kept = retire.undo_retire(world.ports, report.undo_key)
    assert len(restored) == len(plan.changes) and kept == []
    assert mx(world, "c00.test") == tuple(MX3)
    assert mx(world, "c05.test") == (*MX3, "30 new.customer.example.")
    assert retire.undo_retire(world.ports, report.undo_key) == ([], [])  # a second undo changes nothing


def test_unknown_node_and_missing_run(world: World) -> None:
    with pytest.raises(EventInvalid):
        retire.plan_retire(world.ports, "mx.elsewhere.example")
    assert retire.plan_retire(world.ports, "old-pmg4.faster.test").changes == ()  # retired from settings already
    with pytest.raises(EventInvalid):
        retire.undo_retire(world.ports, "retire/pmg3.faster.test/none.json")


def test_waves() -> None:
    items = [retire.ZoneChange(f"z{i}", *(RecordSet.of(f"z{i}", "MX", 1, MX3),) * 2) for i in range(120)]
    assert [len(w) for w in retire.waves(items, (1, 10, 100))] == [1, 10, 100, 9]
    assert [len(w) for w in retire.waves(items[:5], (1, 10, 100))] == [1, 4]
    assert list(retire.waves([], (1,))) == []


def test_settings_waves_and_budget_are_used(world: World) -> None:
    base = world.ports.settings
    nodes = dataclasses.replace(base.nodes, retire_waves=(2, 3), retire_error_budget=1)
    world.with_settings(dataclasses.replace(base, nodes=nodes))
    plan = retire.plan_retire(world.ports, "pmg3")
    world.dns.set_rrset("c03.test", RecordSet.of("c03.test", "MX", 3600, [*MX3, "20 other.example."]))
    report = retire.apply_retire(world.ports, plan)
    assert report.waves == [2, 3] and report.halted.startswith("error budget spent")


# ---------------------------------------------------------------- the CLI wiring (functions/ops/cli_nodes.py)


def test_cli_registers_probe_and_plan_and_requires_yes() -> None:
    import typer
    from typer.testing import CliRunner

    from functions.ops import cli_nodes

    app = typer.Typer()

    @app.command("plan")
    def old_plan(event_file: str) -> None:  # an earlier `plan` is replaced by the one that covers it
        raise AssertionError("replaced")

    @app.command()
    def other() -> None: ...

    cli_nodes.register(app)
    names = [cli_nodes._name(c) for c in app.registered_commands]
    assert sorted(names) == ["other", "plan", "probe"]
    result = CliRunner().invoke(app, ["plan", "node.retire", "pmg3", "--apply"])
    assert result.exit_code == 2 and "--yes" in result.output
    result = CliRunner().invoke(app, ["plan", "node.retire"])
    assert result.exit_code == 2 and "needs a NODE" in result.output
