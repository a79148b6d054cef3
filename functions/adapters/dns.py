"""Authoritative DNS over RFC 2136 + TSIG (dnspython): the DnsPort adapter and the propagation gate.

``Rfc2136Dns`` speaks our vocabulary (``RecordSet``, ``DnsChange``) and absorbs dnspython; the only seam tests replace
is ``DnsWire`` (AXFR, UPDATE, single queries), whose real implementation is ``TcpWire``.

Every write is ONE UPDATE message with compare-and-set prerequisites (reference/dns.md §3). Errors are mapped here:
NXRRSET/YXRRSET/YXDOMAIN/NXDOMAIN -> DnsConflict; REFUSED/NOTAUTH/NOTZONE/FORMERR/bad TSIG -> DnsRefused;
SERVFAIL/timeouts/connection errors -> DnsServfail (retried in place with the shared policy).
"""

from __future__ import annotations

import binascii
import ipaddress
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.txtbase
import dns.resolver
import dns.rrset
import dns.tsig
import dns.update
import dns.xfr
import dns.zone

from functions._core.model.ports import DnsChange, DnsPort
from functions._core.model.records import Key, RecordSet, soa_serial, split_txt
from functions._core.platform.config import DnsSettings
from functions._core.platform.errors import ConfigError, DnsConflict, DnsRefused, DnsServfail, TransientError
from functions._core.platform.retry import retried

__all__ = [
    "DnsWire",
    "Rfc2136Dns",
    "TcpWire",
    "build_update",
    "ds_from_dnskeys",
    "normalise_value",
    "serial_lt",
    "verify_propagation",
]

log = logging.getLogger(__name__)

RawKey = tuple[Key, str]  # (RRset key, value) -> the rdata exactly as read

IN = dns.rdataclass.IN
EDNS_PAYLOAD = 1232  # DNS flag day 2020 buffer size
XFR_LIFETIME_FACTOR = 12  # an AXFR may take this many per-message timeouts in total
_CONFLICT = {dns.rcode.NXRRSET, dns.rcode.YXRRSET, dns.rcode.YXDOMAIN, dns.rcode.NXDOMAIN}
# Types whose presentation form holds only names and numbers: lowercased when read (names are case-insensitive).
_NAME_TYPES = {"A", "AAAA", "CNAME", "DNAME", "MX", "NS", "PTR", "SOA", "SRV"}
# Maintained by the signer, never by us.
_SKIPPED_TYPES = {"RRSIG", "NSEC", "NSEC3", "NSEC3PARAM", "TYPE65534"}
RAW_TXT_LIMIT = 10_000  # TXT rdatas remembered with foreign string splits (for exact prerequisites)
# An UPDATE's read-back (the primary's transfer that showed it) answers the verification's transfer from the primary
# within this many seconds while the primary still answers that serial; at most READ_BACK_LIMIT zones are kept.
READ_BACK_SECONDS = 10.0
READ_BACK_LIMIT = 256
_TSIG_ALGORITHMS = {
    dns.tsig.HMAC_SHA256,
    dns.tsig.HMAC_SHA384,
    dns.tsig.HMAC_SHA512,
    dns.tsig.HMAC_SHA224,
    dns.tsig.HMAC_SHA1,
}
_TSIG_ERRORS = (
    dns.tsig.PeerError,
    dns.tsig.BadSignature,
    dns.tsig.BadKey,
    dns.tsig.BadAlgorithm,
    dns.tsig.BadTime,
    dns.message.UnknownTSIGKey,
)
_WIRE_FAULTS = (
    dns.exception.Timeout,
    OSError,
    EOFError,
    dns.exception.FormError,
    dns.message.Truncated,
    dns.query.BadResponse,
    dns.query.UnexpectedSource,
)


class DnsWire(Protocol):
    """The DNS transport: the only seam tests replace (a recording wire, no network)."""

    def transfer(self, zone: str, server: tuple[str, int] | None = None) -> dns.zone.Zone:
        """AXFR ``zone`` from ``server`` (address, port; default the primary), signed with our key; names absolute."""
        ...

    def send(self, update: dns.update.UpdateMessage) -> int:
        """Sign ``update`` with our key, send it to the primary over TCP and return the response rcode."""
        ...

    def query(
        self, server: str, port: int, name: str, rtype: str, tcp: bool, recursive: bool = False, dnssec: str = ""
    ) -> dns.message.Message:
        """One query to the IP address ``server``, over TCP or UDP; RD=0 unless ``recursive`` (a resolver).
        ``dnssec``: "" plain; "ad" DO + AD (ask for the validation result); "cd" DO + CD (checking disabled)."""
        ...


