"""FakeDns: an in-memory DnsPort with BIND 9.18's compare-and-set semantics and the quirks that matter.

Same validation as the real adapter (it builds the same UPDATE with ``build_update``, so malformed or non-normalised
changes raise ValueError and names outside the zone DnsRefused), then, like BIND (reference/dns.md §3, §9):
prerequisites first (YXRRSET / YXDOMAIN / NXRRSET -> DnsConflict, nothing changed); a CNAME added at a name with other
data, or other data added at a CNAME, is silently dropped; an MX whose target lies inside the zone without A/AAAA
-> DnsRefused and nothing changed; the serial increments only when the zone content changed.

Secondaries (``secondaries=("ns2", ...)``) follow the primary at once unless ``auto_sync=False``; then ``sync()``.
"""

from __future__ import annotations

from collections.abc import Iterable

import dns.dnssec
import dns.dnssectypes
import dns.name
import dns.rdata
import dns.rdtypes.ANY.DNSKEY
from cryptography.hazmat.primitives.asymmetric import ec

from functions._core.model.ports import DnsChange
from functions._core.model.records import Key, RecordSet
from functions._core.platform.errors import AutomationError, DnsConflict, DnsRefused, DnsServfail
from functions.adapters.dns import build_update, ds_from_dnskeys

PRIMARY = "primary"
Zone = dict[Key, RecordSet]


class FakeDns:
    """In-memory DnsPort. Inspect ``updates`` (successful UPDATEs), ``log`` (zone, change) and ``zones``."""

    def __init__(self, *, secondaries: tuple[str, ...] = (), auto_sync: bool = True) -> None:
        self.zones: dict[str, Zone] = {}  # the primary's data
        self.serials: dict[str, int] = {}
        self.hosted: set[str] = set()  # zones on the primary that our key may update and transfer
        self.external: Zone = {}  # the public view of names outside our zones (resolve)
        self.updates = 0
        self.log: list[tuple[str, DnsChange]] = []
        self.faults: list[AutomationError] = []  # raised by the next apply calls, before anything changes
        self.secondaries = secondaries
        self.auto_sync = auto_sync
        self.served: dict[str, dict[str, tuple[int, Zone]]] = {s: {} for s in secondaries}
        # the validating resolver's view: its verdict per zone (default insecure) and the DS the parents serve
        self.verdicts: dict[str, str] = {}
        self.parent_ds: dict[str, RecordSet] = {}

    # ------------------------------------------------------------ test set-up

    def add_zone(self, zone: str, records: Iterable[RecordSet] = (), *, serial: int = 1) -> None:
        """An empty customer zone like infra/local/zone-add (SOA, NS ns1.ZONE., ns1 A 127.0.0.1) plus ``records``."""
        zone = _norm(zone)
        data: Zone = {}
        for rs in (
            RecordSet.of(zone, "NS", 300, [f"ns1.{zone}."]),
            RecordSet.of(f"ns1.{zone}", "A", 300, ["127.0.0.1"]),
            *records,
        ):
            data[rs.key] = rs
        self.zones[zone] = data
        self.hosted.add(zone)
        self._set_serial(zone, serial)
        self._maybe_sync()

    def set_rrset(self, zone: str, rs: RecordSet) -> None:
        """An out-of-band change (another writer, like nsupdate): bumps the serial, not ``updates``."""
        self._edit(zone, rs.key, rs)

    def delete_rrset(self, zone: str, key: Key) -> None:
        """An out-of-band delete (another writer)."""
        self._edit(zone, key, None)

    def sign(self, zone: str) -> str:
        """Serve a fresh key-signing key and zone-signing key at the apex (then ``sync``); returns the KSK's DS
        (SHA-256) as dnspython computes it. Nothing else is signed: the fake answers no RRSIG."""
        zone = _norm(zone)
        ksk = dnskey(257)
        self.zones[zone][(zone, "DNSKEY")] = RecordSet.of(zone, "DNSKEY", 300, [ksk, dnskey(256)])
        self.sync()
        rd = dns.rdata.from_text("IN", "DNSKEY", ksk)
        assert isinstance(rd, dns.rdtypes.ANY.DNSKEY.DNSKEY)
        ds = dns.dnssec.make_ds(dns.name.from_text(zone), rd, "SHA256")
        return f"{ds.key_tag} {ds.algorithm} {ds.digest_type} {ds.digest.hex().upper()}"

    def sync(self, server: str | None = None) -> None:
        """Copy the primary's zones to one secondary (or all)."""
        for name in self.secondaries if server is None else (server,):
            self.served[name] = {z: (self.serials[z], dict(data)) for z, data in self.zones.items()}

    # ------------------------------------------------------------ DnsPort

    def hosts_zone(self, zone: str) -> bool:
        return _norm(zone) in self.hosted

    def read_zone(self, zone: str) -> dict[Key, RecordSet]:
        return dict(self._hosted(zone))

    def apply(self, zone: str, changes: list[DnsChange]) -> int:
        zone = _norm(zone)
        if self.faults:
            raise self.faults.pop(0)
        build_update(zone, changes)  # the real adapter's validation
        old = self._hosted(zone)
        _check_prerequisites(old, changes)
        new = _updated(old, changes)
        _check_integrity(zone, new, changes)
        self.updates += 1
        self.log.extend((zone, c) for c in changes)
        if new != old:
            self.zones[zone] = new
            self._set_serial(zone, (self.serials[zone] + 1) % 2**32)
            self._maybe_sync()
        return self.serials[zone]

    def servers(self, zone: str) -> list[str]:
        return [PRIMARY, *self.secondaries]

    def serial(self, zone: str, server: str) -> int | None:
        found = self._served(server).get(_norm(zone))
        return None if found is None else found[0]

    def query(self, server: str, name: str, rtype: str) -> RecordSet | None:
        served = self._served(server)
        zone = _zone_of(_norm(name), served)
        if zone is None:
            raise DnsRefused(f"query {name}/{rtype} at {server}: REFUSED")
        return served[zone][1].get((_norm(name), rtype.upper()))

    def read_zone_at(self, zone: str, server: str) -> tuple[int, dict[Key, RecordSet]] | None:
        """(serial, RRsets) as ``server`` serves the zone; None when it does not (or, on the primary, our key may not
        transfer it)."""
        zone = _norm(zone)
        found = self._served(server).get(zone)
        if found is None or (server == PRIMARY and zone not in self.hosted):
            return None
        return found[0], dict(found[1])

    def read_rrset(self, name: str, rtype: str) -> RecordSet | None:
        return self.query(PRIMARY, name, rtype)

    def resolve(self, name: str, rtype: str) -> RecordSet | None:
        """A resolver's view: zones we host, else ``external``; CNAMEs followed (8 hops at most), as resolvers do."""
        key = (_norm(name), rtype.upper())
        for _ in range(8):
            zone = _zone_of(key[0], self.zones)
            data = self.external if zone is None else self.zones[zone]
            found, alias = data.get(key), data.get((key[0], "CNAME"))
            if found is not None or alias is None or key[1] == "CNAME":
                return found
            key = (_norm(alias.values[0]), key[1])
        return None

    def query_ds(self, server: str, zone: str) -> tuple[str, ...]:
        keys = self.query(server, zone, "DNSKEY")
        return ds_from_dnskeys(zone, keys.values) if keys is not None else ()

    def resolve_validated(self, name: str, rtype: str) -> tuple[str, RecordSet | None]:
        """``verdicts`` for the name's zone (insecure unless set); a DS from ``parent_ds``, anything else resolved."""
        name = _norm(name)
        zone = _zone_of(name, self.zones) or name
        found = self.parent_ds.get(name) if rtype.upper() == "DS" else self.resolve(name, rtype)
        return self.verdicts.get(zone, "insecure"), found

    # ------------------------------------------------------------ internals

    def _hosted(self, zone: str) -> Zone:
        zone = _norm(zone)
        if zone not in self.hosted:
            raise DnsRefused(f"{zone}: NOTAUTH (not hosted)")
        return self.zones[zone]

    def _served(self, server: str) -> dict[str, tuple[int, Zone]]:
        if server == PRIMARY:
            return {z: (self.serials[z], data) for z, data in self.zones.items()}
        if server not in self.served:
            raise DnsServfail(f"{server}: Timeout")
        return self.served[server]

    def _edit(self, zone: str, key: Key, rs: RecordSet | None) -> None:
        zone = _norm(zone)
        data = dict(self._hosted(zone))
        if rs is None:
            data.pop(key, None)
        else:
            data[key] = rs
        self.zones[zone] = data
        self._set_serial(zone, (self.serials[zone] + 1) % 2**32)
        self._maybe_sync()

    def _set_serial(self, zone: str, serial: int) -> None:
        self.serials[zone] = serial
        soa = f"ns1.{zone}. hostmaster.{zone}. {serial} 3600 600 86400 300"
        self.zones[zone][(zone, "SOA")] = RecordSet.of(zone, "SOA", 300, [soa])

    def _maybe_sync(self) -> None:
        if self.auto_sync:
            self.sync()


