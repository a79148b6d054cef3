"""The managed record set of a customer domain and its MTA-STS policy, derived from the settings alone."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from functions._core.model.keys import dkim_txt
from functions._core.model.records import Key, RecordSet
from functions._core.platform.config import MxHost, Settings
from functions._core.platform.errors import EventInvalid

MARKER_NAME = "_mailplane"
MARKER_VALUE = "v=mp1; managed-by=mailplane"
SPF_PREFIX = "v=spf1"


def fqdn(name: str) -> str:
    return name.rstrip(".") + "."


def mx_members(settings: Settings) -> tuple[MxHost, ...]:
    """The gateway nodes customer MX sets and MTA-STS policies name: every configured node but a joining one."""
    return tuple(h for h in settings.provider.mx_hosts if not h.joining)


def mta_sts_policy(settings: Settings, mode: str | None = None) -> str:
    """The RFC 8461 policy text served at https://mta-sts.<domain>/.well-known/mta-sts.txt; ``mode`` is the
    domain's own (``DomainState.mta_sts_mode``), None = the platform's ``policy.mta_sts_mode``."""
    mx = "".join(f"mx: {h.name}\n" for h in mx_members(settings))
    p = settings.policy
    return f"version: STSv1\nmode: {p.mta_sts_mode if mode is None else mode}\n{mx}max_age: {p.mta_sts_max_age}\n"


def policy_id(policy: str) -> str:
    """The `_mta-sts` id: derived from the policy content, so it changes exactly when the content changes."""
    return hashlib.sha256(policy.encode()).hexdigest()[:20]


def policy_key(domain: str) -> str:
    """Object key of the policy in the web bucket (host-based, as the web host serves it)."""
    return f"mta-sts.{domain}/.well-known/mta-sts.txt"


def dmarc_value(settings: Settings) -> str:
    p = settings.policy
    return f"v=DMARC1;p={p.dmarc_policy};pct=100;rua={p.dmarc_rua};ruf={p.dmarc_ruf};fo=1"


def spf_value(settings: Settings) -> str:
    return f"v=spf1 include:{settings.policy.spf_include} ~all"


def delegated(request: Mapping[str, Any]) -> bool:
    """domain.created asked for DKIM delegation by CNAME, which applies only to a zone hosted elsewhere."""
    dns, dk = request.get("dns"), request.get("dkim")
    hosted = isinstance(dns, Mapping) and dns.get("hosted") is True
    return not hosted and isinstance(dk, Mapping) and dk.get("delegate") is True


def delegation_target(domain: str, selector: str, settings: Settings) -> str:
    """``<slot>.<domain>.<delegation_zone>``: where the key a delegated ``<slot>._domainkey.<domain>`` points lives.

    Raises:
        EventInvalid: delegation is not offered (no ``dkim.delegation_zone``) or the name would be too long.
    """
    zone = settings.dkim.delegation_zone
    if not zone:
        raise EventInvalid(f"{domain}: dkim.delegate is not offered (dkim.delegation_zone is not configured)")
    name = f"{selector}.{domain}.{zone}"
    if len(name) > 253:
        raise EventInvalid(f"{domain} is too long to delegate DKIM into {zone} ({len(name)} > 253 characters)")
    return name


def dkim_name(domain: str, settings: Settings, selector: str, *, delegated: bool) -> str:
    """Where the DKIM TXT of one key lives: in the customer's zone, or for a delegated domain in the delegation zone."""
    return delegation_target(domain, selector, settings) if delegated else f"{selector}._domainkey.{domain}"


def dkim_record(domain: str, settings: Settings, selector: str, txt: str, *, delegated: bool) -> RecordSet:
    """The DKIM TXT of one key (see ``dkim_name``)."""
    return RecordSet.of(dkim_name(domain, settings, selector, delegated=delegated), "TXT", settings.ttl.dkim, [txt])


def desired_records(
    domain: str,
    settings: Settings,
    selector: str,
    public_b64: str,
    *,
    delegated: bool = False,
    dkim_text: str | None = None,
    mode: str | None = None,
) -> dict[Key, RecordSet]:
    """Every RRset mailplane manages in a customer zone (apex TXT holds only the SPF value here). A delegated
    domain gets one CNAME per slot into the delegation zone instead of the DKIM TXT (see ``dkim_record``).
    ``dkim_text``: the DKIM TXT as published (an adopted key typed by an operator), default Mailcow's format.
    ``mode``: the domain's MTA-STS mode (the ``_mta-sts`` id follows the policy), None = the platform's."""
    t, mc = settings.ttl, settings.mailcow.host
    pref = settings.provider.mx_preference
    pid = policy_id(mta_sts_policy(settings, mode))
    sets = [
        RecordSet.of(domain, "MX", t.mx, [f"{pref} {fqdn(h.name)}" for h in mx_members(settings)]),
        RecordSet.of(domain, "TXT", t.txt, [spf_value(settings)]),
        *(
            [
                RecordSet.of(
                    f"{slot}._domainkey.{domain}", "CNAME", t.cname, [fqdn(delegation_target(domain, slot, settings))]
                )
                for slot in settings.dkim.delegation_slots
            ]
            if delegated
            else [dkim_record(domain, settings, selector, dkim_text or dkim_txt(public_b64), delegated=False)]
        ),
        RecordSet.of(f"_dmarc.{domain}", "TXT", t.txt, [dmarc_value(settings)]),
        RecordSet.of(f"autoconfig.{domain}", "CNAME", t.cname, [fqdn(mc)]),
        RecordSet.of(f"autodiscover.{domain}", "CNAME", t.cname, [fqdn(mc)]),
        RecordSet.of(f"_autodiscover._tcp.{domain}", "SRV", t.srv, [f"1 1 443 {fqdn(mc)}"]),
        RecordSet.of(f"mta-sts.{domain}", "CNAME", t.cname, [fqdn(settings.policy.mta_sts_host)]),
        RecordSet.of(f"_mta-sts.{domain}", "TXT", t.txt, [f"v=STSv1; id={pid};"]),
        RecordSet.of(f"_smtp._tls.{domain}", "TXT", t.txt, [f"v=TLSRPTv1; rua={settings.policy.tlsrpt_rua}"]),
        RecordSet.of(f"{MARKER_NAME}.{domain}", "TXT", t.txt, [MARKER_VALUE]),
    ]
    return {rs.key: rs for rs in sets}


def customer_lines(want: dict[Key, RecordSet]) -> list[str]:
    """Zone-file lines a customer hosting the zone elsewhere must publish (all but our ownership marker)."""
    return [ln for rs in want.values() if not rs.name.startswith(MARKER_NAME + ".") for ln in rs.zone_lines()]
