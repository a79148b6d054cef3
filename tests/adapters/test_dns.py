"""Rfc2136Dns: the UPDATE it builds and its error mapping (recording DnsWire, no network), the propagation gate, and
one compare-and-set contract run against FakeDns (always) and the real BIND of the local stack (marked ``stack``)."""

from __future__ import annotations

import base64
import dataclasses
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.rdtypes.txtbase
import dns.rrset
import dns.tsig
import dns.update
import dns.xfr
import dns.zone
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from functions._core.model.ports import DnsChange, DnsPort
from functions._core.model.records import Key, RecordSet
from functions._core.platform.config import DnsSettings, Secret
from functions._core.platform.errors import ConfigError, DnsConflict, DnsRefused, DnsServfail
from functions.adapters.dns import Rfc2136Dns, TcpWire, normalise_value, serial_lt, verify_propagation
from tests.fakes.dns import PRIMARY, FakeDns

ZONE = "example.test"
BASE = f"""
$TTL 300
@ IN SOA ns1.{ZONE}. hostmaster.{ZONE}. 7 3600 600 86400 300
@ IN NS ns1
@ IN NS ns2.elsewhere.test.
ns1 IN A 127.0.0.1
@ 3600 IN MX 10 PMG1.faster.test.
www IN CNAME web
web IN A 192.0.2.1
"""
SETTINGS = DnsSettings(
    primary="127.0.0.1",
    port=5399,
    tsig_name="ddns-key",
    tsig_secret=Secret(base64.b64encode(b"k" * 32).decode()),
    propagation_wait=0.0,
)


def rs(name: str, rtype: str, ttl: int, *values: str) -> RecordSet:
    return RecordSet.of(name, rtype, ttl, list(values))


