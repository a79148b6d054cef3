"""domain.created end to end on the real stack: RabbitMQ -> worker -> simulators, BIND, LocalStack S3.

Writes are counted from the systems' own records: the simulators' request logs, BIND's SOA serial, S3 ETags.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import replace
from typing import Any
from unittest import mock

import checkdmarc
import dns.nameserver
import dns.resolver
import httpx
import pytest

from functions._core.model import keys, state, webmail
from functions._core.model.mailset import policy_key
from functions._core.platform.config import Secret, Settings
from functions.runtime.amqp import Publisher, params
from functions.runtime.consumer import Worker
from functions.runtime.main import build_ports
from tests.integration import stack

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def settings(stack_env: dict[str, str]) -> Settings:
    return stack.settings_for(stack_env)


def _snapshot(env: dict[str, str], settings: Settings, domain: str) -> dict[str, Any]:
    ports = build_ports(settings, probe=False)
    st, pol = ports.state.get(state.state_key(domain)), ports.web.get(policy_key(domain))
    return {
        **stack.sim_writes(env),
        "serial": stack.soa_serial(env, domain),
        "state": st.etag if st else None,
        "policy": pol.etag if pol else None,
    }


def _provisioned(env: dict[str, str], settings: Settings, domain: str) -> list[dict[str, Any]]:
    return [stack.body_json(b) for _, b in stack.take(env, settings, "q.outcomes", domain)]


def test_provision_replay_and_quota_change(stack_env: dict[str, str], settings: Settings) -> None:
    domain = stack.unique_domain("prov")
    stack.zone_add(domain)
    event = stack.created_event(domain)
    stack.publish(stack_env, settings, event)
    worker = stack.run_worker(settings)
    assert worker.counts["done"] >= 1
    (outcome,) = _provisioned(stack_env, settings, domain)
    assert outcome["type"] == "domain.provisioned" and outcome["data"]["status"] == "provisioned"
    assert outcome["data"]["verified_servers"]

    before = _snapshot(stack_env, settings, domain)
    stack.publish(stack_env, settings, event)  # the same event again: a replay
    stack.run_worker(settings)
    assert _snapshot(stack_env, settings, domain) == before  # zero writes on every system
    _provisioned(stack_env, settings, domain)

    plan = dict(event["data"]["plan"], mailboxes=99, quota_mib=204800)
    stack.publish(stack_env, settings, stack.created_event(domain, plan=plan))
    stack.run_worker(settings)
    after = _snapshot(stack_env, settings, domain)
    assert after["mailcow"] == before["mailcow"] + 1  # one edit/domain, no duplicates
    assert (after["pmg"], after["serial"], after["policy"]) == (before["pmg"], before["serial"], before["policy"])
    ports = build_ports(settings, probe=False)
    dom = ports.mail.get_domain(domain)
    assert dom is not None and (dom.mailboxes, dom.quota_mib) == (99, 204800)
    assert [t.domain for t in ports.gateway.list_transports()].count(domain) == 1


def test_independent_checkers_pass(stack_env: dict[str, str], settings: Settings) -> None:
    domain = stack.unique_domain("chk")
    stack.zone_add(domain)
    stack.publish(stack_env, settings, stack.created_event(domain))
    stack.run_worker(settings)
    _provisioned(stack_env, settings, domain)
    ports = build_ports(settings, probe=False)
    policy = ports.web.get(policy_key(domain))
    assert policy is not None
    ns = [dns.nameserver.Do53Nameserver(stack_env["MAILPLANE_DNS_SERVER"], port=int(stack_env["MAILPLANE_DNS_PORT"]))]
    download = {"policy": policy.body.decode(), "warnings": []}
    with mock.patch("checkdmarc.mta_sts.download_mta_sts_policy", return_value=download):
        result: Any = checkdmarc.check_domains([domain], nameservers=ns, timeout=2.0)
    report = json.loads(json.dumps(result, default=str))
    assert report["spf"]["valid"], report["spf"]
    assert report["dmarc"]["valid"], report["dmarc"]
    assert report["dmarc"]["record"].startswith("v=DMARC1;p=reject")
    assert sorted(h["hostname"] for h in report["mx"]["hosts"]) == [h.name for h in settings.provider.mx_hosts]
    assert report["mta_sts"]["valid"], report["mta_sts"]
    assert report["smtp_tls_reporting"]["valid"], report["smtp_tls_reporting"]

    cur = state.load(ports.state, domain).current
    assert cur is not None and cur.status == "ACTIVE"
    pair = state.load_key(ports.state, domain, cur.selector, settings)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [stack_env["MAILPLANE_DNS_SERVER"]]
    resolver.port = int(stack_env["MAILPLANE_DNS_PORT"])

    def lookup(name: str) -> bytes | None:
        answer = resolver.resolve(name, "TXT")
        return b"".join(answer[0].strings)

    assert keys.probe_verifies(domain, pair.selector, pair.private_pem, lookup)
    mailcow_key = ports.mail.get_dkim(domain)
    assert mailcow_key is not None and (mailcow_key.selector, mailcow_key.public_key_b64) == (
        pair.selector,
        pair.public_b64,
    )


def test_customer_records_survive(stack_env: dict[str, str], settings: Settings) -> None:
    from functions._core.model.ports import DnsChange
    from functions._core.model.records import RecordSet

    domain = stack.unique_domain("cust")
    stack.zone_add(domain)
    ports = build_ports(settings, probe=False)
    www = RecordSet.of(f"www.{domain}", "A", 300, ["192.0.2.80"])
    site = RecordSet.of(domain, "TXT", 300, ["google-site-verification=abc"])
    ports.dns.apply(domain, [DnsChange(None, www), DnsChange(None, site)])  # the customer's own records
    stack.publish(stack_env, settings, stack.created_event(domain))
    stack.run_worker(settings)
    (outcome,) = _provisioned(stack_env, settings, domain)
    assert outcome["data"]["status"] == "provisioned"
    zone = ports.dns.read_zone(domain)
    assert zone[www.key].values == www.values
    assert "google-site-verification=abc" in zone[(domain, "TXT")].values


REFUSALS = [
    ("wildcard", "*.{d}"),
    ("quote", 'a"b.{d}'),
    ("space", "a b.{d}"),
    ("newline", "{d}\nevil.test"),
    ("semicolon", "{d};rm"),
    ("long-label", "{long}.{d}"),
    ("trailing", "{d} trailing"),
    ("provider-zone", "faster.test"),
    ("provider-subdomain", "{label}.faster.test"),
    ("public-suffix", "co.uk"),
]


@pytest.mark.parametrize(("case", "pattern"), REFUSALS, ids=[c for c, _ in REFUSALS])
def test_refused_events_are_parked_and_change_nothing(
    stack_env: dict[str, str], settings: Settings, case: str, pattern: str
) -> None:
    base = stack.unique_domain("ref")
    name = pattern.format(d=base, long="x" * 64, label=base.split(".")[0])
    event = stack.created_event(base)
    event["subject"] = event["data"]["domain"] = name
    before = stack.sim_writes(stack_env)
    stack.publish(stack_env, settings, event)
    stack.run_worker(settings)
    parked = stack.take(stack_env, settings, "q.parked", name)
    assert len(parked) == 1, f"{case}: not parked"
    headers, body = parked[0]
    assert headers["x-mailplane-attempt"] == 0 and headers["x-mailplane-reason"]
    assert json.loads(body)["id"] == event["id"]  # the original event is kept
    assert stack.sim_writes(stack_env) == before
    failed = [stack.body_json(b) for _, b in stack.take(stack_env, settings, "q.outcomes", name[:255])]
    assert failed and failed[0]["type"] == "domain.failed"


def test_schema_invalid_and_wrong_publisher_are_parked(stack_env: dict[str, str], settings: Settings) -> None:
    domain = stack.unique_domain("pub")
    stack.zone_add(domain)
    serial = stack.soa_serial(stack_env, domain)
    before = stack.sim_writes(stack_env)
    bad = stack.created_event(domain)
    bad["data"]["plan"]["mailboxes"] = -1
    stack.publish(stack_env, settings, bad)
    # monitoring may publish node.* only (topic permission), so it sends a domain.created body under node.down:
    # the worker trusts only the validated user_id and the allow-list, and refuses it.
    spoof = json.dumps(stack.created_event(domain)).encode()
    stack.publish_raw(stack_env, settings, spoof, "node.down", "monitoring", subject=domain)
    # billing without user_id: RabbitMQ does not check an absent user_id, so the worker must refuse it.
    anonymous = json.dumps(stack.created_event(domain)).encode()
    stack.publish_raw(stack_env, settings, anonymous, "domain.created", "billing", subject=domain, user_id=False)
    stack.run_worker(settings)
    parked = stack.take(stack_env, settings, "q.parked", domain)
    reasons = sorted(h["x-mailplane-reason"] for h, _ in parked)
    assert len(parked) == 3, reasons
    assert any("mailboxes" in r for r in reasons)
    assert any("'monitoring' may not send domain.created" in r for r in reasons)
    assert any("no validated user_id" in r for r in reasons)
    assert stack.sim_writes(stack_env) == before and stack.soa_serial(stack_env, domain) == serial
    stack.take(stack_env, settings, "q.outcomes", domain)


def _sogo(env: dict[str, str]) -> dict[str, Any]:
    ca = ssl.create_default_context(cafile=env["MAILPLANE_SIM_CA"])
    resp = httpx.get(f"{env['MAILPLANE_MAILCOW_URL']}/_sim/state", verify=ca, timeout=5)
    resp.raise_for_status()
    data: dict[str, Any] = resp.json()["sogo"]
    return data


def _burst_worker(settings: Settings) -> Worker:
    worker = Worker(build_ports(settings), pool_size=8, until_idle=True, idle_seconds=1.0)
    worker.run()
    return worker


def test_a_burst_is_webmail_ready_after_exactly_one_debounced_sogo_restart(
    stack_env: dict[str, str], settings: Settings
) -> None:
    """20 domain.created published at once: one SOGo restart for all (counted by the simulator), SOGo then knows every
    one of them; a domain added after that restart gets a restart of its own."""
    # the burst's gather window: every domain of it must have been added before it ends (20 events take a few
    # seconds on a loaded 2-core machine); retries of a waiting event come after 1, 2, 5, 10 s: the claim at +18 s
    # and the acceptance gate waits for it (its bound stays below the retry ladder's 38 s)
    slow = replace(
        settings,
        mailcow=replace(settings.mailcow, sogo_restart_interval=15.0),
        smtp_probe=replace(settings.smtp_probe, max_wait_seconds=30),
    )
    domains = [stack.unique_domain("sogo") for _ in range(20)]
    stack.zone_add(*domains)
    before = _sogo(stack_env)["restarts"]
    pub = Publisher(params(settings.broker, "billing", Secret(stack_env["MAILPLANE_AMQP_BILLING_PASSWORD"])))
    try:
        for domain in domains:  # one connection: the 20 are published within a second
            pub.publish_event(settings.broker.exchange, stack.created_event(domain), "billing")
    finally:
        pub.close()
    _burst_worker(slow)
    for domain in domains:
        (outcome,) = _provisioned(stack_env, settings, domain)
        assert outcome["data"]["status"] == "provisioned", domain
    after = _sogo(stack_env)
    assert after["restarts"] == before + 1  # exactly one restart for the whole burst
    assert set(domains) <= set(after["domains"])  # and SOGo knows every domain of it
    ports = build_ports(settings, probe=False)
    assert {state.load(ports.state, d).webmail["ready_by"] for d in domains} == {
        webmail.load_restarts(ports.state).succeeded
    }

    late = stack.unique_domain("sogo")
    stack.zone_add(late)
    stack.publish(stack_env, settings, stack.created_event(late))
    _burst_worker(settings)  # the test platform's short interval
    (outcome,) = _provisioned(stack_env, settings, late)
    assert outcome["data"]["status"] == "provisioned"
    final = _sogo(stack_env)
    assert final["restarts"] == before + 2 and late in final["domains"]  # the late one needed (and got) a later one
