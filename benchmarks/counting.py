"""Counting calls per system: S3 (per object-store request) and DNS (per wire message: query, AXFR, UPDATE).

Mailcow and PMG are counted by the simulators themselves (their ``/_sim/requests`` logs); S3 and DNS are shared with
other users of the stack, so they are counted in the process that makes the calls, at the ports' narrowest seams:
``ObjectStore`` (one method = one S3 request) and ``DnsWire`` (one method = one DNS message exchange).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import dns.message
import dns.update
import dns.zone

from functions._core.model.keypool import KeyPool
from functions._core.model.ports import Ports
from functions._core.platform.errors import PreconditionFailed
from functions._core.platform.idempotency import Ledger
from functions._core.platform.locks import SubjectLocks
from functions._core.platform.store import ObjectStore, StoredObject
from functions.adapters.dns import DnsWire, Rfc2136Dns, TcpWire

READ, WRITE, REFUSED = "read", "write", "refused"  # refused: a conditional write that did not hold (no change)


class Tally:
    """Thread-safe counts keyed ``(system, kind)``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[tuple[str, str]] = Counter()

    def add(self, system: str, kind: str) -> None:
        with self._lock:
            self.counts[(system, kind)] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {f"{s}.{k}": n for (s, k), n in sorted(self.counts.items())}


class CountingStore:
    """An ObjectStore that counts each request: get/list are reads, put/delete writes, refused puts apart."""

    def __init__(self, inner: ObjectStore, tally: Tally, system: str = "s3") -> None:
        self._inner, self._tally, self._system = inner, tally, system

    def get(self, key: str) -> StoredObject | None:
        self._tally.add(self._system, READ)
        return self._inner.get(key)

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/json",
    ) -> str:
        try:
            etag = self._inner.put(key, body, if_none_match=if_none_match, if_match=if_match, content_type=content_type)
        except PreconditionFailed:
            self._tally.add(self._system, REFUSED)
            raise
        self._tally.add(self._system, WRITE)
        return etag

    def delete(self, key: str) -> None:
        self._tally.add(self._system, WRITE)
        self._inner.delete(key)

    def list(self, prefix: str) -> Iterator[str]:
        self._tally.add(self._system, READ)
        return self._inner.list(prefix)


class CountingWire:
    """A DnsWire that counts messages: queries and zone transfers are reads, UPDATEs writes."""

    def __init__(self, inner: DnsWire, tally: Tally) -> None:
        self._inner, self._tally = inner, tally

    def transfer(self, zone: str, server: tuple[str, int] | None = None) -> dns.zone.Zone:
        self._tally.add("dns", READ)
        return self._inner.transfer(zone, server)

    def send(self, update: dns.update.UpdateMessage) -> int:
        self._tally.add("dns", WRITE)
        return self._inner.send(update)

    def query(
        self, server: str, port: int, name: str, rtype: str, tcp: bool, recursive: bool = False
    ) -> dns.message.Message:
        self._tally.add("dns", READ)
        return self._inner.query(server, port, name, rtype, tcp, recursive)


def counted(ports: Ports, tally: Tally, *, old_release: bool = False) -> Ports:
    """``ports`` (from ``build_ports``) with S3 and DNS counted; the ledger, locks and key pool use the counted
    store (``old_release``: the locks read before every release, as before issue 17)."""
    state = CountingStore(ports.state, tally)
    ledger = locks = None
    if ports.ledger is not None:
        old = ports.ledger
        ledger = Ledger(state, owner=old.owner, clock=old.clock, lease=old.lease, keep=old.keep, prefix=old.prefix)
    if ports.locks is not None:
        locks = SubjectLocks(state, lease=ports.locks.lease, clock=ports.locks.clock, fast_release=old_release is False)
    keypool = None
    if ports.keypool is not None:
        kp = ports.keypool
        keypool = KeyPool(CountingStore(kp.store, tally), kp.kek, size=kp.size, bits=kp.bits, batch=kp.batch)
    dns_settings = ports.settings.dns
    return replace(
        ports,
        state=state,
        web=CountingStore(ports.web, tally),
        dns=Rfc2136Dns(dns_settings, wire=CountingWire(TcpWire(dns_settings), tally)),
        ledger=ledger,
        locks=locks,
        keypool=keypool,
    )


def sim_counts(requests: list[dict[str, Any]]) -> dict[str, int]:
    """Reads and writes in a simulator request log (writes: the simulator's own ``write`` flag)."""
    writes = sum(1 for r in requests if r.get("write"))
    return {"read": len(requests) - writes, "write": writes}
