"""Bringing a gateway node into service (`mailplane plan node.add NODE`) and the last phases of node.retire.

node.add, in this order, each step verified on every authoritative server before the next one starts:

1. **provider**: ONE compare-and-set UPDATE of the provider zone: the node's A/AAAA (its configured addresses), with
   DANE (``dane.enabled``) its ``_25._tcp`` TLSA 3 1 1 of the certificate it presents over STARTTLS, and the
   managed ``_pmg`` SPF with them (functions/_core/model/fleet.py: a hand-written ``_pmg`` equal to what we compute
   is adopted, a different one refused unless ``force``); then the certificate lifecycle adopts the node
   (``dane.adopt``: cert.renew owns its TLSA from now on; a node it already owns gets no TLSA change here);
2. **policies**: every managed domain's MTA-STS policy object with the new ``mx:`` line (conditional write on the
   object's ETag), then its ``_mta-sts`` TXT with the new id (compare-and-set), in waves;
3. **mx**: the node's MX value added zone by zone (compare-and-set on the MX RRset read; only zones with
   mailplane's ownership marker whose policy already lists the node; customer-added MX stay), in waves. With DANE
   the phase starts only when every authoritative server serves a TLSA 3 1 1 matching the certificate the node
   presents at that moment (a fresh STARTTLS handshake; ``dane.require_served``), else the run halts before any MX.

Before any write the node must be healthy: its SMTP greeting and API answer as the prober checks them
(functions/ops/probe.py ``check_node``) and the PMG cluster lists it as reachable and in sync. Waves, error budget
and the canary rule are node.retire's (``nodes.retire_waves``, ``nodes.retire_error_budget``). Every run plans
afresh from what the systems hold, so a second run writes nothing and a run after a crash continues where the
first stopped; the progress (phase, counts, failures) is kept at ``add/<host>.json``. The undo is node.retire's
order without its wait (``undo_add``).

node.retire's tail (``retire_tail``): once no managed zone's MX names the node, and
``nodes.retire_policy_after_seconds`` (default: ``policy.mta_sts_max_age``, the old policy's lifetime in senders'
caches) after that was first seen, every policy drops the node; then the ``_pmg`` SPF and the node's A/AAAA and
TLSA go, last (refused while a cert.renew run is in progress for the node), and the certificate lifecycle forgets
the node (``dane.release``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from functions._core.model import dane, fleet, nodes, state
from functions._core.model.mailset import MARKER_NAME, MARKER_VALUE, policy_key
from functions._core.model.ports import DnsChange, Ports
from functions._core.model.records import RecordSet
from functions._core.model.verify import until_propagated
from functions._core.platform.config import MxHost, Settings
from functions._core.platform.errors import AutomationError, DnsRefused, PermanentError, PreconditionFailed
from functions._core.platform.store import put_over
from functions.ops import retire
from functions.ops.probe import Check, check_node

log = logging.getLogger("mailplane.grow")

Health = Callable[[MxHost, Settings], Check]


class NodeNotReady(PermanentError):
    """The node is not healthy or not in the PMG cluster, or the provider zone holds records we do not own."""


@dataclass(frozen=True)
class PolicyChange:
    zone: str
    etag: str | None  # the policy object's version read (None: absent)
    body: bytes
    txt: DnsChange | None  # the `_mta-sts` TXT change (None: the id is already right)


@dataclass(frozen=True)
class AddPlan:
    node: str
    provider: fleet.ProviderPlan
    policies: tuple[PolicyChange, ...] = ()
    mx: tuple[retire.ZoneChange, ...] = ()
    skipped: tuple[str, ...] = ()
    health: tuple[str, ...] = ()  # problems: nothing may be written while any is listed
    dane: str = ""  # "" (DANE off) | "adopt" (the lifecycle adopts the node after phase 1) | "owned" (it already has)

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "node": self.node,
            "provider": self.provider.lines(),
            "refused": list(self.provider.refused),
            "policies": [p.zone for p in self.policies],
            "mx": [{"zone": c.zone, "before": list(c.before.values), "after": list(c.after.values)} for c in self.mx],
            "skipped": list(self.skipped),
        }
        return out | ({"dane": self.dane} if self.dane else {})

    @property
    def digest(self) -> str:
        return retire.plan_digest(self.as_json())

    @property
    def empty(self) -> bool:
        return not (self.provider.changes or self.policies or self.mx or self.dane == "adopt")


@dataclass
class AddReport:
    digest: str
    phases: dict[str, int] = field(default_factory=dict)  # phase -> items written and verified
    failed: list[str] = field(default_factory=list)
    waves: list[int] = field(default_factory=list)
    halted: str = ""


def health(ports: Ports, host: MxHost, check: Health = check_node) -> tuple[str, ...]:
    """Why ``host`` may not take mail yet ("" tuple = healthy): the prober's check and the PMG cluster's view."""
    problems = []
    got = check(host, ports.settings)
    if not got.smtp or got.api is not True:
        problems.append(f"{host.name} is not healthy: {got.reason or 'no api_url configured'}")
    try:
        members = {n.name.lower(): n for n in ports.gateway.cluster_nodes()}
    except AutomationError as exc:
        return (*problems, f"cannot read the PMG cluster: {exc.reason}")
    member = members.get(nodes.short(host.name))
    if member is None:
        problems.append(f"{host.name} is not a member of the PMG cluster ({', '.join(sorted(members))})")
    elif not (member.reachable and member.insync):
        problems.append(f"{host.name} is in the PMG cluster but not reachable and in sync")
    return tuple(problems)


def plan_dane(ports: Ports, host: MxHost) -> tuple[str, str | None, tuple[str, ...]]:
    """DANE for the joining node: ("" when off | "adopt" | "owned", the SPKI hash of the certificate it presents when
    phase 1 is to publish its TLSA, problems). A node cert.renew already owns gets no TLSA from node.add (the MX
    gate still checks it); one that presents no certificate may not be added (nothing could match it)."""
    if not ports.settings.dane.enabled:
        return "", None, ()
    if dane.owned(ports, host):
        return "owned", None, ()
    try:
        spki = dane.presented_spki(ports, host)
    except AutomationError as exc:
        return "adopt", None, (f"{host.name}: its STARTTLS certificate cannot be read: {exc.reason}",)
    if spki is None:
        return "adopt", None, (f"{host.name} presents no certificate over STARTTLS: DANE needs its TLSA before MX",)
    return "adopt", spki, ()


def _policy_change(
    ports: Ports, zone: str, have: dict[tuple[str, str], RecordSet], grown: Settings
) -> PolicyChange | None:
    cur = have.get((f"_mta-sts.{zone}", "TXT"))
    if cur is None:
        return None  # no MTA-STS for this domain
    body, txt = fleet.policy_body_and_txt(grown, state.load(ports.state, zone).mta_sts_mode(grown))  # its own mode
    obj = ports.web.get(policy_key(zone))
    change = None if cur.values == (txt,) else DnsChange(cur, RecordSet.of(cur.name, "TXT", cur.ttl, [txt]))
    if obj is not None and obj.body == body and change is None:
        return None
    return PolicyChange(zone, obj.etag if obj else None, body, change)


def plan_zones(
    ports: Ports, zones: Sequence[str], target: Settings, mx_value: str | None
) -> tuple[list[PolicyChange], list[retire.ZoneChange], list[str]]:
    """Per managed zone: the policy change towards ``target``'s policy, and (``mx_value``) the MX with it added."""
    policies: list[PolicyChange] = []
    mx: list[retire.ZoneChange] = []
    skipped: list[str] = []
    for zone in zones:
        try:
            have = ports.dns.read_zone(zone)  # one AXFR per zone: MX, `_mta-sts` and the marker
        except DnsRefused:
            skipped.append(f"{zone}: not served by our DNS")
            continue
        marker = have.get((f"{MARKER_NAME}.{zone}", "TXT"))
        if marker is None or MARKER_VALUE not in marker.values:
            skipped.append(f"{zone}: no mailplane ownership marker; not ours to change")
            continue
        pol = _policy_change(ports, zone, have, target)
        if pol is not None:
            policies.append(pol)
        cur = have.get((zone, "MX"))
        if mx_value is None:
            continue
        if cur is None:
            skipped.append(f"{zone}: no MX RRset")
        elif mx_value not in cur.values:
            mx.append(
                retire.ZoneChange(zone, cur, RecordSet.of(zone, "MX", cur.ttl, fleet.mx_with(cur.values, mx_value)))
            )
    return policies, mx, skipped