@cache
def dkim_value() -> str:
    """A real 2048-bit DKIM record in Mailcow's format (420 characters)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1;k=rsa;t=s;s=email;p=" + base64.b64encode(spki).decode()


# ---------------------------------------------------------------- a recording wire (no network)


class RecordingWire:
    """Answers from an in-memory zone; records UPDATEs; ``outcomes`` script what each send returns or raises.

    On NOERROR the serial goes up by one; ``apply_on_send`` replaces the zone on the next send whatever the outcome
    (a server that applied the UPDATE and then lost the answer).
    """

    def __init__(self, text: str = BASE) -> None:
        self.zone = dns.zone.from_text(text, origin=ZONE, relativize=False)
        self.sent: list[dns.update.UpdateMessage] = []
        self.queries: list[tuple[str, int, str, str, bool]] = []
        self.outcomes: list[int | Exception] = []
        self.apply_on_send: str | None = None
        self.truncate_udp = False
        self.transfer_error: Exception | None = None
        self.transfers: list[tuple[str, tuple[str, int] | None]] = []

    def transfer(self, zone: str, server: tuple[str, int] | None = None) -> dns.zone.Zone:
        self.transfers.append((zone, server))
        if self.transfer_error is not None:
            raise self.transfer_error
        return self.zone

    def send(self, update: dns.update.UpdateMessage) -> int:
        self.sent.append(update)
        if self.apply_on_send is not None:
            self.zone = dns.zone.from_text(self.apply_on_send, origin=ZONE, relativize=False)
            self.apply_on_send = None
        outcome = self.outcomes.pop(0) if self.outcomes else dns.rcode.NOERROR
        if isinstance(outcome, Exception):
            raise outcome
        if outcome == dns.rcode.NOERROR:
            self._bump()
        return outcome

    def query(
        self, server: str, port: int, name: str, rtype: str, tcp: bool, recursive: bool = False
    ) -> dns.message.Message:
        self.queries.append((server, port, name, rtype, tcp))
        qname = dns.name.from_text(name)
        response = dns.message.make_response(dns.message.make_query(qname, rtype))
        assert self.zone.origin is not None
        if not qname.is_subdomain(self.zone.origin):
            response.set_rcode(dns.rcode.REFUSED)
            return response
        response.flags |= dns.flags.AA
        node = self.zone.get_node(qname)
        if node is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        rdataset = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.from_text(rtype))
        if self.truncate_udp and not tcp:
            response.flags |= dns.flags.TC
        elif rdataset is not None:
            response.answer.append(dns.rrset.from_rdata_list(qname, rdataset.ttl, list(rdataset)))
        return response

    def _bump(self) -> None:
        assert self.zone.origin is not None
        node = self.zone.find_node(self.zone.origin)
        soa = node.find_rdataset(dns.rdataclass.IN, dns.rdatatype.SOA)
        old = soa[0]
        assert isinstance(old, dns.rdtypes.ANY.SOA.SOA)
        soa.clear()
        soa.add(old.replace(serial=old.serial + 1), 300)


def onwire(update: dns.update.UpdateMessage, section: str) -> list[str]:
    """A section of the UPDATE as the server receives it (after a wire round trip)."""
    parsed = dns.message.from_wire(update.to_wire())
    assert isinstance(parsed, dns.update.UpdateMessage)
    return [line for rrset in getattr(parsed, section) for line in rrset.to_text().splitlines()]


@pytest.fixture
def wire() -> RecordingWire:
    return RecordingWire()


@pytest.fixture
def port(wire: RecordingWire) -> Rfc2136Dns:
    return Rfc2136Dns(SETTINGS, wire=wire)


# ---------------------------------------------------------------- the UPDATE message


def test_update_has_one_cas_prerequisite_per_change_with_ttl_0(port: Rfc2136Dns, wire: RecordingWire) -> None:
    have = port.read_zone(ZONE)
    mx = have[(ZONE, "MX")]
    changes = [
        DnsChange(None, rs(f"_dmarc.{ZONE}", "TXT", 3600, "v=DMARC1; p=reject")),
        DnsChange(mx, rs(ZONE, "MX", 3600, "10 pmg1.faster.test.", "10 pmg2.faster.test.")),
        DnsChange(have[(f"www.{ZONE}", "CNAME")], None),
        DnsChange(None, rs(f"autoconfig.{ZONE}", "CNAME", 3600, "moo.faster.test.")),
    ]
    assert port.apply(ZONE, changes) == 8
    (update,) = wire.sent  # ONE message for the whole change set
    assert onwire(update, "zone") == [f"{ZONE}. IN SOA"]
    assert onwire(update, "prerequisite") == [
        f"_dmarc.{ZONE}. NONE TXT",  # create: RRset must not exist
        f"{ZONE}. 0 IN MX 10 pmg1.faster.test.",  # update: RRset exists with exactly these values, TTL 0
        f"www.{ZONE}. 0 IN CNAME web.{ZONE}.",
        f"autoconfig.{ZONE}. NONE CNAME",
        f"autoconfig.{ZONE}. NONE ANY",  # CNAME create: name not in use at all
    ]
    assert onwire(update, "update") == [
        f"_dmarc.{ZONE}. ANY TXT",
        f'_dmarc.{ZONE}. 3600 IN TXT "v=DMARC1; p=reject"',
        f"{ZONE}. ANY MX",
        f"{ZONE}. 3600 IN MX 10 pmg1.faster.test.",
        f"{ZONE}. 3600 IN MX 10 pmg2.faster.test.",
        f"www.{ZONE}. ANY CNAME",
        f"autoconfig.{ZONE}. ANY CNAME",
        f"autoconfig.{ZONE}. 3600 IN CNAME moo.faster.test.",
    ]
    assert wire.queries[-1][2:] == (ZONE, "SOA", False)  # the new serial, read right after NOERROR


def test_dkim_2048_is_one_rr_with_two_strings_255_165(port: Rfc2136Dns, wire: RecordingWire) -> None:
    value = dkim_value()
    assert len(value) == 420
    port.apply(ZONE, [DnsChange(None, rs(f"s1._domainkey.{ZONE}", "TXT", 3600, value))])
    (rrset,) = [r for r in wire.sent[0].update if r.rdtype == dns.rdatatype.TXT and len(r)]
    (rdata,) = list(rrset)
    assert isinstance(rdata, dns.rdtypes.txtbase.TXTBase)
    assert [len(s) for s in rdata.strings] == [255, 165]
    assert b"".join(rdata.strings).decode() == value  # never cut at ';' (dns.md §2)


def test_txt_read_with_a_foreign_split_is_repeated_exactly_in_the_prerequisite(wire: RecordingWire) -> None:
    wire.zone = dns.zone.from_text(BASE + 'spf IN TXT "v=spf1 " "-all"\n', origin=ZONE, relativize=False)
    port = Rfc2136Dns(SETTINGS, wire=wire)
    have = port.read_zone(ZONE)[(f"spf.{ZONE}", "TXT")]
    assert have.values == ("v=spf1 -all",)
    port.apply(ZONE, [DnsChange(have, rs(f"spf.{ZONE}", "TXT", 300, "v=spf1 ~all"))])
    assert onwire(wire.sent[0], "prerequisite") == [f'spf.{ZONE}. 0 IN TXT "v=spf1 " "-all"']


def test_empty_change_list_sends_nothing(port: Rfc2136Dns, wire: RecordingWire) -> None:
    assert port.apply(ZONE, []) == 7
    assert wire.sent == []


def test_change_outside_the_zone_is_refused_before_sending(port: Rfc2136Dns, wire: RecordingWire) -> None:
    with pytest.raises(DnsRefused, match="outside zone"):
        port.apply(ZONE, [DnsChange(None, rs("www.other.test", "A", 300, "192.0.2.9"))])
    assert wire.sent == []


@pytest.mark.parametrize(
    "change",
    [
        DnsChange(None, None),
        DnsChange(rs(f"a.{ZONE}", "A", 300, "192.0.2.1"), rs(f"b.{ZONE}", "A", 300, "192.0.2.1")),
        DnsChange(None, RecordSet(f"a.{ZONE}", "A", 300, ())),
        DnsChange(None, rs(ZONE, "MX", 300, "10 pmg1.faster.test")),  # relative target
        DnsChange(None, rs(ZONE, "MX", 300, "10 PMG1.faster.test.")),  # not lowercase
        DnsChange(None, rs(f"a.{ZONE}", "A", 300, "not-an-ip")),
    ],
)
def test_malformed_or_unnormalised_changes_raise_before_sending(
    port: Rfc2136Dns, wire: RecordingWire, change: DnsChange
) -> None:
    with pytest.raises(ValueError):
        port.apply(ZONE, [change])
    assert wire.sent == []


# ---------------------------------------------------------------- rcodes and wire faults


@pytest.mark.parametrize(
    ("outcome", "error"),
    [
        (dns.rcode.NXRRSET, DnsConflict),
        (dns.rcode.YXRRSET, DnsConflict),
        (dns.rcode.YXDOMAIN, DnsConflict),
        (dns.rcode.NXDOMAIN, DnsConflict),
        (dns.rcode.REFUSED, DnsRefused),
        (dns.rcode.NOTAUTH, DnsRefused),
        (dns.rcode.NOTZONE, DnsRefused),
        (dns.rcode.FORMERR, DnsRefused),
        (dns.tsig.PeerBadSignature(), DnsRefused),
        (dns.tsig.PeerBadKey(), DnsRefused),
    ],
)
def test_rcodes_that_are_not_retried_in_place(
    port: Rfc2136Dns, wire: RecordingWire, outcome: int | Exception, error: type[Exception]
) -> None:
    wire.outcomes = [outcome]
    with pytest.raises(error):
        port.apply(ZONE, [DnsChange(None, rs(f"a.{ZONE}", "A", 300, "192.0.2.1"))])
    assert len(wire.sent) == 1


@pytest.mark.parametrize(
    "outcome", [dns.rcode.SERVFAIL, dns.exception.Timeout(), ConnectionRefusedError(111, "refused"), EOFError()]
)
def test_servfail_and_timeouts_are_retried_in_place(
    port: Rfc2136Dns, wire: RecordingWire, outcome: int | Exception
) -> None:
    wire.outcomes = [outcome, outcome, outcome]
    with pytest.raises(DnsServfail):
        port.apply(ZONE, [DnsChange(None, rs(f"a.{ZONE}", "A", 300, "192.0.2.1"))])
    assert len(wire.sent) == 3
    wire.outcomes = [outcome]
    assert port.apply(ZONE, [DnsChange(None, rs(f"a.{ZONE}", "A", 300, "192.0.2.1"))]) == 8
    assert len(wire.sent) == 5


def test_lost_answer_then_conflict_counts_as_applied_when_the_zone_holds_the_result(
    port: Rfc2136Dns, wire: RecordingWire
) -> None:
    wire.apply_on_send = BASE.replace(" 7 3600", " 8 3600") + "a 300 IN A 192.0.2.1\n"
    wire.outcomes = [dns.exception.Timeout(), dns.rcode.YXRRSET]  # applied, answer lost; the retry hits the CAS
    assert port.apply(ZONE, [DnsChange(None, rs(f"a.{ZONE}", "A", 300, "192.0.2.1"))]) == 8
    assert len(wire.sent) == 2


def test_lost_answer_then_conflict_is_a_conflict_when_the_zone_differs(port: Rfc2136Dns, wire: RecordingWire) -> None:
    wire.apply_on_send = BASE + "a 300 IN A 192.0.2.99\n"  # someone else wrote between
    wire.outcomes = [dns.exception.Timeout(), dns.rcode.YXRRSET]
    with pytest.raises(DnsConflict):
        port.apply(ZONE, [DnsChange(None, rs(f"a.{ZONE}", "A", 300, "192.0.2.1"))])


def test_replayed_create_is_a_conflict_even_if_the_zone_holds_the_result(port: Rfc2136Dns, wire: RecordingWire) -> None:
    wire.zone = dns.zone.from_text(BASE + "a 300 IN A 192.0.2.1\n", origin=ZONE, relativize=False)
    wire.outcomes = [dns.rcode.YXRRSET]
    with pytest.raises(DnsConflict):
        port.apply(ZONE, [DnsChange(None, rs(f"a.{ZONE}", "A", 300, "192.0.2.1"))])
    assert len(wire.sent) == 1


def test_transfer_refused_is_permanent_and_timeout_transient(port: Rfc2136Dns, wire: RecordingWire) -> None:
    wire.transfer_error = dns.xfr.TransferError(dns.rcode.NOTAUTH)
    with pytest.raises(DnsRefused, match="NOTAUTH"):
        port.read_zone(ZONE)
    assert port.hosts_zone(ZONE) is False
    wire.transfer_error = dns.exception.Timeout()
    with pytest.raises(DnsServfail):
        port.read_zone(ZONE)


# ---------------------------------------------------------------- reading and querying


def test_read_zone_normalises_names_and_values(wire: RecordingWire) -> None:
    text = BASE + 'S1._DomainKey IN TXT "v=DKIM1;" "k=rsa;p=AB"\nsrv IN SRV 1 1 443 MOO.faster.test.\n'
    wire.zone = dns.zone.from_text(text, origin=ZONE, relativize=False)
    have = Rfc2136Dns(SETTINGS, wire=wire).read_zone(ZONE)
    assert have[(ZONE, "MX")] == rs(ZONE, "MX", 3600, "10 pmg1.faster.test.")
    assert have[(ZONE, "NS")].values == ("ns1.example.test.", "ns2.elsewhere.test.")
    assert have[(f"www.{ZONE}", "CNAME")].values == ("web.example.test.",)
    assert have[(f"s1._domainkey.{ZONE}", "TXT")].values == ("v=DKIM1;k=rsa;p=AB",)
    assert have[(f"srv.{ZONE}", "SRV")].values == ("1 1 443 moo.faster.test.",)
    assert have[(ZONE, "SOA")].values == ("ns1.example.test. hostmaster.example.test. 7 3600 600 86400 300",)


def test_query_is_non_recursive_and_falls_back_to_tcp_on_truncation(port: Rfc2136Dns, wire: RecordingWire) -> None:
    wire.truncate_udp = True
    assert port.query("127.0.0.1:5399", f"web.{ZONE}", "A") == rs(f"web.{ZONE}", "A", 300, "192.0.2.1")
    assert [q[4] for q in wire.queries] == [False, True]
    assert wire.queries[0][:2] == ("127.0.0.1", 5399)


def test_query_absent_is_none_and_refused_raises(port: Rfc2136Dns) -> None:
    assert port.query("127.0.0.1", f"nope.{ZONE}", "A") is None  # NXDOMAIN
    assert port.query("127.0.0.1", f"web.{ZONE}", "TXT") is None  # NODATA
    with pytest.raises(DnsRefused):
        port.query("127.0.0.1", "www.other.test", "A")
    assert port.serial("other.test", "127.0.0.1") is None
    assert port.resolve("www.other.test", "A") is None


def test_servers_are_the_primary_plus_ns_addresses_deduplicated(port: Rfc2136Dns, wire: RecordingWire) -> None:
    text = """
