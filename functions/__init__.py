"""mailplane functions: one module per routing key; ROUTES is the one routing table.

Importing this package does nothing but define the table: clients and settings are built in runtime/main.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from functions import domain_created, domain_deleted, key_rotate, node_down, node_up

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
    "domain.deleted": Route(domain_deleted.NAME, domain_deleted.handle),
    "key.rotate": Route(key_rotate.NAME, key_rotate.handle),
    "node.down": Route(node_down.NAME, node_down.handle),
    "node.up": Route(node_up.NAME, node_up.handle),
}
