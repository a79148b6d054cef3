"""PMG as it really behaves, on the real stack: a burst of domain.created against the whole-second postmap rule,
the cluster sync lag and the bounded wait of the acceptance gate, and the CN-only API certificate pinned by
fingerprint. Acceptance is checked the way a sender checks it: RCPT TO:<postmaster@DOMAIN> on every node's SMTP
listener from 127.0.0.2 (outside PMG's trusted networks), with the real SmtpProbe.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from functions import domain_created
from functions._core.model.acceptance import CONTROL, read_answer
from functions._core.model.ports import Ports
from functions._core.platform.config import Secret, Settings
from functions._core.platform.envelope import parse
from functions._core.platform.errors import NotPropagated, PmgRejected
from functions.adapters.pmg import PmgClient
from functions.runtime.amqp import Publisher, params
from functions.runtime.consumer import Worker
from functions.runtime.main import build_ports
from tests.integration import stack
from tests.stackenv import REPO

pytestmark = pytest.mark.stack

BURST = 50


@pytest.fixture(scope="module")
def settings(stack_env: dict[str, str]) -> Settings:
    """The PMG side of the gate alone: SOGo's restart wait (its own test: test_domain_created_stack) is switched off,
    so that these timings are PMG's."""
    s = stack.settings_for(stack_env)
    return dataclasses.replace(s, mailcow=dataclasses.replace(s.mailcow, sogo_restart=False))


@pytest.fixture
def sim(stack_env: dict[str, str]) -> Iterator[None]:
    """Every node syncing at the stack's interval before and after the test."""
    reset = {"node_sync_interval_s": {"pmg1": None, "pmg2": None, "pmg3": None}, "down": []}
    stack.pmg_control(stack_env, "POST", "faults", reset)
    yield
    stack.pmg_control(stack_env, "POST", "faults", {**reset, "sync_now": True})


def with_map_writes(settings: Settings, mode: str) -> Settings:
    return dataclasses.replace(settings, pmg=dataclasses.replace(settings.pmg, map_writes=mode))


def rejected_on(ports: Ports, domains: list[str]) -> dict[str, list[str]]:
    """node -> the domains its SMTP listener does not accept RCPT TO:<postmaster@DOMAIN> for."""
    assert ports.smtp is not None
    out: dict[str, list[str]] = {}
    for host in ports.settings.provider.mx_hosts:
        for domain in domains:
            answer = ports.smtp.rcpt(host.smtp, (f"postmaster@{domain}", CONTROL))
            verdict = read_answer(host.name, domain, answer)
            assert verdict.source == "127.0.0.2", verdict  # the vantage point is the one configured
            if not verdict.ok:
                out.setdefault(host.name, []).append(domain)
    return out


def burst(env: dict[str, str], settings: Settings, prefix: str) -> list[str]:
    """Publish BURST domain.created (hosted zones) on one connection, within about a second, and drain them."""
    domains = [stack.unique_domain(prefix) for _ in range(BURST)]
    stack.zone_add(*domains)
    pub = Publisher(params(settings.broker, "billing", Secret(env["MAILPLANE_AMQP_BILLING_PASSWORD"])))
    try:
        for domain in domains:
            pub.publish_event(settings.broker.exchange, stack.created_event(domain), "billing")
    finally:
        pub.close()
    Worker(build_ports(settings), until_idle=True, idle_seconds=1.0, pool_size=32).run()
    return domains


def statuses(env: dict[str, str], settings: Settings, domains: list[str]) -> dict[str, str]:
    out = {}
    for domain in domains:
        for _, body in stack.take(env, settings, "q.outcomes", domain):
            event = json.loads(body)
            if event["type"] == "domain.provisioned":
                out[domain] = event["data"]["status"]
    return out


def test_a_burst_of_50_ends_accepted_by_rcpt_on_every_node(
    stack_env: dict[str, str], settings: Settings, sim: None
) -> None:
    domains = burst(stack_env, with_map_writes(settings, "retouch"), "burst")
    assert rejected_on(build_ports(settings, probe=False), domains) == {}
    assert set(statuses(stack_env, settings, domains).values()) == {"provisioned"}