def plan_add(
    ports: Ports,
    node: str,
    *,
    force: bool = False,
    check: Health = check_node,
    zones: Sequence[str] | None = None,
) -> AddPlan:
    """Read the provider zone, the node's health and every managed zone (or ``zones``) and policy; nothing is
    written.

    Raises:
        EventInvalid: the node is not configured in provider.mx_hosts.
        TransientError: a zone or object could not be read.
    """
    host = nodes.find_host(ports.settings, node)
    s = ports.settings
    mode, spki, tls_problems = plan_dane(ports, host)
    provider = fleet.plan_provider_add(s, ports.dns.read_zone(s.provider.zone), host, force=force, spki=spki)
    grown = fleet.with_host(s, host)
    todo = retire.managed_zones(ports) if zones is None else zones
    policies, mx, skipped = plan_zones(ports, todo, grown, fleet.mx_value(s, host))
    problems = (*health(ports, host, check), *tls_problems)
    return AddPlan(host.name, provider, tuple(policies), tuple(mx), tuple(skipped), problems, mode)


# ---------------------------------------------------------------- applying


def progress_key(host: str) -> str:
    return f"add/{host}.json"


class _Progress:
    """The run's progress object (conditional writes; a crashed run's object is taken over by the next run)."""

    def __init__(self, ports: Ports, key: str, base: dict[str, object]) -> None:
        self.ports, self.key, self.data = ports, key, dict(base)
        obj = ports.state.get(key)
        self.etag = obj.etag if obj else None
        if obj is not None:
            self.data = {**json.loads(obj.body), **base}

    def save(self, **fields: object) -> None:
        self.data.update(fields)
        body = json.dumps(self.data, sort_keys=True, indent=1).encode()
        try:
            self.etag = put_over(self.ports.state, self.key, body, self.etag)
        except PreconditionFailed:
            raise NodeNotReady(f"{self.key} was changed by another run; run one at a time") from None