class TcpWire:
    """The real wire: dnspython with the TSIG key from the settings and explicit timeouts."""

    def __init__(self, settings: DnsSettings) -> None:
        """Build the TSIG key (no network).

        Raises:
            ConfigError: the TSIG secret is empty or not base64, or the algorithm is not supported.
        """
        algorithm = dns.name.from_text(settings.tsig_algorithm)
        if algorithm not in _TSIG_ALGORITHMS:
            raise ConfigError(f"dns.tsig_algorithm {settings.tsig_algorithm!r} is not supported")
        if not settings.tsig_secret.reveal():
            raise ConfigError("dns.tsig_secret is empty")
        try:
            self._key = dns.tsig.Key(settings.tsig_name, settings.tsig_secret.reveal(), algorithm)
        except (binascii.Error, ValueError):
            raise ConfigError("dns.tsig_secret is not valid base64") from None
        self._primary = settings.primary
        self._port = settings.port
        self._timeout = settings.timeout

    def transfer(self, zone: str, server: tuple[str, int] | None = None) -> dns.zone.Zone:
        """AXFR over TCP, TSIG-signed; ``timeout`` per message, ``timeout * XFR_LIFETIME_FACTOR`` in total."""
        host, port = server if server is not None else (self._primary, self._port)
        target = dns.zone.Zone(dns.name.from_text(zone), relativize=False)
        request, _ = dns.xfr.make_query(target, serial=None, keyring=self._key)
        dns.query.inbound_xfr(
            host,
            target,
            request,
            port=port,
            timeout=self._timeout,
            lifetime=self._timeout * XFR_LIFETIME_FACTOR,
        )
        return target

    def send(self, update: dns.update.UpdateMessage) -> int:
        """Sign (in place) and send over TCP; the response signature is verified by dnspython."""
        update.use_tsig(self._key)
        response = dns.query.tcp(update, self._primary, port=self._port, timeout=self._timeout)
        return int(response.rcode())

    def query(
        self, server: str, port: int, name: str, rtype: str, tcp: bool, recursive: bool = False, dnssec: str = ""
    ) -> dns.message.Message:
        """Unsigned, EDNS (1232 bytes), RD=0 unless ``recursive``; a UDP answer may come back truncated (TC set)."""
        request = dns.message.make_query(name, rtype, use_edns=0, payload=EDNS_PAYLOAD, want_dnssec=bool(dnssec))
        if not recursive:
            request.flags &= ~dns.flags.RD
        if dnssec:
            request.flags |= dns.flags.AD if dnssec == "ad" else dns.flags.CD
        if tcp:
            return dns.query.tcp(request, server, port=port, timeout=self._timeout)
        return dns.query.udp(request, server, port=port, timeout=self._timeout)


