"""TLS reports in the state store, per domain per day, and the summary of a period (RFC 8460; no I/O but the port).

One object per domain and UTC day, ``tlsrpt/<domain>/<YYYY-MM-DD>.json``, holds one small entry per accepted report
(organisation, report-id, the report's fingerprint, sessions successful and failed, failures by result type and by
receiving MX host), never the raw report, and at most ``MAX_REPORTS_PER_DAY`` entries. A report is written to the
day object of each of its policy domains by compare-and-set (re-read and re-applied when another writer came first),
so concurrent ingests lose nothing. The same report again is a duplicate and writes nothing; a report with the same
organisation and report-id but other content is refused. Every day object is read and checked before the first
write, so a refused report changes nothing. Day objects are a retention class (``retention.tlsrpt_days``,
functions/_core/model/retention.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from functions._core.model.tlsrpt import Report, ReportRefused, show
from functions._core.platform.errors import PreconditionFailed, StoreUnavailable
from functions._core.platform.store import ObjectStore, put_over

PREFIX = "tlsrpt/"
MAX_REPORTS_PER_DAY = 500
MAX_HOSTS = 16  # receiving MX hosts kept per entry (the ones with the most failures)
CAS_ATTEMPTS = 5


def day_key(domain: str, day: dt.date) -> str:
    return f"{PREFIX}{domain}/{day.isoformat()}.json"


def entry_key(report: Report) -> str:
    """A report's identity: its organisation and report-id (RFC 8460 §4.4: unique per reporter)."""
    return hashlib.sha256(f"{report.organisation}\0{report.report_id}".encode()).hexdigest()[:32]


def entry(report: Report, domain: str, received: dt.datetime) -> dict[str, Any]:
    """What is kept of ``report`` for ``domain``: the sum over its policies for that domain."""
    mine = [p for p in report.policies if p.domain == domain]
    return {
        "org": report.organisation,
        "id": report.report_id,
        "fp": report.fingerprint,
        "start": report.start.isoformat(),
        "end": report.end.isoformat(),
        "types": sorted({p.policy_type for p in mine}),
        "ok": sum(p.successful for p in mine),
        "failed": sum(p.failed for p in mine),
        "failures": _sum(p.failures for p in mine),
        "mx": dict(sorted(_sum(p.mx for p in mine).items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_HOSTS]),
        "received": received.isoformat(timespec="seconds"),
    }


