"""Per-subject leases in the object store: two events for one domain (or node) never run at once, across worker
processes and Lambda containers, while different subjects run in parallel.

Chosen over hash-partitioned single-active-consumer queues because it works the same for the pika worker and the
Lambda adapter (one ESM per queue, no consistent-hash exchange on Amazon MQ), needs no topology change, and
survives retries, which would break per-queue order anyway (broker.md §6). Cost: two conditional writes per event.
The lease expires (a crashed holder cannot block a subject forever), and a lease whose holder is a process of this
host that no longer exists is taken over at once (``owner_gone``); a lease still held -> LeaseHeld, and the event
goes to the next retry rung.

Release: a lease can only change hands after its expiry (or when its holder's process is gone, which the holder
itself is not). A block that ends within the first half of its lease (on the lease's clock and on this process's
monotonic clock) therefore still holds it and deletes it with one call; a longer block (or a clock that moved back)
reads it first and deletes it only if it is still ours, as the store has no conditional delete (LocalStack:
NotImplemented). The half-lease margin covers clock skew between hosts up to half a lease (150 s by default).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from functions._core.platform.errors import PreconditionFailed, StoreUnreadable
from functions._core.platform.idempotency import LeaseHeld, default_owner, owner_gone
from functions._core.platform.store import ObjectStore

PREFIX = "locks/"
log = logging.getLogger("mailplane.locks")


class SubjectLocks:
    def __init__(
        self,
        store: ObjectStore,
        *,
        lease: timedelta,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        fast_release: bool = True,
    ) -> None:
        """``fast_release=False`` reads before every release (the path before issue 17; benchmarks compare)."""
        self.store, self.lease, self.clock, self.fast_release = store, lease, clock, fast_release

    def key(self, subject: str) -> str:
        return f"{PREFIX}{hashlib.sha256(subject.encode()).hexdigest()}.json"

    @contextmanager
    def hold(self, subject: str) -> Iterator[None]:
        """Hold ``subject`` for the block.

        Raises:
            LeaseHeld: another holder's lease has not expired.
        """
        owner = f"{default_owner()}:{threading.get_ident()}"
        key = self.key(subject)
        started, ticks = self.clock(), time.monotonic()
        etag = self._acquire(key, subject, owner)
        try:
            yield
        finally:
            half = self.lease / 2
            elapsed = time.monotonic() - ticks
            surely_ours = self.fast_release and self.clock() - started < half and elapsed < half.total_seconds()
            try:
                if surely_ours:  # nobody can have taken it over yet: no read needed
                    self.store.delete(key)
                else:
                    current = self.store.get(key)
                    if current is not None and current.etag == etag:  # still ours: release
                        self.store.delete(key)
            except StoreUnreadable as exc:  # never raised over the block's own outcome; expires with its lease
                log.warning("cannot release %s: %s", key, exc.reason)

    def _acquire(self, key: str, subject: str, owner: str) -> str:
        now = self.clock()
        body = json.dumps({"subject": subject, "owner": owner, "until": (now + self.lease).isoformat()}).encode()
        try:
            return self.store.put(key, body, if_none_match=True)
        except PreconditionFailed:
            pass
        try:
            held = self.store.get(key)
        except StoreUnreadable as exc:  # torn (LocalStack): a lease of an unknown holder, from its last write
            written = datetime.fromtimestamp(exc.modified, UTC) if exc.modified is not None else now - self.lease
            if now < written + self.lease:
                raise LeaseHeld(f"{subject}: unreadable lease, held until its expiry") from None
            etag = exc.etag
        else:
            if held is None:
                return self._retry_absent(key, body)
            etag = held.etag
            if not self._expired(held.body, now):
                raise LeaseHeld(f"{subject} is being handled by another worker") from None
        try:  # expired, or its holder died (a process of this host that is gone): take it over
            return self.store.put(key, body, if_match=etag)
        except PreconditionFailed:
            raise LeaseHeld(f"{subject} was taken by another worker") from None

    @staticmethod
    def _expired(body: bytes, now: datetime) -> bool:
        """Past its ``until``, held by a process of this host that is gone, or not a lease at all (unreadable)."""
        try:
            lease = json.loads(body)
            until, owner = datetime.fromisoformat(lease["until"]), str(lease.get("owner", ""))
        except (ValueError, TypeError, KeyError):
            return True
        return until <= now or owner_gone(owner)

    def _retry_absent(self, key: str, body: bytes) -> str:
        try:
            return self.store.put(key, body, if_none_match=True)
        except PreconditionFailed:
            raise LeaseHeld("subject lease raced") from None
