"""`mailplane health`: the platform's health as Prometheus metrics, from what mailplane already stores.

One run reads, once each: every domain's state object (the same pass `mailplane rotate-due` makes every hour:
statuses, DKIM key ages, rotations in progress or stuck), the node state objects and ONE transfer of the provider
zone (MX nodes in rotation), the drift report the last `mailplane drift --all --report` wrote (never a per-domain
probe: the DNSSEC chain-of-trust counts per status come from it too), the broker's queue counters and the head of
the parked queue, the ledger and lease object counts, and the certificate of each MX host (STARTTLS, see
``certs``). So a run costs about one GET per domain plus a few dozen requests, whatever is scraped: the figures are
computed per run (timer, CronJob-like loop), never per scrape.

Each source is read on its own: one that fails sets ``mailplane_health_source_up{source}`` to 0 and leaves its
series out, the others are still exported. The metric names, types and labels are all in ``SPECS``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from functions._core.model import dane, dnssec, nodes, rotation, state
from functions._core.model.ports import Ports
from functions._core.platform.errors import AutomationError
from functions._core.platform.idempotency import PREFIX as LEDGER_PREFIX
from functions._core.platform.locks import PREFIX as LOCK_PREFIX
from functions.ops import drift

log = logging.getLogger("mailplane.health")

DOMAIN_PREFIX = "domains/"
KEY_AGE_BUCKETS_DAYS = (30.0, 90.0, 180.0, 240.0, 365.0)  # rotation is due after rotate_after_days + jitter
NOT_ROTATING = ("ACTIVE", "DESTROYED")  # every other key status is a step of a rotation

SPECS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "mailplane_domains": ("gauge", "managed domains by the status in their state object", ("status",)),
    "mailplane_domains_unreadable": ("gauge", "state objects that could not be read", ()),
    "mailplane_dkim_key_age_days": ("histogram", "age of each provisioned domain's signing DKIM key", ()),
    "mailplane_dkim_rotations_in_progress": ("gauge", "domains with a successor key on its way to ACTIVE", ()),
    "mailplane_dkim_rotation_keys": ("gauge", "keys in a rotation step (not ACTIVE, not DESTROYED)", ("state",)),
    "mailplane_dkim_rotations_stuck": (
        "gauge",
        "domains whose next rotation step is past due by more than the tolerance, by the waiting key's state",
        ("state",),
    ),
    "mailplane_dkim_rotation_overdue_seconds_max": ("gauge", "longest time a rotation step is past due", ()),
    "mailplane_mx_nodes_configured": ("gauge", "gateway nodes in [[provider.mx_hosts]]", ()),
    "mailplane_mx_nodes_in_rotation": ("gauge", "nodes in rotation (address in the provider zone, state)", ()),
    "mailplane_mx_nodes_min_in_rotation": ("gauge", "provider.min_mx_in_rotation (the quorum guard)", ()),
    "mailplane_mx_node_in_rotation": ("gauge", "1 when the node is in rotation", ("node",)),
    "mailplane_certificate_check": (
        "gauge",
        "1 for the result of the last certificate check (ok, no_starttls, unreachable, tls_error)",
        ("kind", "host", "result"),
    ),
    "mailplane_certificate_expiry_timestamp_seconds": ("gauge", "notAfter of the served certificate", ("kind", "host")),
    "mailplane_certificate_days_to_expiry": ("gauge", "days until the served certificate expires", ("kind", "host")),
    "mailplane_dane_tlsa_match": (
        "gauge",
        "1 when every authoritative server serves a TLSA 3 1 1 matching the certificate the node presents on STARTTLS",
        ("node",),
    ),
    "mailplane_dane_days_to_expiry": ("gauge", "days until the node's presented SMTP certificate expires", ("node",)),
    "mailplane_dane_phase": (
        "gauge",
        "1 for the node's certificate lifecycle phase (IDLE when no run)",
        ("node", "phase"),
    ),
    "mailplane_drift_findings": ("gauge", "failing checks in the last drift report, by system", ("system",)),
    "mailplane_drift_domains": ("gauge", "domains in the last drift report, by status", ("status",)),
    "mailplane_drift_report_timestamp_seconds": ("gauge", "when the last drift report was written", ()),
    "mailplane_dnssec_zones": (
        "gauge",
        "hosted signed zones in the last drift report, by DNSSEC chain-of-trust status",
        ("status",),
    ),
    "mailplane_queue_messages": ("gauge", "messages ready in the queue (passive queue.declare)", ("queue",)),
    "mailplane_queue_consumers": ("gauge", "consumers of the queue", ("queue",)),
    "mailplane_parked_oldest_age_seconds": ("gauge", "age of the oldest parked event (head of q.parked)", ()),
    "mailplane_store_objects": ("gauge", "objects under a state-store prefix (ledger, lease)", ("kind",)),
    "mailplane_health_source_up": ("gauge", "1 when the source was read in the last run", ("source",)),
    "mailplane_health_last_run_timestamp_seconds": ("gauge", "when the last collection finished", ()),
    "mailplane_health_run_duration_seconds": ("gauge", "how long the last collection took", ()),
}


@dataclass
class Sink:
    """The samples of one run, by metric name (see ``SPECS``)."""

    samples: dict[str, list[tuple[tuple[str, ...], float]]] = field(default_factory=dict)
    histograms: dict[str, tuple[list[tuple[str, float]], float]] = field(default_factory=dict)

    def set(self, name: str, value: float, *labels: str) -> None:
        kind, _, names = SPECS[name]
        if kind != "gauge" or len(labels) != len(names):
            raise ValueError(f"{name} takes labels {names}, got {labels}")
        self.samples.setdefault(name, []).append((labels, float(value)))

    def histogram(self, name: str, values: list[float], bounds: tuple[float, ...]) -> None:
        buckets = [(repr(b), float(sum(1 for v in values if v <= b))) for b in bounds]
        self.histograms[name] = ([*buckets, ("+Inf", float(len(values)))], float(sum(values)))

    def merge(self, other: Sink) -> None:
        for name, rows in other.samples.items():
            self.samples.setdefault(name, []).extend(rows)
        self.histograms.update(other.histograms)

    def families(self) -> list[Metric]:
        out: list[Metric] = []
        for name, (kind, text, labels) in SPECS.items():
            if kind == "histogram" and name in self.histograms:
                buckets, total = self.histograms[name]
                out.append(HistogramMetricFamily(name, text, buckets=buckets, sum_value=total))
            elif name in self.samples:
                fam = GaugeMetricFamily(name, text, labels=list(labels))
                for values, v in self.samples[name]:
                    fam.add_metric(list(values), v)
                out.append(fam)
        return out


class HealthCollector(Collector):
    """Serves the families of the last run (a scrape never triggers a collection)."""

    def __init__(self) -> None:
        self._families: list[Metric] = []

    def update(self, sink: Sink) -> None:
        self._families = sink.families()

    def collect(self) -> Iterator[Metric]:
        yield from self._families

    def describe(self) -> Iterator[Metric]:
        """Every family this collector can export (empty ones), for registries and the dashboard test."""
        for name, (kind, text, labels) in SPECS.items():
            if kind == "histogram":
                yield HistogramMetricFamily(name, text, buckets=[("+Inf", 0.0)], sum_value=0.0)
            else:
                yield GaugeMetricFamily(name, text, labels=list(labels))


# ---------------------------------------------------------------- the sources


@dataclass(frozen=True)
class DomainFigure:
    status: str
    key_age_days: float | None = None  # the signing key (provisioned domains)
    rotating: tuple[str, ...] = ()  # statuses of keys in a rotation step
    in_progress: bool = False
    overdue: tuple[str, float] | None = None  # (waiting key's status, seconds past due)


def domain_figure(st: state.DomainState, ports: Ports, now: dt.datetime) -> DomainFigure:
    """What one domain's state says (no system is asked)."""
    s = ports.settings.dkim
    cur = rotation.active(st) if st.status == "provisioned" else None
    age = None if cur is None else (now - rotation.parse_time(cur.created_at)).total_seconds() / 86400
    late = rotation.overdue(st, s, now)
    return DomainFigure(
        status=st.status,
        key_age_days=age,
        rotating=tuple(k.status for k in st.keys if k.status not in NOT_ROTATING) if cur else (),
        in_progress=cur is not None and rotation.pending(st) is not None,
        overdue=None if late is None else (late[0], late[1].total_seconds()),
    )


