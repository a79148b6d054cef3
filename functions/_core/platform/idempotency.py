"""The idempotency ledger (A7, reference/broker.md §10): one record per (function, event) in an ObjectStore.

Key: ``idem/<function>/<sha256(source + "/" + id)>.json``, where ``function`` is the handler's literal ``NAME``
(never derived from ``__module__``/``__qualname__``: renaming code must not change keys). The record is JSON::

    {"status": "IN_PROGRESS" | "COMPLETED", "lease_until": t, "owner": str, "attempt": int,
     "payload_hash": fingerprint(event), "result": outcome JSON | null, "completed_at": t | null,
     "expires_at": t, "function": str, "source": str, "event_id": str}

Protocol (powertools semantics, with conditional writes instead of a database):

* enter: put ``If-None-Match: *`` an IN_PROGRESS record (``lease_until = now + lease``, always written) -> owned.
  If a record exists (ETag E) and has not expired:
  COMPLETED and same fingerprint -> ``claim.completed``, ``claim.result`` (touch no other system, return it);
  other fingerprint (COMPLETED or IN_PROGRESS) -> ``EventInvalid`` (same id, different body);
  IN_PROGRESS with a valid lease -> ``LeaseHeld`` (give the delivery back, whoever holds it), unless its owner is a
  process of this host that no longer exists (``owner_gone``: a worker killed mid-run) -> taken over at once.
  Expired (IN_PROGRESS past ``lease_until``, any record past ``expires_at``) or unreadable -> take over with
  ``If-Match: E``; losing that race -> ``LeaseHeld``. A record whose body cannot even be fetched (``StoreUnreadable``
  after the in-place retries: LocalStack keeps torn objects of aborted PUTs) counts as an IN_PROGRESS of an unknown
  owner leased from its last write: ``LeaseHeld`` until that lease is over, then taken over the same way.
* ``claim.complete(outcome_json)``: put ``If-Match: <our ETag>`` COMPLETED (``expires_at = now + keep``); a lost
  lease is logged loudly and raises ``LeaseHeld``.
* leaving the block with an exception (or without ``complete``) releases the claim: our record is deleted if its
  ETag is still ours, so a retry can run. The store has no conditional delete (LocalStack: ``NotImplemented``), so
  this is read-then-delete; the window is tiny and the lease expiry bounds any damage. A failed release is logged,
  never raised over the original exception.

The ledger is an optimisation and a concurrency guard; correctness still comes from read-diff-plan (A2).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Final

from functions._core.platform.envelope import Envelope, fingerprint
from functions._core.platform.errors import (
    AutomationError,
    EventInvalid,
    PreconditionFailed,
    StoreUnreadable,
    TransientError,
)
from functions._core.platform.store import ObjectStore

__all__ = ["COMPLETED", "IN_PROGRESS", "Claim", "LeaseHeld", "Ledger", "default_owner", "ledger_key", "owner_gone"]

log = logging.getLogger("mailplane.idempotency")

IN_PROGRESS: Final = "IN_PROGRESS"
COMPLETED: Final = "COMPLETED"
PREFIX: Final = "idem/"
_FUNCTION = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_ACQUIRE_ROUNDS = 3  # put-if-absent, then re-read; a record deleted in between gets another round


class LeaseHeld(TransientError):
    """Another worker holds the claim (or took it over): give the delivery back unprocessed."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def default_owner() -> str:
    """``<hostname>:<pid>``: who holds a lease, for logs and operators."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_gone(owner: str) -> bool:
    """True when ``owner`` (``<hostname>:<pid>[:…]``, see ``default_owner``) names a process of this host that no
    longer exists: a worker that died, whose claims and leases need not wait for their expiry. Never True for
    another host, this process, or an owner of another form. Needs hostnames unique per pid namespace (the default
    for hosts, containers and pods).
    """
    host, _, rest = owner.partition(":")
    pid = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) in (0, os.getpid()):
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, but not ours to signal
        return False
    return False


def ledger_key(function: str, event: Envelope, prefix: str = PREFIX) -> str:
    """``<prefix><function>/<sha256(source + "/" + id)>.json``.

    Raises:
        ValueError: ``function`` is not a literal handler name (lowercase letters, digits, underscores).
    """
    if not _FUNCTION.match(function):
        raise ValueError(f"idempotency namespace must be a literal handler NAME, not {function!r}")
    digest = hashlib.sha256(f"{event.source}/{event.id}".encode()).hexdigest()
    return f"{prefix}{function}/{digest}.json"


@dataclass(frozen=True)
class _Record:
    status: str
    lease_until: datetime
    expires_at: datetime
    owner: str
    attempt: int
    payload_hash: str
    result: dict[str, Any] | None

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at or (self.status == IN_PROGRESS and now >= self.lease_until)


def _stamp(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _read(body: bytes) -> _Record | None:
    """The stored record, or None when it is not one (corrupt, foreign, unknown status)."""
    try:
        doc = json.loads(body)
        record = _Record(
            status=doc["status"],
            lease_until=datetime.fromisoformat(doc["lease_until"]),
            expires_at=datetime.fromisoformat(doc["expires_at"]),
            owner=str(doc["owner"]),
            attempt=int(doc["attempt"]),
            payload_hash=str(doc["payload_hash"]),
            result=doc.get("result"),
        )
    except (ValueError, TypeError, KeyError):
        return None
    ok = record.status in (IN_PROGRESS, COMPLETED) and record.lease_until.tzinfo is not None
    return record if ok and record.expires_at.tzinfo is not None else None


class Ledger:
    """Claims over ``store``; ``owner`` names this worker, ``lease`` bounds a claim, ``keep`` how long results last."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        owner: str,
        clock: Callable[[], datetime] = _utcnow,
        lease: timedelta,
        keep: timedelta,
        prefix: str = PREFIX,
    ) -> None:
        """Keyword-only settings; ``prefix`` exists for tests and must end with "/".

        Raises:
            ValueError: empty owner, a lease that is not positive, or ``keep`` shorter than ``lease``.
        """
        if not owner:
            raise ValueError("owner must name this worker")
        if lease <= timedelta(0) or keep < lease:
            raise ValueError(f"need 0 < lease <= keep, got lease={lease} keep={keep}")
        self.store, self.owner, self.clock = store, owner, clock
        self.lease, self.keep, self.prefix = lease, keep, prefix

    def key(self, function: str, event: Envelope) -> str:
        """The object key of (``function``, ``event``); see ``ledger_key``."""
        return ledger_key(function, event, self.prefix)

    def claim(self, function: str, event: Envelope) -> Claim:
        """A claim to use as a context manager (acquired on enter).

        Raises:
            ValueError: ``function`` is not a literal handler name.
        """
        return Claim(self, function, event)

    def now(self) -> datetime:
        """The clock's time (must be timezone-aware).

        Raises:
            ValueError: the clock returned a naive datetime.
        """
        t = self.clock()
        if t.utcoffset() is None:
            raise ValueError("the ledger clock must return timezone-aware datetimes")
        return t


