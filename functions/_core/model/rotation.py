"""DKIM rotation (reference/dns.md §5): the per-domain state machine, as pure decisions plus one executor per step.

    GENERATED -> PUBLISHED -> VISIBLE -> READY -> ACTIVE -> RETIRING -> [REVOKED ->] WITHDRAWN -> DESTROYED

``next_step`` looks only at the stored state, the request and the clock, and names the one step that may run now, or
says why none may (a ``Wait``). Each executor re-reads the system it changes, makes at most one write (one CAS
UPDATE, one Mailcow import, one object-store delete) and then records the transition with a conditional save. So a
crash between any two steps leaves a state the next run resumes from, and a replay finds every effect in place and
writes nothing. The state lives in the object store, never in DNS; the private keys only sealed beside it.

Guards: at most two keys published per domain; a key Mailcow signs with is never revoked or withdrawn; Mailcow is
switched only after a probe signed with the new key verifies against every authoritative server (the canary).
A ``compromised`` request takes the shortest safe path: minimal propagation wait, the old key revoked (empty ``p=``)
as soon as Mailcow no longer signs with it, withdrawn after ``emergency_revoke_hours``, each step audited.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from functions._core.model import acceptance, keys, state, webmail
from functions._core.model.keys import REVOKED_TXT
from functions._core.model.mailset import customer_lines, delegated, desired_records, dkim_name, dkim_record, fqdn
from functions._core.model.ports import DkimKey, DnsChange, Ports
from functions._core.model.records import RecordSet
from functions._core.model.state import DomainState, KeyRecord
from functions._core.model.verify import (
    delegated_lookup,
    external_missing,
    server_mismatches,
    txt_value,
    until_propagated,
)
from functions._core.platform.config import DkimSettings
from functions._core.platform.errors import (
    EventInvalid,
    NotPropagated,
    OwnershipConflict,
    PermanentError,
    PreconditionFailed,
)

PENDING = ("GENERATED", "PUBLISHED", "VISIBLE", "READY")  # a successor on its way to ACTIVE
SERVED = ("PUBLISHED", "VISIBLE", "READY", "ACTIVE", "RETIRING", "REVOKED")  # its TXT is in DNS
MAX_PUBLISHED = 2
MAX_STEPS = 16  # one run never loops forever, whatever the state says
HISTORY = 60  # transitions kept in the state (the audit objects keep the emergencies for good)


class RotationRefused(PermanentError):
    """A rotation guard refused a step (the key Mailcow signs with, a foreign signing key); nothing was written."""


@dataclass(frozen=True)
class Request:
    """What a key.rotate asks: ``selector`` is the key it names (``key_id``), None = the active one."""

    event_id: str
    reason: str  # scheduled | nudge | compromised
    selector: str | None = None
    publisher: str = ""


@dataclass(frozen=True)
class Step:
    action: str  # compromise | generate | publish | gate | ready | switch | revoke | withdraw | destroy
    selector: str = ""


@dataclass(frozen=True)
class Wait:
    """Why a run stops: ``status`` is the outcome status; ``until`` when a nudge can make progress again."""

    status: str  # idle | pending | manual_action | canary_failed | skipped
    reason: str
    until: dt.datetime | None = None
    instructions: tuple[str, ...] = ()


# ---------------------------------------------------------------- pure: decisions and timing


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="seconds")


def since(key: KeyRecord) -> dt.datetime:
    """When ``key`` entered its current status."""
    return parse_time(key.changed_at or key.created_at)


def active(st: DomainState) -> KeyRecord | None:
    return next((k for k in reversed(st.keys) if k.status == "ACTIVE"), None)


def pending(st: DomainState) -> KeyRecord | None:
    return next((k for k in st.keys if k.status in PENDING), None)


def jitter(domain: str, s: DkimSettings) -> dt.timedelta:
    """A stable per-domain offset in [0, rotate_jitter_days): domains created together rotate spread out."""
    span = s.rotate_jitter_days * 86400
    if span <= 0:
        return dt.timedelta(0)
    return dt.timedelta(seconds=int.from_bytes(hashlib.sha256(domain.encode()).digest()[:8], "big") % span)


def _emergency(st: DomainState) -> bool:
    """Mailcow still signs with a compromised key."""
    return any(k.compromised_by and k.status == "ACTIVE" for k in st.keys)


def _propagation(s: DkimSettings, emergency: bool) -> dt.timedelta:
    seconds = min(s.propagation_seconds, s.emergency_propagation_seconds) if emergency else s.propagation_seconds
    return dt.timedelta(seconds=seconds)


def _old_due(k: KeyRecord, s: DkimSettings, emergency: bool) -> dt.datetime | None:
    """When the next step of a key that no longer signs becomes due (None: nothing left to do)."""
    t = since(k)
    if k.status == "RETIRING":
        return t if k.compromised_by or emergency else t + dt.timedelta(days=s.retire_days)
    if k.status == "REVOKED":
        if emergency and not k.compromised_by:
            return t
        return t + dt.timedelta(hours=s.emergency_revoke_hours if k.compromised_by else s.revoke_hours)
    if k.status == "WITHDRAWN":
        return t + dt.timedelta(days=s.keep_days)
    return None


def _old_action(k: KeyRecord, s: DkimSettings, emergency: bool) -> str:
    if k.status == "RETIRING":
        if k.compromised_by or (s.revoke_hours > 0 and not emergency):
            return "revoke"
        return "withdraw"
    return "withdraw" if k.status == "REVOKED" else "destroy"


def _target(st: DomainState, req: Request) -> KeyRecord | None:
    """The key the request wants replaced; None for a nudge or when this event already acted (a redelivery)."""
    if req.reason == "nudge" or any(k.event == req.event_id for k in st.keys):
        return None
    if req.selector is not None:
        return next((k for k in st.keys if k.selector == req.selector), None)
    marked = next((k for k in st.keys if k.compromised_by == req.event_id), None)
    return marked if marked is not None else active(st)


def next_step(
    st: DomainState, req: Request, s: DkimSettings, now: dt.datetime, *, delegated: bool = False
) -> Step | Wait:
    """The one step that may run now for ``st``, or why none may."""
    first = pending(st)
    if st.status == "awaiting_dns" and first is not None and first.status == "PUBLISHED":
        return Step("activate", first.selector)
    if st.status != "provisioned" or active(st) is None:
        return Wait("skipped", f"{st.domain} is {st.status} with no active DKIM key: nothing to rotate")
    target = _target(st, req)
    if target is not None and req.reason == "compromised" and not target.compromised_by:
        return Step("compromise", target.selector)
    emergency = _emergency(st)
    for k in st.keys:
        if k.compromised_by and k.status in PENDING:  # never let a compromised key sign
            return Step("withdraw", k.selector)
    for k in st.keys:
        when = _old_due(k, s, emergency)
        if when is not None and when <= now:
            return Step(_old_action(k, s, emergency), k.selector)
    new = pending(st)
    if new is not None:
        return _successor_step(st, new, s, now, emergency)
    if target is not None and target.status == "ACTIVE":
        blocker = _blocker(st, s, emergency) or _no_slot(st, s, delegated)
        return Step("generate") if blocker is None else blocker
    return _idle(st, s)


def _no_slot(st: DomainState, s: DkimSettings, delegated: bool) -> Step | Wait | None:
    """A delegated domain reuses its CNAME slots: a slot whose earlier key is only withdrawn (kept ``keep_days``
    for the record) has that key destroyed early; a Wait when every slot still serves a key."""
    if not delegated or state.next_slot(st, s.delegation_slots) is not None:
        return None
    withdrawn = next((k for k in st.keys if k.status == "WITHDRAWN" and k.selector in s.delegation_slots), None)
    if withdrawn is not None:
        return Step("destroy", withdrawn.selector)
    return Wait("pending", f"every DKIM delegation slot ({', '.join(s.delegation_slots)}) still holds a served key")


def _blocker(st: DomainState, s: DkimSettings, emergency: bool) -> Wait | None:
    """A Wait when one more published key would make more than MAX_PUBLISHED."""
    served = [k for k in st.keys if k.status in SERVED and k.status not in PENDING]
    if len(served) < MAX_PUBLISHED:
        return None
    old = [k for k in served if k.status != "ACTIVE"]
    until = min((t for k in old if (t := _old_due(k, s, emergency)) is not None), default=None)
    names = ", ".join(f"{k.selector} ({k.status})" for k in served)
    return Wait("pending", f"{len(served)} keys published ({names}): the retired one is withdrawn first", until)


def _successor_step(st: DomainState, new: KeyRecord, s: DkimSettings, now: dt.datetime, emergency: bool) -> Step | Wait:
    if new.status == "GENERATED":
        blocker = _blocker(st, s, emergency)
        return Step("publish", new.selector) if blocker is None else blocker
    if new.status == "PUBLISHED":
        return Step("gate", new.selector)
    if new.status == "VISIBLE":
        ready_at = since(new) + _propagation(s, emergency)
        if ready_at > now:
            return Wait("pending", f"{new.selector} is visible; propagation wait until {iso(ready_at)}", ready_at)
        return Step("ready", new.selector)
    return Step("switch", new.selector)


def _idle(st: DomainState, s: DkimSettings) -> Wait:
    found = due(st, s)
    if found is None:
        return Wait("idle", "nothing to do")
    kind, when = found
    what = "next rotation due" if kind == "start" else "next step due"
    return Wait("idle" if kind == "start" else "pending", f"{what} {iso(when)}", when)


def due(st: DomainState, s: DkimSettings) -> tuple[str, dt.datetime] | None:
    """When this domain next needs a key.rotate: ("nudge", t) to continue a rotation, ("start", t) to begin one."""
    cur, first = active(st), pending(st)
    if st.status == "awaiting_dns" and first is not None:  # checked at every run until the customer's DNS is there
        return "nudge", since(first)
    if st.status != "provisioned" or cur is None:
        return None
    emergency = _emergency(st)
    times = [t for k in st.keys if (t := _old_due(k, s, emergency)) is not None]
    new = pending(st)
    if new is not None:  # a rotation in progress: it continues, none starts
        times.append(since(new) + _propagation(s, emergency) if new.status == "VISIBLE" else since(new))
        return "nudge", min(times)
    start = since(cur) + dt.timedelta(days=s.rotate_after_days) + jitter(st.domain, s)
    if times and (min(times) <= start or _blocker(st, s, emergency) is not None):
        return "nudge", min(times)
    return "start", start


def overdue(st: DomainState, s: DkimSettings, now: dt.datetime) -> tuple[str, dt.timedelta] | None:
    """For a provisioned domain whose next rotation step is past due: the status of the key that waits for it and
    how long past due it is (the operator's "stuck" is this beyond a tolerance; `mailplane health`). None when no
    step is due, or the domain is not provisioned (awaiting_dns waits for the customer, not for us)."""
    if st.status != "provisioned" or active(st) is None:
        return None
    emergency = _emergency(st)
    steps = [(k.status, t) for k in st.keys if (t := _old_due(k, s, emergency)) is not None]
    new = pending(st)
    if new is not None:
        steps.append((new.status, since(new) + _propagation(s, emergency) if new.status == "VISIBLE" else since(new)))
    late = [(when, status) for status, when in steps if when <= now]
    if not late:
        return None
    when, status = min(late)
    return status, now - when


# ---------------------------------------------------------------- the zone: ours (CAS), delegated to us, or elsewhere


TxtLookup = Callable[[str], bytes | None]


class Zone:
    """Where the DKIM TXT of one customer domain lives, in one of three places:

    - hosted: the customer zone is ours: read from the primary, written with CAS, verified on every server;
    - delegated: the customer CNAMEs each slot into our delegation zone (reference/dns.md §5.4): the TXT is read,
      written (CAS) and verified there, and the canary also resolves it through the customer's CNAME;
    - elsewhere: read from the public DNS; every write is a manual action for the customer.
    """

    def __init__(self, ports: Ports, domain: str, hosted: bool, *, delegated: bool = False) -> None:
        self.ports, self.domain, self.hosted = ports, domain, hosted
        self.delegated = delegated and not hosted
        self.managed = hosted or self.delegated  # mailplane writes the TXT itself
        self.zone = ports.settings.dkim.delegation_zone if self.delegated else domain

    def name(self, selector: str) -> str:
        return dkim_name(self.domain, self.ports.settings, selector, delegated=self.delegated)

    def want(self, selector: str, text: str) -> RecordSet:
        return dkim_record(self.domain, self.ports.settings, selector, text, delegated=self.delegated)

    def txt(self, selector: str) -> RecordSet | None:
        name, dns = self.name(selector), self.ports.dns
        if self.hosted:
            return dns.read_zone(self.domain).get((name, "TXT"))
        return dns.read_rrset(name, "TXT") if self.delegated else dns.resolve(name, "TXT")

    def write(self, before: RecordSet | None, after: RecordSet | None, manual: list[str]) -> int | Wait:
        """ONE CAS UPDATE (returns the serial), or for a zone hosted elsewhere the action the customer must take."""
        if not self.managed:
            return Wait("manual_action", f"the zone {self.domain} is hosted elsewhere", None, tuple(manual))
        return self.ports.dns.apply(self.zone, [DnsChange(before=before, after=after)])

    def lookups(self, selector: str) -> list[tuple[str, TxtLookup]]:
        """(where, TXT lookup) for every authoritative server, and the public view where the customer's DNS is
        involved (a zone hosted elsewhere; a delegated one, through the customer's CNAME)."""
        dns = self.ports.dns

        def public(name: str) -> bytes | None:
            return txt_value(dns.resolve(name.rstrip("."), "TXT"))

        if not self.managed:
            return [("public DNS", public)]
        target = self.name(selector)

        def at(server: str) -> TxtLookup:
            if self.delegated:
                return delegated_lookup(lambda n: dns.query(server, n, "TXT"), self.domain, selector, target)
            return lambda name: txt_value(dns.query(server, name.rstrip("."), "TXT"))

        found = [(server, at(server)) for server in dns.servers(self.zone)]
        return [*found, ("public DNS via the customer's CNAME", public)] if self.delegated else found

    def mismatches(self, want: RecordSet, min_serial: int | None) -> list[str]:
        if not self.managed:
            got = self.ports.dns.resolve(want.name, "TXT")
            return [] if want.same_data(got) else [f"public DNS: TXT {want.name} is not published yet"]
        dns = self.ports.dns
        return [
            problem
            for server in dns.servers(self.zone)
            for problem in server_mismatches(dns, self.zone, server, {want.key: want}, min_serial)
        ]

    def cname_problem(self, selector: str) -> Wait | None:
        """Delegated: a manual action when the customer's ``<selector>._domainkey`` CNAME is gone or points
        elsewhere (checked before every switch; the customer publishes it once, at domain.created)."""
        if not self.delegated:
            return None
        name, target = f"{selector}._domainkey.{self.domain}", self.name(selector)
        got = self.ports.dns.resolve(name, "CNAME")
        if got is not None and got.values == (fqdn(target),):
            return None
        line = RecordSet.of(name, "CNAME", self.ports.settings.ttl.cname, [fqdn(target)]).zone_lines()
        why = f"the customer's CNAME {name} is {'missing' if got is None else 'pointing elsewhere'}"
        return Wait("manual_action", why, None, tuple(f"publish: {ln}" for ln in line))


# ---------------------------------------------------------------- executors: read, guard, one write, record


@dataclass(frozen=True)
class Ctx:
    ports: Ports
    domain: str
    request: Request
    now: dt.datetime
    zone: Zone


def _key(st: DomainState, selector: str) -> KeyRecord:
    return next(k for k in st.keys if k.selector == selector)


def _commit(ctx: Ctx, st: DomainState, edits: Mapping[str, Mapping[str, Any]]) -> DomainState:
    """Apply field edits per selector; a status change stamps ``changed_at`` and a history entry; save (CAS)."""
    at, history, changed = iso(ctx.now), list(st.history), {}
    for selector, edit in edits.items():
        k, fields = _key(st, selector), dict(edit)
        if "status" in fields and fields["status"] != k.status:
            fields["changed_at"] = at
            history.append(_entry(ctx, at, selector, f"{k.status}->{fields['status']}"))
        if fields.get("compromised_by") and not k.compromised_by:
            history.append(_entry(ctx, at, selector, "COMPROMISED"))
        changed[selector] = replace(k, **fields)
    new_keys = tuple(changed.get(k.selector, k) for k in st.keys)
    new = replace(st, keys=new_keys, history=tuple(history[-HISTORY:]))
    return state.save(ctx.ports.state, new, st)


def _entry(ctx: Ctx, at: str, selector: str, transition: str) -> dict[str, str]:
    return {"at": at, "event": ctx.request.event_id, "selector": selector, "transition": transition}


def _audit(ctx: Ctx, st: DomainState, selector: str, action: str) -> None:
    """An immutable audit record per action on a compromised key (written once; a replay finds it). A delegation
    slot is reused over the years, so its key is named by the slot and the key's creation time."""
    created = _key(st, selector).created_at if ctx.zone.delegated else ""
    name = f"{selector}@{created}" if created else selector
    body = {
        "domain": ctx.domain,
        "selector": selector,
        "action": action,
        "at": iso(ctx.now),
        "event": ctx.request.event_id,
        "publisher": ctx.request.publisher,
        "reason": "compromised",
    }
    try:
        ctx.ports.state.put(f"audit/{ctx.domain}/{name}/{action}.json", json.dumps(body).encode(), if_none_match=True)
    except PreconditionFailed:
        pass


def _not_signing(ctx: Ctx, k: KeyRecord) -> None:
    have = ctx.ports.mail.get_dkim(ctx.domain)
    if have is not None and have.selector == k.selector:
        raise RotationRefused(f"Mailcow signs {ctx.domain} with {k.selector}: it is not revoked or withdrawn")


def compromise(ctx: Ctx, st: DomainState, selector: str) -> DomainState | Wait:
    _audit(ctx, st, selector, "compromised")
    return _commit(ctx, st, {selector: {"compromised_by": ctx.request.event_id}})


def generate(ctx: Ctx, st: DomainState, _selector: str) -> DomainState | Wait:
    """A new key under a never-used dated selector (a delegated domain: the next free slot), sealed in the store
    BEFORE the state names it."""
    s, cur = ctx.ports.settings, active(st)
    fresh = state.new_key(st, s, ctx.now, delegated=ctx.zone.delegated)
    pair = state.persist_key(ctx.ports.state, ctx.domain, fresh, s)
    at = iso(ctx.now)
    rec = KeyRecord(
        pair.selector,
        pair.public_b64,
        "GENERATED",
        at,
        changed_at=at,
        replaces=cur.selector if cur else None,
        event=ctx.request.event_id,
    )
    new = replace(state.with_new_key(st, rec), history=(*st.history, _entry(ctx, at, rec.selector, "NONE->GENERATED")))
    return state.save(ctx.ports.state, replace(new, history=new.history[-HISTORY:]), st)


def publish(ctx: Ctx, st: DomainState, selector: str) -> DomainState | Wait:
    k, zone = _key(st, selector), ctx.zone
    want, have = zone.want(selector, k.text), zone.txt(selector)
    serial = None
    if not want.same_data(have):
        manual = [f"publish: {line}" for line in want.zone_lines()]
        if have is not None and zone.managed:
            raise OwnershipConflict(f"{want.name} TXT holds data mailplane did not publish")
        if have is not None:
            manual.insert(0, f"{want.name} TXT holds another value: replace it")
        out = zone.write(None, want, manual)
        if isinstance(out, Wait):
            return out
        serial = out
    return _commit(ctx, st, {selector: {"status": "PUBLISHED", "serial": serial}})


def gate(ctx: Ctx, st: DomainState, selector: str) -> DomainState | Wait:
    """Every authoritative server serves the new TXT (content, and a serial not older than the UPDATE's)."""
    k = _key(st, selector)

    def check() -> None:
        problems = ctx.zone.mismatches(ctx.zone.want(selector, k.text), k.serial)
        if problems:
            raise NotPropagated("; ".join(problems[:6]))

    until_propagated(ctx.ports.settings.dns.propagation_wait, check)
    return _commit(ctx, st, {selector: {"status": "VISIBLE"}})


def ready(ctx: Ctx, st: DomainState, selector: str) -> DomainState | Wait:
    return _commit(ctx, st, {selector: {"status": "READY"}})


def switch(ctx: Ctx, st: DomainState, selector: str) -> DomainState | Wait:
    """Canary on every authoritative server, then Mailcow signs with the new key (one dkim_import), checked."""
    new, old, mail = _key(st, selector), active(st), ctx.ports.mail
    assert old is not None
    missing_cname = ctx.zone.cname_problem(selector)
    if missing_cname is not None:
        return replace(missing_cname, reason=f"{missing_cname.reason}; Mailcow keeps signing with {old.selector}")
    pair = state.load_key(ctx.ports.state, ctx.domain, selector, ctx.ports.settings)
    failed = [
        where
        for where, look in ctx.zone.lookups(selector)
        if not keys.probe_verifies(ctx.domain, selector, pair.private_pem, look)
    ]
    if failed or pair.public_b64 != new.public_b64:
        why = f"a probe signed with {selector} does not verify at {', '.join(failed) or 'the store'}"
        return Wait("canary_failed", f"{why}; Mailcow keeps signing with {old.selector}")
    want, have = DkimKey(selector, new.public_b64), mail.get_dkim(ctx.domain)
    if have != want:
        if have is not None and have != DkimKey(old.selector, old.public_b64):
            raise RotationRefused(f"Mailcow signs {ctx.domain} with {have.selector}, a key mailplane did not expect")
        mail.import_dkim(ctx.domain, selector, pair.private_pem.reveal(), overwrite=True)
        if mail.get_dkim(ctx.domain) != want:
            raise RotationRefused(f"Mailcow accepted {selector} for {ctx.domain} but does not report it")
    return _commit(ctx, st, {selector: {"status": "ACTIVE"}, old.selector: {"status": "RETIRING"}})


def activate(ctx: Ctx, st: DomainState, selector: str) -> DomainState | Wait:
    """A zone hosted elsewhere (awaiting_dns since domain.created): once the public DNS serves every record the
    customer was asked to publish and a probe signed with the key verifies there, Mailcow signs with it."""
    k, mail, s = _key(st, selector), ctx.ports.mail, ctx.ports.settings
    want = desired_records(ctx.domain, s, selector, k.public_b64, delegated=ctx.zone.delegated)
    pair = state.load_key(ctx.ports.state, ctx.domain, selector, s)
    missing = external_missing(ctx.ports, want, pair)
    if missing:
        why = f"{ctx.domain} waits for the customer's DNS: {', '.join(missing[:6])} not served yet"
        return Wait("manual_action", why, None, tuple(f"publish: {ln}" for ln in customer_lines(want)))
    web = webmail.settle(ctx.ports, ctx.domain, st)  # SOGo must know the domain before it counts as provisioned
    if not web.ready:
        raise NotPropagated(f"{ctx.domain}: not webmail-ready: {web.waiting}")
    st = web.state
    # the customer's MX now points at the gateways: daemons that opened the relay-domain map before it had the domain
    # would refuse the first mail (docs/mail-plane.md)
    acceptance.reload_where_refused(ctx.ports, ctx.domain)
    have, key = mail.get_dkim(ctx.domain), DkimKey(selector, k.public_b64)
    if have != key:
        if have is not None:
            raise RotationRefused(f"Mailcow signs {ctx.domain} with {have.selector}, a key mailplane did not expect")
        mail.import_dkim(ctx.domain, selector, pair.private_pem.reveal(), overwrite=True)
        if mail.get_dkim(ctx.domain) != key:
            raise RotationRefused(f"Mailcow accepted {selector} for {ctx.domain} but does not report it")
    return _commit(ctx, replace(st, status="provisioned"), {selector: {"status": "ACTIVE"}})


def revoke(ctx: Ctx, st: DomainState, selector: str) -> DomainState | Wait:
    """Serve the retired key with an empty ``p=`` (revoked): verifiers fail clearly instead of finding nothing."""
    k, zone = _key(st, selector), ctx.zone
    _not_signing(ctx, k)
    if k.compromised_by:
        _audit(ctx, st, selector, "revoked")
    ours, want, have = (
        zone.want(selector, k.text),
        zone.want(selector, REVOKED_TXT),
        zone.txt(selector),
    )
    if have is not None and not want.same_data(have):
        _check_ours(zone, have, ours, want)
        out = zone.write(have, want, [f"replace {want.name} TXT with: {line}" for line in want.zone_lines()])
        if isinstance(out, Wait):
            return out
    return _commit(ctx, st, {selector: {"status": "REVOKED"}})


def withdraw(ctx: Ctx, st: DomainState, selector: str) -> DomainState | Wait:
    k, zone = _key(st, selector), ctx.zone
    _not_signing(ctx, k)
    if k.compromised_by:
        _audit(ctx, st, selector, "withdrawn")
    have = zone.txt(selector)
    if have is not None:
        ours, revoked = zone.want(selector, k.text), zone.want(selector, REVOKED_TXT)
        _check_ours(zone, have, ours, revoked)
        out = zone.write(have, None, [f"delete: {have.name}. TXT (the retired DKIM key {selector})"])
        if isinstance(out, Wait):
            return out
    return _commit(ctx, st, {selector: {"status": "WITHDRAWN"}})


def _check_ours(zone: Zone, have: RecordSet, *ours: RecordSet) -> None:
    if zone.managed and not any(rs.same_data(have) for rs in ours):
        raise OwnershipConflict(f"{have.name} TXT holds data mailplane did not publish; it is left alone")


def destroy(ctx: Ctx, st: DomainState, selector: str) -> DomainState | Wait:
    """The private key is deleted from the store (only the public part stays in the state)."""
    blob = state.key_blob_key(ctx.domain, selector)
    if ctx.ports.state.get(blob) is not None:  # re-read first: a replay writes nothing
        ctx.ports.state.delete(blob)
    return _commit(ctx, st, {selector: {"status": "DESTROYED"}})


EXECUTORS: dict[str, Callable[[Ctx, DomainState, str], DomainState | Wait]] = {
    "activate": activate,
    "compromise": compromise,
    "generate": generate,
    "publish": publish,
    "gate": gate,
    "ready": ready,
    "switch": switch,
    "revoke": revoke,
    "withdraw": withdraw,
    "destroy": destroy,
}


def advance(ports: Ports, domain: str, req: Request) -> tuple[DomainState, Wait]:
    """Run every step that may run now; return the final state and why the run stopped.

    Raises:
        EventInvalid: ``key_id`` names a key this domain never had.
        NotPropagated: an authoritative server does not serve the new key yet (transient: retried).
        OwnershipConflict: a DKIM name holds data mailplane did not publish.
        RotationRefused: a guard refused a step (Mailcow signs with an unexpected key).
    """
    st = state.load(ports.state, domain)
    if req.selector is not None and st.keys and all(k.selector != req.selector for k in st.keys):
        raise EventInvalid(f"{domain} has no DKIM key {req.selector}")
    zone = Zone(ports, domain, _hosted(ports, st), delegated=delegated(st.request))
    ctx = Ctx(ports, domain, req, ports.clock(), zone)
    for _ in range(MAX_STEPS):
        decision = next_step(st, req, ports.settings.dkim, ctx.now, delegated=ctx.zone.delegated)
        if isinstance(decision, Wait):
            return st, decision
        out = EXECUTORS[decision.action](ctx, st, decision.selector)
        if isinstance(out, Wait):
            return st, out
        st = out
    return st, Wait("pending", "step limit reached; the next nudge continues", ctx.now)


def _hosted(ports: Ports, st: DomainState) -> bool:
    dns = st.request.get("dns", {})
    hosted = bool(dns.get("hosted", False)) if isinstance(dns, dict) else False
    if hosted and st.status == "provisioned" and not ports.dns.hosts_zone(st.domain):
        raise RotationRefused(f"zone {st.domain} is no longer served by our DNS")
    return hosted