def domains(sink: Sink, ports: Ports, now: dt.datetime, *, stuck_after: dt.timedelta, threads: int = 8) -> None:
    """Statuses, key ages and rotations from every ``domains/<d>.json`` (one GET each, in ``threads``); an
    unreadable state object is counted, not fatal.

    Raises:
        StoreUnavailable: the state bucket cannot be listed.
    """
    names = [k for k in ports.state.list(DOMAIN_PREFIX) if k.endswith(".json") and "/" not in k[len(DOMAIN_PREFIX) :]]

    def one(key: str) -> DomainFigure | None:
        domain = key[len(DOMAIN_PREFIX) : -len(".json")]
        try:
            return domain_figure(state.load(ports.state, domain), ports, now)
        except (AutomationError, ValueError, KeyError, TypeError) as exc:
            log.warning("health: state of %s unreadable: %s", domain, type(exc).__name__)
            return None

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        figures = list(pool.map(one, names))
    found = [f for f in figures if f is not None]
    for status, n in sorted(Counter(f.status for f in found).items()):
        sink.set("mailplane_domains", n, status)
    sink.set("mailplane_domains_unreadable", len(figures) - len(found))
    ages = [f.key_age_days for f in found if f.key_age_days is not None]
    sink.histogram("mailplane_dkim_key_age_days", ages, KEY_AGE_BUCKETS_DAYS)
    sink.set("mailplane_dkim_rotations_in_progress", sum(1 for f in found if f.in_progress))
    for st, n in sorted(Counter(s for f in found for s in f.rotating).items()):
        sink.set("mailplane_dkim_rotation_keys", n, st)
    late = [f.overdue for f in found if f.overdue is not None]
    stuck = Counter(st for st, secs in late if secs > stuck_after.total_seconds())
    for st in sorted({*stuck, *rotation.PENDING, "RETIRING", "REVOKED", "WITHDRAWN"}):
        sink.set("mailplane_dkim_rotations_stuck", stuck.get(st, 0), st)
    sink.set("mailplane_dkim_rotation_overdue_seconds_max", max((secs for _, secs in late), default=0.0))