class Claim:
    """One claim on (function, event). After enter: ``completed`` (replay ``result``) or owned (run, ``complete``)."""

    def __init__(self, ledger: Ledger, function: str, event: Envelope) -> None:
        self.ledger, self.function, self.event = ledger, function, event
        self.key = ledger.key(function, event)
        self.payload_hash = fingerprint(event)
        self.completed = False
        self.result: dict[str, Any] | None = None
        self.attempt = 0
        self._etag: str | None = None  # set while we own an IN_PROGRESS record

    # --- context manager ----------------------------------------------------------------------------------------

    def __enter__(self) -> Claim:
        """Acquire the claim.

        Raises:
            EventInvalid: the id was used before with a different body.
            LeaseHeld: another worker holds a valid lease, or won the race to take an expired one over.
            StoreUnavailable, StoreRejected: the store failed.
        """
        for _ in range(_ACQUIRE_ROUNDS):
            if self._put_new():
                return self
            try:
                current = self.ledger.store.get(self.key)
            except StoreUnreadable as exc:  # exists, body unreadable (after the in-place retries): a lost record
                if self._decide_unreadable(exc):
                    return self
                continue
            if current is None:
                continue  # released between our put and our read: try again
            if self._decide(_read(current.body), current.etag):
                return self
        raise LeaseHeld(f"{self.function} {self.event.id}: the claim keeps changing hands")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._etag is None:
            return
        if exc is None:
            log.warning("claim %s %s left without complete(): releasing it", self.function, self.event.id)
        self._release()

    # --- public -------------------------------------------------------------------------------------------------

    def complete(self, outcome_json: dict[str, Any]) -> None:
        """Record the outcome: COMPLETED with ``If-Match`` of our ETag.

        Raises:
            RuntimeError: the claim is not owned (a replay, already completed, or not entered).
            TypeError, ValueError: ``outcome_json`` is not JSON (mappings such as ``MappingProxyType`` are).
            LeaseHeld: our lease was taken over meanwhile (logged as an error: the work may have run twice).
            StoreUnavailable, StoreRejected: the store failed (the claim is released on leaving the block).
        """
        if self._etag is None:
            raise RuntimeError(f"complete() on a claim not owned: {self.key}")
        now = self.ledger.now()
        body = self._body(COMPLETED, now, result=outcome_json, completed_at=now)
        try:
            self.ledger.store.put(self.key, body, if_match=self._etag)
        except PreconditionFailed:
            self._etag = None  # not ours any more: never delete it
            log.error(
                "LEASE LOST: %s %s (attempt %d, owner %s) was taken over before it completed; the work may have"
                " run twice",
                self.function,
                self.event.id,
                self.attempt,
                self.ledger.owner,
            )
            raise LeaseHeld(f"{self.function} {self.event.id}: lease lost before complete") from None
        self._etag = None
        self.completed, self.result = True, outcome_json

    # --- steps --------------------------------------------------------------------------------------------------

    def _put_new(self) -> bool:
        self.attempt = 1
        try:
            self._etag = self.ledger.store.put(self.key, self._body(IN_PROGRESS, self.ledger.now()), if_none_match=True)
        except PreconditionFailed:
            return False
        return True

    def _decide(self, record: _Record | None, etag: str) -> bool:
        """Act on an existing record: True when the claim is settled (replay or taken over), False to retry."""
        now = self.ledger.now()
        if record is not None and not record.expired(now) and not self._dead_claim(record):
            if record.payload_hash != self.payload_hash:
                raise EventInvalid(f"{self.event.type} {self.event.id}: same id, different body")
            if record.status == COMPLETED:
                self.completed, self.result = True, record.result
                return True
            until = _stamp(record.lease_until)
            raise LeaseHeld(f"{self.function} {self.event.id}: held by {record.owner} until {until}")
        return self._take_over(record, etag, now)

    def _dead_claim(self, record: _Record) -> bool:
        """An IN_PROGRESS of a worker of this host that died (of the same body): taken over without waiting."""
        return record.status == IN_PROGRESS and record.payload_hash == self.payload_hash and owner_gone(record.owner)

    def _decide_unreadable(self, exc: StoreUnreadable) -> bool:
        """A record that exists but cannot be read is an IN_PROGRESS of an unknown owner whose lease runs from its
        last write: held while that lease lasts (it may be a live claim), taken over with ``If-Match`` after.

        Raises:
            LeaseHeld: the lease is not over yet, or another worker took it over first.
        """
        now = self.ledger.now()
        written = datetime.fromtimestamp(exc.modified, UTC) if exc.modified is not None else now - self.ledger.lease
        if now < written + self.ledger.lease:
            until = _stamp(written + self.ledger.lease)
            raise LeaseHeld(f"{self.function} {self.event.id}: unreadable record, held until {until}")
        return self._take_over(None, exc.etag, now)

    def _take_over(self, record: _Record | None, etag: str, now: datetime) -> bool:
        self.attempt = 1 if record is None else record.attempt + 1
        try:
            self._etag = self.ledger.store.put(self.key, self._body(IN_PROGRESS, now), if_match=etag)
        except PreconditionFailed:
            raise LeaseHeld(f"{self.function} {self.event.id}: lost the race to take over an expired claim") from None
        what = "an unreadable record" if record is None else f"{record.status} of {record.owner}"
        log.warning("took over %s: %s %s (attempt %d)", what, self.function, self.event.id, self.attempt)
        return True

    def _release(self) -> None:
        etag, self._etag = self._etag, None
        try:
            current = self.ledger.store.get(self.key)
            if current is not None and current.etag == etag:
                self.ledger.store.delete(self.key)
            else:
                log.warning("claim %s %s changed hands: not releasing it", self.function, self.event.id)
        except AutomationError as exc:
            log.warning("cannot release %s (expires with its lease): %s", self.key, exc.reason)

    def _body(
        self, status: str, now: datetime, *, result: dict[str, Any] | None = None, completed_at: datetime | None = None
    ) -> bytes:
        lease_until = now if status == COMPLETED else now + self.ledger.lease
        doc = {
            "status": status,
            "lease_until": _stamp(lease_until),
            "owner": self.ledger.owner,
            "attempt": self.attempt,
            "payload_hash": self.payload_hash,
            "result": result,
            "completed_at": _stamp(completed_at) if completed_at is not None else None,
            "expires_at": _stamp(now + self.ledger.keep),
            "function": self.function,
            "source": self.event.source,
            "event_id": self.event.id,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_mapping).encode()


