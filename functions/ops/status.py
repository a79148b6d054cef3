"""`mailplane status`: desired vs actual for one domain, per system and per authoritative server, and the SMTP
acceptance of every PMG node (the RCPT answer and the source address it was asked from); with MTA-STS served, the
policy as a sender fetches it (``policy_fetch_check``); beside the checks, what the senders' TLS reports
(RFC 8460) say about the last period (``tls_reports``: information, never a check)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from functions import domain_created
from functions._core.model import acceptance, dnssec, mtasts, state, webmail
from functions._core.model.equivalence import covers
from functions._core.model.mailset import (
    MARKER_NAME,
    delegated,
    desired_records,
    dkim_record,
    mta_sts_policy,
    policy_id,
    policy_key,
)
from functions._core.model.ports import DkimKey, Ports
from functions._core.model.records import RecordSet
from functions._core.model.tlsrpt_store import Summary
from functions.ops import tlsrpt

# Stated wherever operators read (docs/dkim.md, README): mailcow cannot import a key any other way.
API_LOG_NOTE = (
    "note: Mailcow keeps every add/dkim_import request body, the DKIM private key included, in its API log "
    "(Redis API_LOG, trimmed to mailcow.conf LOG_LINES), readable by every holder of an API key, read-only keys "
    "too (GET /api/v1/get/logs/api); see docs/dkim.md"
)


CHAIN_WHERE = "chain of trust"  # the ``where`` of the DNSSEC check (its ``have`` starts with "<status>:")


@dataclass(frozen=True)
class Check:
    system: str  # mailcow | pmg | dns | store | web
    where: str  # "api", a DNS server, or "public"
    item: str
    want: str
    have: str
    ok: bool


def _values(rs: RecordSet | None) -> str:
    return " | ".join(rs.values) if rs else "absent"


def mail_checks(domain: str, data: dict[str, Any], cur: state.KeyRecord, ports: Ports) -> list[Check]:
    want, have = domain_created.desired_mail(domain, data), ports.mail.get_domain(domain)
    summary = f"{want.mailboxes} mailboxes, {want.aliases} aliases, {want.quota_mib} MiB"
    got = f"{have.mailboxes} mailboxes, {have.aliases} aliases, {have.quota_mib} MiB" if have else "absent"
    dk = ports.mail.get_dkim(domain)
    return [
        Check("mailcow", "api", "domain", summary, got, got == summary and have is not None and have.active),
        Check(
            "mailcow",
            "api",
            "dkim",
            cur.selector,
            dk.selector if dk else "none",
            dk == DkimKey(cur.selector, cur.public_b64),
        ),
    ]


def webmail_check(st: state.DomainState, ports: Ports) -> Check:
    """SOGo readiness, from mailplane's restart record (the Mailcow API gives no other signal)."""
    ok, have = webmail.readiness(ports, st)
    if have.startswith("unknown") and st.status == "provisioned":
        ok, have = True, "untracked: provisioned before SOGo readiness was tracked"
    return Check("mailcow", "sogo restarts", "webmail (SOGo knows the domain)", "ready", have, ok)


def gateway_checks(domain: str, ports: Ports) -> list[Check]:
    gw, mc = ports.gateway, ports.settings.mailcow
    relay = gw.get_relay_domain(domain) is not None
    t = gw.get_transport(domain)
    cidrs = (f"{mc.ipv4}/32", f"{mc.ipv6}/128")
    found = [n for n in (gw.get_network(c) for c in cidrs) if n is not None]
    nets = {ipaddress.ip_network(n.cidr, strict=False) for n in found}
    out = [
        Check("pmg", "api", "relay domain", domain, domain if relay else "absent", relay),
        Check(
            "pmg",
            "api",
            "transport",
            f"{mc.host}:25",
            f"{t.host}:{t.port}" if t else "absent",
            t is not None and t.host == mc.host and t.port == 25,
        ),
    ]
    for ip, plen in ((mc.ipv4, 32), (mc.ipv6, 128)):
        net = ipaddress.ip_network(f"{ip}/{plen}")
        out.append(
            Check("pmg", "api", "trusted network", str(net), "present" if net in nets else "absent", net in nets)
        )
    return out


def smtp_checks(domain: str, ports: Ports) -> list[Check]:
    """RCPT TO:<postmaster@DOMAIN> on every PMG node, as the acceptance gate asks it: the answer code and text, the
    node's SMTP address and the source address the probe came from (none without an SMTP probe)."""
    if ports.smtp is None:
        return []
    want = "accepted (250, 450 greylisting or 550 5.1.1 user unknown; 554 relay denied = not effective)"
    return [
        Check(
            "pmg", f"{c.node} smtp {c.target} from {c.source}", f"RCPT TO:<postmaster@{domain}>", want, c.answer, c.ok
        )
        for c in acceptance.smtp_checks(ports, domain)
    ]


def dns_checks(
    domain: str, hosted: bool, cur: state.KeyRecord, ports: Ports, *, deleg: bool = False, mode: str | None = None
) -> list[Check]:
    """Every managed RRset on every authoritative server (our zone) or in the public view (a zone hosted elsewhere);
    a delegated domain's key TXT on every authoritative server of the delegation zone."""
    s = ports.settings
    want = desired_records(domain, s, cur.selector, cur.public_b64, delegated=deleg, dkim_text=cur.txt, mode=mode)
    out: list[Check] = []
    if deleg:
        key = dkim_record(domain, s, cur.selector, cur.text, delegated=True)
        for where in ports.dns.servers(s.dkim.delegation_zone):
            got = ports.dns.query(where, key.name, "TXT")
            out.append(Check("dns", where, f"TXT {key.name}", _values(key), _values(got), key.same_data(got)))
    places = ports.dns.servers(domain) if hosted else ["public"]
    for where in places:
        for (name, rtype), rs in sorted(want.items()):
            if not hosted and name.startswith(MARKER_NAME + "."):
                continue
            got = ports.dns.query(where, name, rtype) if hosted else ports.dns.resolve(name, rtype)
            ok = covers(rs, got)  # exactly, or equivalently (functions/_core/model/equivalence.py)
            out.append(Check("dns", where, f"{rtype} {name}", _values(rs), _values(got), ok))
    return out