def mx_nodes(sink: Sink, ports: Ports) -> None:
    """Nodes in rotation as the quorum guard counts them: one AXFR of the provider zone plus the node states.

    Raises:
        AutomationError: the provider zone or a node state cannot be read (DNS or store errors).
    """
    provider = ports.settings.provider
    serving = set(nodes.serving(ports.dns.read_zone(provider.zone), nodes.load_all(ports), provider.mx_hosts))
    sink.set("mailplane_mx_nodes_configured", len(provider.mx_hosts))
    sink.set("mailplane_mx_nodes_in_rotation", len(serving))
    sink.set("mailplane_mx_nodes_min_in_rotation", provider.min_mx_in_rotation)
    for host in provider.mx_hosts:
        sink.set("mailplane_mx_node_in_rotation", 1 if host.name in serving else 0, host.name)


def dane_nodes(sink: Sink, ports: Ports) -> None:
    """Per node: DANE acceptance (TLSA on every authoritative server vs the STARTTLS certificate), expiry, phase."""
    now = ports.clock()
    for v in dane.view(ports):
        sink.set("mailplane_dane_tlsa_match", 1 if v.dane_ok else 0, v.node)
        if v.not_after is not None:
            sink.set("mailplane_dane_days_to_expiry", (v.not_after - now).total_seconds() / 86400, v.node)
        sink.set("mailplane_dane_phase", 1, v.node, v.phase)


def drift_report(sink: Sink, ports: Ports) -> None:
    """The figures of the last `mailplane drift --all --report` (one GET; absent until the first report): findings
    by system, domains by status, and the hosted signed zones by chain-of-trust status (every status, 0 included).

    Raises:
        StoreUnavailable: the state bucket cannot be read.
        ValueError, KeyError: the stored report is not one `drift --report` wrote.
    """
    obj = ports.state.get(drift.REPORT_KEY)
    if obj is None:
        return
    report = json.loads(obj.body)
    for system, n in sorted(report["findings"].items()):
        sink.set("mailplane_drift_findings", n, system)
    for status, n in sorted(report["summary"].items()):
        sink.set("mailplane_drift_domains", n, status)
    sink.set("mailplane_drift_report_timestamp_seconds", dt.datetime.fromisoformat(report["time"]).timestamp())
    if "dnssec" in report:  # reports from before the chain-of-trust counts have none: no series, not zeros
        chains = report["dnssec"]
        for status in sorted({*dnssec.STATUSES, *chains}):
            sink.set("mailplane_dnssec_zones", chains.get(status, 0), status)


def store_objects(sink: Sink, ports: Ports) -> None:
    """Ledger records and held leases (a LIST of each prefix; the ledger keeps a record for ``keep`` days).

    Raises:
        StoreUnavailable: the state bucket cannot be listed.
    """
    sink.set("mailplane_store_objects", sum(1 for _ in ports.state.list(LEDGER_PREFIX)), "ledger")
    sink.set("mailplane_store_objects", sum(1 for _ in ports.state.list(LOCK_PREFIX)), "lease")


Source = Callable[[Sink], None]


def run(sources: dict[str, Source], collector: HealthCollector, clock: Callable[[], float] = time.time) -> Sink:
    """Read every source (a failing one is logged and marked down), then publish the run to ``collector``."""
    start, sink = time.monotonic(), Sink()
    for name, source in sources.items():
        part = Sink()  # a source that fails half-way leaves no partial series
        try:
            source(part)
            sink.merge(part)
            sink.set("mailplane_health_source_up", 1, name)
        except Exception as exc:  # noqa: BLE001 - one broken source must not hide the others' figures
            log.warning("health: source %s failed: %s", name, getattr(exc, "reason", type(exc).__name__))
            sink.set("mailplane_health_source_up", 0, name)
    sink.set("mailplane_health_run_duration_seconds", time.monotonic() - start)
    sink.set("mailplane_health_last_run_timestamp_seconds", clock())
    collector.update(sink)
    return sink
