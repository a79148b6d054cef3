"""Provisioning, the logic of domain.created: converge a customer domain on Mailcow, PMG, DNS and the MTA-STS
store, then verify it.

Read everything, plan every system, guard, then apply: a refused event (bad zone, foreign DNS data) changes
nothing anywhere. An empty plan is success, so a replayed event writes nothing. The handler
(functions/domain_created.py) turns the result into the outcome and the domain.provisioned event.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, replace
from typing import Any

from functions._core.model import acceptance, adoption, dnssec, keys, mtasts, state, webmail
from functions._core.model.acceptance import Acceptance
from functions._core.model.mailset import (
    customer_lines,
    delegated,
    desired_records,
    dkim_record,
    mta_sts_policy,
    policy_key,
)
from functions._core.model.plans import DnsPlan, GatewayPlan, MailPlan, plan_dns, plan_gateway, plan_mail
from functions._core.model.ports import DkimKey, GatewayTransport, MailDomain, Ports, RelayDomain, TrustedNetwork
from functions._core.model.records import Key, RecordSet, soa_serial
from functions._core.model.verify import external_missing, verify_zone
from functions._core.platform.envelope import Envelope
from functions._core.platform.errors import DnsRefused, EventInvalid, NotPropagated
from functions._core.platform.names import is_within

MANAGED = "managed-by mailplane"
TIME_KEY = "_event_time"  # in the stored request: the time of the domain.created it came from
log = logging.getLogger("mailplane.domain_created")


def _stale(event: Envelope, before: state.DomainState) -> bool:
    """An event older than the one already applied (retries can reorder events) must not undo it."""
    applied = before.request.get(TIME_KEY)
    return applied is not None and event.time < dt.datetime.fromisoformat(applied)


@dataclass(frozen=True)
class Plans:
    mail: MailPlan
    gateway: GatewayPlan
    dns: DnsPlan | None  # None: the zone is hosted elsewhere
    key_dns: DnsPlan | None  # delegated DKIM: the key's TXT in the delegation zone (None: not delegated)
    want_dns: dict[Key, RecordSet]
    policy: bytes | None  # new MTA-STS policy body, None when unchanged
    body: bytes = b""  # the desired MTA-STS policy body
    serve: bool = False  # MTA-STS served by us (mtasts.enabled): _mta-sts TXT only after the policy is fetchable
    dns_serial: int | None = None  # the hosted zone's SOA serial in the transfer the plan was made from


def desired_mail(domain: str, data: dict[str, Any]) -> MailDomain:
    p = data["plan"]
    return MailDomain(
        domain=domain,
        description=f"{MANAGED} customer={data['customer_id']}",
        mailboxes=p["mailboxes"],
        aliases=p["aliases"],
        quota_mib=p["quota_mib"],
        maxquota_mib=p["mailbox_quota_mib"],
        defquota_mib=p["default_mailbox_quota_mib"],
    )


def _refuse_protected(domain: str, ports: Ports) -> None:
    prov = ports.settings.provider
    zone = is_within(domain, (prov.zone, *prov.protected_zones))
    if zone is not None:
        raise EventInvalid(f"{domain} is the provider's zone {zone} or lies under it")


Seen = tuple[MailDomain | None, RelayDomain | None]  # the Mailcow domain and the PMG relay domain as read


def _key(
    event: Envelope, ports: Ports, before: state.DomainState, *, take: bool = True
) -> tuple[state.DomainState, state.KeyRecord | None, keys.KeyPair, Seen | None]:
    """The domain's state (``before``, as read for this event), its current key record, the key pair to provision
    (new ones are not stored yet; with ``take`` a new one may come from the key pool, a dry run generates its own),
    and, for a domain not applied yet, its Mailcow and PMG domains as the ownership check read them (for the plan)."""
    domain, s = event.subject, ports.settings
    seen: Seen | None = None
    if not before.request:
        seen = (ports.mail.get_domain(domain), ports.gateway.get_relay_domain(domain))
        unmanaged = adoption.unmanaged_reason(domain, *seen)
    else:
        unmanaged = adoption.adopted_key_reason(domain, before)
    if unmanaged is not None:
        raise EventInvalid(unmanaged)
    cur, wanted = before.current, delegated(event.data)
    if cur is not None and before.request and delegated(before.request) != wanted:
        raise EventInvalid(
            f"{domain}: DKIM delegation cannot be switched {'on' if wanted else 'off'} for a provisioned domain "
            "(dns.hosted / dkim.delegate differ from the applied request); delete and re-create the domain"
        )
    if cur is not None:
        return before, cur, state.load_key(ports.state, domain, cur.selector, s), seen
    pool = ports.keypool if take else None
    return before, cur, state.new_key(before, s, ports.clock(), delegated=wanted, pool=pool), seen


def dry_run(event: Envelope, ports: Ports) -> dict[str, list[str]]:
    """The changes ``handle`` would make on each system; nothing is written."""
    _refuse_protected(event.subject, ports)
    before, cur, pair, seen = _key(event, ports, state.load(ports.state, event.subject), take=False)
    plans = plan_all(event, ports, pair, before, seen)
    return {
        "mailcow": plans.mail.summary(),
        "pmg": plans.gateway.summary(),
        "dns": plans.dns.summary()
        if plans.dns
        else [f"(hosted elsewhere) {ln}" for ln in customer_lines(plans.want_dns)],
        "store": ([] if cur else [f"+ sealed key {pair.selector}"]) + (["+ mta-sts policy"] if plans.policy else []),
        **({"dns (delegation zone)": plans.key_dns.summary()} if plans.key_dns else {}),
    }


def plan_all(
    event: Envelope, ports: Ports, pair: keys.KeyPair, st: state.DomainState, seen: Seen | None = None
) -> Plans:
    """Read every system and plan it (``st``: the domain's state as read for this event; ``seen``: the Mailcow and
    PMG domains as this run read them already, None: read them); raises before anything is written."""
    s, domain, data = ports.settings, event.subject, dict(event.data)
    gw = ports.gateway
    mc = s.mailcow
    nets = (TrustedNetwork(f"{mc.ipv4}/32", MANAGED), TrustedNetwork(f"{mc.ipv6}/128", MANAGED))
    gateway = plan_gateway(
        RelayDomain(domain, f"{MANAGED} customer={data['customer_id']}"),
        GatewayTransport(domain, mc.host, 25, "smtp", False, MANAGED),
        nets,
        seen[1] if seen is not None else gw.get_relay_domain(domain),
        gw.get_transport(domain),
        [n for n in (gw.get_network(net.cidr) for net in nets) if n is not None],
    )
    want_key = DkimKey(pair.selector, pair.public_b64)
    have_mail = seen[0] if seen is not None else ports.mail.get_domain(domain)
    mail = plan_mail(desired_mail(domain, data), have_mail, want_key, ports.mail.get_dkim(domain))
    deleg = delegated(data)
    mode = st.mta_sts_mode(s, data)  # the domain's own (promoted), the initial one asked for, or the platform's
    want = desired_records(domain, s, pair.selector, pair.public_b64, delegated=deleg, mode=mode)
    dns = key_dns = dns_serial = None
    if data["dns"]["hosted"]:
        try:  # one AXFR: refused when our DNS does not serve the zone or our key may not transfer it
            have = ports.dns.read_zone(domain)
        except DnsRefused:
            raise EventInvalid(f"zone {domain} is not served by our DNS (dns.hosted is true)") from None
        first = mtasts.held(want, have, domain) if mtasts.enabled(ports) else want  # RFC 8461 order: TXT last
        dns = plan_dns(domain, have, first)
        dns_serial = soa_serial(have.get((domain.lower(), "SOA")))
    elif deleg:
        key_dns = plan_delegated_key(domain, ports, pair)
    body = mta_sts_policy(s, mode).encode()
    have_policy = ports.web.get(policy_key(domain))
    new_body = None if have_policy and have_policy.body == body else body
    return Plans(mail, gateway, dns, key_dns, want, new_body, body, mtasts.enabled(ports), dns_serial)


def plan_delegated_key(domain: str, ports: Ports, pair: keys.KeyPair) -> DnsPlan:
    """The key's TXT at ``<slot>.<domain>.<delegation zone>``: added, or already there; anything else is foreign.

    Raises:
        EventInvalid: delegation is not offered, the name is too long, or our DNS does not serve the zone.
        OwnershipConflict: the name holds data mailplane did not publish for this key.
    """
    zone = ports.settings.dkim.delegation_zone
    want = dkim_record(domain, ports.settings, pair.selector, pair.txt, delegated=True)
    try:  # one NS query: the delegation zone holds every delegated domain's keys, too large to transfer per event
        served = ports.dns.read_rrset(zone, "NS") is not None
    except DnsRefused:
        served = False
    if not served:
        raise EventInvalid(f"{domain}: the DKIM delegation zone {zone} is not served by our DNS")
    have = ports.dns.read_rrset(want.name, "TXT")
    return plan_dns(zone, {want.key: have} if have else {}, {want.key: want})


def apply_before_gate(plans: Plans, domain: str, ports: Ports) -> int | None:
    """Mailcow domain, PMG, MTA-STS policy, then the ONE DNS update; returns the new serial (None: no update).

    PMG's map writes take effect only after ``ports.gateway.settle()`` (the 1-s postmap rule), which the caller runs
    as late as it can: after the DNS gate and SOGo, before the SMTP acceptance gate, and also when they raise."""
    if plans.mail.add:
        ports.mail.add_domain(plans.mail.add)
    elif plans.mail.edit:
        ports.mail.edit_domain(domain, plans.mail.edit)
    g = plans.gateway
    for net in g.add_networks:
        ports.gateway.add_network(net)
    if g.add_domain:
        ports.gateway.add_relay_domain(g.add_domain)
    if g.add_transport:
        ports.gateway.add_transport(g.add_transport)
    if g.update_transport:
        ports.gateway.update_transport(g.update_transport)
    if plans.policy is not None:
        ports.web.put(policy_key(domain), plans.policy, content_type="text/plain")
    serial = None
    for plan in (plans.dns, plans.key_dns):
        if plan and plan.changes:
            serial = ports.dns.apply(plan.zone, list(plan.changes))
            break
    return serial


def _wrote_gateway_maps(plans: Plans) -> bool:
    g = plans.gateway
    return bool(g.add_domain or g.add_transport or g.update_transport)


def _claim_key(
    event: Envelope, ports: Ports, before: state.DomainState, pair: keys.KeyPair, plans: Plans
) -> tuple[state.DomainState, keys.KeyPair, Plans]:
    """Store a new key (sealed) and record it in the state BEFORE anything is published with it, so a retry after
    a crash reuses it; if a concurrent worker stored another key first, re-plan with that one."""
    stored = state.persist_key(ports.state, event.subject, pair, ports.settings)
    if stored.public_b64 != pair.public_b64:
        pair, plans = stored, plan_all(event, ports, stored, before)
    created = ports.clock().isoformat(timespec="seconds")
    record = state.KeyRecord(pair.selector, pair.public_b64, "GENERATED", created)
    return state.save(ports.state, state.with_new_key(before, record), before), pair, plans


@dataclass(frozen=True)
class Provisioned:
    """What provisioning did and found; ``stale_applied`` is set (and nothing done) for an outdated event."""

    status: str  # provisioned | awaiting_dns | degraded | stale
    changes: dict[str, list[str]]
    selector: str = ""
    servers: tuple[str, ...] = ()
    instructions: tuple[str, ...] | None = None  # zone-file lines for the customer (zone hosted elsewhere)
    stale_applied: str | None = None
    accepted: tuple[Acceptance, ...] = ()  # the acceptance gate's checks (empty: not run)
    dnssec: dnssec.ChainOfTrust | None = None  # the hosted zone's chain of trust (dns.dnssec); never blocks mail


def provision(event: Envelope, ports: Ports) -> Provisioned:
    """Provision ``event.subject``; see the module docstring.

    Raises:
        EventInvalid: the provider's zone, or a zone flagged hosted that our DNS does not serve.
        OwnershipConflict: a managed DNS name holds foreign data.
        NotPropagated: an authoritative server does not serve the plan yet, or the acceptance gate (SMTP on every
            PMG node, the Mailcow domain active and webmail-ready) does not pass yet within
            ``smtp_probe.max_wait_seconds`` (retried by the broker; afterwards the status is degraded).
        MailcowUnavailable, MailcowRejected: the SOGo restart this worker ran failed.
        ConfigError: no SMTP probe is configured.
    """
    domain = event.subject
    _refuse_protected(domain, ports)
    resumed, before = _resume(event, ports, state.load(ports.state, domain))
    if resumed is not None:
        return resumed
    before, cur, pair, seen = _key(event, ports, before)
    if _stale(event, before):
        applied = before.request[TIME_KEY]
        log.info("stale: domain_created %s is older than the applied %s; ignored", event.id, applied)
        return Provisioned("stale", {}, stale_applied=applied)
    acceptance.require_probe(ports)  # a refusal, like every other, before the first write
    plans = plan_all(event, ports, pair, before, seen)  # raises, with nothing written, when the event must be refused
    changes: dict[str, list[str]] = {"mailcow": [], "pmg": plans.gateway.summary(), "dns": [], "store": []}
    current = before
    if cur is None:
        current, pair, plans = _claim_key(event, ports, before, pair, plans)
        changes["store"].append(f"+ sealed key {pair.selector}")
    changes["mailcow"] = [c for c in plans.mail.summary() if not c.startswith("+ dkim")]
    serial = apply_before_gate(plans, domain, ports)
    current = webmail.mark_added(ports, current, added=plans.mail.add is not None)  # before any restart is claimed
    changes["dns"] = [*(plans.dns.summary() if plans.dns else []), *(plans.key_dns.summary() if plans.key_dns else [])]
    changes["store"] += ["+ mta-sts policy"] if plans.policy is not None else []
    replayed = not any(changes.values()) and serial is None and before.status == "provisioned"
    prior = before.acceptance if before.acceptance.get("event") == event.id else {}
    try:  # the DNS gate and SOGo run while PMG's maps settle (their second boundary passes meanwhile)
        status, servers = _gate(ports, domain, plans, serial, pair, replay=replayed, verified=prior.get("dns"))
        if plans.serve:
            status = _serve_policy(ports, domain, plans, pair, changes, status)
        web = webmail.settle(ports, domain, current)  # SOGo knows the domain only after a restart after its add
    finally:
        if _wrote_gateway_maps(plans):
            ports.gateway.settle()  # every map write effective on the master, also when a gate step raised
    current = web.state
    changes["mailcow"] += ["~ sogo restart"] if web.restarted else []
    checks: list[Acceptance] = []
    # what a retry of this event may take as verified: every server served the plan at this serial of the zone
    verified = None
    if plans.dns is not None and not plans.serve:
        # our UPDATE's serial, or (nothing written) the serial of the plan's read
        verified = {"serial": serial if serial is not None else plans.dns_serial, "servers": servers}
    if status == "provisioned" and not replayed:
        checks = _checks(ports, domain, web, retouch=not _wrote_gateway_maps(plans))
        status = _verdict(event, ports, current, checks, verified)
    if status in ("provisioned", "degraded") and plans.mail.dkim_import:
        _import_key(ports, domain, pair, changes)
    lines = tuple(customer_lines(plans.want_dns)) if status == "awaiting_dns" or plans.dns is None else None
    return _finish(event, ports, current, status, checks, verified, pair.selector, changes, servers, lines)


def _import_key(ports: Ports, domain: str, pair: keys.KeyPair, changes: dict[str, list[str]]) -> None:
    """Mailcow signs with the key from now on (only after the DNS gate and the acceptance gate ended)."""
    ports.mail.import_dkim(domain, pair.selector, pair.private_pem.reveal(), overwrite=True)
    changes["mailcow"].append(f"+ dkim {pair.selector}")


def _finish(
    event: Envelope,
    ports: Ports,
    current: state.DomainState,
    status: str,
    checks: list[Acceptance],
    verified: dict[str, Any] | None,
    selector: str,
    changes: dict[str, list[str]],
    servers: list[str],
    lines: tuple[str, ...] | None,
) -> Provisioned:
    """Record the outcome in the domain's state (the request applied, the status, the key's status, the acceptance
    record of a degraded domain) and report it."""
    new = replace(current, request={**event.data, TIME_KEY: event.time.isoformat()}, status=status)
    asked = state.asked_mta_sts_mode(event.data)
    if asked and not current.mta_sts:  # the initial mode becomes the domain's own: a later event without it keeps it
        new = replace(new, mta_sts={"mode": asked, "since": event.time.isoformat(), "reason": "domain.created"})
    new = replace(new, acceptance=_waiting(event, ports, current, checks, verified) if status == "degraded" else {})
    new = new.with_key_status(selector, "ACTIVE" if status in ("provisioned", "degraded") else "PUBLISHED")
    if new.body() != current.body():
        state.save(ports.state, new, current)
        changes["store"].append(f"~ state {status}")
    trust = dnssec.report(event.subject, event.data, ports) if status in ("provisioned", "degraded") else None
    return Provisioned(status, changes, selector, tuple(servers), lines, accepted=tuple(checks), dnssec=trust)


def _resume(event: Envelope, ports: Ports, before: state.DomainState) -> tuple[Provisioned | None, state.DomainState]:
    """A retry of an event that waits for the acceptance gate resumes there, without re-planning every system.

    It applies when an earlier run of this event recorded its wait (``_waiting``) with the DNS gate's serial: that
    run had written everything (Mailcow, PMG and its settle, the policy, the one UPDATE, the key) and every server
    served the plan. When the primary still serves that serial, the retry asks only what the wait is for: SOGo's
    restart step and the acceptance gate (no re-touch: that run settled its map writes). Anything else re-plans (the
    full path, returned as None with the state as it stands): another serial (an edit, a re-signing), and a check
    that passed in the recorded run and fails now (something undid a write; the full path repairs it).

    Raises:
        NotPropagated: the checks that failed before still fail and the wait is not over.
        MailcowUnavailable, MailcowRejected: the SOGo restart this worker ran failed.
    """
    domain, prior, cur = event.subject, before.acceptance, before.current
    verified = prior.get("dns")
    if prior.get("event") != event.id or not verified or cur is None or cur.adopted or _stale(event, before):
        return None, before
    try:
        serial = soa_serial(ports.dns.read_rrset(domain, "SOA"))
    except DnsRefused:  # the full path tells what that means for the event
        return None, before
    if serial is None or serial != verified.get("serial"):
        return None, before
    acceptance.require_probe(ports)
    web = webmail.settle(ports, domain, before)
    checks = _checks(ports, domain, web, retouch=False)
    waited_for = {(f.get("node"), f.get("check")) for f in prior.get("failed", [])}
    regressed = [c for c in checks if not c.ok and (c.node, c.check) not in waited_for]
    if regressed:
        log.info("resume: %s: %s; re-planning", domain, "; ".join(c.describe() for c in regressed))
        return None, web.state
    status = _verdict(event, ports, web.state, checks, verified)
    restarted = ["~ sogo restart"] if web.restarted else []
    changes: dict[str, list[str]] = {"mailcow": restarted, "pmg": [], "dns": [], "store": []}
    if ports.mail.get_dkim(domain) != DkimKey(cur.selector, cur.public_b64):
        _import_key(ports, domain, state.load_key(ports.state, domain, cur.selector, ports.settings), changes)
    servers = [str(s) for s in verified.get("servers", [])]
    return _finish(event, ports, web.state, status, checks, verified, cur.selector, changes, servers, None), web.state


def _serve_policy(
    ports: Ports, domain: str, plans: Plans, pair: keys.KeyPair, changes: dict[str, list[str]], status: str
) -> str:
    """RFC 8461 order: the certificate, the policy fetched as a sender fetches it, and only then ``_mta-sts``.

    A zone we host gets the TXT (a changed id) in a second compare-and-set UPDATE, verified on every server. A zone
    hosted elsewhere needs the customer's ``mta-sts`` CNAME first (HTTP-01 reaches the web host through it); until
    the policy is served its status stays ``awaiting_dns`` (the ``_mta-sts`` line is among the lines to publish).
    """
    hosted = plans.dns is not None
    if not hosted:
        target = plans.want_dns[(f"mta-sts.{domain}", "CNAME")]
        have = ports.dns.resolve(target.name, "CNAME")
        if have is None or [v.lower() for v in have.values] != [v.lower() for v in target.values]:
            return "awaiting_dns"
    changes["store"] += mtasts.ensure_cert(ports, domain, hosted=hosted)
    mtasts.wait_served(ports, domain, plans.body)
    if not hosted:
        return status
    key = mtasts.txt_key(domain)
    want = plans.want_dns[key]
    have = ports.dns.read_rrset(*key)
    plan = plan_dns(domain, {key: have} if have else {}, {key: want})
    if plan.changes:
        serial = ports.dns.apply(domain, list(plan.changes))
        verify_zone(ports, domain, plan.expected, serial, pair)
        changes["dns"] += plan.summary()
    return status


def _waiting(
    event: Envelope,
    ports: Ports,
    st: state.DomainState,
    checks: list[Acceptance],
    verified: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The acceptance record of ``st`` for this event: when the gate first failed for it, what fails now, and (for a
    hosted zone) the serial at which every server passed the DNS gate (``verified``, see ``_gate``)."""
    since = st.acceptance.get("since") if st.acceptance.get("event") == event.id else None
    record: dict[str, Any] = {
        "event": event.id,
        "since": since or ports.clock().isoformat(timespec="seconds"),
        "failed": [c.as_json() for c in checks if not c.ok],
    }
    if verified is not None and verified.get("serial") is not None:
        record["dns"] = verified
    return record


