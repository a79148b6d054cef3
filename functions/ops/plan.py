"""`mailplane plan EVENT_FILE`: the changes an event would make on each system, nothing applied.

Generic over ROUTES: the handler module of the event's route provides ``dry_run(event, ports)`` returning change
lines per system (``+`` create, ``~`` update, ``-`` delete, ``=`` kept as it is); the plan is rendered like
octoDNS or Terraform. A handler without a dry run cannot be planned.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from rich.console import Console
from rich.text import Text

from functions import ROUTES
from functions._core.model.ports import Ports
from functions._core.platform.envelope import Envelope, parse
from functions._core.platform.errors import EventInvalid

DryRun = Callable[[Envelope, Ports], Mapping[str, list[str]]]
STYLES = {"+": "green", "~": "yellow", "-": "red", "=": "dim"}


@dataclass(frozen=True)
class EventPlan:
    event: Envelope
    changes: Mapping[str, list[str]]  # system -> change lines

    def count(self, sign: str) -> int:
        return sum(1 for lines in self.changes.values() for ln in lines if ln.startswith(sign + " "))

    @property
    def is_empty(self) -> bool:
        return not any(self.count(s) for s in "+~-")

    def as_json(self) -> dict[str, Any]:
        ev = self.event
        return {
            "event": {"id": ev.id, "type": ev.type, "subject": ev.subject},
            "changes": {k: list(v) for k, v in self.changes.items()},
            "summary": {"create": self.count("+"), "update": self.count("~"), "delete": self.count("-")},
        }


def dry_run_for(event_type: str) -> DryRun:
    """The dry run of the handler routed for ``event_type``.

    Raises:
        EventInvalid: no route for the type, or its handler has no dry run.
    """
    route = ROUTES.get(event_type)
    if route is None:
        raise EventInvalid(f"no handler for inbound type {event_type}")
    found = getattr(sys.modules[route.handle.__module__], "dry_run", None)
    if not callable(found):
        raise EventInvalid(f"{route.name} has no dry run: its changes cannot be planned")
    return cast(DryRun, found)


def plan_event(body: bytes, ports: Ports) -> EventPlan:
    """Parse the event and plan it: every system is read, nothing is written.

    Raises:
        EventInvalid: the event is invalid or cannot be planned.
        PermanentError: the handler would refuse the event (the reason is what would be parked).
        TransientError: a system could not be read.
    """
    event = parse(body)
    return EventPlan(event, dry_run_for(event.type)(event, ports))


def render(plan: EventPlan, console: Console) -> None:
    """Per system, one coloured line per change, then a Terraform-like summary."""
    ev = plan.event
    console.print(Text.assemble((f"{ev.type} ", "bold"), (ev.subject, "bold cyan"), f"  (event {ev.id})"))
    for system, lines in plan.changes.items():
        console.print(Text(system, style="bold"))
        if not lines:
            console.print(Text("    (no changes)", style="dim"))
        for line in lines:
            console.print(Text("    " + line, style=STYLES.get(line[:1], "")))
    if plan.is_empty:
        console.print("No changes: the systems already match this event.")
        return
    console.print(
        f"Plan: {plan.count('+')} to create, {plan.count('~')} to update, {plan.count('-')} to delete.",
        style="bold",
    )
