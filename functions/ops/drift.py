"""`mailplane drift`: desired vs actual for every managed domain (each with a state object ``domains/<d>.json``),
on each system and each authoritative server, reusing the checks of `mailplane status`.

Statuses: provisioned, awaiting_dns (a zone hosted elsewhere waits for the customer), suspended (domain.deleted
deactivated it; the Mailcow domain must be inactive), removal_due (suspended and past ``delete_after``: re-send
domain.deleted, e.g. `mailplane invoke domain.deleted -e EVENT`), deleted (tombstone, not checked), drift, unknown
(a state without a completed request), error (a system could not be read). Exit code: 2 when a domain could not be
checked, else 1 when any domain drifted or is unknown, else 0.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from rich.console import Console
from rich.table import Table

from functions._core.model import state
from functions._core.model.ports import GatewayPort, GatewayTransport, Ports, RelayDomain, TrustedNetwork
from functions._core.platform.errors import AutomationError
from functions._core.platform.store import ObjectStore
from functions.ops.status import Check, chain_status, domain_status

DRIFTED = frozenset({"drift", "unknown"})
PROGRESS_MIN = 10  # progress lines from this many domains on
PROGRESS_EVERY = 500
PREFIX = "domains/"
REPORT_KEY = "reports/drift.json"  # the last `drift --all --report`, read by `mailplane health`


@dataclass(frozen=True)
class DomainDrift:
    domain: str
    status: str
    checks: tuple[Check, ...] = ()
    note: str = ""

    @property
    def failing(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def as_json(self, *, all_checks: bool) -> dict[str, Any]:
        shown = self.checks if all_checks else self.failing
        out: dict[str, Any] = {"domain": self.domain, "status": self.status, "checked": len(self.checks)}
        out["checks" if all_checks else "drift"] = [asdict(c) for c in shown]
        return out | ({"note": self.note} if self.note else {})


class CachedGateway:
    """The gateway port with its three list calls read once per run (they do not depend on the domain); the
    per-item reads of `status` are answered from those listings (one listing per run, not one read per domain)."""

    def __init__(self, target: GatewayPort) -> None:
        self._target = target
        self._domains: list[RelayDomain] | None = None
        self._transports: list[GatewayTransport] | None = None
        self._networks: list[TrustedNetwork] | None = None
        self._domain_index: dict[str, RelayDomain] | None = None
        self._transport_index: dict[str, GatewayTransport] | None = None

    def list_relay_domains(self) -> list[RelayDomain]:
        self._domains = self._target.list_relay_domains() if self._domains is None else self._domains
        return self._domains

    def list_transports(self) -> list[GatewayTransport]:
        self._transports = self._target.list_transports() if self._transports is None else self._transports
        return self._transports

    def list_networks(self) -> list[TrustedNetwork]:
        self._networks = self._target.list_networks() if self._networks is None else self._networks
        return self._networks

    def get_relay_domain(self, domain: str) -> RelayDomain | None:
        if self._domain_index is None:
            self._domain_index = {d.domain: d for d in self.list_relay_domains()}
        return self._domain_index.get(domain)

    def get_transport(self, domain: str) -> GatewayTransport | None:
        if self._transport_index is None:
            self._transport_index = {t.domain: t for t in self.list_transports()}
        return self._transport_index.get(domain)

    def get_network(self, cidr: str) -> TrustedNetwork | None:
        return next((n for n in self.list_networks() if n.cidr == cidr), None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def managed_domains(ports: Ports) -> list[str]:
    """Every domain with a state object, sorted."""
    keys = (k for k in ports.state.list(PREFIX) if k.endswith(".json") and "/" not in k[len(PREFIX) :])
    return sorted(k[len(PREFIX) : -len(".json")] for k in keys)


def _suspended(domain: str, st: state.DomainState, checks: list[Check], ports: Ports) -> DomainDrift:
    have = ports.mail.get_domain(domain)
    got = "absent" if have is None else "active" if have.active else "inactive"
    mail = Check("mailcow", "api", "domain", "inactive (suspended)", got, got == "inactive")
    checks = [mail if (c.system, c.item) == ("mailcow", "domain") else c for c in checks]
    note = f"suspended at {st.suspended_at}; removal due at {st.delete_after}"
    if any(not c.ok for c in checks):
        return DomainDrift(domain, "drift", tuple(checks), note)
    due = st.delete_after is not None and ports.clock() >= dt.datetime.fromisoformat(st.delete_after)
    return DomainDrift(domain, "removal_due" if due else "suspended", tuple(checks), note)


def domain_drift(domain: str, ports: Ports) -> DomainDrift:
    """Check one domain; a system that cannot be read gives status ``error`` (the reason in ``note``)."""
    try:
        st = state.load(ports.state, domain)
        if st.status == "deleted":
            return DomainDrift(domain, "deleted", (), f"removed; suspended at {st.suspended_at}")
        overall, checks = domain_status(domain, ports)
        if st.status == "suspended" and overall != "unknown":
            return _suspended(domain, st, checks, ports)
        return DomainDrift(domain, overall, tuple(checks))
    except AutomationError as exc:
        return DomainDrift(domain, "error", (), exc.reason)


def drift_all(
    domains: Iterable[str], ports: Ports, on_done: Callable[[DomainDrift], None] | None = None
) -> list[DomainDrift]:
    """Check each domain in turn (PMG lists are read once for the whole run)."""
    cached = replace(ports, gateway=CachedGateway(ports.gateway))
    out = []
    for domain in domains:
        out.append(domain_drift(domain, cached))
        if on_done is not None:
            on_done(out[-1])
    return out


@dataclass
class Progress:
    """Progress lines (``write``: e.g. stderr): every ``every`` domains and at the end, with the rate."""

    total: int
    write: Callable[[str], None]
    every: int = PROGRESS_EVERY
    start: float = field(default_factory=time.monotonic)
    done: int = 0
    drifted: int = 0
    errors: int = 0

    def __call__(self, result: DomainDrift) -> None:
        self.done += 1
        self.drifted += result.status in DRIFTED
        self.errors += result.status == "error"
        if self.done % self.every == 0 or self.done == self.total:
            took = max(time.monotonic() - self.start, 1e-9)
            rate = self.done / took
            left = (self.total - self.done) / rate if rate else 0.0
            tail = f"done in {took:.1f} s" if self.done == self.total else f"about {left:.0f} s left"
            self.write(
                f"drift: {self.done}/{self.total} domains, {rate:.1f}/s, {self.drifted} drifted, "
                f"{self.errors} unreadable; {tail}"
            )


Runner = Callable[[list[str], Ports, Callable[[DomainDrift], None] | None], list[DomainDrift]]


def run(
    domains: list[str],
    ports: Ports,
    err: Console,
    *,
    progress_min: int = PROGRESS_MIN,
    every: int | None = None,
    runner: Runner | None = None,
) -> list[DomainDrift]:
    """Check ``domains`` with ``runner`` (default ``drift_all``, one by one; `drift --all` passes
    functions/ops/drift_bulk.py's); from ``progress_min`` domains on, progress lines on ``err`` every ``every``
    domains (default: about every 5 %, at least 10, at most ``PROGRESS_EVERY``) and at the end, with the rate."""
    step = every if every is not None else max(10, min(PROGRESS_EVERY, len(domains) // 20))
    progress = Progress(len(domains), lambda line: err.print(line, highlight=False), step)
    on_done = progress if len(domains) >= progress_min else None
    return (drift_all if runner is None else runner)(domains, ports, on_done)


def exit_code(results: list[DomainDrift]) -> int:
    if any(r.status == "error" for r in results):
        return 2
    return 1 if any(r.status in DRIFTED for r in results) else 0


def as_json(results: list[DomainDrift], *, all_checks: bool) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return {
        "drift": any(r.status in DRIFTED for r in results),
        "summary": dict(sorted(counts.items())),
        "domains": [r.as_json(all_checks=all_checks) for r in results],
    }


def findings(results: list[DomainDrift]) -> dict[str, int]:
    """Failing checks by system (mailcow, pmg, dns, ...) over every domain."""
    counts: dict[str, int] = {}
    for r in results:
        for c in r.failing:
            counts[c.system] = counts.get(c.system, 0) + 1
    return dict(sorted(counts.items()))


def chains(results: list[DomainDrift]) -> dict[str, int]:
    """Hosted, signed zones by the chain-of-trust status their checks observed (a zone that could not be checked
    is an ``error`` domain, not counted here)."""
    found = (chain_status(r.checks) for r in results)
    return dict(sorted(Counter(s for s in found if s is not None).items()))


def save_report(store: ObjectStore, results: list[DomainDrift], now: dt.datetime) -> None:
    """Write the summary of a full run to ``REPORT_KEY`` (overwrites the previous one; no domain detail): domains by
    status, failing checks by system, and zones by DNSSEC chain-of-trust status."""
    summary = as_json(results, all_checks=False)["summary"]
    body = {
        "time": now.isoformat(timespec="seconds"),
        "summary": summary,
        "findings": findings(results),
        "dnssec": chains(results),
    }
    store.put(REPORT_KEY, json.dumps(body, sort_keys=True).encode())


COLOURS = {"provisioned": "green", "awaiting_dns": "yellow", "suspended": "blue", "removal_due": "magenta"}


def _cut(text: str) -> str:
    return text if len(text) < 60 else text[:57] + "..."


def checks_table(title: str, checks: Iterable[Check]) -> Table:
    table = Table(title=title)
    for col in ("system", "where", "item", "want", "have", ""):
        table.add_column(col, overflow="fold")
    for c in checks:
        mark = "[green]✓[/green]" if c.ok else "[red]✗[/red]"
        table.add_row(c.system, c.where, c.item, _cut(c.want), _cut(c.have), mark)
    return table


def render(results: list[DomainDrift], out: Console, *, all_checks: bool) -> None:
    """A table of the checks behind each drifted domain (every check with ``all_checks``), then a summary."""
    for r in results:
        shown = r.checks if all_checks else tuple(r.failing)
        if shown:
            colour = COLOURS.get(r.status, "red")
            out.print(checks_table(f"{r.domain}: [{colour}]{r.status}[/{colour}]", shown))
    summary = Table(title="drift")
    for col in ("domain", "status", "failing", "note"):
        summary.add_column(col, overflow="fold")
    for r in results:
        colour = COLOURS.get(r.status, "red" if r.status in DRIFTED | {"error"} else "dim")
        summary.add_row(r.domain, f"[{colour}]{r.status}[/{colour}]", str(len(r.failing)), r.note)
    out.print(summary)
    drifted = sum(1 for r in results if r.status in DRIFTED)
    out.print(f"{len(results)} domain(s) checked, {drifted} with drift.", style="bold red" if drifted else "bold")