class Rfc2136Dns:
    """DnsPort over RFC 2136: AXFR to read, one compare-and-set UPDATE per ``apply``, RD=0 queries to verify."""

    def __init__(self, settings: DnsSettings, wire: DnsWire | None = None) -> None:
        self._settings = settings
        self._wire: DnsWire = wire if wire is not None else TcpWire(settings)
        self._primary = _join(settings.primary, settings.port)
        # TXT rdatas read with a string split other than ours: a prerequisite must repeat the exact strings,
        # because the server compares rdata, and the joined value alone would never match (dns.md §2).
        self._raw: dict[RawKey, dns.rdata.Rdata] = {}
        self._system_resolver: str | None = None  # /etc/resolv.conf's first name server, read once when needed
        # zone -> (when, serial, records): the primary's transfer that showed the last UPDATE (``_until_served``)
        self._read_back: dict[str, tuple[float, int, dict[Key, RecordSet]]] = {}
        self._read_back_lock = threading.Lock()

    # ------------------------------------------------------------ reading

    def hosts_zone(self, zone: str) -> bool:
        """True when the primary answers the zone's SOA authoritatively and lets our key transfer it.

        Raises:
            DnsServfail: the primary failed or timed out.
        """
        zone = _zone(zone)
        if self.serial(zone, self._primary) is None:
            return False
        try:
            self._transfer(zone)
        except DnsRefused:
            return False
        return True

    def read_zone(self, zone: str) -> dict[Key, RecordSet]:
        """Every RRset of the zone (AXFR with TSIG), TXT strings joined, names absolute lowercase without the dot.

        Raises:
            DnsRefused: the transfer was refused (zone not served, key not allowed, bad TSIG).
            DnsServfail: the primary failed or timed out (after the in-place retries).
        """
        records, raw = _records(self._transfer(_zone(zone)))
        if len(self._raw) + len(raw) > RAW_TXT_LIMIT:
            self._raw.clear()
        self._raw.update(raw)
        return records

    def read_zone_at(self, zone: str, server: str) -> tuple[int, dict[Key, RecordSet]] | None:
        """The zone as ``server`` serves it, by one TSIG-signed AXFR from that server: its SOA serial and every RRset
        (as ``read_zone`` returns them); None when the server refuses the transfer (zone not served, key not allowed).

        Raises:
            DnsServfail: the server failed or timed out (after the in-place retries).
        """
        zone = _zone(zone)
        endpoint = self._endpoint(server)
        back = self._take_read_back(zone, endpoint)
        if back is not None and self.serial(zone, server) == back[0]:
            return back  # the transfer that showed our UPDATE, and the primary still serves that serial
        try:
            records, _ = _records(self._transfer(zone, endpoint))
        except DnsRefused:
            return None
        serial = soa_serial(records.get((zone, "SOA")))
        return None if serial is None else (serial, records)

    def serial(self, zone: str, server: str) -> int | None:
        """The SOA serial ``server`` answers authoritatively (AA) for ``zone``; None if it does not serve it.

        Raises:
            DnsServfail: the server failed or timed out.
        """
        zone = _zone(zone)
        host, port = self._endpoint(server)
        try:
            response = self._ask(host, port, zone, "SOA")
        except DnsRefused:
            return None
        rrset = _find(response, zone, "SOA")
        if not response.flags & dns.flags.AA or rrset is None or len(rrset) != 1:
            return None
        soa = rrset[0]
        assert isinstance(soa, dns.rdtypes.ANY.SOA.SOA)
        return int(soa.serial)

    def query(self, server: str, name: str, rtype: str) -> RecordSet | None:
        """The RRset ``server`` answers for (name, rtype) with RD=0 (UDP, TCP on truncation); None = NXDOMAIN/NODATA.

        Raises:
            DnsRefused: the server refused the query (REFUSED, NOTAUTH, ...).
            DnsServfail: the server failed or timed out.
        """
        host, port = self._endpoint(server)
        response = self._ask(host, port, _zone(name), rtype.upper())
        return _answer(response, _zone(name), rtype.upper())

    def read_rrset(self, name: str, rtype: str) -> RecordSet | None:
        """One RRset as the primary serves it (where a zone transfer would be too large, e.g. the delegation zone).

        Raises:
            DnsRefused: the primary does not serve the name's zone.
            DnsServfail: the primary failed or timed out.
        """
        return self.query(self._primary, name, rtype)

    def resolve(self, name: str, rtype: str) -> RecordSet | None:
        """The public view of (name, rtype): RD=1 to the first of ``dns.resolvers`` (default: /etc/resolv.conf's
        first name server); CNAMEs followed, within the answer and by asking again (at most 8 hops). The value is
        returned under ``name``. None: NXDOMAIN, NODATA, or the resolver refused.

        Raises:
            DnsServfail: the resolver failed or timed out.
        """
        host, port = self._resolver()
        qname = _zone(name)
        for _ in range(8):
            try:
                response = self._ask(host, port, qname, rtype.upper(), recursive=True)
            except DnsRefused:
                return None
            target = _chase(response, qname, rtype.upper())
            found = _answer(response, target, rtype.upper())
            if found is not None:
                return RecordSet.of(_zone(name), found.rtype, found.ttl, list(found.values))
            if target == qname:
                return None
            qname = target
        raise DnsServfail(f"resolve {name}/{rtype}: more than 8 CNAME hops")

    def query_ds(self, server: str, zone: str) -> tuple[str, ...]:
        """The DS records (SHA-256) of the key-signing keys ``server`` serves for ``zone`` (RD=0), sorted; empty when
        it serves no DNSKEY (the zone is not signed there).

        Raises:
            DnsRefused, DnsServfail: as ``query``.
        """
        keys = self.query(server, zone, "DNSKEY")
        return ds_from_dnskeys(zone, keys.values) if keys is not None else ()

    def resolve_validated(self, name: str, rtype: str) -> tuple[str, RecordSet | None]:
        """(name, rtype) as the validating resolver judges it (``dns.validating_resolver``, default the first of
        ``dns.resolvers``; DO set, RD=1): ``secure`` (AD), ``insecure`` (an answer or a proven absence without AD),
        or ``bogus`` (SERVFAIL that checking disabled (CD) turns into an answer: the chain of trust is broken);
        with the RRset answered (the CD answer for bogus), None for NXDOMAIN/NODATA.

        Raises:
            DnsServfail: the resolver failed or timed out, also with CD.
            DnsRefused: the resolver refused the query.
        """
        wanted = self._settings.validating_resolver
        host, port = _split(wanted, 53) if wanted else self._resolver()
        qname, qtype = _zone(name), rtype.upper()
        response = self._exchange(host, port, qname, qtype, recursive=True, dnssec="ad")
        if response.rcode() == dns.rcode.SERVFAIL:
            response = self._exchange(host, port, qname, qtype, recursive=True, dnssec="cd")
            if response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                return "bogus", _answer(response, qname, qtype)
        rcode = response.rcode()
        what = f"validated query {qname}/{qtype} at {_join(host, port)}"
        if rcode == dns.rcode.SERVFAIL:
            raise DnsServfail(f"{what}: SERVFAIL, also with checking disabled")
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise _refused(rcode, what)
        return ("secure" if response.flags & dns.flags.AD else "insecure"), _answer(response, qname, qtype)

    def _resolver(self) -> tuple[str, int]:
        if self._settings.resolvers:
            host, port = _split(self._settings.resolvers[0], 53)
            return host, port
        if self._system_resolver is None:
            servers = [str(ns) for ns in dns.resolver.Resolver().nameservers]
            if not servers:
                raise ConfigError("dns.resolvers is empty and /etc/resolv.conf names no name server")
            self._system_resolver = servers[0]
        return self._system_resolver, 53

    def servers(self, zone: str) -> list[str]:
        """Authoritative servers to verify: settings.servers, else the hidden primary plus the zone's NS addresses.

        Raises:
            DnsServfail: an NS name has no address, or a server failed.
        """
        if self._settings.servers:
            return list(dict.fromkeys(self._settings.servers))
        zone = _zone(zone)
        found = [self._primary]
        ns = self.query(self._primary, zone, "NS")
        for target in ns.values if ns is not None else ():
            found.extend(_join(ip, self._settings.port) for ip in self._addresses(target.rstrip(".")))
        return list(dict.fromkeys(found))

    # ------------------------------------------------------------ writing

    def apply(self, zone: str, changes: list[DnsChange]) -> int:
        """Apply ``changes`` as ONE UPDATE with compare-and-set prerequisites; return the primary's new serial.

        An empty change list sends nothing and returns the current serial. After a lost answer (timeout), a
        conflicting retry counts as success when the zone already holds exactly every ``after``.

        Raises:
            ValueError: a malformed change (both sides None, keys differ, empty values, non-normalised values).
            DnsConflict: a prerequisite failed: the zone changed since it was read (re-read and re-plan).
            DnsRefused: the update was refused (policy, zone, key, a name outside the zone).
            DnsServfail: the primary failed or timed out (after the in-place retries).
        """
        zone = _zone(zone)
        update = build_update(zone, changes, raw=self._raw)
        if changes:
            self._send(zone, update, changes)
            self._until_served(zone, changes)
        serial = self.serial(zone, self._primary)
        if serial is None:
            raise DnsRefused(f"primary {self._primary} does not serve {zone}")
        log.info("dns apply: zone=%s changes=%d serial=%d", zone, len(changes), serial)
        return serial

    def _send(self, zone: str, update: dns.update.UpdateMessage, changes: list[DnsChange]) -> None:
        lost = False

        def attempt() -> None:
            nonlocal lost
            try:
                with _mapped(f"UPDATE {zone}"):
                    rcode = self._wire.send(update)
                if rcode != dns.rcode.NOERROR:
                    raise _rcode_error(rcode, f"UPDATE {zone}")
            except DnsServfail:
                lost = True  # the server may have applied it before the answer got lost
                raise

        try:
            retried(attempt)()
        except DnsConflict:
            if not (lost and self._holds(zone, changes)):
                raise
            log.info("dns apply: zone=%s answer was lost but the zone holds the result", zone)

    def _until_served(self, zone: str, changes: list[DnsChange]) -> None:
        """Wait (at most ``dns.propagation_wait`` s) until the primary SERVES what the UPDATE wrote. With inline signing
        (BIND ``dnssec-policy`` + ``inline-signing``) an UPDATE lands in the unsigned zone and the zone that queries
        and transfers see catches up once re-signed, milliseconds later (longer under load): until then a read
        (the next event's compare-and-set plan) and the serial this returns would be the old ones. Values only (a
        server may cap TTLs, e.g. ``max-zone-ttl``); a change that did not land is found by the verification.
        0 = no wait. It is the first step of the propagation the gate waits for."""
        wait = self._settings.propagation_wait
        if wait <= 0:
            return
        want = {c.key: None if c.after is None else c.after.values for c in changes}
        deadline, delay = time.monotonic() + wait, 0.01
        while True:
            try:  # one transfer per round, not retried in place: the round itself is the retry, within the wait
                with _mapped(f"AXFR {zone}"):
                    have: dict[Key, RecordSet] | None = _records(self._wire.transfer(zone, None))[0]
            except (DnsServfail, DnsRefused) as exc:  # the UPDATE was answered NOERROR; the verification finds the rest
                log.info("dns apply: zone=%s: reading it back failed (%s)", zone, exc.reason)
                have = None
            if have is not None and all(
                (None if have.get(k) is None else have[k].values) == v for k, v in want.items()
            ):
                self._keep_read_back(zone, have)
                return
            if time.monotonic() >= deadline:
                log.warning(
                    "dns apply: zone=%s: the primary does not serve the update after %.0f s",
                    zone,
                    wait,
                )
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _keep_read_back(self, zone: str, records: dict[Key, RecordSet]) -> None:
        serial = soa_serial(records.get((zone, "SOA")))
        if serial is None:
            return
        with self._read_back_lock:
            if len(self._read_back) >= READ_BACK_LIMIT:
                self._read_back.clear()
            self._read_back[zone] = (time.monotonic(), serial, records)

    def _take_read_back(self, zone: str, endpoint: tuple[str, int]) -> tuple[int, dict[Key, RecordSet]] | None:
        """The read-back of ``zone``'s last UPDATE (used once) when ``endpoint`` is the primary the wire transfers
        from and it is at most READ_BACK_SECONDS old: a zone does not change without a new serial, which the caller
        asks the server for before it takes it."""
        if endpoint != (self._settings.primary, self._settings.port):
            return None
        with self._read_back_lock:
            kept = self._read_back.pop(zone, None)
        if kept is None or time.monotonic() - kept[0] > READ_BACK_SECONDS:
            return None
        return kept[1], kept[2]

    def _holds(self, zone: str, changes: list[DnsChange]) -> bool:
        have = self.read_zone(zone)
        want = {c.key: None if c.after is None else RecordSet.of(*_fields(c.after)) for c in changes}
        return all(have.get(key) == rs for key, rs in want.items())

    # ------------------------------------------------------------ wire calls (mapped, retried in place)

    def _transfer(self, zone: str, server: tuple[str, int] | None = None) -> dns.zone.Zone:
        def attempt() -> dns.zone.Zone:
            with _mapped(f"AXFR {zone}" if server is None else f"AXFR {zone} from {_join(*server)}"):
                return self._wire.transfer(zone, server)

        return retried(attempt)()

    def _question(
        self, host: str, port: int, name: str, rtype: str, recursive: bool, dnssec: str
    ) -> dns.message.Message:
        """One question, TCP again when the UDP answer is truncated (not retried; failures mapped)."""
        extra = {"dnssec": dnssec} if dnssec else {}  # plain questions keep the wire's original signature
        with _mapped(f"query {name}/{rtype} at {_join(host, port)}"):
            response = self._wire.query(host, port, name, rtype, False, recursive, **extra)
            if response.flags & dns.flags.TC:
                response = self._wire.query(host, port, name, rtype, True, recursive, **extra)
            return response

    def _exchange(
        self, host: str, port: int, name: str, rtype: str, *, recursive: bool, dnssec: str
    ) -> dns.message.Message:
        """One question whatever its rcode (the validator's SERVFAIL is a verdict); transport failures retried."""
        return retried(lambda: self._question(host, port, name, rtype, recursive, dnssec))()

    def _ask(self, host: str, port: int, name: str, rtype: str, *, recursive: bool = False) -> dns.message.Message:
        def attempt() -> dns.message.Message:
            what = f"query {name}/{rtype} at {_join(host, port)}"
            response = self._question(host, port, name, rtype, recursive, "")
            rcode = response.rcode()
            if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                return response
            raise DnsServfail(f"{what}: SERVFAIL") if rcode == dns.rcode.SERVFAIL else _refused(rcode, what)

        return retried(attempt)()

    def _endpoint(self, server: str) -> tuple[str, int]:
        host, port = _split(server, self._settings.port)
        if _is_ip(host):
            return host, port
        addresses = self._addresses(host)
        return addresses[0], port

    def _addresses(self, host: str) -> list[str]:
        """IPv4 addresses of ``host``: asked at the primary first, then the public view."""
        try:
            found = self.query(self._primary, host, "A")
        except DnsRefused:
            found = None
        if found is None:
            found = self.resolve(host, "A")
        if found is None:
            raise DnsServfail(f"name server {host} has no A record")
        return list(found.values)