def _check_prerequisites(have: Zone, changes: list[DnsChange]) -> None:
    names = {name for name, _ in have}
    for change in changes:
        name, rtype = change.key
        current = have.get(change.key)
        if change.before is None and current is not None:
            raise DnsConflict(f"{name}/{rtype}: YXRRSET")
        if change.before is None and rtype == "CNAME" and name in names:
            raise DnsConflict(f"{name}: YXDOMAIN")
        if change.before is not None and (current is None or current.values != change.before.values):
            raise DnsConflict(f"{name}/{rtype}: NXRRSET")


def _updated(have: Zone, changes: list[DnsChange]) -> Zone:
    new = dict(have)
    for change in changes:
        name, rtype = change.key
        new.pop(change.key, None)
        if change.after is None:
            continue
        others = {t for n, t in new if n == name}
        if rtype == "CNAME" and others:
            continue  # BIND: "attempt to add CNAME alongside non-CNAME ignored"
        if rtype != "CNAME" and "CNAME" in others:
            continue  # BIND: "attempt to add non-CNAME alongside CNAME ignored"
        new[change.key] = RecordSet.of(name, rtype, change.after.ttl, change.after.values)
    return new


def _check_integrity(zone: str, new: Zone, changes: list[DnsChange]) -> None:
    """BIND check-integrity: an added MX whose target is in the zone needs an A or AAAA there."""
    for change in changes:
        if change.after is None or change.after.rtype != "MX":
            continue
        for value in change.after.values:
            target = value.split()[1].rstrip(".").lower()
            inside = target == zone or target.endswith("." + zone)
            if inside and (target, "A") not in new and (target, "AAAA") not in new:
                raise DnsRefused(f"UPDATE {zone}: REFUSED ({zone}/MX '{target}' has no address records)")


def _zone_of(name: str, zones: Iterable[str]) -> str | None:
    """The longest zone that holds ``name``."""
    found = [z for z in zones if name == z or name.endswith("." + z)]
    return max(found, key=len) if found else None


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


def dnskey(flags: int) -> str:
    """A fresh ECDSA P-256 DNSKEY rdata in presentation form (flags 257 = key-signing key, 256 = zone-signing key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return dns.dnssec.make_dnskey(key.public_key(), dns.dnssectypes.Algorithm.ECDSAP256SHA256, flags=flags).to_text()