def _write_policy(ports: Ports, p: PolicyChange) -> int | None:
    """The object first (a sender that sees the new id must find the new policy), then the TXT id."""
    key = policy_key(p.zone)
    if p.etag is None:
        ports.web.put(key, p.body, if_none_match=True, content_type="text/plain")
    else:
        ports.web.put(key, p.body, if_match=p.etag, content_type="text/plain")
    return ports.dns.apply(p.zone, [p.txt]) if p.txt is not None else None


def _policy_wave(ports: Ports, wave: Sequence[PolicyChange]) -> tuple[list[str], list[str]]:
    ok: list[str] = []
    failed: list[str] = []
    serials: dict[str, int | None] = {}
    for p in wave:
        try:
            serials[p.zone] = _write_policy(ports, p)
        except AutomationError as exc:
            failed.append(f"{p.zone}: {exc.reason}")
    for p in wave:
        if p.zone not in serials:
            continue
        try:
            if p.txt is not None and p.txt.after is not None:
                nodes.verify_dns(ports, p.zone, [(p.txt.key, p.txt.after.values, True)], serials[p.zone])
            ok.append(p.zone)
        except AutomationError as exc:
            failed.append(f"{p.zone}: {exc.reason}")
    return ok, failed


def _mx_wave(ports: Ports, wave: Sequence[retire.ZoneChange]) -> tuple[list[str], list[str]]:
    ok: list[str] = []
    failed: list[str] = []
    serials: dict[str, int] = {}
    for c in wave:
        try:
            serials[c.zone] = ports.dns.apply(c.zone, [DnsChange(c.before, c.after)])
        except AutomationError as exc:
            failed.append(f"{c.zone}: {exc.reason}")
    for c in wave:
        if c.zone in serials:
            added = tuple(v for v in c.after.values if v not in c.before.values)
            try:
                nodes.verify_dns(ports, c.zone, [((c.zone, "MX"), added, True)], serials[c.zone])
                ok.append(c.zone)
            except AutomationError as exc:
                failed.append(f"{c.zone}: {exc.reason}")
    return ok, failed


Wave = Callable[[Ports, Sequence[object]], tuple[list[str], list[str]]]


