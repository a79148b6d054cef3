"""Growing and shrinking the gateway cluster (no I/O): the managed ``_pmg`` SPF and the provider-zone plans.

``_pmg.<provider>`` (``policy.spf_include``) is managed data: ``v=spf1 ip4:... ip6:... -all`` computed from the node
list in the settings (every configured node, a joining one included: authorising a node's addresses before mail
flows through it is safe). A hand-written record is adopted when it means the same (the same ip4/ip6 mechanisms and
``all`` qualifier, in any order); a different one is refused unless forced. The node's own A/AAAA are the
addresses configured for it; an A/AAAA there with other values is someone else's and is refused unless forced.
With DANE, node.add also publishes the node's ``_25._tcp`` TLSA 3 1 1 in the same UPDATE (a TLSA there with other
hashes is refused unless forced) and node.retire deletes it with the A/AAAA.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from functions._core.model import dane
from functions._core.model.mailset import fqdn, mta_sts_policy, policy_id
from functions._core.model.ports import DnsChange
from functions._core.model.records import Key, RecordSet
from functions._core.platform.config import MxHost, Settings

ADDRESS_TYPES = ("A", "AAAA")
SPF_TTL = 300  # the provider zone's TTL for node data: a change reaches resolvers within minutes


def spf_for(addresses: Iterable[tuple[str, str]]) -> str:
    """``v=spf1 ip4:... ip6:... -all`` for (ipv4, ipv6) pairs, in the given order ("" = none)."""
    pairs = list(addresses)
    mech = [f"ip4:{a}" for a, _ in pairs if a] + [f"ip6:{b}" for _, b in pairs if b]
    return " ".join(["v=spf1", *mech, "-all"])


def pmg_spf(hosts: Iterable[MxHost]) -> str:
    """The ``_pmg`` SPF of exactly these nodes."""
    return spf_for((h.ipv4, h.ipv6) for h in hosts)


def spf_terms(value: str) -> frozenset[str]:
    """The record's meaning for adoption: its terms, lower case, order ignored (the ``v=spf1`` tag included)."""
    return frozenset(t.lower() for t in value.replace('"', " ").split())


def same_spf(a: str, b: str) -> bool:
    return spf_terms(a) == spf_terms(b)


def with_host(settings: Settings, host: MxHost) -> Settings:
    """The settings with ``host`` a full member (joining cleared; appended when it is not configured)."""
    member = dataclasses.replace(host, joining=False)
    hosts = [member if h.name == host.name else h for h in settings.provider.mx_hosts]
    if all(h.name != host.name for h in hosts):
        hosts.append(member)
    return dataclasses.replace(settings, provider=dataclasses.replace(settings.provider, mx_hosts=tuple(hosts)))


def without_host(settings: Settings, name: str) -> Settings:
    """The settings with node ``name`` gone."""
    hosts = tuple(h for h in settings.provider.mx_hosts if h.name != name)
    return dataclasses.replace(settings, provider=dataclasses.replace(settings.provider, mx_hosts=hosts))


def policy_body_and_txt(settings: Settings, mode: str | None = None) -> tuple[bytes, str]:
    """The MTA-STS policy body the settings give, and the ``_mta-sts`` TXT value with its id."""
    text = mta_sts_policy(settings, mode)
    return text.encode(), f"v=STSv1; id={policy_id(text)};"


@dataclass(frozen=True)
class ProviderPlan:
    """The provider-zone change of node.add (A/AAAA, then SPF) or of node.retire's last phase; one UPDATE."""

    changes: tuple[DnsChange, ...] = ()
    refused: tuple[str, ...] = ()  # reasons nothing may be written (records we do not own, an unknown _pmg)
    adopted: tuple[str, ...] = ()  # hand-written records found equal to what we compute

    def lines(self) -> list[str]:
        out = []
        for c in self.changes:
            name, rtype = c.key
            old = " ".join(c.before.values) if c.before else "(none)"
            new = " ".join(c.after.values) if c.after else "(deleted)"
            out.append(f"~ {rtype} {name}: {old} -> {new}")
        return out


def _spf_change(
    zone: Mapping[Key, RecordSet], name: str, before: str, after: str, force: bool
) -> tuple[list[DnsChange], list[str], list[str]]:
    """The `_pmg` TXT change from ``before`` (what we compute now) to ``after``; adopts an equal hand-written one."""
    have = zone.get((name, "TXT"))
    want = RecordSet.of(name, "TXT", have.ttl if have else SPF_TTL, [after])
    if have is None:
        return [DnsChange(None, want)], [], []
    text = " ".join(have.values)
    if same_spf(text, after):
        return [], [], []
    if len(have.values) == 1 and same_spf(text, before):
        return [DnsChange(have, want)], [], [f"TXT {name}: hand-written, equal to the computed {before!r}; adopted"]
    if force:
        return [DnsChange(have, want)], [], [f"TXT {name}: {text!r} replaced (forced)"]
    reason = (
        f"TXT {name} is {text!r}, not what mailplane computes from provider.mx_hosts ({before!r}); "
        "fix the settings or the record, or --force to replace it"
    )
    return [], [reason], []


