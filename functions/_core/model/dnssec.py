"""The chain of trust of a hosted, signed customer zone (issue 14, DNSSEC): what the customer must register at the
parent, and whether a validating resolver already trusts the zone.

Pure over observations gathered by the DNS adapter: the DS records computed from the key-signing keys (DNSKEY flag
257: KSK or CSK) that the authoritative servers serve, the DS set the parent serves, and the AD bit of the
validating resolver's answer. Nothing here blocks mail provisioning: a zone is ``awaiting_ds`` until the resolver
validates it, and a DS at the parent that matches none of the served keys is reported as wrong, never accepted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from functions._core.model.ports import Ports
from functions._core.platform.errors import AutomationError

__all__ = ["BROKEN", "STATUSES", "ChainOfTrust", "chain_of_trust", "expected", "observe", "report"]
log = logging.getLogger("mailplane.dnssec")

STATUSES = ("secure", "awaiting_ds", "wrong_ds", "bogus", "inconsistent", "unsigned", "unknown")
BROKEN = ("wrong_ds", "bogus", "inconsistent")  # validating resolvers refuse the zone, or may (some servers)


@dataclass(frozen=True)
class ChainOfTrust:
    """One zone's chain of trust as observed.

    ``status``: secure | awaiting_ds (no DS at the parent yet) | wrong_ds (the parent's DS matches no served key) |
    bogus (the DS matches, yet the validating resolver refuses the data) | inconsistent (the servers serve different
    key-signing keys) | unsigned | unknown (not observed: a server or the resolver could not be asked).
    """

    zone: str
    status: str
    ds: tuple[str, ...]  # the DS record(s) to register at the parent (digest type 2, SHA-256)
    parent_ds: tuple[str, ...]  # what the parent serves now
    validated: bool  # the validating resolver answered with AD
    problems: tuple[str, ...]

    @property
    def awaiting_ds(self) -> bool:
        """True until a validating resolver trusts the zone (the DS is not at the parent yet, or it is wrong)."""
        return self.status != "secure" and self.status != "unsigned"

    def as_json(self) -> dict[str, Any]:
        """The chain as domain.provisioned reports it (``data.dnssec``)."""
        out: dict[str, Any] = {"status": self.status, "ds": list(self.ds), "parent_ds": list(self.parent_ds)}
        return out | ({"problems": list(self.problems)} if self.problems else {})

    def lines(self) -> list[str]:
        """The chain for `mailplane status`: DS at the parent? does it match a served key? AD?"""
        match = sorted(set(self.ds) & set(self.parent_ds))
        return [
            f"DS to register: {', '.join(self.ds) or '(zone not signed)'}",
            f"DS at the parent: {', '.join(self.parent_ds) or 'none'}",
            f"DS matches a served DNSKEY: {'yes' if match else 'no'}",
            f"validating resolver: {'AD' if self.validated else 'no AD'}",
            *self.problems,
        ]


def _digest(ds: str) -> tuple[str, str, str, str]:
    """(key tag, algorithm, digest type, digest) of one DS in presentation form, the digest uppercase without
    spaces (servers split long digests differently)."""
    tag, alg, kind, *digest = ds.split()
    return tag, alg, kind, "".join(digest).upper()


def chain_of_trust(
    zone: str, served: Mapping[str, tuple[str, ...]], parent_ds: tuple[str, ...], validated: bool
) -> ChainOfTrust:
    """Classify what was observed.

    ``served``: per authoritative server, the DS records computed from the key-signing keys it serves (empty: the
    server serves no DNSKEY). ``parent_ds``: the DS RRset of the parent (through the resolver). ``validated``: the
    validating resolver's answer for the zone carried AD.
    """
    sets = {server: frozenset(_digest(d) for d in ds) for server, ds in served.items()}
    problems: list[str] = []
    common = frozenset.intersection(*sets.values()) if sets else frozenset()
    for server, got in sorted(sets.items()):
        if got != common:
            problems.append(f"{server}: serves key-signing keys {sorted(t for t, *_ in got)}, others differ")
    ds = tuple(sorted(" ".join(d) for d in common))
    at_parent = {_digest(d) for d in parent_ds}
    if not any(sets.values()):
        status = "unsigned"
    elif problems:
        status = "inconsistent"
    elif validated and at_parent & common:
        status = "secure"
    elif at_parent and not at_parent & common:
        status = "wrong_ds"
        problems.append("the parent's DS matches no key-signing key the authoritative servers serve")
    else:
        status = "awaiting_ds"
    return ChainOfTrust(zone, status, ds, tuple(sorted(" ".join(d) for d in at_parent)), validated, tuple(problems))


def expected(request: Mapping[str, Any], hosted_default: bool) -> bool:
    """Whether the chain of trust of this domain's zone is ours to report: a zone we host, signed per the request's
    ``dns.dnssec`` (default: the platform's ``dns.dnssec``, passed as ``hosted_default``)."""
    wanted = request.get("dns", {})
    return bool(wanted.get("hosted")) and bool(wanted.get("dnssec", hosted_default))


def observe(zone: str, ports: Ports) -> ChainOfTrust:
    """The zone's chain of trust as the authoritative servers (their key-signing keys, RD=0) and the validating
    resolver (the parent's DS, and the AD bit of the zone's SOA) show it.

    Raises:
        DnsServfail, DnsRefused: a server or the resolver could not be asked.
    """
    dnsp = ports.dns
    served = {server: dnsp.query_ds(server, zone) for server in dnsp.servers(zone)}
    _, parent = dnsp.resolve_validated(zone, "DS")
    verdict, _ = dnsp.resolve_validated(zone, "SOA")
    chain = chain_of_trust(zone, served, parent.values if parent is not None else (), verdict == "secure")
    if verdict == "bogus" and chain.status == "awaiting_ds":  # the resolver refuses the zone's data: say so
        problem = "the validating resolver finds the zone bogus (SERVFAIL; answers only with checking disabled)"
        chain = ChainOfTrust(zone, "bogus", chain.ds, chain.parent_ds, False, (*chain.problems, problem))
    return chain


def report(zone: str, request: Mapping[str, Any], ports: Ports) -> ChainOfTrust | None:
    """The chain for domain.provisioned when it is ours to report (``expected``); never blocks provisioning: a
    server or resolver that cannot be asked gives status ``unknown`` with the reason (``status`` asks again)."""
    if not expected(request, ports.settings.dns.dnssec):
        return None
    try:
        return observe(zone, ports)
    except AutomationError as exc:
        log.warning("dnssec: %s: chain of trust not observed: %s", zone, exc)
        return ChainOfTrust(zone, "unknown", (), (), False, (f"not observed: {exc}",))