def run_waves(ports: Ports, items: Sequence[object], wave_fn: Wave, report: AddReport, phase: str) -> bool:
    """Apply ``items`` in waves; False when the canary or the error budget halts the run (``report.halted``)."""
    s = ports.settings.nodes
    report.phases.setdefault(phase, 0)
    for number, wave in enumerate(retire.waves(items, s.retire_waves), start=1):  # type: ignore[arg-type]
        report.waves.append(len(wave))
        ok, failed = wave_fn(ports, wave)
        report.phases[phase] += len(ok)
        report.failed += failed
        if failed and number == 1:
            report.halted = f"{phase}: the first wave (canary) failed"
        elif len(report.failed) >= s.retire_error_budget:
            report.halted = f"{phase}: error budget spent: {len(report.failed)} failed item(s)"
        if report.halted:
            log.error("ALERT node membership change halted: %s", report.halted)
            return False
    return not report.failed


def apply_provider(ports: Ports, plan: fleet.ProviderPlan, report: AddReport) -> bool:
    if not plan.changes:
        return True
    zone = ports.settings.provider.zone
    try:
        serial = ports.dns.apply(zone, list(plan.changes))
        nodes.verify_dns(ports, zone, fleet.provider_checks(plan), serial)
    except AutomationError as exc:
        report.failed.append(f"{zone}: {exc.reason}")
        report.halted = f"provider zone: {exc.reason}"
        return False
    report.phases["provider"] = len(plan.changes)
    return True


def _tlsa_served(ports: Ports, host: MxHost) -> None:
    """Every authoritative server serves a TLSA matching what ``host`` presents now, asked again for up to
    ``dns.propagation_wait``.

    Raises:
        NotPropagated, DaneWait: it does not (the servers that lack it), or the node presents no certificate.
    """
    until_propagated(ports.settings.dns.propagation_wait, lambda: dane.require_served(ports, host))


def adopt_tlsa(ports: Ports, plan: AddPlan, report: AddReport) -> bool:
    """DANE, after the provider UPDATE: the certificate lifecycle adopts the node (its TLSA exactly as the node
    presents it now, compare-and-set), verified on every authoritative server."""
    if plan.dane != "adopt":
        return True
    host = nodes.find_host(ports.settings, plan.node)
    try:
        dane.adopt(ports, host, f"node.add:{plan.digest}", keep=False)
        _tlsa_served(ports, host)
    except AutomationError as exc:
        report.failed.append(f"{dane.tlsa_name(host)}: {exc.reason}")
        report.halted = f"provider zone: DANE: {exc.reason}"
        return False
    return True


def dane_gate(ports: Ports, plan: AddPlan, report: AddReport) -> bool:
    """Before the first MX: with DANE, every authoritative server must serve a TLSA matching the certificate the
    node presents now (``_tlsa_served``); else the run halts with no MX written."""
    if not (plan.dane and plan.mx):
        return True
    host = nodes.find_host(ports.settings, plan.node)
    try:
        _tlsa_served(ports, host)
    except AutomationError as exc:
        report.halted = f"mx: DANE clients would refuse {host.name}: {exc.reason}; no MX written"
        log.error("ALERT node membership change halted: %s", report.halted)
        return False
    return True


def apply_add(
    ports: Ports,
    plan: AddPlan,
    *,
    approved: str | None = None,
    progress: Callable[[str, AddReport], None] | None = None,
) -> AddReport:
    """Apply ``plan``: provider zone (and the DANE adoption), then policies, then MX behind the DANE gate (see the
    module docstring).

    Raises:
        PlanChanged: ``approved`` differs from the plan's hash.
        NodeNotReady: the node is not healthy, or the provider zone holds records we do not own.
    """
    if approved is not None and approved != plan.digest:
        raise retire.PlanChanged(f"the plan's hash is {plan.digest}, not the approved {approved}: plan again")
    if plan.health or plan.provider.refused:
        raise NodeNotReady("; ".join([*plan.health, *plan.provider.refused]))
    report = AddReport(plan.digest)
    record = _Progress(ports, progress_key(plan.node), {"node": plan.node, "digest": plan.digest})
    record.save(phase="provider", started_at=nodes.iso(ports.clock()))
    steps: list[tuple[str, Callable[[], bool]]] = [
        ("provider", lambda: apply_provider(ports, plan.provider, report) and adopt_tlsa(ports, plan, report)),
        ("policies", lambda: run_waves(ports, plan.policies, _policy_wave, report, "policies")),  # type: ignore[arg-type]
        ("mx", lambda: dane_gate(ports, plan, report) and run_waves(ports, plan.mx, _mx_wave, report, "mx")),  # type: ignore[arg-type]
    ]
    for phase, step in steps:
        record.save(phase=phase)
        done = step()
        if progress is not None:
            progress(phase, report)
        if not done:
            report.halted = report.halted or f"{phase}: {len(report.failed)} failed; the next phase waits"
            record.save(halted=report.halted, failed=report.failed)
            return report
    record.save(phase="done", halted="", failed=[], finished_at=nodes.iso(ports.clock()), written=report.phases)
    return report