def _checks(ports: Ports, domain: str, web: webmail.Webmail, *, retouch: bool) -> list[Acceptance]:
    """The acceptance gate's checks, after the repairs that help at once.

    ``retouch``: this run wrote nothing to PMG's maps (the entries exist from an earlier run). If a node refuses RCPT,
    that earlier run may have died between its write and its settle, leaving the write inside one second with
    another (PMG's postmap rule: never rebuilt). The maps are then rewritten unchanged through the domain's own
    entries and settled, and the gate asked once more, so a crash costs a second here, not a trip down the ladder.
    A node whose Postfix answers "Relay access denied" is reloaded, and the gate asked once more.

    Raises:
        ConfigError: no SMTP probe is configured.
    """
    checks = acceptance.gate(ports, domain, web)
    if retouch and any(c.check == "smtp rcpt" and not c.ok for c in checks):
        ports.gateway.retouch(domain)
        ports.gateway.settle()
        checks = acceptance.gate(ports, domain, web)
    if acceptance.reload_postfix(ports, acceptance.relay_refused(checks)):
        checks = acceptance.gate(ports, domain, web)
    return checks


def _verdict(
    event: Envelope,
    ports: Ports,
    st: state.DomainState,
    checks: list[Acceptance],
    verified: dict[str, Any] | None = None,
) -> str:
    """``provisioned`` when every check passes; while checks fail, record when they first failed (in the domain's
    state) and raise NotPropagated until ``smtp_probe.max_wait_seconds`` have passed since then; after that
    ``degraded`` (the failing checks go into the event and the state).

    ``verified``: the DNS gate's serial and servers, kept in the record for the retry (``_gate``, ``_resume``).

    Raises:
        NotPropagated: a check fails and the wait is not over (retried by the broker).
    """
    failed = [c for c in checks if not c.ok]
    if not failed:
        return "provisioned"
    record = _waiting(event, ports, st, checks, verified)
    waited = (ports.clock() - dt.datetime.fromisoformat(record["since"])).total_seconds()
    limit = ports.settings.smtp_probe.max_wait_seconds
    if waited >= limit:
        log.warning("degraded: %s after %.0f s: %s", event.subject, waited, "; ".join(c.describe() for c in failed))
        return "degraded"
    if record != st.acceptance:
        state.save(ports.state, replace(st, acceptance=record), st)
    detail = "; ".join(c.describe() for c in failed[:6])
    raise NotPropagated(f"{event.subject} not accepted yet (waited {waited:.0f} of {limit} s): {detail}")