# ---------------------------------------------------------------- UPDATE building (pure)


def build_update(
    zone: str, changes: list[DnsChange], *, raw: Mapping[RawKey, dns.rdata.Rdata] | None = None
) -> dns.update.UpdateMessage:
    """One unsigned UPDATE for ``changes``: a prerequisite per change (TTL 0), then replace or delete.

    ``raw`` holds rdatas as read (TXT split by someone else); a ``before`` value found there is sent as read.

    Raises:
        ValueError: a malformed change or a value that is not in normalised presentation form.
        DnsRefused: a change names a record outside ``zone``.
    """
    origin = dns.name.from_text(zone)
    update = dns.update.UpdateMessage(origin)
    seen: set[Key] = set()
    for change in changes:
        key = _check(change, seen)
        name = dns.name.from_text(key[0])
        if not name.is_subdomain(origin):
            raise DnsRefused(f"{key[0]}/{key[1]} is outside zone {zone}")
        if change.before is None:
            update.absent(name, key[1])
            if key[1] == "CNAME":
                update.absent(name)
        else:
            update.present(name, _rdataset(change.before, ttl=0, raw=raw))
        if change.after is None:
            update.delete(name, key[1])
        else:
            update.replace(name, _rdataset(change.after, ttl=change.after.ttl))
    return update


