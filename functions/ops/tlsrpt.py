"""`mailplane tls-rpt ingest PATH...` and `tls-rpt summary`: TLS reports (RFC 8460) read from mailboxes and files.

A PATH is a Maildir (its ``cur/`` and ``new/``; ``tmp/`` is a delivery in progress and skipped), a directory of files
(its regular files, not recursive, dotfiles skipped) or a single file; each file is one mail message, gzip or JSON
report (functions/_core/model/tlsrpt.py). A file is read up to its bound only; symbolic links are not followed.
The mailbox is only read, never changed: ingesting the same file again is a duplicate that writes nothing
(functions/_core/model/tlsrpt_store.py). A report is accepted only when every one of its policy domains is one of
ours (a domain state with a request, as `mailplane status` reads it, and not deleted).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from functions._core.model import state, tlsrpt, tlsrpt_store
from functions._core.model.tlsrpt import Report, ReportRefused, show
from functions._core.model.tlsrpt_store import Summary
from functions._core.platform.config import Settings
from functions._core.platform.errors import AutomationError
from functions._core.platform.store import ObjectStore

log = logging.getLogger("mailplane.tlsrpt")
MAILDIR = ("cur", "new")


@dataclass(frozen=True)
class FileResult:
    path: str
    verdict: str  # accepted | duplicate | refused
    detail: str  # what was filed, or why it was refused (untrusted parts escaped)

    def line(self) -> str:
        return f"{self.verdict:<9} {show(self.path, 200)}: {self.detail}"


def files(paths: Sequence[str]) -> Iterator[str]:
    """Every file to read under ``paths`` (a path that is no directory is read as a file, or refused then)."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir() and not p.is_symlink():
            subdirs = [p / d for d in MAILDIR if (p / d).is_dir()]
            for d in subdirs or [p]:
                for f in sorted(d.iterdir()):
                    if not f.name.startswith("."):
                        yield str(f)
        else:
            yield raw


def read_bounded(path: str, cap: int) -> bytes:
    """The file's bytes, refused when larger than ``cap`` (only ``cap + 1`` bytes are ever read).

    Raises:
        ReportRefused: not a regular file, unreadable, or too large.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ReportRefused(f"cannot open: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ReportRefused("not a regular file")
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise ReportRefused(f"file larger than {cap} bytes")
    return data


class Ours:
    """Whether a domain is one of ours: its state (read once per run)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self._seen: dict[str, bool] = {}

    def __call__(self, domain: str) -> bool:
        if domain not in self._seen:
            st = state.load(self._store, domain)
            self._seen[domain] = bool(st.request) and st.status != "deleted"
        return self._seen[domain]


def _describe(report: Report) -> str:
    counts = ", ".join(
        f"{d}: {sum(p.successful for p in report.policies if p.domain == d)} successful, "
        f"{sum(p.failed for p in report.policies if p.domain == d)} failed"
        for d in report.domains
    )
    return f"{show(report.organisation)} report {show(report.report_id)} of {report.day}: {counts}"


def ingest_one(raw: bytes, store: ObjectStore, settings: Settings, now: dt.datetime, ours: Ours) -> tuple[str, str]:
    """(verdict, detail) for one file's bytes; a refused report has written nothing.

    Raises:
        ReportRefused: see functions/_core/model/tlsrpt.py and tlsrpt_store.py.
        StoreUnavailable: the store failed (transient: ingest again).
    """
    report = tlsrpt.read(raw, settings.mta_sts.tlsrpt_max_bytes, now)
    foreign = [d for d in report.domains if not ours(d)]
    if foreign:
        raise ReportRefused(f"policy-domain {show(foreign[0])} is not a domain of ours (no state)")
    done = tlsrpt_store.record(store, report, now)
    verdict = "duplicate" if all(v == "duplicate" for v in done.values()) else "accepted"
    return verdict, _describe(report) + ("; already ingested, nothing changed" if verdict == "duplicate" else "")


def ingest(paths: Sequence[str], store: ObjectStore, settings: Settings, now: dt.datetime) -> list[FileResult]:
    """Every file under ``paths``, one result each; never raises for a bad file (the result says why)."""
    cap = 2 * settings.mta_sts.tlsrpt_max_bytes + 65536
    ours, out = Ours(store), []
    for path in files(paths):
        try:
            verdict, detail = ingest_one(read_bounded(path, cap), store, settings, now, ours)
        except AutomationError as exc:
            verdict, detail = "refused", str(exc) if isinstance(exc, ReportRefused) else exc.reason
        log.info("tls report %s: %s %s", verdict, show(path, 200), detail)
        out.append(FileResult(path, verdict, detail))
    return out


def summary_lines(s: Summary) -> list[str]:
    """The summary as text (untrusted names escaped)."""
    total = s.successful + s.failed
    rate = f" ({100 * s.failed / total:.2f}% failed)" if total else ""
    head = (
        f"{s.domain} {s.first}..{s.last} ({s.period} days, reports on {len(s.days)}): "
        f"{s.reports} report(s), {s.successful} successful, {s.failed} failed sessions{rate}"
    )
    lines = [head]
    if s.failures:
        lines.append("  failure types: " + ", ".join(f"{show(k)} {n}" for k, n in _top(s.failures)))
    if s.mx:
        lines.append("  failing MX hosts: " + ", ".join(f"{show(k)} {n}" for k, n in _top(s.mx)))
    if s.organisations:
        lines.append("  reporting organisations: " + ", ".join(f"{show(k)} ({n})" for k, n in _top(s.organisations)))
    if not s.reports:
        lines.append("  no TLS reports in this period")
    return lines


def _top(counts: dict[str, int], n: int = 10) -> list[tuple[str, int]]:
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return items[:n] + ([(f"... {len(items) - n} more", sum(v for _, v in items[n:]))] if len(items) > n else [])


def summaries(store: ObjectStore, domains: Sequence[str], today: dt.date, days: int) -> list[Summary]:
    """The summary of each domain (all with reports when ``domains`` is empty) for the ``days`` ending today."""
    first, last = tlsrpt_store.period(today, days)
    names = list(domains) or tlsrpt_store.reported_domains(store)
    return [tlsrpt_store.summarise(store, d, first, last) for d in names]
