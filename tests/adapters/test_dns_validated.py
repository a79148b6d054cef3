"""Rfc2136Dns.resolve_validated and query_ds: the validating resolver's verdict (AD, bogus by SERVFAIL that CD lifts)
and the DS of the key-signing keys a server serves (no network: a wire answers as unbound and BIND would)."""

from __future__ import annotations

import dataclasses

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest

from functions._core.platform.errors import DnsServfail
from functions.adapters.dns import Rfc2136Dns, TcpWire, ds_from_dnskeys
from tests.fakes.dns import dnskey
from tests.fakes.settings import make_settings

SETTINGS = dataclasses.replace(make_settings().dns, resolvers=("127.0.0.1:5399",), validating_resolver="127.0.0.153")


class ValidatorWire:
    """A validating resolver for one zone: ``verdict`` secure (AD), insecure, bogus (SERVFAIL unless CD) or broken
    (SERVFAIL even with CD); DS and SOA answered from ``data``."""

    def __init__(self, verdict: str, data: dict[tuple[str, str], list[str]]) -> None:
        self.verdict, self.data = verdict, data
        self.asked: list[tuple[str, int, str, str, bool, str]] = []

    def query(
        self, server: str, port: int, name: str, rtype: str, tcp: bool, recursive: bool = False, dnssec: str = ""
    ) -> dns.message.Message:
        self.asked.append((server, port, name, rtype, recursive, dnssec))
        response = dns.message.make_response(dns.message.make_query(name, rtype))
        if self.verdict == "broken" or (self.verdict == "bogus" and dnssec != "cd"):
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        values = self.data.get((name.rstrip("."), rtype))
        if values:
            response.answer.append(dns.rrset.from_text_list(dns.name.from_text(name), 300, "IN", rtype, values))
        if self.verdict == "secure" and dnssec == "ad":
            response.flags |= dns.flags.AD
        return response


DS = "4711 13 2 " + "AB" * 32
DATA = {("alpha.test", "DS"): [DS], ("alpha.test", "SOA"): ["ns1.alpha.test. h.alpha.test. 1 3600 600 86400 300"]}


@pytest.mark.parametrize("verdict", ["secure", "insecure", "bogus"])
def test_the_verdict_comes_from_the_validating_resolver(verdict: str) -> None:
    wire = ValidatorWire(verdict, DATA)
    got, ds = Rfc2136Dns(SETTINGS, wire=wire).resolve_validated("alpha.test", "DS")  # type: ignore[arg-type]
    assert got == verdict and ds is not None and ds.values == (DS.lower(),)  # as dnspython prints it
    assert {(a[0], a[1], a[4]) for a in wire.asked} == {("127.0.0.153", 53, True)}  # RD=1 at the validator only
    assert [a[5] for a in wire.asked] == (["ad", "cd"] if verdict == "bogus" else ["ad"])


def test_without_a_validating_resolver_the_first_resolver_judges() -> None:
    wire = ValidatorWire("insecure", DATA)
    port = Rfc2136Dns(dataclasses.replace(SETTINGS, validating_resolver=""), wire=wire)  # type: ignore[arg-type]
    port.resolve_validated("alpha.test", "SOA")
    assert wire.asked[0][:2] == ("127.0.0.1", 5399)


def test_a_resolver_that_fails_with_checking_disabled_too_is_a_failure_not_a_verdict() -> None:
    port = Rfc2136Dns(SETTINGS, wire=ValidatorWire("broken", DATA))  # type: ignore[arg-type]
    with pytest.raises(DnsServfail, match="also with checking disabled"):
        port.resolve_validated("alpha.test", "SOA")


def test_the_real_wire_sets_do_and_ad_or_cd(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dns.message.Message] = []

    def udp(request: dns.message.Message, where: str, **kw: object) -> dns.message.Message:
        sent.append(request)
        return dns.message.make_response(request)

    monkeypatch.setattr(dns.query, "udp", udp)
    wire = TcpWire(SETTINGS)
    for mode in ("ad", "cd", ""):
        wire.query("127.0.0.153", 53, "alpha.test.", "SOA", False, True, dnssec=mode)
    ad, cd, plain = sent
    assert ad.flags & dns.flags.AD and not ad.flags & dns.flags.CD and ad.ednsflags & dns.flags.DO
    assert cd.flags & dns.flags.CD and not cd.flags & dns.flags.AD and cd.ednsflags & dns.flags.DO
    assert not plain.flags & (dns.flags.AD | dns.flags.CD) and not plain.ednsflags & dns.flags.DO
    assert all(m.flags & dns.flags.RD for m in sent)


class DnskeyWire:
    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def query(
        self, server: str, port: int, name: str, rtype: str, tcp: bool, recursive: bool = False, dnssec: str = ""
    ) -> dns.message.Message:
        assert rtype == "DNSKEY" and not recursive
        response = dns.message.make_response(dns.message.make_query(name, rtype))
        response.flags |= dns.flags.AA
        if self.keys:
            response.answer.append(dns.rrset.from_text_list(dns.name.from_text(name), 300, "IN", "DNSKEY", self.keys))
        return response


def test_query_ds_is_the_ds_of_the_served_key_signing_keys_only() -> None:
    ksk, zsk = dnskey(257), dnskey(256)
    served = Rfc2136Dns(SETTINGS, wire=DnskeyWire([zsk, ksk]))  # type: ignore[arg-type]
    assert served.query_ds("127.0.5.1:5399", "alpha.test") == ds_from_dnskeys("alpha.test", [ksk])
    assert len(served.query_ds("127.0.5.1:5399", "alpha.test")) == 1
    unsigned = Rfc2136Dns(SETTINGS, wire=DnskeyWire([]))  # type: ignore[arg-type]
    assert unsigned.query_ds("127.0.5.1:5399", "alpha.test") == ()
