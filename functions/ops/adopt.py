"""`mailplane adopt`: the adoption plan of hand-made domains, and the events that apply it.

The plan is read live from every system (functions/_core/model/adoption.py ``plan``) and printed per system and per
record with its class (same, equivalent, missing, different, foreign), what adoption would do and the risk for mail.
Applying goes through the event path like everything else: a ``domain.adopt`` event for the worker, published as
the ``operator``; ``--rotate`` then publishes the first ``key.rotate`` as the scheduler does.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from rich.console import Console
from rich.table import Table

from functions._core.model import adoption, state
from functions._core.model.ports import Ports
from functions._core.platform.envelope import build

SOURCE = "urn:mailplane:operator"
COLOURS = {"same": "green", "equivalent": "cyan", "missing": "yellow", "different": "magenta", "foreign": "red"}


def plans(domains: Iterable[str], ports: Ports, fix: tuple[str, ...] = ()) -> list[adoption.Plan]:
    """The adoption plan of each domain (nothing is written).

    Raises:
        EventInvalid: a ``fix`` name matches no different record of a domain.
    """
    return [adoption.plan(d, ports, fix) for d in domains]


def adopt_event(domain: str, *, customer_id: str | None, fix: tuple[str, ...]) -> dict[str, Any]:
    """A domain.adopt CloudEvent (validated) as the operator publishes it."""
    data: dict[str, Any] = {"domain": domain}
    if customer_id is not None:
        data["customer_id"] = customer_id
    if fix:
        data["fix"] = list(fix)
    return build("domain.adopt", domain, data, source=SOURCE, id=f"adopt-{domain}-{uuid.uuid4().hex[:12]}")


def rotate_event(domain: str, selector: str, now: dt.datetime) -> dict[str, Any]:
    """The first key.rotate of an adopted domain (reason scheduled, naming the adopted key)."""
    data = {"domain": domain, "reason": "scheduled", "key_id": f"{domain}:{selector}"}
    event_id = f"rotate-{domain}-{selector}-{now:%Y%m%dT%H%M%S}"[:128]
    return build("key.rotate", domain, data, source="urn:mailplane:scheduler", id=event_id)


def adopted_selector(ports: Ports, domain: str) -> str | None:
    """The selector of the adopted key Mailcow still signs with (None: not adopted, or rotated already)."""
    cur = state.load(ports.state, domain).current
    return cur.selector if cur is not None and cur.adopted and cur.status == "ACTIVE" else None


def wait_adopted(
    ports: Ports, domain: str, timeout: float, *, sleep: Callable[[float], None] = time.sleep
) -> str | None:
    """Poll the state store until the worker recorded the adoption; the adopted selector, or None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        found = adopted_selector(ports, domain)
        if found is not None or time.monotonic() >= deadline:
            return found
        sleep(1.0)


def render(p: adoption.Plan, out: Console) -> None:
    """One table per domain: every object and record with its class, the action and the risk; then why it would
    be refused, or the changes it would make."""
    if p.managed:
        out.print(f"[bold]{p.domain}[/bold]: managed by mailplane already (state present): nothing to adopt")
        return
    where = "zone on our primary" if p.hosted else "zone hosted elsewhere (checked in the public DNS)"
    table = Table(title=f"{p.domain}: adoption plan ({where})")
    for col in ("system", "item", "class", "have", "want", "action", "risk"):
        table.add_column(col, overflow="fold")
    for i in p.items:
        colour = COLOURS.get(i.cls, "")
        table.add_row(i.system, i.item, f"[{colour}]{i.cls}[/{colour}]", _cut(i.have), _cut(i.want), i.action, i.risk)
    out.print(table)
    if p.weak_key:
        out.print(f"[yellow]the DKIM key {p.selector} has {p.key_bits} bits: `mailplane adopt --rotate` replaces it[/]")
    if p.refusals:
        for reason in p.refusals:
            out.print(f"[red]refused:[/red] {reason}")
        return
    for system, lines in p.writes.summary().items():
        out.print(f"  {system}: " + (", ".join(lines) if lines else "(no changes)"))
    for line in p.instructions:
        out.print(f"  customer: {line}")


def _cut(text: str) -> str:
    return text if len(text) < 70 else text[:67] + "..."


def as_json(found: list[adoption.Plan]) -> dict[str, Any]:
    return {"domains": [p.as_json() for p in found], "refused": sum(1 for p in found if p.refusals)}