def _tlsa_change(
    settings: Settings, zone: Mapping[Key, RecordSet], host: MxHost, spki: str, force: bool
) -> tuple[list[DnsChange], list[str]]:
    """The node's ``_25._tcp`` TLSA 3 1 1 for the certificate it presents (hash ``spki``); one holding other 3 1 1
    hashes is someone else's (a former node's key?) and refused unless forced (then replaced)."""
    name = dane.tlsa_name(host)
    have = zone.get((name, "TLSA"))
    hashes = dane.tlsa_hashes(have)
    if hashes == {spki}:
        return [], []
    if hashes and not force:
        return [], [f"TLSA {name} holds 3 1 1 {' '.join(sorted(hashes))}, not the certificate {host.name} presents"]
    after = dane.tlsa_rrset(name, have, [spki], settings.dane.tlsa_ttl)
    return [DnsChange(have, after)], []


def plan_provider_add(
    settings: Settings, zone: Mapping[Key, RecordSet], host: MxHost, *, force: bool = False, spki: str | None = None
) -> ProviderPlan:
    """A/AAAA of ``host`` (its configured addresses), with ``spki`` (DANE: the hash of the certificate it presents)
    its TLSA 3 1 1, and the `_pmg` SPF with its addresses; compare-and-set on what is read."""
    changes: list[DnsChange] = []
    refused: list[str] = []
    for rtype, addr in (("A", host.ipv4), ("AAAA", host.ipv6)):
        if not addr:
            continue
        have = zone.get((host.name, rtype))
        want = RecordSet.of(host.name, rtype, have.ttl if have else SPF_TTL, [addr])
        if have is None:
            changes.append(DnsChange(None, want))
        elif set(have.values) != {addr}:
            if force:
                changes.append(DnsChange(have, want))
            else:
                refused.append(f"{rtype} {host.name} is {' '.join(have.values)}, not the configured {addr}")
    if spki is not None:
        tlsa, bad = _tlsa_change(settings, zone, host, spki, force)
        changes += tlsa
        refused += bad
    others = [h for h in settings.provider.mx_hosts if h.name != host.name]
    name = settings.policy.spf_include.rstrip(".").lower()
    spf, bad, adopted = _spf_change(zone, name, pmg_spf(others), pmg_spf([*others, host]), force)
    return ProviderPlan(tuple(changes + spf), tuple(refused + bad), tuple(adopted))


def plan_provider_remove(
    settings: Settings, zone: Mapping[Key, RecordSet], name: str, *, force: bool = False
) -> ProviderPlan:
    """The `_pmg` SPF without node ``name`` (its addresses as configured or as its A/AAAA hold them), then its
    A/AAAA and its ``_25._tcp`` TLSA deleted: the last step of node.retire."""
    known = next((h for h in settings.provider.mx_hosts if h.name == name), None)
    found = {t: zone[(name, t)] for t in ADDRESS_TYPES if (name, t) in zone}
    if known is None:
        a, aaaa = found.get("A"), found.get("AAAA")
        known = MxHost(name, a.values[0] if a else "", aaaa.values[0] if aaaa else "")
    others = [h for h in settings.provider.mx_hosts if h.name != name]
    spf_name = settings.policy.spf_include.rstrip(".").lower()
    spf, bad, adopted = _spf_change(zone, spf_name, pmg_spf([*others, known]), pmg_spf(others), force)
    tlsa = zone.get((dane.tlsa_name(known), "TLSA"))
    dels = [DnsChange(rs, None) for rs in [*found.values(), *([tlsa] if tlsa else [])]]
    return ProviderPlan(tuple(spf + dels), tuple(bad), tuple(adopted))


def provider_checks(plan: ProviderPlan) -> list[tuple[Key, tuple[str, ...], bool]]:
    """What every authoritative server must serve after ``plan``: the new values, and the deleted ones gone."""
    out: list[tuple[Key, tuple[str, ...], bool]] = []
    for c in plan.changes:
        if c.after is not None:
            out.append((c.key, c.after.values, True))
        elif c.before is not None:
            out.append((c.key, c.before.values, False))
    return out


def mx_value(settings: Settings, host: MxHost) -> str:
    return f"{settings.provider.mx_preference} {fqdn(host.name)}"


def mx_with(current: Sequence[str], value: str) -> list[str]:
    """The MX values with ``value`` added (customer-added values kept)."""
    return list(current) if value in current else [*current, value]
