"""`mailplane health` against the real stack: a parked event, a withdrawn node and a degraded domain, each produced
by the product, appear in the metrics the command prints (RabbitMQ, BIND, LocalStack S3, the simulators)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from functions import domain_created
from functions._core.model import nodes
from functions._core.model.ports import Ports
from functions._core.platform.config import Settings
from functions._core.platform.envelope import parse
from functions.runtime.main import build_ports
from tests.integration import stack
from tests.integration.test_nodes_stack import NODES, node_event, restore_all
from tests.stackenv import REPO

pytestmark = pytest.mark.stack

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def settings(stack_env: dict[str, str]) -> Settings:
    return stack.settings_for(stack_env)


@pytest.fixture(scope="module")
def ports(settings: Settings) -> Iterator[Ports]:
    found = build_ports(settings, probe=False)
    restore_all(found)
    yield found
    restore_all(found)


def health(env: dict[str, str]) -> Samples:
    """Run the real command once; every source must have been read (exit 0)."""
    done = subprocess.run(
        [str(REPO / ".venv/bin/mailplane"), "health"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(done.stdout)
        for s in fam.samples
    }


def degrade(env: dict[str, str], settings: Settings, domain: str) -> None:
    """A domain the acceptance gate reports ``degraded``: pmg2 never syncs the new relay domain, so its SMTP
    service keeps answering 554 and the gate gives up after its bounded wait (0 s here, so as not to wait)."""
    stack.zone_add(domain)
    stack.pmg_control(env, "POST", "faults", {"node_sync_interval_s": {"pmg2": 3600}})
    try:
        quick = replace(settings, smtp_probe=replace(settings.smtp_probe, max_wait_seconds=0))
        event = parse(json.dumps(stack.created_event(domain)).encode(), publisher="billing")
        assert domain_created.handle(event, build_ports(quick)).status == "degraded"
    finally:
        reset = {"node_sync_interval_s": {"pmg1": None, "pmg2": None, "pmg3": None}, "sync_now": True}
        stack.pmg_control(env, "POST", "faults", reset)


def test_parked_event_withdrawn_node_and_degraded_domain_appear_in_the_metrics(
    stack_env: dict[str, str], settings: Settings, ports: Ports
) -> None:
    before = health(stack_env)
    good, refused, bad = stack.unique_domain("hg"), stack.unique_domain("hp"), stack.unique_domain("hd")
    stack.zone_add(good)  # ``refused`` has no zone here: a zone we do not serve is parked, nothing changes
    try:
        stack.publish(stack_env, settings, stack.created_event(good))
        stack.publish(stack_env, settings, stack.created_event(refused))
        stack.publish(stack_env, settings, node_event("node.down", "pmg3", int(time.time() * 1000)), "monitoring")
        stack.run_worker(settings)
        assert not nodes.load(ports.state, "pmg3.faster.test").in_rotation
        degrade(stack_env, settings, bad)
        after = health(stack_env)
    finally:
        parked = stack.take(stack_env, settings, "q.parked", refused)
        restore_all(ports)
    assert len(parked) == 1 and "zone" in parked[0][0]["x-mailplane-reason"].lower()

    def count(name: str, *labels: tuple[str, str]) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    assert count("mailplane_queue_messages", ("queue", "q.parked")) == 1
    assert after[("mailplane_parked_oldest_age_seconds", ())] >= 0
    assert after[("mailplane_mx_node_in_rotation", (("node", "pmg3.faster.test"),))] == 0
    assert after[("mailplane_mx_nodes_in_rotation", ())] == after[("mailplane_mx_nodes_configured", ())] - 1
    assert count("mailplane_domains", ("status", "degraded")) == 1
    assert count("mailplane_store_objects", ("kind", "ledger")) == 2  # the worker completed two; parked: none
    for name in NODES:  # the simulated nodes present their SMTP certificate over STARTTLS, as PMG does
        labels = (("host", f"{name}.faster.test"), ("kind", "smtp"))
        assert after[("mailplane_certificate_check", (*labels, ("result", "ok")))] == 1
        assert after[("mailplane_certificate_days_to_expiry", labels)] > 0
    for source in ("domains", "mx_nodes", "drift", "store", "broker", "certificates"):
        assert after[("mailplane_health_source_up", (("source", source),))] == 1
