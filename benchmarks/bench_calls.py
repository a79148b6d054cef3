"""Calls per event on each system, per event type, next to the minimum possible.

Each scenario runs ``k`` events through ``dispatch.run`` (decode, authorise, ledger, subject lock, handler: what a
worker does, minus the broker) in this process, on the sandbox, without injected latency. Mailcow and PMG calls are
read from the simulators' request logs, S3 and DNS calls from the counted ports (benchmarks.counting).

The minimum is what any implementation with the same guarantees needs (read the state it plans from, write each
change once, check each authoritative server once); MINIMUM_NOTES says why, per event type.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from benchmarks.counting import Tally, counted, sim_counts
from benchmarks.harness import REPO, Sandbox, created_event
from functions import ROUTES
from functions._core.model.ports import Ports
from functions.runtime import dispatch
from functions.runtime.main import build_ports

SYSTEMS = ("mailcow", "pmg", "dns", "s3")

# (scenario) -> system -> minimum calls per event (reads + writes), with one authoritative server
MINIMUM: dict[str, dict[str, int]] = {
    "domain.created (new hosted domain)": {"mailcow": 3, "pmg": 4, "dns": 3, "s3": 5},
    "domain.created (duplicate delivery)": {"mailcow": 0, "pmg": 0, "dns": 0, "s3": 1},
    "domain.created (redelivery, ledger expired)": {"mailcow": 2, "pmg": 2, "dns": 2, "s3": 2},
    "domain.created (plan changed)": {"mailcow": 2, "pmg": 2, "dns": 1, "s3": 3},
    "key.rotate (scheduled)": {"mailcow": 2, "pmg": 0, "dns": 3, "s3": 3},
    "domain.deleted (grace 0)": {"mailcow": 3, "pmg": 4, "dns": 3, "s3": 5},
    "node.down": {"mailcow": 2, "pmg": 1, "dns": 3, "s3": 2},
    "node.up": {"mailcow": 2, "pmg": 0, "dns": 3, "s3": 2},
}
MINIMUM_NOTES = {
    "domain.created (new hosted domain)": "Mailcow: read domain, add domain, import key. PMG: read relay domains "
    "and transports, add both (trusted networks once per platform). DNS: one AXFR to plan, one UPDATE, one AXFR per "
    "authoritative server to verify. S3: read state and policy; write sealed key, state, policy (no ledger, no lock).",
    "domain.created (duplicate delivery)": "one ledger lookup; nothing else.",
    "domain.created (redelivery, ledger expired)": "re-read each system once to find nothing to do: Mailcow "
    "domain and key, PMG relay domains and transports, DNS AXFR + one check, S3 state and policy.",
    "domain.created (plan changed)": "Mailcow: read + edit; PMG: two reads; DNS: one AXFR; S3: read state and "
    "policy, write state.",
    "key.rotate (scheduled)": "with no propagation wait the rotation runs to ACTIVE in one delivery: S3 read state, "
    "write the new sealed key and state; DNS: AXFR, UPDATE, verify; Mailcow: read the key, import the new one.",
    "domain.deleted (grace 0)": "Mailcow: read, delete domain and key; PMG: read two lists, delete two entries; DNS: "
    "AXFR, UPDATE, verify; S3: read state, delete policy and key, write the tombstone.",
    "node.down": "DNS: AXFR of the provider zone, UPDATE, verify; Mailcow: read relayhosts, deactivate one; PMG: "
    "cluster status (is it the master?); S3: read and write this node's state.",
    "node.up": "DNS: AXFR, UPDATE, verify; Mailcow: read relayhosts, reactivate one; S3: read and write the node.",
}


@dataclass(frozen=True)
class Scenario:
    name: str
    events: Callable[[], list[tuple[dict[str, Any], str]]]  # (event, publisher) list, built when it runs
    ledger: bool = True
    pause: float = 0.0  # seconds between events (node.up hold-down)


def _sample(name: str) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((REPO / "events" / f"{name}.json").read_text())
    raw["id"] = f"bench-{uuid.uuid4().hex[:16]}"
    raw["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return raw


def _domain_event(kind: str, domain: str, **data: Any) -> dict[str, Any]:
    raw = _sample(kind)
    raw["subject"] = raw["data"]["domain"] = domain
    raw["data"].update(data)
    return raw


def _node_event(kind: str, node: str, sequence: int) -> dict[str, Any]:
    raw = _sample(kind)
    raw["subject"] = raw["data"]["node"] = node
    raw["data"].update(sequence=sequence, observer="bench")
    return raw


def scenarios(domains: list[str], node: str) -> list[Scenario]:
    created = [created_event(d, i=i) for i, d in enumerate(domains)]
    changed_plan = dict(created[0]["data"]["plan"], mailboxes=99, quota_mib=204800)
    seq = int(time.time() * 1000)
    return [
        Scenario("domain.created (new hosted domain)", lambda: [(e, "billing") for e in created]),
        Scenario("domain.created (duplicate delivery)", lambda: [(e, "billing") for e in created]),
        Scenario("domain.created (redelivery, ledger expired)", lambda: [(e, "billing") for e in created], False),
        Scenario(
            "domain.created (plan changed)",
            lambda: [
                (created_event(d, i=i) | {"data": {**e["data"], "plan": changed_plan}}, "billing")
                for i, (d, e) in enumerate(zip(domains, created, strict=True))
            ],
        ),
        Scenario(
            "key.rotate (scheduled)",
            lambda: [(_domain_event("key.rotate", d, reason="scheduled"), "scheduler") for d in domains],
        ),
        Scenario(
            "domain.deleted (grace 0)",
            lambda: [
                (
                    _domain_event("domain.deleted", d, grace_days=0, force=True, customer_id=e["data"]["customer_id"]),
                    "billing",
                )
                for d, e in zip(domains, created, strict=True)
            ],
        ),
        Scenario("node.down", lambda: [(_node_event("node.down", node, seq + 1), "monitoring")]),
        Scenario("node.up", lambda: [(_node_event("node.up", node, seq + 2), "monitoring")], pause=1.2),
    ]


def _measure(sb: Sandbox, ports: Ports, tally: Tally, sc: Scenario) -> dict[str, Any]:
    events = sc.events()
    logs = {s: len(sb.sim_requests(s)) for s in ("mailcow", "pmg")}
    tally.counts.clear()
    verdicts: dict[str, int] = {}
    use = ports if sc.ledger else replace(ports, ledger=None, locks=None)
    for event, publisher in events:
        time.sleep(sc.pause)
        result = dispatch.run(json.dumps(event).encode(), publisher, use)
        key = result.verdict if result.verdict == "done" else f"{result.verdict}: {result.reason[:120]}"
        verdicts[key] = verdicts.get(key, 0) + 1
    n = len(events)
    calls: dict[str, dict[str, float]] = {}
    for system in ("mailcow", "pmg"):
        calls[system] = {k: v / n for k, v in sim_counts(sb.sim_requests(system)[logs[system] :]).items()}
    snap = tally.snapshot()
    for system in ("dns", "s3"):
        calls[system] = {k: snap.get(f"{system}.{k}", 0) / n for k in ("read", "write", "refused")}
    return {"events": n, "verdicts": verdicts, "calls": calls, "minimum": MINIMUM.get(sc.name)}


def run(sb: Sandbox, k: int) -> dict[str, Any]:
    """Every scenario whose event type is routed; figures per scenario."""
    domains = [sb.domain(i, "k") for i in range(k)]
    sb.add_zones(domains)
    sb.set_latency(0)
    tally = Tally()
    ports = counted(build_ports(sb.settings), tally)
    node = sb.settings.provider.mx_hosts[-1].name.split(".")[0]
    for mx in sb.settings.provider.mx_hosts:  # one Mailcow relayhost per node, as on the platform
        ports.mail.add_relayhost(sb.settings.nodes.smarthost_format.format(host=mx.name))
    out: dict[str, Any] = {}
    for sc in scenarios(domains, node):
        kind = sc.name.split(" ")[0]
        out[sc.name] = _measure(sb, ports, tally, sc) if kind in ROUTES else {"skipped": f"{kind} is not routed"}
    return {"scenarios": out, "notes": MINIMUM_NOTES}
