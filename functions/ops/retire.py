"""Permanent retirement of a gateway node: a planned bulk change of the MX set of every managed customer zone.

``plan_retire`` reads every zone mailplane manages (``domains/*.json`` whose request says the zone is hosted by our
DNS) and plans, per zone, the MX RRset without the node. Ownership is respected: a zone without mailplane's
ownership marker is skipped, and only the node's MX value is removed (customer-added MX stay). A zone that would be
left with fewer than two MX hosts is skipped too (reference/dns.md §8.3). The plan has a content hash; applying
refuses a plan whose hash differs from the one the operator approved.

``apply_retire`` applies the identical plan in waves (``nodes.retire_waves``: 1, 10, 100, then the rest), one
compare-and-set UPDATE per zone (a zone changed since planning fails alone: NXRRSET), verifies each wave on every
authoritative server, and halts when the error budget (``nodes.retire_error_budget`` failed zones, or any failure
in the first wave) is spent. Before the first write it stores the undo plan at ``retire/<node>/<hash>.json`` and
records every applied zone there; ``undo_retire`` puts the node's MX value back, again with compare-and-set.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from functions._core.model import nodes, state
from functions._core.model.mailset import MARKER_NAME, MARKER_VALUE
from functions._core.model.ports import DnsChange, Ports
from functions._core.model.records import RecordSet
from functions._core.platform.errors import AutomationError, EventInvalid, PermanentError, PreconditionFailed
from functions._core.platform.store import put_over

log = logging.getLogger("mailplane.retire")

MIN_MX = 2


class PlanChanged(PermanentError):
    """The plan computed now differs from the one the operator approved: plan again and review it."""


def plan_digest(plan: Mapping[str, object]) -> str:
    """The short hash an operator approves (``--approve``): of a plan's canonical JSON, for node.retire and node.add."""
    blob = json.dumps(plan, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class ZoneChange:
    zone: str
    before: RecordSet
    after: RecordSet

    def line(self) -> str:
        gone = sorted(set(self.before.values) - set(self.after.values))
        return f"~ MX {self.zone} " + " ".join(f"-{v}" for v in gone)


@dataclass(frozen=True)
class RetirePlan:
    node: str  # host name of the node, as its MX values name it
    changes: tuple[ZoneChange, ...] = ()
    skipped: tuple[str, ...] = ()  # "zone: reason"
    untouched: int = 0  # managed zones whose MX set does not name the node

    def as_json(self) -> dict[str, object]:
        return {
            "node": self.node,
            "changes": [
                {"zone": c.zone, "ttl": c.before.ttl, "before": list(c.before.values), "after": list(c.after.values)}
                for c in self.changes
            ],
            "skipped": list(self.skipped),
        }

    @property
    def digest(self) -> str:
        return plan_digest(self.as_json())


@dataclass
class RetireReport:
    digest: str
    undo_key: str
    applied: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "zone: reason"
    waves: list[int] = field(default_factory=list)  # zones per wave attempted
    halted: str = ""  # why the run stopped early ("" = it ran to the end)


def node_name(ports: Ports, node: str) -> str:
    """The host name of ``node``: a configured gateway (short or full name) or a host name in the provider zone.

    Raises:
        EventInvalid: neither.
    """
    try:
        return nodes.find_host(ports.settings, node).name
    except EventInvalid:
        zone = ports.settings.provider.zone
        name = node.rstrip(".").lower()
        if name.endswith("." + zone):
            return name
        raise EventInvalid(f"{node} is neither a configured gateway nor a host name in {zone}") from None


def managed_zones(ports: Ports) -> list[str]:
    """Domains whose state says mailplane provisioned their zone on our DNS (sorted)."""
    out = []
    for key in ports.state.list("domains/"):
        domain = key.removeprefix("domains/").removesuffix(".json")
        st = state.load(ports.state, domain)
        if st.request.get("dns", {}).get("hosted") is True:
            out.append(domain)
    return sorted(out)


def _target(value: str) -> str:
    parts = value.split()
    return parts[-1].rstrip(".").lower() if parts else ""


def plan_zone(ports: Ports, zone: str, host: str) -> ZoneChange | str | None:
    """The change for one zone, a skip reason, or None (the node is not in its MX set)."""
    have = ports.dns.read_zone(zone)
    mx = have.get((zone, "MX"))
    if mx is None or all(_target(v) != host for v in mx.values):
        return None
    marker = have.get((f"{MARKER_NAME}.{zone}", "TXT"))
    if marker is None or MARKER_VALUE not in marker.values:
        return f"{zone}: no mailplane ownership marker; not ours to change"
    rest = [v for v in mx.values if _target(v) != host]
    if len(rest) < MIN_MX:
        return f"{zone}: would be left with {len(rest)} MX host(s), fewer than {MIN_MX}"
    return ZoneChange(zone, mx, RecordSet.of(zone, "MX", mx.ttl, rest))


def plan_retire(ports: Ports, node: str, zones: Sequence[str] | None = None) -> RetirePlan:
    """Read every managed zone and plan the MX change; nothing is written.

    Raises:
        EventInvalid: an unknown node.
        TransientError: a zone could not be read.
    """
    host = node_name(ports, node)
    changes: list[ZoneChange] = []
    skipped: list[str] = []
    untouched = 0
    for zone in managed_zones(ports) if zones is None else zones:
        if not ports.dns.hosts_zone(zone):
            skipped.append(f"{zone}: not served by our DNS")
            continue
        found = plan_zone(ports, zone, host)
        if isinstance(found, ZoneChange):
            changes.append(found)
        elif found is None:
            untouched += 1
        else:
            skipped.append(found)
    return RetirePlan(host, tuple(changes), tuple(skipped), untouched)


def waves(items: Sequence[ZoneChange], sizes: Sequence[int]) -> Iterator[Sequence[ZoneChange]]:
    """Slices of ``sizes[0]``, ``sizes[1]``, ... items, then the rest."""
    start = 0
    for size in sizes:
        if start >= len(items):
            return
        yield items[start : start + size]
        start += size
    if start < len(items):
        yield items[start:]


def undo_key(plan: RetirePlan) -> str:
    return f"retire/{plan.node}/{plan.digest}.json"


def _record(ports: Ports, plan: RetirePlan, applied: list[str], etag: str | None) -> str:
    """Store the undo plan (the inverse of every change) and the zones applied so far; conditional write."""
    body = json.dumps({"plan": plan.as_json(), "digest": plan.digest, "applied": applied}, sort_keys=True, indent=1)
    key = undo_key(plan)
    return put_over(ports.state, key, body.encode(), etag)


def _start(ports: Ports, plan: RetirePlan) -> tuple[list[str], str]:
    """Create the undo record, or resume one left by an interrupted run of the same plan."""
    try:
        return [], _record(ports, plan, [], None)
    except PreconditionFailed:
        obj = ports.state.get(undo_key(plan))
        if obj is None:
            raise
        applied: list[str] = json.loads(obj.body)["applied"]
        return applied, obj.etag


def apply_retire(
    ports: Ports,
    plan: RetirePlan,
    *,
    approved: str | None = None,
    progress: Callable[[int, list[str], list[str]], None] | None = None,
) -> RetireReport:
    """Apply ``plan`` in waves with compare-and-set per zone and an error budget; see the module docstring.

    Raises:
        PlanChanged: ``approved`` is given and differs from the plan's hash.
    """
    if approved is not None and approved != plan.digest:
        raise PlanChanged(f"the plan's hash is {plan.digest}, not the approved {approved}: plan again and review")
    settings = ports.settings.nodes
    done, etag = _start(ports, plan)
    report = RetireReport(plan.digest, undo_key(plan), applied=list(done))
    todo = [c for c in plan.changes if c.zone not in done]
    for number, wave in enumerate(waves(todo, settings.retire_waves), start=1):
        report.waves.append(len(wave))
        ok, failed = _apply_wave(ports, plan.node, wave)
        report.applied += ok
        report.failed += failed
        etag = _record(ports, plan, report.applied, etag)
        if progress is not None:
            progress(number, ok, failed)
        if failed and number == 1:
            report.halted = "the first wave (canary) failed"
        elif len(report.failed) >= settings.retire_error_budget:
            report.halted = f"error budget spent: {len(report.failed)} failed zone(s)"
        if report.halted:
            log.error("ALERT retire %s halted: %s", plan.node, report.halted)
            break
    return report


def _apply_wave(ports: Ports, host: str, wave: Sequence[ZoneChange]) -> tuple[list[str], list[str]]:
    ok: list[str] = []
    failed: list[str] = []
    serials: dict[str, int] = {}
    for c in wave:
        try:
            serials[c.zone] = ports.dns.apply(c.zone, [DnsChange(c.before, c.after)])
        except AutomationError as exc:
            failed.append(f"{c.zone}: {exc.reason}")
    for c in wave:
        if c.zone not in serials:
            continue
        gone = tuple(v for v in c.before.values if _target(v) == host)
        try:
            nodes.verify_dns(ports, c.zone, [((c.zone, "MX"), gone, False)], serials[c.zone])
            ok.append(c.zone)
        except AutomationError as exc:
            failed.append(f"{c.zone}: {exc.reason}")
    return ok, failed


def load_run(ports: Ports, key: str) -> tuple[RetirePlan, list[str]]:
    """A stored run: its plan (the undo plan is its inverse) and the zones it applied.

    Raises:
        EventInvalid: no such stored run.
    """
    obj = ports.state.get(key)
    if obj is None:
        raise EventInvalid(f"no stored retirement run {key}")
    raw = json.loads(obj.body)
    p = raw["plan"]
    changes = tuple(
        ZoneChange(
            c["zone"],
            RecordSet.of(c["zone"], "MX", c["ttl"], c["before"]),
            RecordSet.of(c["zone"], "MX", c["ttl"], c["after"]),
        )
        for c in p["changes"]
    )
    return RetirePlan(p["node"], changes, tuple(p["skipped"])), list(raw["applied"])


def undo_retire(ports: Ports, key: str) -> tuple[list[str], list[str]]:
    """Put the node's MX value back in every zone the stored run ``key`` applied (compare-and-set on the current
    RRset, so other changes made since are kept). Returns (restored zones, "zone: reason" for zones left alone).

    Raises:
        EventInvalid: no such stored run.
    """
    plan, applied = load_run(ports, key)
    restored: list[str] = []
    kept: list[str] = []
    for c in plan.changes:
        if c.zone not in applied:
            continue
        have = ports.dns.read_zone(c.zone).get((c.zone, "MX"))
        current = have.values if have else ()
        missing = [v for v in c.before.values if v not in current]
        if not missing:
            continue
        want = RecordSet.of(c.zone, "MX", have.ttl if have else c.before.ttl, [*current, *missing])
        try:
            ports.dns.apply(c.zone, [DnsChange(have, want)])
            restored.append(c.zone)
        except AutomationError as exc:
            kept.append(f"{c.zone}: {exc.reason}")
    return restored, kept
