"""`mailplane plan`, `mailplane drift` and domain.deleted on the real stack: RabbitMQ -> worker -> simulators, BIND,
LocalStack S3. The commands run in-process through typer against the stack's settings file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from functions._core.model import state
from functions._core.model.mailset import policy_key
from functions._core.model.ports import DnsChange, Ports
from functions._core.model.records import Key, RecordSet
from functions._core.platform.config import Settings
from functions.ops import cli_ops, drift_bulk
from functions.ops import drift as drift_mod
from functions.ops.drift import managed_domains
from functions.runtime.main import build_ports
from tests.integration import stack

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def settings(stack_env: dict[str, str]) -> Settings:
    return stack.settings_for(stack_env)


@pytest.fixture
def mailplane(stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    for name, value in stack_env.items():
        monkeypatch.setenv(name, value)
    app = typer.Typer()
    cli_ops.register(app)
    return app


def run(app: typer.Typer, *args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def customer_zone(env: dict[str, str], ports: Ports, prefix: str) -> tuple[str, dict[Key, RecordSet]]:
    """A new zone holding two records of the customer's own (one at the apex TXT); returns it as read."""
    domain = stack.unique_domain(prefix)
    stack.zone_add(domain)
    www = RecordSet.of(f"www.{domain}", "A", 300, ["192.0.2.80"])
    site = RecordSet.of(domain, "TXT", 300, ["google-site-verification=abc"])
    ports.dns.apply(domain, [DnsChange(None, www), DnsChange(None, site)])
    return domain, ports.dns.read_zone(domain)


def provision(env: dict[str, str], settings: Settings, domain: str) -> None:
    stack.publish(env, settings, stack.created_event(domain))
    stack.run_worker(settings)
    outcomes = [stack.body_json(b) for _, b in stack.take(env, settings, "q.outcomes", domain)]
    assert [o["data"]["status"] for o in outcomes] == ["provisioned"]


def deleted_event(domain: str, **data: Any) -> dict[str, Any]:
    event = stack.created_event(domain, "domain.deleted", customer_id="C-10042")
    event["data"].update(data)
    return event


def data_of(zone: dict[Key, RecordSet]) -> dict[Key, tuple[str, ...]]:
    return {k: rs.values for k, rs in zone.items() if k[1] != "SOA"}


def test_plan_and_drift(stack_env: dict[str, str], settings: Settings, mailplane: typer.Typer, tmp_path: Path) -> None:
    ports = build_ports(settings, probe=False)
    domain, _ = customer_zone(stack_env, ports, "plan")
    event = tmp_path / "created.json"
    event.write_text(json.dumps(stack.created_event(domain)))
    before = stack.sim_writes(stack_env)
    planned = run(mailplane, "plan", str(event), "--json")
    assert planned.exit_code == 0, planned.output
    doc = json.loads(planned.stdout)
    assert f"+ domain {domain}" in doc["changes"]["mailcow"] and f"+ MX {domain}" in doc["changes"]["dns"]
    assert doc["summary"]["create"] > 10 and doc["summary"]["delete"] == 0
    assert stack.sim_writes(stack_env) == before  # nothing applied

    provision(stack_env, settings, domain)
    again = run(mailplane, "plan", str(event))
    assert again.exit_code == 0 and "No changes" in again.stdout
    assert domain in managed_domains(ports)
    clean = run(mailplane, "drift", domain, "--json")
    assert clean.exit_code == 0, clean.output
    assert json.loads(clean.stdout)["summary"] == {"provisioned": 1}

    dmarc = ports.dns.read_zone(domain)[(f"_dmarc.{domain}", "TXT")]
    theirs = RecordSet.of(dmarc.name, "TXT", dmarc.ttl, ["v=DMARC1;p=none"])
    ports.dns.apply(domain, [DnsChange(dmarc, theirs)])  # behind mailplane's back
    drifted = run(mailplane, "drift", domain, "--json")
    assert drifted.exit_code == 1, drifted.output
    (result,) = json.loads(drifted.stdout)["domains"]
    bad = [c for c in result["checks"] if not c["ok"]]
    assert result["status"] == "drift" and bad
    assert {(c["item"], c["have"]) for c in bad} == {(f"TXT _dmarc.{domain}", "v=DMARC1;p=none")}
    assert {c["where"] for c in bad} == set(ports.dns.servers(domain))  # seen on every authoritative server
    shown = run(mailplane, "drift", domain)
    assert shown.exit_code == 1 and "1 with drift" in shown.stdout

    # drift --all's bulk reads (one AXFR per server, listings, batched SMTP) over the real adapters and systems
    names = [domain, *[d for d in managed_domains(ports) if d != domain][:4]]
    one_by_one = [drift_mod.drift_all([d], ports)[0] for d in names]
    bulk = drift_bulk.drift_all(names, ports)
    assert drift_mod.as_json(bulk, all_checks=True) == drift_mod.as_json(one_by_one, all_checks=True)


