"""Rfc2136Dns.resolve: the public view of zones hosted elsewhere, through a recursive resolver (no network)."""

from __future__ import annotations

import dataclasses

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from functions._core.model.records import RecordSet
from functions._core.platform.errors import DnsServfail
from functions.adapters.dns import Rfc2136Dns
from tests.fakes.settings import make_settings

SETTINGS = make_settings().dns


class ResolverWire:
    """A resolver's answers: ``data`` maps (name, type) to values; ``chase`` puts the whole CNAME chain in one answer
    (as recursive resolvers do), otherwise only the first hop (as an authoritative server for another zone does)."""

    def __init__(self, data: dict[tuple[str, str], list[str]], *, chase: bool) -> None:
        self.data, self.chase = data, chase
        self.asked: list[tuple[str, int, str, str, bool]] = []

    def query(
        self, server: str, port: int, name: str, rtype: str, tcp: bool, recursive: bool = False
    ) -> dns.message.Message:
        self.asked.append((server, port, name, rtype, recursive))
        response = dns.message.make_response(dns.message.make_query(name, rtype))
        owner = name.rstrip(".")
        for _ in range(8):
            values = self.data.get((owner, rtype))
            alias = self.data.get((owner, "CNAME"))
            if values is not None:
                response.answer.append(dns.rrset.from_text_list(owner + ".", 300, "IN", rtype, values))
                return response
            if alias is None or rtype == "CNAME":
                response.set_rcode(dns.rcode.NXDOMAIN if alias is None else dns.rcode.NOERROR)
                return response
            response.answer.append(dns.rrset.from_text_list(owner + ".", 300, "IN", "CNAME", alias))
            if not self.chase:
                return response
            owner = alias[0].rstrip(".")
        return response

    def transfer(self, zone: str) -> object:
        raise AssertionError("resolve never transfers")

    def send(self, update: object) -> int:
        raise AssertionError("resolve never updates")


DATA = {
    ("fca._domainkey.cust.example", "CNAME"): ["fca.cust.example.dkim.faster.test."],
    ("fca.cust.example.dkim.faster.test", "TXT"): ['"v=DKIM1;k=rsa;p=AAAA"'],
    ("loop1.example", "CNAME"): ["loop2.example."],
    ("loop2.example", "CNAME"): ["loop1.example."],
}


@pytest.mark.parametrize("chase", [True, False])
def test_resolve_follows_cnames_and_asks_the_configured_resolver_recursively(chase: bool) -> None:
    wire = ResolverWire(DATA, chase=chase)
    settings = dataclasses.replace(SETTINGS, resolvers=("127.0.0.53:5353",))
    port = Rfc2136Dns(settings, wire=wire)  # type: ignore[arg-type]
    got = port.resolve("fca._domainkey.cust.example", "TXT")
    assert got == RecordSet.of("fca._domainkey.cust.example", "TXT", 300, ["v=DKIM1;k=rsa;p=AAAA"])
    assert {(a[0], a[1], a[4]) for a in wire.asked} == {("127.0.0.53", 5353, True)}  # RD=1, the resolver only
    assert len(wire.asked) == (1 if chase else 2)
    cname = port.resolve("fca._domainkey.cust.example", "CNAME")
    assert cname is not None and cname.values == ("fca.cust.example.dkim.faster.test.",)
    assert port.resolve("nothing.example", "TXT") is None


def test_resolve_gives_up_on_a_cname_loop() -> None:
    port = Rfc2136Dns(dataclasses.replace(SETTINGS, resolvers=("127.0.0.53",)), wire=ResolverWire(DATA, chase=False))  # type: ignore[arg-type]
    with pytest.raises(DnsServfail, match="CNAME hops"):
        port.resolve("loop1.example", "TXT")
