"""mailplane functions: one handler module per routing key; ROUTES is the one routing table.

The rule for handlers (every one, present and future; tests/test_layout.py checks it):
    ``functions/<routing_key>.py`` (``domain.created`` -> ``domain_created.py``) is a thin adapter over ONE named
    logic module in ``functions/_core/model/``, named by its ``LOGIC`` constant. The handler holds ``NAME`` (the
    literal idempotency namespace), ``handle(event, ports) -> Outcome`` and ``dry_run``; it turns the event into a
    call of its logic module and the result into the outcome and the outbound events. It never reads or writes a
    system itself (no ``ports.mail/gateway/dns/state/web``) and stays under 150 lines. The logic module holds the
    steps, their order, the guards and the writes.

    domain.created -> provisioning    domain.deleted -> deletion    domain.adopt -> adoption
    key.rotate -> rotation
    node.down, node.up -> failover    cert.renew -> dane

Where things go: a new event = a schema in schemas/, a sample in events/, a handler here, its logic module in
``_core/model/`` and a line in ROUTES; a new external system = a port in ``_core/model/ports.py`` (or
``_core/platform/store.py`` for storage) and an adapter in ``adapters/``; a new operator command or scheduled
producer = a module in ``ops/`` registered by ``ops/cli.py``; delivery (how events arrive and are settled) is
``runtime/``.

Importing this package does nothing but define the table: clients and settings are built in runtime/main.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from functions import cert_renew, domain_adopt, domain_created, domain_deleted, key_rotate, node_down, node_up

if TYPE_CHECKING:
    from functions._core.model.ports import Ports
    from functions._core.platform.envelope import Envelope
    from functions._core.platform.outcome import Outcome


@dataclass(frozen=True)
class Route:
    name: str  # literal function name: idempotency namespace and log field
    handle: Callable[[Envelope, Ports], Outcome]


ROUTES: dict[str, Route] = {
    "domain.created": Route(domain_created.NAME, domain_created.handle),
    "domain.deleted": Route(domain_deleted.NAME, domain_deleted.handle),
    "domain.adopt": Route(domain_adopt.NAME, domain_adopt.handle),
    "key.rotate": Route(key_rotate.NAME, key_rotate.handle),
    "node.down": Route(node_down.NAME, node_down.handle),
    "node.up": Route(node_up.NAME, node_up.handle),
    "cert.renew": Route(cert_renew.NAME, cert_renew.handle),
}
