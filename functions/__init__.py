"""mailplane functions: one module per routing key; ROUTES is the one routing table.

Importing this package does nothing but define the table: clients and settings are built in runtime/main.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from functions import domain_created

if TYPE_CHECKING:
    from functions._core.envelope import Envelope
    from functions._core.outcome import Outcome
    from functions._core.ports import Ports


@dataclass(frozen=True)
class Route:
    name: str  # literal function name: idempotency namespace and log field
    handle: Callable[[Envelope, Ports], Outcome]


ROUTES: dict[str, Route] = {
    "domain.created": Route(domain_created.NAME, domain_created.handle),
}