$TTL 300
@ IN SOA ns1 hostmaster 7 3600 600 86400 300
@ IN NS ns1
@ IN NS ns2
ns1 IN A 127.0.0.1
ns2 IN A 192.0.2.53
"""
    wire.zone = dns.zone.from_text(text, origin=ZONE, relativize=False)
    assert port.servers(ZONE) == ["127.0.0.1:5399", "192.0.2.53:5399"]
    fixed = DnsSettings(primary="127.0.0.1", tsig_name="k", tsig_secret=Secret(""), servers=("192.0.2.7", "[::1]:53"))
    assert Rfc2136Dns(fixed, wire=wire).servers(ZONE) == ["192.0.2.7", "[::1]:53"]


def test_hosts_zone(port: Rfc2136Dns) -> None:
    assert port.hosts_zone(ZONE) is True
    assert port.hosts_zone("other.test") is False


def test_read_zone_refused_means_not_ours(port: Rfc2136Dns, wire: RecordingWire) -> None:
    """domain.created and domain.deleted read the zone in one AXFR; a refusal is how "not served by us" shows."""
    wire.transfer_error = dns.xfr.TransferError(dns.rcode.NOTAUTH)
    with pytest.raises(DnsRefused):
        port.read_zone(ZONE)


def test_read_zone_at_transfers_from_that_server(port: Rfc2136Dns, wire: RecordingWire) -> None:
    found = port.read_zone_at(ZONE, "192.0.2.53:53")
    assert found is not None and found[0] == 7
    assert found[1][(ZONE, "MX")] == rs(ZONE, "MX", 3600, "10 pmg1.faster.test.")
    assert found[1] == port.read_zone(ZONE)
    assert wire.transfers == [(ZONE, ("192.0.2.53", 53)), (ZONE, None)]
    wire.transfer_error = dns.xfr.TransferError(dns.rcode.NOTAUTH)
    assert port.read_zone_at(ZONE, "192.0.2.53") is None  # refused: the caller asks per RRset instead
    wire.transfer_error = dns.exception.Timeout()
    with pytest.raises(DnsServfail):
        port.read_zone_at(ZONE, "192.0.2.53")


def test_normalise_value_and_serial_arithmetic() -> None:
    assert normalise_value("mx", "10 PMG1.Faster.test") == "10 pmg1.faster.test."
    assert normalise_value("AAAA", "2001:DB8:0::1") == "2001:db8::1"
    assert normalise_value("TXT", "v=spf1 ;x") == "v=spf1 ;x"
    assert serial_lt(1, 2) and not serial_lt(2, 1) and not serial_lt(5, 5)
    assert serial_lt(2**32 - 1, 3)  # wraps (RFC 1982)
    assert not serial_lt(3, 2**32 - 1)


@pytest.mark.parametrize(
    "settings",
    [
        replace(SETTINGS, tsig_secret=Secret("")),
        replace(SETTINGS, tsig_secret=Secret("abc")),
        replace(SETTINGS, tsig_algorithm="hmac-foo"),
    ],
)
def test_tcp_wire_refuses_a_bad_key_at_start(settings: DnsSettings) -> None:
    with pytest.raises(ConfigError) as info:
        TcpWire(settings)
    assert settings.tsig_secret.reveal() == "" or settings.tsig_secret.reveal() not in str(info.value)


# ---------------------------------------------------------------- propagation gate (over FakeDns)


def test_verify_propagation_reports_a_lagging_secondary_until_it_syncs() -> None:
    fake = FakeDns(secondaries=("ns2",), auto_sync=False)
    fake.add_zone(ZONE, [rs(f"old.{ZONE}", "TXT", 300, "x")])
    fake.sync()
    new = rs(f"a.{ZONE}", "A", 300, "192.0.2.1")
    serial = fake.apply(ZONE, [DnsChange(None, new), DnsChange(rs(f"old.{ZONE}", "TXT", 300, "x"), None)])
    expected: dict[Key, RecordSet | None] = {new.key: new, (f"old.{ZONE}", "TXT"): None}
    problems = verify_propagation(fake, ZONE, expected, serial)
    assert problems == [
        "ns2: serial 1 < 2",
        f"ns2: a.{ZONE}/A is absent, expected 300 ['192.0.2.1']",
        f"ns2: old.{ZONE}/TXT present ['x'], expected absent",
    ]
    fake.sync()
    assert verify_propagation(fake, ZONE, expected, serial) == []


def test_verify_propagation_reports_failing_servers() -> None:
    fake = FakeDns(secondaries=("ns2",))
    fake.add_zone(ZONE)
    del fake.served["ns2"]  # an unknown server times out
    assert verify_propagation(fake, ZONE, {}, 1) == ["ns2: DnsServfail: ns2: Timeout"]


# ---------------------------------------------------------------- one CAS contract: FakeDns and the real BIND


@dataclass
class DnsEnv:
    port: DnsPort
    zone: str
    poke: Callable[[Key, RecordSet | None], None]  # an out-of-band writer (another process, nsupdate)


class DnsPortContract:
    """Compare-and-set semantics (reference/dns.md §3, §9) every DnsPort shows; subclasses provide ``env``."""

    def test_cas_create_then_update(self, env: DnsEnv) -> None:
        p, z = env.port, env.zone
        first = p.serial(z, p.servers(z)[0])
        assert first is not None
        txt = rs(f"_dmarc.{z}", "TXT", 3600, "v=DMARC1; p=none")
        serial = p.apply(z, [DnsChange(None, txt)])
        assert serial_lt(first, serial)
        have = p.read_zone(z)[txt.key]
        assert have == txt
        newer = rs(f"_dmarc.{z}", "TXT", 3600, "v=DMARC1; p=reject")
        assert serial_lt(serial, p.apply(z, [DnsChange(have, newer)]))
        assert p.read_zone(z)[txt.key] == newer

    def test_stale_update_conflicts_and_changes_nothing(self, env: DnsEnv) -> None:
        p, z = env.port, env.zone
        planned = rs(f"_mta-sts.{z}", "TXT", 300, "v=STSv1; id=1")
        p.apply(z, [DnsChange(None, planned)])
        theirs = rs(f"_mta-sts.{z}", "TXT", 300, "v=STSv1; id=theirs")
        env.poke(planned.key, theirs)  # changed between our read and our write
        before = p.read_zone(z)
        with pytest.raises(DnsConflict):
            p.apply(z, [DnsChange(planned, rs(f"_mta-sts.{z}", "TXT", 300, "v=STSv1; id=2"))])
        assert p.read_zone(z) == before

    def test_replayed_create_conflicts_and_changes_nothing(self, env: DnsEnv) -> None:
        p, z = env.port, env.zone
        change = DnsChange(None, rs(f"autoconfig.{z}", "CNAME", 3600, "moo.faster.test."))
        p.apply(z, [change])
        before = p.read_zone(z)
        with pytest.raises(DnsConflict):
            p.apply(z, [change])
        assert p.read_zone(z) == before

    def test_cname_create_at_a_name_in_use_conflicts(self, env: DnsEnv) -> None:
        p, z = env.port, env.zone
        p.apply(z, [DnsChange(None, rs(f"mta-sts.{z}", "TXT", 300, "customer data"))])
        with pytest.raises(DnsConflict):
            p.apply(z, [DnsChange(None, rs(f"mta-sts.{z}", "CNAME", 300, "web.faster.test."))])

    def test_cname_alongside_other_data_is_silently_dropped(self, env: DnsEnv) -> None:
        p, z = env.port, env.zone
        p.apply(
            z,
            [
                DnsChange(None, rs(f"x.{z}", "TXT", 300, "data")),
                DnsChange(None, rs(f"x.{z}", "CNAME", 300, "web.faster.test.")),
            ],
        )
        have = p.read_zone(z)
        assert (f"x.{z}", "TXT") in have and (f"x.{z}", "CNAME") not in have  # NOERROR, yet not written

    def test_mx_target_in_zone_needs_an_address_in_the_same_update(self, env: DnsEnv) -> None:
        p, z = env.port, env.zone
        mx = rs(f"sub.{z}", "MX", 300, f"10 mail.{z}.")
        with pytest.raises(DnsRefused):
            p.apply(z, [DnsChange(None, mx)])
        assert mx.key not in p.read_zone(z)
        p.apply(z, [DnsChange(None, mx), DnsChange(None, rs(f"mail.{z}", "A", 300, "192.0.2.25"))])
        assert p.read_zone(z)[mx.key] == mx

    def test_delete_with_cas(self, env: DnsEnv) -> None:
        p, z = env.port, env.zone
        a = rs(f"gone.{z}", "A", 300, "192.0.2.1")
        p.apply(z, [DnsChange(None, a)])
        with pytest.raises(DnsConflict):
            p.apply(z, [DnsChange(rs(f"gone.{z}", "A", 300, "192.0.2.2"), None)])
        p.apply(z, [DnsChange(a, None)])
        assert a.key not in p.read_zone(z)

    def test_an_update_that_changes_nothing_keeps_the_serial(self, env: DnsEnv) -> None:
        p, z = env.port, env.zone
        a = rs(f"same.{z}", "A", 300, "192.0.2.1")
        serial = p.apply(z, [DnsChange(None, a)])
        assert p.apply(z, [DnsChange(a, a)]) == serial

    def test_dkim_2048_round_trips_joined(self, env: DnsEnv) -> None:
        p, z = env.port, env.zone
        txt = rs(f"mp1._domainkey.{z}", "TXT", 3600, dkim_value())
        p.apply(z, [DnsChange(None, txt)])
        assert p.read_zone(z)[txt.key] == txt
        (server, *_) = p.servers(z)
        assert p.query(server, txt.name, "TXT") == txt

    def test_verify_propagation_reports_a_mismatch_then_none(self, env: DnsEnv) -> None:
        p, z = env.port, env.zone
        want = rs(f"_smtp._tls.{z}", "TXT", 3600, "v=TLSRPTv1; rua=mailto:tlsrpt@faster.test")
        current = p.serial(z, p.servers(z)[0])
        assert current is not None
        problems = verify_propagation(p, z, {want.key: want}, current + 1)
        assert any("serial" in m for m in problems) and any("is absent" in m for m in problems)
        serial = p.apply(z, [DnsChange(None, want)])
        # apply returns once the primary serves the UPDATE (re-signed); the secondaries follow by NOTIFY + IXFR
        primary = p.servers(z)[0]
        assert [m for m in verify_propagation(p, z, {want.key: want}, serial) if m.startswith(primary)] == []
        deadline = time.monotonic() + 10
        while (problems := verify_propagation(p, z, {want.key: want}, serial)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert problems == []

    def test_hosts_zone(self, env: DnsEnv) -> None:
        assert env.port.hosts_zone(env.zone)
        assert not env.port.hosts_zone(f"nothere{uuid.uuid4().hex[:8]}.test")


class TestFakeDns(DnsPortContract):
    @pytest.fixture
    def env(self) -> DnsEnv:
        fake = FakeDns()
        zone = f"z{uuid.uuid4().hex[:8]}.test"
        fake.add_zone(zone)

        def poke(key: Key, rrset: RecordSet | None) -> None:
            fake.set_rrset(zone, rrset) if rrset is not None else fake.delete_rrset(zone, key)

        return DnsEnv(fake, zone, poke)

    def test_counts_updates_and_logs_changes(self, env: DnsEnv) -> None:
        fake = env.port
        assert isinstance(fake, FakeDns)
        change = DnsChange(None, rs(f"a.{env.zone}", "A", 300, "192.0.2.1"))
        fake.apply(env.zone, [change])
        with pytest.raises(DnsConflict):
            fake.apply(env.zone, [change])
        assert fake.updates == 1 and fake.log == [(env.zone, change)]
        assert fake.servers(env.zone) == [PRIMARY]


# ---------------------------------------------------------------- the real BIND (infra/local/up)


def _settings(env: dict[str, str], secret: str | None = None) -> DnsSettings:
    return DnsSettings(
        primary=env["MAILPLANE_DNS_SERVER"],
        port=int(env["MAILPLANE_DNS_PORT"]),
        tsig_name=env["MAILPLANE_TSIG_NAME"],
        tsig_algorithm=env.get("MAILPLANE_TSIG_ALGORITHM", "hmac-sha256"),
        tsig_secret=Secret(env["MAILPLANE_TSIG_SECRET"] if secret is None else secret),
        timeout=3.0,
    )


def _nsupdate(env: dict[str, str], keyfile: Path, zone: str, lines: list[str]) -> None:
    script = [f"server {env['MAILPLANE_DNS_SERVER']} {env['MAILPLANE_DNS_PORT']}", f"zone {zone}", *lines, "send", ""]
    subprocess.run(["nsupdate", "-k", str(keyfile)], input="\n".join(script), text=True, check=True, timeout=30)


@pytest.mark.stack
class TestBind(DnsPortContract):
    @pytest.fixture
    def keyfile(self, stack_env: dict[str, str], tmp_path: Path) -> Path:
        path = tmp_path / "tsig.key"
        algorithm = stack_env.get("MAILPLANE_TSIG_ALGORITHM", "hmac-sha256")
        name, secret = stack_env["MAILPLANE_TSIG_NAME"], stack_env["MAILPLANE_TSIG_SECRET"]
        path.write_text(f'key "{name}" {{ algorithm {algorithm}; secret "{secret}"; }};\n')
        path.chmod(0o600)
        return path

    @pytest.fixture
    def env(self, stack_env: dict[str, str], repo: Path, keyfile: Path) -> Iterator[DnsEnv]:
        zone = f"mp{uuid.uuid4().hex[:10]}.test"
        subprocess.run([str(repo / "infra/local/zone-add"), zone], check=True, capture_output=True, timeout=60)

        def poke(key: Key, rrset: RecordSet | None) -> None:
            lines = [f"update delete {key[0]}. {key[1]}"]
            lines += [f"update add {line}" for line in (rrset.zone_lines() if rrset is not None else [])]
            _nsupdate(stack_env, keyfile, zone, lines)

        try:
            yield DnsEnv(Rfc2136Dns(_settings(stack_env)), zone, poke)
        finally:
            delete = repo / "infra/local/zone-del"
            if delete.exists():
                subprocess.run([str(delete), zone], check=False, capture_output=True, timeout=60)

    def test_dkim_2048_is_served_as_two_strings_in_one_rr(self, env: DnsEnv, stack_env: dict[str, str]) -> None:
        name = f"mp2._domainkey.{env.zone}"
        env.port.apply(env.zone, [DnsChange(None, rs(name, "TXT", 3600, dkim_value()))])
        request = dns.message.make_query(name, "TXT")
        answer = dns.query.tcp(
            request, stack_env["MAILPLANE_DNS_SERVER"], port=int(stack_env["MAILPLANE_DNS_PORT"]), timeout=3
        ).answer
        (rrset,) = answer
        (rdata,) = list(rrset)  # ONE RR ...
        assert isinstance(rdata, dns.rdtypes.txtbase.TXTBase)
        assert [len(s) for s in rdata.strings] == [255, 165]  # ... with two strings
        dig = subprocess.run(
            ["dig", "+short", "+norec", "-p", stack_env["MAILPLANE_DNS_PORT"], f"@{stack_env['MAILPLANE_DNS_SERVER']}"]
            + [name, "TXT"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        assert dig.count('" "') == 1 and len(dig.splitlines()) == 1

    def test_a_foreign_txt_split_still_matches_the_cas_prerequisite(
        self, env: DnsEnv, stack_env: dict[str, str], keyfile: Path
    ) -> None:
        name = f"spf.{env.zone}"
        _nsupdate(stack_env, keyfile, env.zone, [f'update add {name}. 300 IN TXT "v=spf1 " "a -all"'])
        have = env.port.read_zone(env.zone)[(name, "TXT")]
        assert have.values == ("v=spf1 a -all",)
        env.port.apply(env.zone, [DnsChange(have, rs(name, "TXT", 300, "v=spf1 mx -all"))])
        assert env.port.read_zone(env.zone)[(name, "TXT")].values == ("v=spf1 mx -all",)

    def test_wrong_key_is_refused(self, env: DnsEnv, stack_env: dict[str, str]) -> None:
        wrong = Rfc2136Dns(_settings(stack_env, secret=base64.b64encode(b"w" * 32).decode()))
        change = DnsChange(None, rs(f"a.{env.zone}", "A", 300, "192.0.2.1"))
        with pytest.raises(DnsRefused, match="TSIG"):
            wrong.apply(env.zone, [change])
        with pytest.raises(DnsRefused):
            wrong.read_zone(env.zone)
        assert change.key not in env.port.read_zone(env.zone)

    def test_unsigned_update_is_refused(self, env: DnsEnv, stack_env: dict[str, str]) -> None:
        settings = _settings(stack_env)

        class UnsignedWire(TcpWire):
            def send(self, update: dns.update.UpdateMessage) -> int:
                response = dns.query.tcp(update, settings.primary, port=settings.port, timeout=settings.timeout)
                return int(response.rcode())

        unsigned = Rfc2136Dns(settings, wire=UnsignedWire(settings))
        change = DnsChange(None, rs(f"a.{env.zone}", "A", 300, "192.0.2.1"))
        with pytest.raises(DnsRefused, match="REFUSED"):
            unsigned.apply(env.zone, [change])
        assert change.key not in env.port.read_zone(env.zone)

    def test_zone_not_served_is_refused(self, env: DnsEnv) -> None:
        other = f"nothere{uuid.uuid4().hex[:8]}.test"
        with pytest.raises(DnsRefused, match="NOTAUTH"):
            env.port.apply(other, [DnsChange(None, rs(f"a.{other}", "A", 300, "192.0.2.1"))])
        with pytest.raises(DnsRefused):
            env.port.read_zone(other)


def test_the_verification_takes_the_updates_read_back_from_the_primary_while_its_serial_holds(
    wire: RecordingWire,
) -> None:
    """The read-back transfer that showed an UPDATE on the primary answers the gate's transfer from the primary
    once, after a SOA question shows the same serial; a later read, another serial or another server transfers."""
    port = Rfc2136Dns(dataclasses.replace(SETTINGS, propagation_wait=1.0), wire)
    www = rs(f"www.{ZONE}", "CNAME", 300, "web.example.test.")
    new = rs(f"www.{ZONE}", "CNAME", 300, "web2.example.test.")
    wire.apply_on_send = BASE.replace("www IN CNAME web", "www IN CNAME web2")
    serial = port.apply(ZONE, [DnsChange(www, new)])
    assert wire.transfers == [(ZONE, None)]  # the read-back
    found = port.read_zone_at(ZONE, "127.0.0.1:5399")
    assert found is not None and found[0] == serial and found[1][www.key] == new
    assert wire.transfers == [(ZONE, None)] and wire.queries[-1][2:4] == (ZONE, "SOA")
    assert port.read_zone_at(ZONE, "127.0.0.1:5399") is not None
    assert wire.transfers == [(ZONE, None), (ZONE, ("127.0.0.1", 5399))]  # used once
    wire.apply_on_send = BASE
    port.apply(ZONE, [DnsChange(new, www)])
    wire._bump()  # the zone moved on (a re-signing) after the read-back (BASE again: the same serial, then +1)
    again = port.read_zone_at(ZONE, "127.0.0.1")
    assert again is not None and again[0] == serial + 1 and wire.transfers[-1] == (ZONE, ("127.0.0.1", 5399))
    wire.apply_on_send = BASE.replace("www IN CNAME web", "www IN CNAME web2")
    port.apply(ZONE, [DnsChange(www, new)])
    assert port.read_zone_at(ZONE, "192.0.2.53") is not None  # another server is transferred from
    assert wire.transfers[-1] == (ZONE, ("192.0.2.53", 5399))
