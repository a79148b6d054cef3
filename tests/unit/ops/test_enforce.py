"""`mailplane mta-sts enforce`: only clean domains (reports on every one of the last N days, zero failures) are
promoted; the promotion writes the state, the policy, then the `_mta-sts` id, and every later writer keeps it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from functions._core.model import deletion, mtasts, state, tlsrpt, tlsrpt_store
from functions._core.model.mailset import desired_records, mta_sts_policy, policy_id, policy_key
from functions.ops import cli_tlsrpt, enforce, grow, status
from functions.runtime import main
from tests.conftest import load_event
from tests.fakes.settings import make_settings
from tests.unit.test_node_down import World, build_world

NOW = dt.datetime(2027, 12, 1, 12, 0, tzinfo=dt.UTC)
TESTING = make_settings()
TESTING = dataclasses.replace(TESTING, policy=dataclasses.replace(TESTING.policy, mta_sts_mode="testing"))
DAYS = TESTING.mta_sts.enforce_after_days  # 14


def add_domain(world: World, domain: str, *, hosted: bool = True) -> None:
    want = desired_records(domain, TESTING, "fc20271101", "QUJD")
    if hosted:
        world.dns.add_zone(domain, want.values())
    world.ports.web.put(policy_key(domain), mta_sts_policy(TESTING).encode(), content_type="text/plain")
    key = state.KeyRecord("fc20271101", "QUJD", "ACTIVE", "2027-11-01T00:00:00+00:00")
    request = {**load_event("domain.created")["data"], "domain": domain, "dns": {"hosted": hosted}}
    st = state.DomainState(domain, request=request, keys=(key,), status="provisioned")
    state.save(world.state, st, state.DomainState(domain))


def report(domain: str, day: dt.date, *, ok: int = 100, failed: int = 0, org: str = "google.com") -> tlsrpt.Report:
    details = [{"result-type": "certificate-expired", "failed-session-count": failed}] if failed else []
    doc: dict[str, Any] = {
        "organization-name": org,
        "date-range": {"start-datetime": f"{day}T00:00:00Z", "end-datetime": f"{day}T23:59:59Z"},
        "contact-info": "tls@example.net",
        "report-id": f"{org}-{domain}-{day}",
        "policies": [
            {
                "policy": {"policy-type": "sts", "policy-domain": domain},
                "summary": {"total-successful-session-count": ok, "total-failure-session-count": failed},
                "failure-details": details,
            }
        ],
    }
    return tlsrpt.parse(json.dumps(doc).encode(), NOW)


def reports(
    world: World, domain: str, days: int = DAYS, *, skip: int | None = None, fail_on: int | None = None
) -> None:
    """One report for each of the ``days`` days before today (index 1 = yesterday)."""
    for i in range(1, days + 1):
        if i != skip:
            day = NOW.date() - dt.timedelta(days=i)
            tlsrpt_store.record(world.state, report(domain, day, failed=3 if i == fail_on else 0), NOW)


@pytest.fixture
def world() -> World:
    w = build_world(TESTING)
    w.now[0] = NOW
    for d in ("clean.test", "quiet.test", "gap.test", "failing.test", "young.test"):
        add_domain(w, d)
    add_domain(w, "elsewhere.test", hosted=False)
    reports(w, "clean.test")
    reports(w, "gap.test", skip=5)
    reports(w, "failing.test", fail_on=9)
    reports(w, "young.test", days=DAYS - 1)
    reports(w, "elsewhere.test")
    return w


def verdicts(world: World, *names: str) -> dict[str, enforce.Verdict]:
    return {v.domain: v for v in enforce.select(world.ports, list(names), DAYS)}


def test_only_a_domain_with_reports_on_every_day_and_no_failure_is_clean(world: World) -> None:
    got = verdicts(world, "clean.test", "quiet.test", "gap.test", "failing.test", "young.test")
    assert {d: v.clean for d, v in got.items()} == {
        "clean.test": True,
        "quiet.test": False,
        "gap.test": False,
        "failing.test": False,
        "young.test": False,
    }
    assert got["clean.test"].reason == ("clean: 14 days 2027-11-17..2027-11-30, 14 report(s), 1400 sessions, 0 failed")
    assert got["quiet.test"].reason == "no TLS reports 2027-11-17..2027-11-30: not clean"
    assert "reports on 13 of 14 days" in got["gap.test"].reason and "none on 2027-11-26" in got["gap.test"].reason
    assert "3 failed session(s)" in got["failing.test"].reason and "certificate-expired 3" in got["failing.test"].reason
    assert "none on 2027-11-17" in got["young.test"].reason
    assert verdicts(world, "young.test")["young.test"].clean is False
    assert enforce.judge(world.ports, "young.test", DAYS - 1).clean  # fewer days asked: clean


def test_today_does_not_count_and_a_failure_outside_the_window_does_not_either(world: World) -> None:
    tlsrpt_store.record(world.state, report("clean.test", NOW.date(), failed=9), NOW)  # today: not complete
    old = NOW.date() - dt.timedelta(days=DAYS + 1)
    tlsrpt_store.record(world.state, report("clean.test", old, failed=9), NOW)
    assert verdicts(world, "clean.test")["clean.test"].clean


def test_all_clean_selects_every_reported_domain_and_promotes_only_the_clean_hosted_one(world: World) -> None:
    all_reported = verdicts(world)
    assert sorted(all_reported) == ["clean.test", "elsewhere.test", "failing.test", "gap.test", "young.test"]
    chosen = [v for v in all_reported.values() if enforce.promotable(v, force=False) is None]
    assert [v.domain for v in chosen] == ["clean.test"]  # elsewhere.test is clean but its zone is the customer's
    assert "hosted elsewhere" in str(enforce.promotable(all_reported["elsewhere.test"], force=False))


def test_promotion_writes_state_then_policy_then_the_new_id_and_a_second_run_writes_nothing(world: World) -> None:
    order: list[str] = []
    web_put, dns_apply = world.ports.web.put, world.ports.dns.apply

    def put(key: str, body: bytes, **kw: Any) -> str:
        order.append(f"web {key}")
        return web_put(key, body, **kw)

    def apply(zone: str, changes: Any) -> int:
        order.append(f"dns {zone}")
        return dns_apply(zone, changes)

    world.ports.web.put = put  # type: ignore[method-assign]
    world.ports.dns.apply = apply  # type: ignore[method-assign]
    p = enforce.plan(world.ports, "clean.test")
    assert p.lines()[:2] == ["~ state: mta_sts mode enforce", "~ mta-sts policy: mode enforce"]
    done = enforce.apply(world.ports, p, "clean for 14 days")
    assert len(done) == 3 and order == ["web mta-sts.clean.test/.well-known/mta-sts.txt", "dns clean.test"]
    st = state.load(world.state, "clean.test")
    assert st.mta_sts["mode"] == "enforce" and st.mta_sts_mode(TESTING) == "enforce"
    body = mta_sts_policy(TESTING, "enforce")
    assert world.ports.web.get(policy_key("clean.test")).body == body.encode()  # type: ignore[union-attr]
    txt = world.dns.read_zone("clean.test")[mtasts.txt_key("clean.test")]
    assert txt.values == (f"v=STSv1; id={policy_id(body)};",) and policy_id(body) != policy_id(mta_sts_policy(TESTING))
    assert enforce.plan(world.ports, "clean.test").empty
    overall, checks = status.domain_status("clean.test", world.ports)
    sts = [c for c in checks if c.item in ("mta-sts policy", "TXT _mta-sts.clean.test")]
    assert len(sts) > 1 and all(c.ok for c in sts), sts
    assert sts[0].want == "current (mode enforce)"


def test_every_later_writer_keeps_the_promoted_mode(world: World) -> None:
    enforce.apply(world.ports, enforce.plan(world.ports, "clean.test"), "clean")
    grown = dataclasses.replace(TESTING)
    policies, _, _ = grow.plan_zones(world.ports, ["clean.test", "gap.test"], grown, None)
    assert [p.zone for p in policies] == []  # node.add with the same nodes: neither policy would be rewritten
    managed = deletion.managed_records("clean.test", TESTING, (), mode="enforce")
    assert managed[mtasts.txt_key("clean.test")] == world.dns.read_zone("clean.test")[mtasts.txt_key("clean.test")]


def test_an_interrupted_promotion_is_finished_by_the_next_run(world: World) -> None:
    web_put = world.ports.web.put

    def broken(key: str, body: bytes, **kw: Any) -> str:
        from functions._core.platform.errors import StoreUnavailable

        raise StoreUnavailable("web bucket down")

    world.ports.web.put = broken  # type: ignore[method-assign]
    (failed,) = enforce.promote(world.ports, [verdicts(world, "clean.test")["clean.test"]], budget=3)
    assert "web bucket down" in failed.error
    assert state.load(world.state, "clean.test").mta_sts_mode(TESTING) == "enforce"  # step 1 done
    world.ports.web.put = web_put  # type: ignore[method-assign]
    v = verdicts(world, "clean.test")["clean.test"]
    assert v.mode == "enforce" and enforce.promotable(v, force=False) is None
    assert enforce.plan(world.ports, "clean.test").lines()[0] == "~ mta-sts policy: mode enforce"
    (ok,) = enforce.promote(world.ports, [v], budget=3)
    assert not ok.error and enforce.plan(world.ports, "clean.test").empty


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr(main, "load_settings", lambda path=None: TESTING)
    monkeypatch.setattr(main, "build_ports", lambda settings, probe=True: world.ports)
    return CliRunner()


def run(cli: CliRunner, *args: str) -> Any:
    app = typer.Typer()
    cli_tlsrpt.register(app)
    app.command("noop")(lambda: None)
    return cli.invoke(app, ["mta-sts", "enforce", *args])


def test_the_command_is_a_dry_run_by_default_and_needs_yes_to_apply(cli: CliRunner, world: World) -> None:
    before = dict(world.state.objects), dict(world.ports.web.objects)  # type: ignore[attr-defined]
    dry = run(cli, "--all-clean")
    assert dry.exit_code == 0, dry.output
    assert "promote  clean.test (testing -> enforce): clean: 14 days" in dry.stdout
    assert "skip     gap.test (testing): reports on 13 of 14 days" in dry.stdout
    assert "dry run: nothing written" in dry.stdout
    assert (dict(world.state.objects), dict(world.ports.web.objects)) == before  # type: ignore[attr-defined]
    assert run(cli, "--all-clean", "--apply").exit_code == 2
    assert run(cli).exit_code == 2 and run(cli, "clean.test", "--all-clean").exit_code == 2
    done = run(cli, "--all-clean", "--apply", "--yes", "--json")
    assert done.exit_code == 0, done.output
    rows = {r["domain"]: r for r in json.loads(done.stdout)["domains"]}
    assert rows["clean.test"]["promote"] and len(rows["clean.test"]["done"]) == 3
    assert not rows["gap.test"]["promote"] and "done" not in rows["gap.test"]
    assert state.load(world.state, "gap.test").mta_sts_mode(TESTING) == "testing"
    assert "clean.test" not in run(cli, "--all-clean").stdout  # promoted: no longer a candidate


def test_a_named_domain_that_is_not_clean_is_refused_unless_forced(cli: CliRunner, world: World) -> None:
    got = run(cli, "quiet.test", "--apply", "--yes")
    assert got.exit_code == 1 and "skip     quiet.test (testing): no TLS reports" in got.stdout
    assert state.load(world.state, "quiet.test").mta_sts_mode(TESTING) == "testing"
    forced = run(cli, "quiet.test", "--apply", "--yes", "--force")
    assert forced.exit_code == 0, forced.output
    assert state.load(world.state, "quiet.test").mta_sts_mode(TESTING) == "enforce"
    assert run(cli, "--all-clean", "--force").exit_code == 2  # --force only for named domains
    assert run(cli, "unknown.test").exit_code == 1