def test_create_then_delete_leaves_only_the_customers_records(
    stack_env: dict[str, str], settings: Settings, mailplane: typer.Typer, tmp_path: Path
) -> None:
    ports = build_ports(settings, probe=False)
    domain, original = customer_zone(stack_env, ports, "del")
    provision(stack_env, settings, domain)
    networks = ports.gateway.list_networks()

    stack.publish(stack_env, settings, deleted_event(domain, grace_days=30))
    stack.run_worker(settings)
    dom = ports.mail.get_domain(domain)
    assert dom is not None and not dom.active
    assert state.load(ports.state, domain).status == "suspended"
    suspended = run(mailplane, "drift", domain, "--json")
    assert suspended.exit_code == 0 and json.loads(suspended.stdout)["summary"] == {"suspended": 1}

    event = tmp_path / "deleted.json"
    event.write_text(json.dumps(deleted_event(domain, grace_days=0)))
    planned = run(mailplane, "plan", str(event))
    assert planned.exit_code == 0 and f"- relay domain {domain}" in planned.stdout
    stack.publish(stack_env, settings, json.loads(event.read_text()))
    stack.run_worker(settings)
    assert stack.take(stack_env, settings, "q.parked", domain) == []

    assert data_of(ports.dns.read_zone(domain)) == data_of(original)
    assert ports.mail.get_domain(domain) is None and ports.mail.get_dkim(domain) is None
    assert all(d.domain != domain for d in ports.gateway.list_relay_domains())
    assert all(t.domain != domain for t in ports.gateway.list_transports())
    assert ports.gateway.list_networks() == networks
    assert ports.web.get(policy_key(domain)) is None
    assert list(ports.state.list(f"keys/{domain}/")) == []
    assert state.load(ports.state, domain).status == "deleted"
    assert json.loads(run(mailplane, "drift", domain, "--json").stdout)["summary"] == {"deleted": 1}

    serial, writes = stack.soa_serial(stack_env, domain), stack.sim_writes(stack_env)
    stack.publish(stack_env, settings, deleted_event(domain, grace_days=0))  # billing re-sends it
    stack.run_worker(settings)
    assert (stack.soa_serial(stack_env, domain), stack.sim_writes(stack_env)) == (serial, writes)
    assert stack.take(stack_env, settings, "q.outcomes", domain) == []  # domain.deleted emits nothing


def test_mailboxes_park_the_removal_until_forced(stack_env: dict[str, str], settings: Settings) -> None:
    ports = build_ports(settings, probe=False)
    domain, _ = customer_zone(stack_env, ports, "box")
    provision(stack_env, settings, domain)
    pw = "Correct-Horse-9-Battery"
    mailbox = {"local_part": "info", "domain": domain, "password": pw, "password2": pw, "quota": 1024}
    ports.mail._write("add/mailbox", mailbox, "mailbox_added")  # type: ignore[attr-defined]
    serial, writes = stack.soa_serial(stack_env, domain), stack.sim_writes(stack_env)

    stack.publish(stack_env, settings, deleted_event(domain, grace_days=0))
    stack.run_worker(settings)
    ((headers, _),) = stack.take(stack_env, settings, "q.parked", domain)
    assert "DomainNotEmptyError" in headers["x-mailplane-reason"] and "force=true" in headers["x-mailplane-reason"]
    (failed,) = [stack.body_json(b) for _, b in stack.take(stack_env, settings, "q.outcomes", domain)]
    assert failed["type"] == "domain.failed"
    assert (stack.soa_serial(stack_env, domain), stack.sim_writes(stack_env)) == (serial, writes)

    stack.publish(stack_env, settings, deleted_event(domain, grace_days=0, force=True))
    stack.run_worker(settings)
    assert stack.take(stack_env, settings, "q.parked", domain) == []
    assert ports.mail.get_domain(domain) is None and ports.mail.list_mailboxes(domain) == []
    assert (f"_mailplane.{domain}", "TXT") not in ports.dns.read_zone(domain)