# ---------------------------------------------------------------- node.retire's tail, and node.add's undo


@dataclass
class TailReport:
    report: AddReport
    waiting: str = ""  # why the next phase does not start yet ("" = nothing left, or halted)


def _still_named(ports: Ports, host: str, zones: Sequence[str]) -> list[str]:
    out = []
    for zone in zones:
        try:
            mx = ports.dns.read_zone(zone).get((zone, "MX"))
        except DnsRefused:
            continue
        if mx is not None and any(retire._target(v) == host for v in mx.values):
            out.append(zone)
    return out


def retire_tail(
    ports: Ports, node: str, *, force: bool = False, wait: bool = True, zones: Sequence[str] | None = None
) -> TailReport:
    """After node.retire's MX phase: the policies without the node (once the wait has passed), then the `_pmg`
    SPF and the node's A/AAAA and TLSA (the certificate lifecycle then forgets the node). ``wait=False`` (undoing a
    node.add) skips the wait.

    Raises:
        EventInvalid: an unknown node.
    """
    host = retire.node_name(ports, node)
    s = ports.settings
    report = TailReport(AddReport(""))
    zones = retire.managed_zones(ports) if zones is None else zones
    named = _still_named(ports, host, zones)
    record = _Progress(ports, f"retire/{host}/phases.json", {"node": host})
    if named and not force:
        report.waiting = f"{len(named)} managed zone(s) still name {host} in MX (e.g. {named[0]}): MX phase first"
        return report
    now = ports.clock()
    if "mx_done_at" not in record.data:
        record.save(mx_done_at=nodes.iso(now))
    delay = s.nodes.retire_policy_after_seconds
    delay = s.policy.mta_sts_max_age if delay is None else delay
    ready = dt.datetime.fromisoformat(str(record.data["mx_done_at"])) + dt.timedelta(seconds=delay)
    if wait and now < ready:
        report.waiting = f"policies drop {host} from {nodes.iso(ready)} (the old policy's max_age after the MX phase)"
        return report
    target = fleet.without_host(s, host)
    policies, _, _ = plan_zones(ports, [z for z in zones if z not in named], target, None)
    if not run_waves(ports, policies, _policy_wave, report.report, "policies"):  # type: ignore[arg-type]
        return report
    record.save(policies_done_at=nodes.iso(ports.clock()))
    plan = fleet.plan_provider_remove(s, ports.dns.read_zone(s.provider.zone), host, force=force)
    running = dane.read(ports.state, nodes.short(host))[0].phase
    if running != "IDLE":
        plan = dataclasses.replace(plan, refused=(*plan.refused, f"{host}: a cert.renew run is in {running}; wait"))
    if plan.refused:
        report.report.halted = "; ".join(plan.refused)
        return report
    if not apply_provider(ports, plan, report.report):
        return report
    try:
        dane.release(ports, host, f"node.retire:{host}")
    except AutomationError as exc:
        report.report.halted = f"{host}: the certificate lifecycle's state: {exc.reason}"
        return report
    record.save(provider_done_at=nodes.iso(ports.clock()))
    return report


def undo_add(ports: Ports, node: str, zones: Sequence[str] | None = None) -> tuple[retire.RetireReport, TailReport]:
    """Take a node.add back in node.retire's order (MX, policies, then SPF and A/AAAA), without the wait.

    Raises:
        EventInvalid: an unknown node.
    """
    plan = retire.plan_retire(ports, node, zones)
    mx = retire.apply_retire(ports, plan)
    if mx.halted or mx.failed:
        return mx, TailReport(AddReport(""), "MX phase did not finish")
    return mx, retire_tail(ports, node, wait=False, zones=zones)
