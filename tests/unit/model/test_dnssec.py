"""The chain of trust (functions/_core/model/dnssec.py) and the DS computed from served DNSKEYs
(functions/adapters/dns.py ``ds_from_dnskeys``), checked against BIND's own dnssec-dsfromkey."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from functions._core.model.dnssec import chain_of_trust, observe, report
from functions._core.model.ports import Ports
from functions._core.model.records import RecordSet
from functions.adapters.dns import ds_from_dnskeys
from tests.fakes.dns import FakeDns, dnskey
from tests.fakes.mailcow import fake_mailcow
from tests.fakes.pmg import fake_gateway
from tests.fakes.settings import make_settings
from tests.fakes.store import MemoryStore

ZONE = "alpha.test"


def _keys(tmp: Path, *flags: str) -> list[str]:
    """Fresh ECDSA P-256 keys made by dnssec-keygen (KSK when flag is "-f KSK"), as DNSKEY rdata text."""
    out = []
    for flag in flags:
        args = ["dnssec-keygen", "-q", "-K", str(tmp), "-a", "ECDSAP256SHA256", *flag.split(), ZONE]
        name = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()
        line = next(ln for ln in (tmp / f"{name}.key").read_text().splitlines() if " DNSKEY " in ln)
        out.append(line.split(" DNSKEY ", 1)[1].strip())
    return out


def test_ds_matches_dnssec_dsfromkey_for_the_key_signing_key_only(tmp_path: Path) -> None:
    ksk, zsk = _keys(tmp_path, "-f KSK", "")
    zone_file = "".join(f"{ZONE}. 60 IN DNSKEY {k}\n" for k in (ksk, zsk))
    tool = subprocess.run(
        ["dnssec-dsfromkey", "-a", "SHA-256", "-f", "-", ZONE],
        input=zone_file,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(tool) == 7  # one DS: the ZSK (flags 256) has none
    assert ds_from_dnskeys(ZONE, [zsk, ksk]) == (" ".join(tool[3:]),)


def test_ds_from_dnskeys_refuses_what_is_not_a_dnskey() -> None:
    with pytest.raises(ValueError, match="bad DNSKEY"):
        ds_from_dnskeys(ZONE, ["10 mx.alpha.test."])


DS = "12345 13 2 ABCDEF0123"


def test_secure_once_the_parent_serves_a_matching_ds_and_the_resolver_validates() -> None:
    served = {"127.0.5.1:53": (DS,), "127.0.5.2:53": (DS,)}
    chain = chain_of_trust(ZONE, served, ("12345 13 2 abcdef 0123",), validated=True)
    assert chain.status == "secure" and not chain.awaiting_ds and chain.ds == (DS,)


def test_awaiting_ds_without_a_ds_at_the_parent() -> None:
    chain = chain_of_trust(ZONE, {"a": (DS,), "b": (DS,)}, (), validated=False)
    assert chain.status == "awaiting_ds" and chain.awaiting_ds and chain.ds == (DS,)
    assert "DS at the parent: none" in chain.lines()


def test_a_wrong_ds_is_reported_not_accepted() -> None:
    chain = chain_of_trust(ZONE, {"a": (DS,)}, ("999 13 2 00FF",), validated=False)
    assert chain.status == "wrong_ds" and chain.awaiting_ds
    assert any("matches no key-signing key" in p for p in chain.problems)
    assert "DS matches a served DNSKEY: no" in chain.lines()


def test_servers_serving_different_keys_are_inconsistent() -> None:
    chain = chain_of_trust(ZONE, {"a": (DS,), "b": ("777 13 2 AA",)}, (DS,), validated=True)
    assert chain.status == "inconsistent" and chain.awaiting_ds and chain.ds == ()
    assert len(chain.problems) == 2


def test_an_unsigned_zone_awaits_nothing() -> None:
    chain = chain_of_trust(ZONE, {"a": (), "b": ()}, (), validated=False)
    assert chain.status == "unsigned" and not chain.awaiting_ds


# ---------------------------------------------------------------- observe / report over the fake DNS


def _ports(fake: FakeDns, *, dnssec_on: bool = True) -> Ports:
    return Ports(
        mail=fake_mailcow()[0],
        gateway=fake_gateway(make_settings()).client,
        dns=fake,
        state=MemoryStore(),
        web=MemoryStore(),
        settings=make_settings(dnssec=dnssec_on),
    )


@pytest.fixture
def fake() -> FakeDns:
    f = FakeDns(secondaries=("ns2", "ns3"))
    f.add_zone(ZONE)
    f.sync()
    return f


def test_observe_awaiting_ds_names_the_ds_of_the_served_key_signing_key(fake: FakeDns) -> None:
    ds = fake.sign(ZONE)
    chain = observe(ZONE, _ports(fake))
    assert (chain.status, chain.ds, chain.parent_ds) == ("awaiting_ds", (ds,), ())


def test_observe_secure_once_the_parent_serves_it_and_the_resolver_sets_ad(fake: FakeDns) -> None:
    ds = fake.sign(ZONE)
    fake.parent_ds[ZONE] = RecordSet.of(ZONE, "DS", 60, [ds.lower()])  # presentation case does not matter
    assert observe(ZONE, _ports(fake)).status == "awaiting_ds"  # no AD yet (a resolver's cached "no DS")
    fake.verdicts[ZONE] = "secure"
    assert observe(ZONE, _ports(fake)).status == "secure"


def test_observe_reports_a_wrong_ds_and_a_bogus_zone(fake: FakeDns) -> None:
    ds = fake.sign(ZONE)
    fake.parent_ds[ZONE] = RecordSet.of(ZONE, "DS", 60, ["999 13 2 " + "00" * 32])
    fake.verdicts[ZONE] = "bogus"
    assert observe(ZONE, _ports(fake)).status == "wrong_ds"
    fake.parent_ds[ZONE] = RecordSet.of(ZONE, "DS", 60, [ds])  # the DS matches, yet the resolver refuses the data
    chain = observe(ZONE, _ports(fake))
    assert chain.status == "bogus" and any("bogus" in p for p in chain.problems)


def test_observe_a_secondary_serving_other_keys_is_inconsistent(fake: FakeDns) -> None:
    fake.sign(ZONE)
    fake.zones[ZONE][(ZONE, "DNSKEY")] = RecordSet.of(ZONE, "DNSKEY", 300, [dnskey(257)])
    fake.sync("ns2")  # ns3 still serves the old key-signing key
    assert observe(ZONE, _ports(fake)).status == "inconsistent"


def test_report_only_for_hosted_zones_with_dnssec_on_and_never_raises(fake: FakeDns) -> None:
    fake.sign(ZONE)
    hosted: dict[str, Any] = {"dns": {"hosted": True}}
    assert report(ZONE, hosted, _ports(fake, dnssec_on=False)) is None
    assert report(ZONE, {"dns": {"hosted": True, "dnssec": True}}, _ports(fake, dnssec_on=False)) is not None
    assert report(ZONE, {"dns": {"hosted": True, "dnssec": False}}, _ports(fake)) is None
    assert report(ZONE, {"dns": {"hosted": False, "dnssec": True}}, _ports(fake)) is None  # not ours to sign
    fake.served.pop("ns3")  # a secondary times out: mail provisioning is not held back
    chain = report(ZONE, hosted, _ports(fake))
    assert chain is not None and chain.status == "unknown" and "not observed" in chain.problems[0]