def _sum(groups: Iterable[tuple[tuple[str, int], ...]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for group in groups:
        for k, n in group:
            out[k] = out.get(k, 0) + n
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class Day:
    domain: str
    day: dt.date
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    etag: str | None = None

    def body(self) -> bytes:
        data = {"domain": self.domain, "day": self.day.isoformat(), "reports": self.reports}
        return json.dumps(data, sort_keys=True, indent=1).encode()


def load_day(store: ObjectStore, domain: str, day: dt.date) -> Day:
    """The day object (empty when absent).

    Raises:
        StoreUnavailable: the object is not a day object (left alone; the reason names it).
    """
    obj = store.get(day_key(domain, day))
    if obj is None:
        return Day(domain, day)
    try:
        reports = json.loads(obj.body)["reports"]
        if not isinstance(reports, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise StoreUnavailable(f"{day_key(domain, day)} is not a TLS report day object") from None
    return Day(domain, day, reports, obj.etag)


def _verdict(day: Day, key: str, new: dict[str, Any]) -> str:
    """'duplicate', 'add', or raises when the day object may not take it."""
    have = day.reports.get(key)
    if have is not None:
        if have.get("fp") != new["fp"]:
            raise ReportRefused(
                f"report-id {show(new['id'])} of {show(new['org'])} was already ingested with other content"
            )
        return "duplicate"
    if len(day.reports) >= MAX_REPORTS_PER_DAY:
        raise ReportRefused(f"{day.domain} already has {MAX_REPORTS_PER_DAY} reports for {day.day}")
    return "add"


def record(store: ObjectStore, report: Report, now: dt.datetime) -> dict[str, str]:
    """File ``report`` under each of its policy domains; returns domain -> 'added' | 'duplicate'.

    Raises:
        ReportRefused: the same report-id with other content, or a full day (nothing written).
        StoreUnavailable: the store failed, or a day object kept changing under us (retry the ingest).
    """
    key = entry_key(report)
    days = {d: load_day(store, d, report.day) for d in report.domains}
    verdicts = {d: _verdict(day, key, entry(report, d, now)) for d, day in days.items()}  # all checked, then written
    out: dict[str, str] = {}
    for domain, verdict in verdicts.items():
        out[domain] = "duplicate" if verdict == "duplicate" else _write(store, days[domain], key, report, now)
    return out


def _write(store: ObjectStore, day: Day, key: str, report: Report, now: dt.datetime) -> str:
    for _ in range(CAS_ATTEMPTS):
        new = entry(report, day.domain, now)
        if _verdict(day, key, new) == "duplicate":
            return "duplicate"
        try:
            put_over(
                store,
                day_key(day.domain, day.day),
                Day(day.domain, day.day, {**day.reports, key: new}).body(),
                day.etag,
            )
            return "added"
        except PreconditionFailed:
            day = load_day(store, day.domain, day.day)  # another ingest wrote first: apply ours to its version
    raise StoreUnavailable(f"{day_key(day.domain, day.day)} kept changing under us; ingest again")


# ---------------------------------------------------------------- the summary of a period


@dataclass(frozen=True)
class Summary:
    """A domain's TLS reports for the UTC days ``first``..``last`` (inclusive)."""

    domain: str
    first: dt.date
    last: dt.date
    reports: int = 0
    successful: int = 0
    failed: int = 0
    days: tuple[dt.date, ...] = ()  # days with at least one report
    failures: dict[str, int] = field(default_factory=dict)  # result-type -> failed sessions
    mx: dict[str, int] = field(default_factory=dict)  # receiving MX host -> failed sessions
    organisations: dict[str, int] = field(default_factory=dict)  # reporting organisation -> reports

    @property
    def period(self) -> int:
        return (self.last - self.first).days + 1

    @property
    def missing(self) -> tuple[dt.date, ...]:
        """Days of the period without any report."""
        return tuple(d for d in _days(self.first, self.last) if d not in self.days)

    def as_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "from": self.first.isoformat(),
            "to": self.last.isoformat(),
            "days": self.period,
            "days_with_reports": len(self.days),
            "reports": self.reports,
            "successful_sessions": self.successful,
            "failed_sessions": self.failed,
            "failure_types": self.failures,
            "failing_mx_hosts": self.mx,
            "organisations": self.organisations,
        }


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def period(today: dt.date, days: int, *, include_today: bool = True) -> tuple[dt.date, dt.date]:
    """The ``days`` UTC days ending today (or, ``include_today=False``, yesterday: only complete days)."""
    last = today if include_today else today - dt.timedelta(days=1)
    return last - dt.timedelta(days=days - 1), last


def summarise(store: ObjectStore, domain: str, first: dt.date, last: dt.date) -> Summary:
    """Sum the day objects of ``domain`` from ``first`` to ``last`` (one GET per day).

    Raises:
        StoreUnavailable: the store failed or holds an unreadable day object.
    """
    entries: list[dict[str, Any]] = []
    days: list[dt.date] = []
    for day in _days(first, last):
        got = load_day(store, domain, day).reports.values()
        if got:
            days.append(day)
            entries.extend(got)
    orgs: dict[str, int] = {}
    for e in entries:
        orgs[str(e.get("org"))] = orgs.get(str(e.get("org")), 0) + 1
    return Summary(
        domain,
        first,
        last,
        len(entries),
        sum(int(e.get("ok", 0)) for e in entries),
        sum(int(e.get("failed", 0)) for e in entries),
        tuple(days),
        _sum(tuple((str(k), int(v)) for k, v in e.get("failures", {}).items()) for e in entries),
        _sum(tuple((str(k), int(v)) for k, v in e.get("mx", {}).items()) for e in entries),
        dict(sorted(orgs.items())),
    )


def reported_domains(store: ObjectStore) -> list[str]:
    """Every domain with at least one day object (one listing of ``tlsrpt/``)."""
    return sorted({k[len(PREFIX) :].split("/", 1)[0] for k in store.list(PREFIX) if "/" in k[len(PREFIX) :]})
