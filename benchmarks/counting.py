"""Counting calls per system: S3 (per object-store request) and DNS (per wire message: query, AXFR, UPDATE).

Mailcow and PMG are counted by the simulators themselves (their ``/_sim/requests`` logs); S3 and DNS are shared with
other users of the stack, so they are counted in the process that makes the calls, at the ports' narrowest seams:
``ObjectStore`` (one method = one S3 request) and ``DnsWire`` (one method = one DNS message exchange).
"""

from __future__ import annotations

import io
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
BYTES = "bytes"  # payload: S3 object bodies and listed key names; DNS messages (a transfer: its records) in wire form
S3_PAGE = 1000  # keys per ListObjectsV2 page: a listing costs one request per page


class Tally:
    """Thread-safe counts keyed ``(system, kind)``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[tuple[str, str]] = Counter()

    def add(self, system: str, kind: str, n: int = 1) -> None:
        with self._lock:
            self.counts[(system, kind)] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {f"{s}.{k}": n for (s, k), n in sorted(self.counts.items())}


class CountingStore:
    """An ObjectStore that counts each request: get/list are reads, put/delete writes, refused puts apart."""

    def __init__(self, inner: ObjectStore, tally: Tally, system: str = "s3") -> None:
        self._inner, self._tally, self._system = inner, tally, system

    def get(self, key: str) -> StoredObject | None:
        self._tally.add(self._system, READ)
        got = self._inner.get(key)
        self._tally.add(self._system, BYTES, len(key) + (len(got.body) if got is not None else 0))
        return got

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
        self._tally.add(self._system, BYTES, len(key) + len(body))
        return etag

    def delete(self, key: str) -> None:
        self._tally.add(self._system, WRITE)
        self._tally.add(self._system, BYTES, len(key))
        self._inner.delete(key)

    def list(self, prefix: str) -> Iterator[str]:
        """One read per page of keys (S3_PAGE), the key names as bytes; counted as the caller consumes them."""
        self._tally.add(self._system, READ)
        self._tally.add(self._system, f"list:{prefix}")
        for i, key in enumerate(self._inner.list(prefix), start=1):
            if i % S3_PAGE == 1 and i > 1:
                self._tally.add(self._system, READ)
            self._tally.add(self._system, BYTES, len(key))
            yield key


class CountingWire:
    """A DnsWire that counts messages: queries and zone transfers are reads, UPDATEs writes."""

    def __init__(self, inner: DnsWire, tally: Tally) -> None:
        self._inner, self._tally = inner, tally

    def transfer(self, zone: str, server: tuple[str, int] | None = None) -> dns.zone.Zone:
        self._tally.add("dns", READ)
        self._tally.add("dns", "transfer")
        got = self._inner.transfer(zone, server)
        self._tally.add("dns", BYTES, _zone_bytes(got))
        return got

    def send(self, update: dns.update.UpdateMessage) -> int:
        self._tally.add("dns", WRITE)
        self._tally.add("dns", BYTES, len(update.to_wire()))
        return self._inner.send(update)

    def query(
        self, server: str, port: int, name: str, rtype: str, tcp: bool, recursive: bool = False, dnssec: str = ""
    ) -> dns.message.Message:
        self._tally.add("dns", READ)
        got = self._inner.query(server, port, name, rtype, tcp, recursive, dnssec=dnssec)
        self._tally.add("dns", BYTES, len(got.to_wire()))
        return got


def _zone_bytes(zone: dns.zone.Zone) -> int:
    """A transferred zone's records in wire form (uncompressed: what the AXFR carried, give or take compression)."""
    out = io.BytesIO()
    for name, node in zone.nodes.items():
        for rdataset in node.rdatasets:
            rdataset.to_wire(name, out)
    return out.tell()


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
    """Reads and writes in a simulator request log (writes: the simulator's own ``write`` flag), and the bytes of
    URLs and bodies both ways (the simulators' ``bytes_in`` + ``bytes_out``; headers not counted)."""
    writes = sum(1 for r in requests if r.get("write"))
    size = sum(int(r.get("bytes_in", 0)) + int(r.get("bytes_out", 0)) for r in requests)
    return {"read": len(requests) - writes, "write": writes, "bytes": size}
