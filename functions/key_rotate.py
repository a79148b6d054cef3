"""key.rotate (scheduler, operator): advance the domain's DKIM rotation as far as it safely can right now.

A thin adapter over functions/_core/model/rotation.py (the state machine and its steps).

Safe to receive any number of times: the scheduler nudges it (reason ``nudge``), starts rotations that are due
(``scheduled``) and an operator declares a key ``compromised``. Every completed transition is announced by a
key.rotated event whose id depends only on (domain, selector, transition), so a redelivery after a crash announces
again what that event did, and consumers drop duplicates by id. Private keys never appear in events, outcomes or
logs: they live only sealed (AES-GCM) in the object store.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from functions._core.model import rotation
from functions._core.model.mailset import delegated, dkim_name
from functions._core.model.ports import Ports
from functions._core.model.state import DomainState
from functions._core.platform.envelope import Envelope, build
from functions._core.platform.errors import EventInvalid
from functions._core.platform.names import is_within, normalize_domain
from functions._core.platform.outcome import Outcome

NAME = "key_rotate"
LOGIC = "functions._core.model.rotation"
SOURCE = "urn:mailplane:worker"

_EFFECTS = {  # transition target -> (system, change line); {s} = selector, {n} = the DKIM TXT's name
    "GENERATED": ("store", "+ sealed key {s}"),
    "PUBLISHED": ("dns", "+ TXT {n}"),
    "ACTIVE": ("mailcow", "~ dkim {s}"),
    "REVOKED": ("dns", "~ TXT {n} revoked (p=)"),
    "WITHDRAWN": ("dns", "- TXT {n}"),
    "DESTROYED": ("store", "- sealed key {s}"),
}


def request_of(event: Envelope) -> rotation.Request:
    """The request in the event; ``key_id`` is ``<domain>:<selector>`` (or a bare selector).

    Raises:
        EventInvalid: a key_id naming another domain.
    """
    domain, data = event.subject, event.data
    selector = None
    key_id = data.get("key_id")
    if isinstance(key_id, str):
        owner, _, selector = key_id.rpartition(":")
        if owner and normalize_domain(owner) != domain:
            raise EventInvalid(f"key_id {key_id[:80]!r} names another domain than {domain}")
    return rotation.Request(event.id, str(data["reason"]), selector or None, event.publisher or "")


def handle(event: Envelope, ports: Ports) -> Outcome:
    """Advance the rotation of ``event.subject``; see the module docstring.

    Raises:
        EventInvalid: the provider's zone, a key_id of another domain or of a key the domain never had.
        NotPropagated: an authoritative server does not serve the new key yet (retried by the broker).
        OwnershipConflict: a DKIM name holds data mailplane did not publish.
        RotationRefused: a guard refused a step (e.g. Mailcow signs with a key mailplane did not expect).
    """
    prov = ports.settings.provider
    if is_within(event.subject, (prov.zone, *prov.protected_zones)) is not None:
        raise EventInvalid(f"{event.subject} is the provider's zone or lies under it")
    st, wait = rotation.advance(ports, event.subject, request_of(event))
    done = [h for h in st.history if h["event"] == event.id and "->" in h["transition"]]
    emit = tuple(_announce(event.subject, st, h) for h in done)
    detail: dict[str, Any] = {
        "keys": {k.selector: k.status for k in st.keys},
        "reason": wait.reason,
        "next_check": rotation.iso(wait.until) if wait.until else None,
        "transitions": [f"{h['selector']}: {h['transition']}" for h in done],
    }
    if wait.instructions:
        detail["instructions"] = list(wait.instructions)
    deleg = delegated(st.request)

    def txt_name(selector: str) -> str:
        return dkim_name(event.subject, ports.settings, selector, delegated=deleg)

    return Outcome(NAME, event.id, event.subject, wait.status, _changes(txt_name, done), emit, detail)


def _changes(txt_name: Callable[[str], str], done: list[dict[str, str]]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for h in done:
        target = h["transition"].split("->")[1]
        out.setdefault("state", []).append(f"~ {h['selector']} {h['transition']}")
        if target in _EFFECTS:
            system, line = _EFFECTS[target]
            out.setdefault(system, []).append(line.format(s=h["selector"], n=txt_name(h["selector"])))
    return {k: tuple(v) for k, v in out.items()}


def _announce(domain: str, st: DomainState, h: dict[str, str]) -> dict[str, Any]:
    """key.rotated for one transition; the id is the same whichever delivery announces it."""
    key = next(k for k in st.keys if k.selector == h["selector"])
    data = {
        "domain": domain,
        "selector": key.selector,
        "previous_selector": key.replaces,
        "transition": h["transition"],
        "state": h["transition"].split("->")[1],
    }
    out_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{SOURCE}/{NAME}/{domain}/{key.selector}/{h['transition']}"))
    return build("key.rotated", domain, data, source=SOURCE, id=out_id, time=rotation.parse_time(h["at"]))