def dnssec_checks(domain: str, request: dict[str, Any], ports: Ports) -> list[Check]:
    """The chain of trust of a hosted, signed zone (dns.dnssec, or the request's dns.dnssec): ok while the customer
    has yet to register the DS (awaiting_ds: mail works, the zone is merely insecure); a DS that matches no served
    key, a zone the validating resolver finds bogus, servers disagreeing on the keys, or an unsigned zone is drift."""
    if not dnssec.expected(request, ports.settings.dns.dnssec):
        return []
    chain = dnssec.observe(domain, ports)
    want = "secure (the parent's DS matches a key-signing key every server serves; the validating resolver: AD)"
    have = f"{chain.status}: " + "; ".join(chain.lines())
    return [Check("dns", CHAIN_WHERE, f"DNSSEC {domain}", want, have, chain.status in ("secure", "awaiting_ds"))]


def policy_fetch_check(domain: str, want: bytes, ports: Ports) -> list[Check]:
    """The policy as a sender fetches it (``mta_sts.resolver``, ``mta_sts.trust_file``; HTTPS, certificate valid for
    ``mta-sts.<domain>`` and not within ``mta_sts.expiry_warn_days`` of expiry, 200 text/plain, body equal to
    ``want``) and the public ``_mta-sts`` TXT's id against the body served. Nothing when MTA-STS is not served."""
    if not mtasts.enabled(ports) or ports.web_host is None:
        return []
    s, url = ports.settings.mta_sts, mtasts.policy_url(domain)
    where = f"sender (resolver {s.resolver or '/etc/resolv.conf'}, trust {s.trust_file or 'system store'})"
    fetched = ports.web_host.fetch(url)
    problems = mtasts.check(fetched, want, ports.clock(), min_days=s.expiry_warn_days)
    served = policy_id(fetched.body.decode("utf-8", "replace")) if not problems else None
    txt = ports.dns.resolve(f"_mta-sts.{domain}", "TXT")
    m = re.search(r"\bid=([A-Za-z0-9]{1,32})", " ".join(txt.values)) if txt else None
    if served is not None and m is not None and m.group(1) != served:
        problems.append(f"_mta-sts id={m.group(1)} does not announce the policy served (id {served})")
    until = f", certificate until {fetched.not_after:%Y-%m-%d}" if fetched.not_after else ""
    have = "; ".join(problems) if problems else f"HTTP 200 {fetched.content_type}{until}, id {served}"
    want_text = f"HTTPS 200 text/plain, the desired policy (id {policy_id(want.decode())})"
    return [Check("web", where, f"GET {url}", want_text, have, not problems)]


def chain_status(checks: Iterable[Check]) -> str | None:
    """The chain-of-trust status (functions/_core/model/dnssec.py ``STATUSES``) that ``dnssec_checks`` recorded among
    ``checks``; None when the domain's zone is not one whose chain we report."""
    for c in checks:
        if c.system == "dns" and c.where == CHAIN_WHERE:
            status = c.have.split(":", 1)[0]
            return status if status in dnssec.STATUSES else "unknown"
    return None


def domain_status(domain: str, ports: Ports) -> tuple[str, list[Check]]:
    """Overall status (provisioned, awaiting_dns, drift, unknown) and every check behind it."""
    st = state.load(ports.state, domain)
    cur = st.current
    if not st.request or cur is None:
        return "unknown", [Check("store", "state", "domain state", "present", "absent", False)]
    hosted = bool(st.request["dns"]["hosted"])
    policy = ports.web.get(policy_key(domain))
    mode = st.mta_sts_mode(ports.settings)
    want_policy = mta_sts_policy(ports.settings, mode).encode()
    checks = [
        *mail_checks(domain, st.request, cur, ports),
        webmail_check(st, ports),
        *gateway_checks(domain, ports),
        *smtp_checks(domain, ports),
        Check(
            "store",
            "web",
            "mta-sts policy",
            f"current (mode {mode})",
            "current" if policy and policy.body == want_policy else "stale" if policy else "absent",
            policy is not None and policy.body == want_policy,
        ),
        *dns_checks(domain, hosted, cur, ports, deleg=delegated(st.request), mode=mode),
        *dnssec_checks(domain, st.request, ports),
        *policy_fetch_check(domain, want_policy, ports),
    ]
    bad = [c for c in checks if not c.ok]
    if not bad:
        return "provisioned", checks
    if not hosted and all(c.system in ("dns", "web") or c.item == "dkim" for c in bad):
        return "awaiting_dns", checks
    return "drift", checks


def tls_reports(domain: str, ports: Ports, days: int | None = None) -> Summary:
    """The senders' TLS reports for ``domain`` over the last ``days`` (default ``mta_sts.tlsrpt_summary_days``)."""
    n = ports.settings.mta_sts.tlsrpt_summary_days if days is None else days
    return tlsrpt.summaries(ports.state, [domain], ports.clock().date(), n)[0]


def as_json(domain: str, overall: str, checks: list[Check], reports: Summary | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"domain": domain, "status": overall, "checks": [asdict(c) for c in checks]}
    if reports is not None:
        out["tls_reports"] = reports.as_json()
    return {**out, "notes": [API_LOG_NOTE]}
