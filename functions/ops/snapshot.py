"""Read-once views of the ports for fleet-wide read-only commands (`mailplane drift --all`).

Each view answers the same port calls the per-domain checks make, from bulk reads: one listing per system (Mailcow
``get/domain/all``; PMG relay domains, transports, trusted networks), ONE TSIG-signed zone transfer per zone and
authoritative server instead of a query per record, each state and policy object read once, and the SMTP
acceptance probe batched (one session per node for ``SMTP_BATCH`` domains). The checks themselves are the ones of
`mailplane status` (functions/ops/status.py), unchanged, so a fleet run reports exactly what per-domain runs report.

What has no bulk read stays per domain: Mailcow's DKIM key (its API has no listing: ``get/dkim/all`` looks up a
domain named "all"), the servers of each zone (its NS), and the public view of zones hosted elsewhere (resolver
queries). Reads are fetched ahead by a small thread pool (``drift_bulk.run``) and dropped once their domain is done,
so memory stays flat. Views never write: a write call goes to the underlying port (no caller makes one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from functions._core.model.acceptance import CONTROL
from functions._core.model.ports import (
    DkimKey,
    DnsPort,
    GatewayPort,
    GatewayTransport,
    MailDomain,
    MailPort,
    RelayDomain,
    SmtpAnswer,
    SmtpProbePort,
    TrustedNetwork,
)
from functions._core.model.records import Key, RecordSet
from functions._core.platform.store import ListsEtags, ObjectStore, StoredObject

T = TypeVar("T")
SMTP_BATCH = 8  # domains per SMTP session: with the control recipient 9 RCPTs, below postfix's smtpd_soft_error_limit
RUN = ""  # the owner of run-wide entries (listings, the delegation zone, shared records): never dropped


class ClosedError(LookupError):
    """A read for a domain that is already done (a read-ahead that came too late): nothing is fetched."""


class Memo:
    """Compute-once values by key, shared between threads; a failure is stored and raised again to every reader.
    Entries belong to an owner (a domain, or ``RUN``) and are dropped with ``drop(owner)``, which closes the owner:
    a later read for it raises ClosedError instead of reading again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[Hashable, Future[Any]] = {}
        self._owned: dict[str, list[Hashable]] = {}
        self._closed: set[str] = set()

    def get(self, owner: str, key: Hashable, fetch: Callable[[], T]) -> T:
        """The value of ``key`` (fetched now by this thread, or by the one that asked first).

        Raises:
            ClosedError: ``owner`` was dropped already.
            Exception: whatever ``fetch`` raised, to every reader of the key.
        """
        with self._lock:
            if owner in self._closed:
                raise ClosedError(owner)
            fut = self._values.get(key)
            mine = fut is None
            if fut is None:
                fut = self._values[key] = Future()
                self._owned.setdefault(owner, []).append(key)
        if mine:
            try:
                fut.set_result(fetch())
            except Exception as exc:  # stored: the reader gets the same error the direct read would have raised
                fut.set_exception(exc)
        result: T = fut.result()
        return result

    def drop(self, owner: str) -> None:
        with self._lock:
            if owner != RUN:
                self._closed.add(owner)
            for key in self._owned.pop(owner, ()):
                self._values.pop(key, None)

    def __len__(self) -> int:
        return len(self._values)


