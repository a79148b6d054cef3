"""Webmail readiness: SOGo (webmail, CalDAV/CardDAV, ActiveSync) reads Mailcow's domain list only when its container
starts, so a new domain works there only after a SOGo restart. The real API gives no other signal: a domain counts
as webmail-ready once a restart REQUESTED AFTER the domain was added has succeeded.

Restarts are debounced across workers through one shared record in the private store (``mailcow/sogo-restart.json``,
compare-and-set on its ETag): the first new domain of a burst marks it pending; once ``sogo_restart_interval`` has
passed since then (and since the last restart), the one worker that wins the compare-and-set claims restart number
N+1 and runs it; the others retry (NotPropagated, via the broker) and find that restart covers them. A domain's state
records ``after`` = the number of restarts claimed when its Mailcow domain was added (read after the add, so any
later number was requested after it), then ``ready_by`` = the restart that made it ready.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from functions._core.model import state
from functions._core.model.ports import Ports
from functions._core.platform.errors import AutomationError, NotPropagated, PreconditionFailed
from functions._core.platform.store import ObjectStore, put_over

RECORD = "mailcow/sogo-restart.json"
CAS_ATTEMPTS = 5
log = logging.getLogger("mailplane.webmail")


@dataclass(frozen=True)
class Restarts:
    """The shared record: restart numbers claimed/succeeded/failed, and the pending burst."""

    requested: int = 0  # restarts claimed so far (the newest claim's number)
    requested_at: str | None = None
    succeeded: int = 0  # number of the newest restart that succeeded
    succeeded_at: str | None = None
    failed: int = 0  # number of the newest restart that failed
    pending_since: str | None = None  # the first domain of a burst not yet covered by a claimed restart
    last_error: str | None = None
    etag: str | None = None

    def body(self) -> bytes:
        data = {k: v for k, v in asdict(self).items() if k != "etag"}
        return json.dumps(data, sort_keys=True).encode()


@dataclass(frozen=True)
class Webmail:
    """The domain's state after the step, whether it is webmail-ready, and why not."""

    state: state.DomainState
    ready: bool
    restarted: bool = False  # this call ran a SOGo restart
    waiting: str = ""


def load_restarts(store: ObjectStore) -> Restarts:
    obj = store.get(RECORD)
    if obj is None:
        return Restarts()
    return replace(Restarts(**json.loads(obj.body)), etag=obj.etag)


def _put(store: ObjectStore, new: Restarts, before: Restarts) -> Restarts | None:
    """Compare-and-set write; None when another worker changed the record first."""
    try:
        return replace(new, etag=put_over(store, RECORD, new.body(), before.etag))
    except PreconditionFailed:
        return None


def mark_added(ports: Ports, st: state.DomainState, *, added: bool) -> state.DomainState:
    """Record how many SOGo restarts had been claimed when the Mailcow domain was added (call it after the add);
    kept across retries, renewed when the domain was just added (again) or is being re-created after a deletion.
    Saved at once.

    Raises:
        DnsConflict: the domain's state changed concurrently (transient).
    """
    stale = st.status == "deleted" and "ready_by" in st.webmail  # left from before the domain was deleted
    if not ports.settings.mailcow.sogo_restart or (st.webmail and not added and not stale):
        return st
    after = load_restarts(ports.state).requested
    return state.save(ports.state, replace(st, webmail={"after": after}), st)


def settle(ports: Ports, domain: str, st: state.DomainState) -> Webmail:
    """Move the domain towards webmail-ready without waiting: ready if a restart requested after its add succeeded;
    else mark the burst pending, or claim and run the restart once it is due. A new ``ready`` is saved.

    Raises:
        MailcowUnavailable, MailcowRejected: this worker's restart failed (the burst stays pending).
        NotPropagated: the restart succeeded but the shared record stayed contended.
        DnsConflict: the domain's state changed concurrently.
    """
    if not ports.settings.mailcow.sogo_restart:
        return Webmail(st, True)
    st = mark_added(ports, st, added=False)  # a state from before this step: mark it now (conservative)
    if "ready_by" in st.webmail:
        return Webmail(st, True)
    after, restarted, known = int(st.webmail["after"]), False, None
    for _ in range(CAS_ATTEMPTS):
        rec = load_restarts(ports.state) if known is None else known
        known = None
        if rec.succeeded > after:
            webmail = {**st.webmail, "ready_by": rec.succeeded, "ready_at": rec.succeeded_at}
            return Webmail(state.save(ports.state, replace(st, webmail=webmail), st), True, restarted)
        waiting, write = _next_step(ports, rec, after)
        if write is None:
            return Webmail(st, False, restarted, waiting)
        won = _put(ports.state, write, rec)
        if won is None:
            continue  # another worker changed the record: look again
        if waiting:  # we marked the burst pending
            return Webmail(st, False, restarted, waiting)
        known = _run(ports, domain, won, rec.pending_since)
        restarted = True
    return Webmail(st, False, restarted, "the SOGo restart record is contended")


