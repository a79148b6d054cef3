"""The verification gate: authoritative evidence (serial and exact content on every server, a DKIM probe
signature verified against each) before a domain counts as provisioned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from functions._core.model import keys
from functions._core.model.mailset import MARKER_NAME
from functions._core.model.ports import DnsPort, Ports
from functions._core.model.records import Key, RecordSet
from functions._core.platform.errors import NotPropagated


def serial_before(a: int, b: int) -> bool:
    """RFC 1982 serial arithmetic: True when ``a`` is older than ``b``."""
    return a != b and ((b - a) % 2**32) < 2**31


T = TypeVar("T")
POLL_FIRST, POLL_MAX = 0.05, 0.5  # seconds between rounds of questions: doubling from the first to the max


def until_propagated(
    wait: float,
    check: Callable[[], T],
    *,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> T:
    """``check()`` again and again while it raises NotPropagated, for at most ``wait`` seconds
    (``dns.propagation_wait``): a secondary fed by NOTIFY + IXFR serves an UPDATE within about a second, which is
    not worth a rung of the broker's retry ladder. Each round asks every server again; the last NotPropagated is
    raised when the time is up.
    """
    deadline, delay = monotonic() + wait, POLL_FIRST
    while True:
        try:
            return check()
        except NotPropagated:
            left = deadline - monotonic()
            if left <= 0:
                raise
        sleep(min(delay, left))
        delay = min(delay * 2, POLL_MAX)


AXFR_MIN_RRSETS = 4  # from this many expected RRsets on, one transfer per server replaces the query per RRset


def server_mismatches(
    dns: DnsPort, zone: str, server: str, expected: Mapping[Key, RecordSet], min_serial: int | None
) -> list[str]:
    """What ``server`` serves differently from ``expected`` (empty when it serves exactly the plan).

    With ``AXFR_MIN_RRSETS`` or more expected RRsets, one TSIG-signed AXFR from ``server`` gives its serial and every
    RRset at once (a customer zone: 1 message instead of 12); with fewer (one key in the delegation zone), or when
    the server refuses the transfer, its SOA and each RRset are queried. A server whose SOA serial is still older than
    ``min_serial`` (a secondary that has not transferred the UPDATE yet), or that does not answer the zone's SOA, is
    not transferred from: its SOA says enough.
    """
    axfr = len(expected) >= AXFR_MIN_RRSETS
    if axfr and min_serial is not None:
        lagging = dns.serial(zone, server)
        if lagging is None:
            return [f"{server}: no SOA for {zone}"]
        if serial_before(lagging, min_serial):
            return [f"{server}: serial {lagging} older than {min_serial}"]
    served = dns.read_zone_at(zone, server) if axfr else None
    serial = dns.serial(zone, server) if served is None else served[0]
    if serial is None:
        return [f"{server}: no SOA for {zone}"]
    if min_serial is not None and serial_before(serial, min_serial):
        return [f"{server}: serial {serial} older than {min_serial}"]
    out = []
    for (name, rtype), rs in sorted(expected.items()):
        if served is None:
            got = dns.query(server, name, rtype)
        else:
            got = served[1].get((name.rstrip(".").lower(), rtype.upper()))
        if got is None or got.values != rs.values:
            out.append(f"{server}: {rtype} {name} is {list(got.values) if got else 'absent'}")
    return out


def txt_value(rs: RecordSet | None) -> bytes | None:
    """What a DKIM verifier reads from a TXT RRset: the one record's data, None when absent or ambiguous."""
    return rs.values[0].encode() if rs is not None and len(rs.values) == 1 else None


def _probe(dns_lookup: keys.TxtLookup, zone: str, pair: keys.KeyPair) -> bool:
    return keys.probe_verifies(zone, pair.selector, pair.private_pem, dns_lookup)


def verify_zone(
    ports: Ports,
    zone: str,
    expected: Mapping[Key, RecordSet],
    min_serial: int | None,
    pair: keys.KeyPair,
    *,
    signer: str | None = None,
) -> list[str]:
    """Check every authoritative server of ``zone``; return them when all serve the plan and the DKIM probe verifies.

    ``signer``: a delegated key (reference/dns.md §5.4): ``zone`` is the delegation zone, ``expected`` holds the key's
    one TXT, and the probe is signed for the customer domain ``signer``, its selector resolved through that TXT's name.

    Every server that has not passed yet is asked again for up to ``dns.propagation_wait`` seconds until all of them
    have passed (a server that served the plan and verified the probe once is not asked again in the same wait).

    Raises:
        NotPropagated: listing the first mismatches (transient: the broker retries later).
    """
    passed: set[str] = set()  # servers that passed in an earlier round of this wait are not asked again
    return until_propagated(
        ports.settings.dns.propagation_wait,
        lambda: _verify_zone(ports, zone, expected, min_serial, pair, signer, passed),
    )


def _verify_zone(
    ports: Ports,
    zone: str,
    expected: Mapping[Key, RecordSet],
    min_serial: int | None,
    pair: keys.KeyPair,
    signer: str | None,
    passed: set[str],
) -> list[str]:
    dns = ports.dns
    servers = dns.servers(zone)
    target = next(iter(expected.values())).name if signer else ""
    problems: list[str] = []
    for server in servers:
        if server in passed:
            continue  # it served the plan and the probe verified against it after the UPDATE, earlier in this wait
        mismatches = server_mismatches(dns, zone, server, expected, min_serial)
        problems += mismatches
        if mismatches:
            continue

        def at(name: str, server: str = server) -> RecordSet | None:
            return dns.query(server, name.rstrip("."), "TXT")

        look = delegated_lookup(at, signer, pair.selector, target) if signer else (lambda n, at=at: txt_value(at(n)))
        if not _probe(look, signer or zone, pair):
            problems.append(f"{server}: DKIM probe signature for {pair.selector} does not verify")
            continue
        passed.add(server)
    if problems:
        raise NotPropagated("; ".join(problems[:6]))
    return servers


def external_missing(ports: Ports, want: Mapping[Key, RecordSet], pair: keys.KeyPair) -> list[str]:
    """For a zone hosted elsewhere: the managed records the public DNS does not serve yet."""
    missing = []
    for (name, rtype), rs in sorted(want.items()):
        if name.startswith(MARKER_NAME + "."):
            continue
        got = ports.dns.resolve(name, rtype)
        if got is None or not set(rs.values) <= set(got.values):
            missing.append(f"{rtype} {name}")

    def lookup(name: str) -> bytes | None:
        return txt_value(ports.dns.resolve(name.rstrip("."), "TXT"))

    zone = next(iter(want))[0]
    if not missing and not _probe(lookup, zone, pair):
        missing.append(f"DKIM probe for {pair.selector}")
    return missing


def delegated_lookup(
    query: Callable[[str], RecordSet | None], domain: str, selector: str, target: str
) -> keys.TxtLookup:
    """A TXT lookup for ``<selector>._domainkey.<domain>`` answered from ``target`` (the delegation zone's name), as
    a resolver following the customer's CNAME would; every other name is absent."""
    asked = f"{selector}._domainkey.{domain}"

    def lookup(name: str) -> bytes | None:
        return txt_value(query(target)) if name.rstrip(".").lower() == asked else None

    return lookup
