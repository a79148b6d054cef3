"""Per-subject leases in the object store: two events for one domain (or node) never run at once, across worker
processes and Lambda containers, while different subjects run in parallel.

Chosen over hash-partitioned single-active-consumer queues because it works the same for the pika worker and the
Lambda adapter (one ESM per queue, no consistent-hash exchange on Amazon MQ), needs no topology change, and
survives retries, which would break per-queue order anyway (broker.md §6). Cost: two conditional writes per event.
The lease expires (a crashed holder cannot block a subject forever), and a lease whose holder is a process of this
host that no longer exists is taken over at once (``owner_gone``); a lease still held -> LeaseHeld, and the event
goes to the next retry rung.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from functions._core.platform.errors import PreconditionFailed
from functions._core.platform.idempotency import LeaseHeld, default_owner, owner_gone
from functions._core.platform.store import ObjectStore

PREFIX = "locks/"


class SubjectLocks:
    def __init__(
        self, store: ObjectStore, *, lease: timedelta, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.store, self.lease, self.clock = store, lease, clock

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
        etag = self._acquire(key, subject, owner)
        try:
            yield
        finally:
            current = self.store.get(key)
            if current is not None and current.etag == etag:  # still ours: release
                self.store.delete(key)

    def _acquire(self, key: str, subject: str, owner: str) -> str:
        now = self.clock()
        body = json.dumps({"subject": subject, "owner": owner, "until": (now + self.lease).isoformat()}).encode()
        try:
            return self.store.put(key, body, if_none_match=True)
        except PreconditionFailed:
            pass
        held = self.store.get(key)
        if held is None:
            return self._retry_absent(key, body)
        lease = json.loads(held.body)
        if datetime.fromisoformat(lease["until"]) > now and not owner_gone(str(lease.get("owner", ""))):
            raise LeaseHeld(f"{subject} is being handled by another worker") from None
        try:  # expired, or its holder died (a process of this host that is gone): take it over
            return self.store.put(key, body, if_match=held.etag)
        except PreconditionFailed:
            raise LeaseHeld(f"{subject} was taken by another worker") from None

    def _retry_absent(self, key: str, body: bytes) -> str:
        try:
            return self.store.put(key, body, if_none_match=True)
        except PreconditionFailed:
            raise LeaseHeld("subject lease raced") from None