def _mapping(value: object) -> dict[str, Any]:
    """JSON for read-only mappings (event data is frozen in ``MappingProxyType``); anything else is refused."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


@dataclass(frozen=True)
class Sweep:
    kept: int
    expired: int  # deleted (or, in a dry run, that would be)
    unreadable: int  # left alone: not a ledger record (reported, never deleted)


def sweep(store: ObjectStore, now: datetime, *, apply: bool, prefix: str = PREFIX) -> Sweep:
    """Delete the ledger records past their ``expires_at``, for stores without an S3 lifecycle rule (the dir store,
    MinIO without ILM). A record's expiry is written with it (``keep``), so the sweep needs no setting of its own.
    A record a claim rewrites between the read and the delete is lost early: the next delivery of that event is
    then handled again, which the handlers' compare-and-set makes harmless (A7: the ledger is an optimisation).

    Raises:
        StoreUnavailable: the store failed (run it again; it resumes where the listing finds records).
    """
    kept = expired = unreadable = 0
    for key in store.list(prefix):
        obj = store.get(key)
        if obj is None:
            continue
        record = _read(obj.body)
        if record is None:
            unreadable += 1
        elif now >= record.expires_at:
            expired += 1
            if apply:
                store.delete(key)
        else:
            kept += 1
    return Sweep(kept, expired, unreadable)