class Scope:
    """Which object keys, zones and SMTP batches belong to which domain of the run (registered before it is read)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], str] = {}  # (bucket, key) -> owner
        self.zones: dict[str, str] = {}  # zone -> owner
        self.smtp: dict[str, tuple[str, tuple[str, ...]]] = {}  # domain -> (batch owner, the batch's domains)
        self._lock = threading.Lock()

    def add(self, owner: str, *, objects: tuple[tuple[str, str], ...] = (), zones: tuple[str, ...] = ()) -> None:
        with self._lock:
            self.objects.update((o, owner) for o in objects)
            self.zones.update((z, owner) for z in zones)

    def forget(self, owner: str, *, objects: tuple[tuple[str, str], ...] = (), zones: tuple[str, ...] = ()) -> None:
        with self._lock:
            for o in objects:
                if self.objects.get(o) == owner:
                    del self.objects[o]
            for z in zones:
                if self.zones.get(z) == owner:
                    del self.zones[z]
            self.smtp.pop(owner, None)


class StoreView:
    """An ObjectStore whose registered keys are read once (``get``); everything else goes to the store. With
    ``listed`` (the web bucket, where every policy has the same body) and a store that lists ETags, the bucket is
    listed once and an object whose ETag names a body already read is not read again (an ETag identifies the
    content: S3's MD5 of a single-part upload, the dir store's SHA-256)."""

    BODIES = 16  # distinct bodies remembered by ETag

    def __init__(self, target: ObjectStore, bucket: str, memo: Memo, scope: Scope, *, listed: bool = False) -> None:
        self._target, self._bucket, self._memo, self._scope = target, bucket, memo, scope
        self._listed = listed and isinstance(target, ListsEtags)
        self._bodies: dict[str, bytes] = {}

    def get(self, key: str) -> StoredObject | None:
        owner = self._scope.objects.get((self._bucket, key))
        return self._target.get(key) if owner is None else self.read(owner, key)

    def read(self, owner: str, key: str) -> StoredObject | None:
        """``get``, memoised for ``owner`` (ClosedError once the owner is done).

        Raises:
            ClosedError: ``owner`` is done.
        """
        etag = self._known_etag(key)
        body = None if etag is None else self._bodies.get(etag)
        if etag is not None and body is not None:
            return StoredObject(body, etag)
        obj = self._memo.get(owner, ("store", self._bucket, key), lambda: self._target.get(key))
        if obj is not None and self._listed and len(self._bodies) < self.BODIES:
            self._bodies[obj.etag] = obj.body
        return obj

    def _known_etag(self, key: str) -> str | None:
        """The key's ETag in the run's listing of the bucket (None: not listed, or the listing failed)."""
        target = self._target
        if not self._listed or not isinstance(target, ListsEtags):
            return None
        try:
            listing = self._memo.get(RUN, ("store", self._bucket, "etags"), lambda: dict(target.etags("")))
        except Exception:  # the listing is an optimisation: without it every object is read
            return None
        return listing.get(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class GatewayView:
    """The PMG cluster with its three listings read once; per-item reads answered from them."""

    def __init__(self, target: GatewayPort, memo: Memo) -> None:
        self._target, self._memo = target, memo

    def list_relay_domains(self) -> list[RelayDomain]:
        return self._memo.get(RUN, ("pmg", "domains"), self._target.list_relay_domains)

    def list_transports(self) -> list[GatewayTransport]:
        return self._memo.get(RUN, ("pmg", "transports"), self._target.list_transports)

    def list_networks(self) -> list[TrustedNetwork]:
        return self._memo.get(RUN, ("pmg", "networks"), self._target.list_networks)

    def get_relay_domain(self, domain: str) -> RelayDomain | None:
        index = self._memo.get(RUN, ("pmg", "domain index"), lambda: {d.domain: d for d in self.list_relay_domains()})
        return index.get(domain)

    def get_transport(self, domain: str) -> GatewayTransport | None:
        index = self._memo.get(RUN, ("pmg", "transport index"), lambda: {t.domain: t for t in self.list_transports()})
        return index.get(domain)

    def get_network(self, cidr: str) -> TrustedNetwork | None:
        return next((n for n in self.list_networks() if n.cidr == cidr), None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class MailView:
    """Mailcow with its domain listing read once; the DKIM key read once per domain (no listing exists)."""

    def __init__(self, target: MailPort, memo: Memo) -> None:
        self._target, self._memo = target, memo

    def list_domains(self) -> list[MailDomain]:
        return self._memo.get(RUN, ("mailcow", "domains"), self._target.list_domains)

    def get_domain(self, domain: str) -> MailDomain | None:
        index = self._memo.get(RUN, ("mailcow", "index"), lambda: {d.domain: d for d in self.list_domains()})
        return index.get(domain.strip().rstrip(".").lower())

    def get_dkim(self, domain: str) -> DkimKey | None:
        return self._memo.get(domain, ("mailcow", "dkim", domain), lambda: self._target.get_dkim(domain))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


@dataclass(frozen=True)
class ServedZone:
    """One zone as one server serves it (from its AXFR), answering an RD=0 query the way the server would."""

    zone: str
    records: dict[Key, RecordSet]
    names: frozenset[str]  # owner names and empty non-terminals
    cuts: frozenset[str]  # delegation points below the apex (NS records)

    @classmethod
    def of(cls, zone: str, records: dict[Key, RecordSet]) -> ServedZone:
        names: set[str] = set()
        for name, _ in records:
            while name != zone and name.endswith("." + zone) and name not in names:
                names.add(name)
                name = name.split(".", 1)[1]
        cuts = frozenset(n for n, t in records if t == "NS" and n != zone)
        return cls(zone, records, frozenset(names | {zone}), cuts)

    def answer(self, name: str, rtype: str) -> RecordSet | None:
        """The answer section's RRset for exactly (name, rtype): None for NXDOMAIN, NODATA and referrals; a wildcard
        synthesises the RRset under ``name`` (RFC 4592) where no closer name exists."""
        labels = name.split(".")
        for i in range(len(labels) - len(self.zone.split("."))):
            if ".".join(labels[i:]) in self.cuts:
                return None  # at or below a delegation: a referral, no answer
        if name in self.names:
            return self.records.get((name, rtype))
        encloser = name
        while encloser != self.zone and encloser not in self.names:
            encloser = encloser.split(".", 1)[1]
        found = self.records.get((f"*.{encloser}", rtype))
        return None if found is None else RecordSet.of(name, found.rtype, found.ttl, found.values)


class DnsView:
    """Authoritative DNS answered from one AXFR per registered zone and server; a server that refuses the transfer
    is queried per record, as the direct checks do. Zones not registered, and ``resolve``, go to the port."""

    def __init__(self, target: DnsPort, memo: Memo, scope: Scope) -> None:
        self._target, self._memo, self._scope = target, memo, scope

    def servers(self, zone: str, owner: str | None = None) -> list[str]:
        owner = self._scope.zones.get(zone) if owner is None else owner
        if owner is None:
            return self._target.servers(zone)
        return self._memo.get(owner, ("dns", "servers", zone), lambda: self._target.servers(zone))

    def served(self, zone: str, server: str, owner: str | None = None) -> ServedZone | None:
        """The zone as ``server`` serves it (one transfer), None when the server refuses to transfer it.

        Raises:
            ClosedError: the zone's domain is done (or was never registered).
        """
        owner = self._scope.zones.get(zone) if owner is None else owner
        if owner is None:
            raise ClosedError(zone)

        def fetch() -> ServedZone | None:
            got = self._target.read_zone_at(zone, server)
            return None if got is None else ServedZone.of(zone, got[1])

        return self._memo.get(owner, ("dns", "axfr", zone, server), fetch)

    def query(self, server: str, name: str, rtype: str) -> RecordSet | None:
        name = name.rstrip(".").lower()
        zone = self._zone_of(name)
        served = None if zone is None else self.served(zone, server)
        if served is None:
            return self._target.query(server, name, rtype)
        return served.answer(name, rtype.upper())

    def _zone_of(self, name: str) -> str | None:
        labels = name.split(".")
        return next((z for z in (".".join(labels[i:]) for i in range(len(labels))) if z in self._scope.zones), None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class SmtpView:
    """The acceptance probe batched: ``SMTP_BATCH`` domains' ``postmaster@`` plus the control recipient in one
    session per node; each domain gets the answer a session of its own would have shown (its reply, the control's)."""

    def __init__(self, target: SmtpProbePort, memo: Memo, scope: Scope) -> None:
        self._target, self._memo, self._scope = target, memo, scope

    def rcpt(self, target: str, recipients: tuple[str, ...]) -> SmtpAnswer:
        domain = recipients[0].partition("@")[2] if len(recipients) == 2 and recipients[1] == CONTROL else ""
        batch = self._scope.smtp.get(domain)
        if batch is None:
            return self._target.rcpt(target, recipients)
        owner, domains = batch
        answer = self.batch(target, owner, domains)
        if answer.error:
            return answer
        i = domains.index(domain)
        replies = answer.replies
        mine = (replies[i],) if i < len(replies) else ()
        control = (replies[len(domains)],) if len(replies) > len(domains) else ()
        return SmtpAnswer(answer.target, answer.source, mine + control if mine else ())

    def batch(self, target: str, owner: str, domains: tuple[str, ...]) -> SmtpAnswer:
        """One session asking for every domain of the batch, then the control recipient (memoised for ``owner``)."""
        recipients = (*(f"postmaster@{d}" for d in domains), CONTROL)
        return self._memo.get(owner, ("smtp", target, domains), lambda: self._target.rcpt(target, recipients))