def _check(change: DnsChange, seen: set[Key]) -> Key:
    sides = [rs for rs in (change.before, change.after) if rs is not None]
    if not sides:
        raise ValueError("a DnsChange needs before or after")
    if len({rs.key for rs in sides}) != 1:
        raise ValueError(f"before and after differ in name or type: {[rs.key for rs in sides]}")
    if any(not rs.values for rs in sides):
        raise ValueError(f"{sides[0].key}: empty values (use after=None to delete)")
    key = sides[0].key
    if key in seen:
        raise ValueError(f"{key}: changed twice in one update")
    seen.add(key)
    return key


def _rdataset(rs: RecordSet, ttl: int, raw: Mapping[RawKey, dns.rdata.Rdata] | None = None) -> dns.rdataset.Rdataset:
    known = raw if raw is not None else {}
    rdatas = [known.get((rs.key, v)) or _rdata(rs.rtype, v) for v in rs.values]
    return dns.rdataset.from_rdata_list(ttl, rdatas)


def _rdata(rtype: str, value: str) -> dns.rdata.Rdata:
    """Rdata for one value: TXT as one RR of <= 255-byte strings, others parsed and checked to be normalised."""
    if rtype == "TXT":
        chunks = [c.encode("utf-8") for c in split_txt(value)]
        return dns.rdtypes.ANY.TXT.TXT(IN, dns.rdatatype.TXT, chunks)
    try:
        rdata = dns.rdata.from_text(IN, rtype, value, origin=dns.name.root, relativize=False)
    except (dns.exception.DNSException, ValueError) as exc:
        raise ValueError(f"bad {rtype} value {value!r}: {exc}") from None
    normal = _text(rdata)
    if normal != value:
        raise ValueError(f"{rtype} value {value!r} is not normalised: write {normal!r}")
    return rdata