def _next_step(ports: Ports, rec: Restarts, after: int) -> tuple[str, Restarts | None]:
    """Why the domain waits ("" = claim the restart now) and the record to write (the claim, or the pending mark)."""
    mc, now = ports.settings.mailcow, ports.clock()
    if rec.requested > after and rec.requested > max(rec.succeeded, rec.failed):
        started = _time(rec.requested_at)
        if started is not None and started <= now < started + dt.timedelta(seconds=2 * mc.sogo_restart_timeout):
            return f"SOGo restart {rec.requested} (requested after the domain was added) is running", None
    interval = dt.timedelta(seconds=mc.sogo_restart_interval)
    # a time in the future comes from a skewed clock: ignored (a pending mark is set again), so that it never delays
    # a restart by more than one interval
    pending_at, last = (
        None if x is None or x > now else x for x in (_time(rec.pending_since), _time(rec.requested_at))
    )
    pending = pending_at or now
    due = max(pending + interval, (last or pending) + interval)
    if now >= due:
        return "", replace(rec, requested=rec.requested + 1, requested_at=_iso(now), pending_since=None)
    waiting = f"SOGo restart {rec.requested + 1} is due at {_iso(due)}"
    if pending_at is None:
        return waiting, replace(rec, pending_since=_iso(pending))
    return waiting, None


def _run(ports: Ports, domain: str, claimed: Restarts, pending: str | None) -> Restarts:
    """Run the claimed restart and record its result in the shared record; returns the record as written.

    Raises:
        MailcowUnavailable, MailcowRejected: the restart failed (the burst is pending again, retried after the
            interval).
        NotPropagated: the result could not be recorded (contended).
    """
    number = claimed.requested
    log.info("sogo restart %d (for %s and every domain added before it)", number, domain)
    try:
        ports.mail.restart_sogo()
    except AutomationError as exc:
        reason = exc.reason[:200]
        again = pending or claimed.requested_at

        def failed(r: Restarts) -> Restarts:
            return replace(r, failed=max(r.failed, number), last_error=reason, pending_since=r.pending_since or again)

        _update(ports.state, failed, claimed)
        raise
    now = _iso(ports.clock())

    def succeeded(r: Restarts) -> Restarts:
        return replace(r, succeeded=number, succeeded_at=now, last_error=None) if number > r.succeeded else r

    return _update(ports.state, succeeded, claimed)


def _update(store: ObjectStore, change: Callable[[Restarts], Restarts], known: Restarts | None = None) -> Restarts:
    """Apply ``change`` to the shared record (``known``: as last read or written) with compare-and-set, re-reading on
    a lost race (bounded).

    Raises:
        NotPropagated: still contended after CAS_ATTEMPTS.
    """
    for _ in range(CAS_ATTEMPTS):
        rec = load_restarts(store) if known is None else known
        known = None
        new = change(rec)
        if new == rec:
            return rec
        won = _put(store, new, rec)
        if won is not None:
            return won
    raise NotPropagated("the SOGo restart record is contended; retried")


def readiness(ports: Ports, st: state.DomainState) -> tuple[bool, str]:
    """For `status` and `drift` (reads only): whether the domain is webmail-ready, and what was observed."""
    if not ports.settings.mailcow.sogo_restart:
        return True, "not tracked (mailcow.sogo_restart = false)"
    mark = st.webmail
    if "ready_by" in mark:
        return True, f"ready: SOGo restart {mark['ready_by']} at {mark.get('ready_at')}"
    if "after" not in mark:
        return False, "unknown: added before SOGo readiness was tracked (re-send domain.created)"
    rec = load_restarts(ports.state)
    if rec.succeeded > int(mark["after"]):
        return True, f"ready: SOGo restart {rec.succeeded} at {rec.succeeded_at} (not recorded yet)"
    why = f"; last restart failed: {rec.last_error}" if rec.last_error else ""
    return False, f"waiting: no SOGo restart after restart {mark['after']} has succeeded{why}"


def _iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="microseconds")


def _time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None