def _gate(
    ports: Ports,
    domain: str,
    plans: Plans,
    serial: int | None,
    pair: keys.KeyPair,
    *,
    replay: bool,
    verified: dict[str, Any] | None = None,
) -> tuple[str, list[str]]:
    """The status and the servers verified. A replay that changed nothing of a domain that already passed the gate
    needs no second gate.

    ``verified``: what an earlier attempt of this event recorded when the DNS gate passed and the acceptance gate did
    not (``_waiting``): every server served exactly the plan at that zone serial. A retry that writes nothing and
    reads the same serial from the primary needs no second DNS gate: a zone does not change without a new serial, and
    no secondary serves a newer one than its primary. Any other serial (an edit, a re-signing) verifies again."""
    if plans.dns is not None:
        if replay:
            return "provisioned", []
        if verified is not None and serial is None and plans.dns_serial is not None:
            if verified.get("serial") == plans.dns_serial:
                return "provisioned", [str(s) for s in verified.get("servers", [])]
        return "provisioned", verify_zone(ports, domain, plans.dns.expected, serial, pair)
    servers = []
    if plans.key_dns is not None:
        kz = plans.key_dns
        servers = verify_zone(ports, kz.zone, kz.expected, serial, pair, signer=domain)
    missing = external_missing(ports, plans.want_dns, pair)
    return ("awaiting_dns" if missing else "provisioned"), servers