def normalise_value(rtype: str, value: str) -> str:
    """The normalised form of one value, as ``read_zone``/``query`` return it (targets absolute with a dot).

    Raises:
        ValueError: the value does not parse for ``rtype``.
    """
    rtype = rtype.upper()
    if rtype == "TXT":
        return value
    try:
        return _text(dns.rdata.from_text(IN, rtype, value, origin=dns.name.root, relativize=False))
    except (dns.exception.DNSException, ValueError) as exc:
        raise ValueError(f"bad {rtype} value {value!r}: {exc}") from None


# ---------------------------------------------------------------- DNSSEC (pure)

SEP = 0x0001  # DNSKEY flag: secure entry point, a key-signing key (KSK or CSK, flags 257) the parent's DS points to


def ds_from_dnskeys(zone: str, dnskeys: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The DS records (digest type 2, SHA-256; RFC 4509) for the key-signing keys among ``dnskeys`` (DNSKEY rdatas in
    presentation form, as ``query`` returns them), in presentation form ``<tag> <alg> 2 <hex>``, sorted.

    Raises:
        ValueError: a value is not a DNSKEY rdata.
    """
    owner = dns.name.from_text(_zone(zone))
    out = []
    for value in dnskeys:
        try:
            key = dns.rdata.from_text(IN, dns.rdatatype.DNSKEY, value)
        except (dns.exception.DNSException, ValueError) as exc:
            raise ValueError(f"bad DNSKEY value {value!r}: {exc}") from None
        assert isinstance(key, dns.rdtypes.ANY.DNSKEY.DNSKEY)
        if key.flags & SEP:
            ds = dns.dnssec.make_ds(owner, key, "SHA256")
            out.append(f"{ds.key_tag} {ds.algorithm} {ds.digest_type} {ds.digest.hex().upper()}")
    return tuple(sorted(out))


# ---------------------------------------------------------------- reading helpers (pure)


def _records(zone: dns.zone.Zone) -> tuple[dict[Key, RecordSet], dict[RawKey, dns.rdata.Rdata]]:
    """The zone's RRsets in our vocabulary, and the TXT rdatas whose string split differs from ``split_txt``."""
    out: dict[Key, RecordSet] = {}
    raw: dict[RawKey, dns.rdata.Rdata] = {}
    origin = zone.origin
    assert origin is not None
    for name, node in zone.nodes.items():
        owner = _name(name.derelativize(origin))
        for rdataset in node.rdatasets:
            rtype = dns.rdatatype.to_text(rdataset.rdtype)
            if rtype in _SKIPPED_TYPES:
                continue
            rs = RecordSet.of(owner, rtype, rdataset.ttl, [_text(r, origin) for r in rdataset])
            out[rs.key] = rs
            for rdata in rdataset:
                if isinstance(rdata, dns.rdtypes.txtbase.TXTBase) and rdata != _rdata("TXT", _text(rdata)):
                    raw[(rs.key, _text(rdata))] = rdata
    return out, raw


def _answer(response: dns.message.Message, name: str, rtype: str) -> RecordSet | None:
    rrset = _find(response, name, rtype)
    if rrset is None or len(rrset) == 0:
        return None
    return RecordSet.of(name, rtype, rrset.ttl, [_text(r) for r in rrset])


def _chase(response: dns.message.Message, name: str, rtype: str) -> str:
    """The end of the CNAME chain the answer section holds for ``name`` (``name`` itself when there is none)."""
    for _ in range(8):
        alias = None if rtype == "CNAME" else _find(response, name, "CNAME")
        if alias is None or len(alias) == 0:
            return name
        name = _zone(_text(alias[0]))
    return name


def _find(response: dns.message.Message, name: str, rtype: str) -> dns.rrset.RRset | None:
    """The answer RRset for exactly (name, rtype, IN); a CNAME or other records in the answer do not count."""
    owner, rdtype = dns.name.from_text(name), dns.rdatatype.from_text(rtype)
    for rrset in response.answer:
        if rrset.name == owner and rrset.rdtype == rdtype and rrset.rdclass == IN:
            return rrset
    return None


def _text(rdata: dns.rdata.Rdata, origin: dns.name.Name | None = None) -> str:
    """Our value form: TXT joined and unquoted; others presentation format, absolute, names lowercased."""
    if isinstance(rdata, dns.rdtypes.txtbase.TXTBase):
        return b"".join(rdata.strings).decode("utf-8", "replace")
    text = rdata.to_text(origin=origin, relativize=False)
    return text.lower() if dns.rdatatype.to_text(rdata.rdtype) in _NAME_TYPES else text


def _name(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _zone(zone: str) -> str:
    return zone.rstrip(".").lower()


def _fields(rs: RecordSet) -> tuple[str, str, int, tuple[str, ...]]:
    return rs.name, rs.rtype, rs.ttl, rs.values


# ---------------------------------------------------------------- servers "host[:port]"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _split(server: str, default_port: int) -> tuple[str, int]:
    """Parse ``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address."""
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if server.count(":") == 1:
        host, _, port = server.partition(":")
        return host, int(port)
    return server, default_port


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------- error mapping


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    """Map dnspython and socket failures to the error tree (messages carry no secrets)."""
    try:
        yield
    except dns.xfr.TransferError as exc:
        raise _rcode_error(exc.rcode, what) from exc
    except _TSIG_ERRORS as exc:
        raise DnsRefused(f"{what}: TSIG rejected ({type(exc).__name__})") from exc
    except _WIRE_FAULTS as exc:
        raise DnsServfail(f"{what}: {type(exc).__name__}: {exc}") from exc


def _rcode_error(rcode: int, what: str) -> DnsConflict | DnsServfail | DnsRefused:
    if rcode in _CONFLICT:
        return DnsConflict(f"{what}: {dns.rcode.to_text(dns.rcode.Rcode.make(rcode))}")
    if rcode == dns.rcode.SERVFAIL:
        return DnsServfail(f"{what}: SERVFAIL")
    return _refused(rcode, what)


def _refused(rcode: int, what: str) -> DnsRefused:
    return DnsRefused(f"{what}: {dns.rcode.to_text(dns.rcode.Rcode.make(rcode))}")


# ---------------------------------------------------------------- propagation gate (pure over DnsPort)


def serial_lt(a: int, b: int) -> bool:
    """RFC 1982 serial arithmetic: True when serial ``a`` precedes ``b`` (32-bit, wrapping)."""
    a, b = a % 2**32, b % 2**32
    return (a < b and b - a < 2**31) or (a > b and a - b > 2**31)


def verify_propagation(
    port: DnsPort, zone: str, expected: Mapping[Key, RecordSet | None], min_serial: int | None
) -> list[str]:
    """Human-readable mismatches on every authoritative server of ``zone``; an empty list means propagated.

    Each server must serve the zone with a serial >= ``min_serial`` (RFC 1982) and hold exactly each expected RRset
    (values and TTL); an expected None must be absent. Server failures are reported, not raised.

    Raises:
        DnsServfail: the list of servers could not be determined.
    """
    problems: list[str] = []
    for server in port.servers(zone):
        try:
            problems.extend(_server_mismatches(port, server, zone, expected, min_serial))
        except (TransientError, DnsRefused) as exc:
            problems.append(f"{server}: {exc.reason}")
    return problems


def _server_mismatches(
    port: DnsPort, server: str, zone: str, expected: Mapping[Key, RecordSet | None], min_serial: int | None
) -> list[str]:
    serial = port.serial(zone, server)
    if serial is None:
        return [f"{server}: does not serve {zone}"]
    problems = []
    if min_serial is not None and serial_lt(serial, min_serial):
        problems.append(f"{server}: serial {serial} < {min_serial}")
    for key in sorted(expected):
        want, have = expected[key], port.query(server, *key)
        if want is None and have is not None:
            problems.append(f"{server}: {key[0]}/{key[1]} present {list(have.values)}, expected absent")
        elif want is not None and (have is None or (have.ttl, have.values) != (want.ttl, want.values)):
            shown = "absent" if have is None else f"{have.ttl} {list(have.values)}"
            problems.append(f"{server}: {key[0]}/{key[1]} is {shown}, expected {want.ttl} {list(want.values)}")
    return problems
