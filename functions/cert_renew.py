"""cert.renew (scheduler, operator): renew a gateway node's SMTP certificate, or roll its key, without breaking DANE;
or (``data.domain``, reason ``mta-sts``) renew the certificate of ``mta-sts.<domain>`` on the MTA-STS web host.

A thin adapter over functions/_core/model/dane.py (the persisted state machine, its steps and guards) and
functions/_core/model/mtasts.py (``ensure_cert``: renews only when due, so a duplicate writes nothing).

Safe to receive any number of times: each run is tied to the event that started it, every step is one persisted
write, so a redelivery after a crash resumes where the state says and a replay of a finished run writes nothing.
Private keys never appear in events, outcomes or logs: they live only sealed (AES-GCM) in the state store.
"""

from __future__ import annotations

from typing import Any

from functions._core.model import dane, mtasts
from functions._core.model.ports import Ports
from functions._core.platform.envelope import Envelope
from functions._core.platform.outcome import Outcome

NAME = "cert_renew"
LOGIC = "functions._core.model.dane"

_EFFECTS = {  # transition target -> (system, change line); {n} = node, {t} = the TLSA name
    "NEXT_KEY": ("store", "+ sealed next key {n}"),
    "PUBLISHED": ("dns", "~ TLSA {t} current+next"),
    "ISSUED": ("acme", "+ certificate {n}"),
    "DEPLOYED": ("pmg", "~ custom smtp certificate {n}"),
    "VERIFIED": ("smtp", "= STARTTLS presents the new certificate on {n}"),
    "IDLE": ("dns", "~ TLSA {t} (old withdrawn / adopted)"),
}


def handle(event: Envelope, ports: Ports) -> Outcome:
    """Advance the certificate lifecycle of node ``event.subject``; see the module docstring.

    Raises:
        EventInvalid: not a configured gateway node.
        NotPropagated: an authoritative server does not serve the TLSA yet (retried by the broker).
        DaneWait: another node is deploying, the quorum or the node's STARTTLS is not there yet (retried).
        DaneRefused: a guard refused a step (parked with the reason).
    """
    if "domain" in event.data:
        return _mta_sts(event, ports)
    req = dane.Request(event.id, str(event.data["reason"]))
    res = dane.advance(ports, event.subject, req)
    changes: dict[str, list[str]] = {}
    for step in res.steps:
        changes.setdefault("state", []).append(f"~ {res.state.node} {step}")
        system, line = _EFFECTS[step.split("->")[1]]
        changes.setdefault(system, []).append(line.format(n=res.state.node, t=res.tlsa))
    detail: dict[str, Any] = {
        "phase": res.state.phase,
        "spki": res.state.current_spki,
        "next_spki": res.state.next_spki or None,
        "reason": res.reason,
        "next_check": dane.iso(res.until) if res.until else None,
        "transitions": list(res.steps),
    }
    return Outcome(NAME, event.id, event.subject, res.status, {k: tuple(v) for k, v in changes.items()}, (), detail)


def _mta_sts(event: Envelope, ports: Ports) -> Outcome:
    """Renew (when due) and deliver the certificate of ``mta-sts.<domain>`` (``mtasts.renew``).

    Raises:
        CaUnavailable: the CA failed (transient).
        NotPropagated: the DNS-01 record is not on every authoritative server yet (transient).
    """
    status, changes, why = mtasts.renew(ports, event.subject)
    detail = {"reason": why} if why else {}
    return Outcome(NAME, event.id, event.subject, status, {"acme": tuple(changes)} if changes else {}, (), detail)


def dry_run(event: Envelope, ports: Ports) -> Outcome:
    """What cert.renew would do: the node's state and whether it is due; nothing is written."""
    if "domain" in event.data:
        return Outcome(NAME, event.id, event.subject, "dry_run", {}, (), mtasts.preview(ports, event.subject))
    return Outcome(NAME, event.id, event.subject, "dry_run", {}, (), dane.preview(ports, event.subject))