def test_the_same_burst_without_retouch_loses_writes_to_the_one_second_rule(
    stack_env: dict[str, str], settings: Settings, sim: None
) -> None:
    off = with_map_writes(settings, "off")
    ports = build_ports(off, probe=False)
    # the loss is a race (a write in the same second as the map's last postmap, with no write after it): most
    # bursts lose writes, not every one; without the whole-second rule none of them would
    for _attempt in range(3):
        domains = burst(stack_env, off, "lost")
        lost = rejected_on(ports, domains).get("pmg1.faster.test", [])
        if lost:
            break
    assert lost, "three bursts: every relay domain became effective on the master without re-touching the map"
    listed = {d.domain for d in ports.gateway.list_relay_domains()}
    assert set(lost) <= listed  # in PMG's API and file, not in the master's postfix map
    got = statuses(stack_env, settings, domains)
    assert {got.get(d) for d in lost} == {"degraded"}  # reported after the bounded wait, not parked silently


def event_for(domain: str) -> Any:
    stack.zone_add(domain)
    return parse(json.dumps(stack.created_event(domain)).encode(), publisher="billing")


def test_a_lagging_node_keeps_the_domain_out_of_provisioned_until_it_syncs(
    stack_env: dict[str, str], settings: Settings, sim: None
) -> None:
    stack.pmg_control(stack_env, "POST", "faults", {"node_sync_interval_s": {"pmg3": 3600}})
    ports = build_ports(settings)
    event = event_for(stack.unique_domain("lag"))
    target = re.escape(stack_env["MAILPLANE_PMG3_SMTP"])
    with pytest.raises(NotPropagated, match=rf"pmg3\.faster\.test: smtp rcpt {target} from 127\.0\.0\.2: 554"):
        domain_created.handle(event, ports)
    stack.pmg_control(stack_env, "POST", "faults", {"sync_now": True})  # pmg3 catches up
    out = domain_created.handle(event, ports)
    assert out.status == "provisioned"
    assert all(c["ok"] for c in out.emit[0]["data"]["acceptance"])


def test_a_node_that_never_catches_up_within_the_wait_gives_degraded_naming_it(
    stack_env: dict[str, str], settings: Settings, sim: None
) -> None:
    stack.pmg_control(stack_env, "POST", "faults", {"node_sync_interval_s": {"pmg2": 3600}})
    quick = dataclasses.replace(settings, smtp_probe=dataclasses.replace(settings.smtp_probe, max_wait_seconds=0))
    out = domain_created.handle(event_for(stack.unique_domain("deg")), build_ports(quick))
    assert out.status == "degraded"
    (failed,) = out.emit[0]["data"]["degraded"]
    assert (failed["node"], failed["check"], failed["source"]) == ("pmg2.faster.test", "smtp rcpt", "127.0.0.2")
    assert failed["answer"].startswith("554 5.7.1") and "Relay access denied" in failed["answer"]


def test_pmg_client_pins_the_cn_only_certificate_and_refuses_another(
    stack_env: dict[str, str], settings: Settings
) -> None:
    hosts = settings.provider.mx_hosts
    assert all(h.api_fingerprint for h in hosts)
    pinned = PmgClient(dataclasses.replace(settings.pmg, ca_file=""), hosts)
    assert isinstance(pinned.list_relay_domains(), list)  # CN-only certificate, no subjectAltName: pinned, it works
    wrong = [dataclasses.replace(h, api_fingerprint="AB" * 32) for h in hosts]
    with pytest.raises(PmgRejected, match="does not have the pinned SHA-256 fingerprint"):
        PmgClient(settings.pmg, wrong).list_relay_domains()
    cert = Path(stack_env["MAILPLANE_STACK_DIR"]) / "sim" / "pmg-tls" / "pmg1.pem"
    as_ca = [dataclasses.replace(h, api_fingerprint="") for h in hosts]
    with pytest.raises(PmgRejected, match="TLS verification failed on every node"):  # what the live PMG showed
        PmgClient(dataclasses.replace(settings.pmg, ca_file=str(cert)), as_ca[:1]).list_relay_domains()


def test_fingerprint_command_prints_what_the_node_serves(stack_env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "functions.ops.cli", "pmg", "fingerprint", "pmg2"]
    env = {**stack_env, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == stack_env["MAILPLANE_PMG2_FINGERPRINT"]
