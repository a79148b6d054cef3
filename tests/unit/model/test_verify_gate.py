"""The verification gate's per-server check: one AXFR per server says exactly what the query per RRset says."""

from __future__ import annotations

import pytest

from functions._core.model import verify
from functions._core.model.records import Key, RecordSet
from tests.fakes.dns import PRIMARY, FakeDns
from tests.fakes.recorder import Recorder

ZONE = "alpha.test"
WANT = [
    RecordSet.of(ZONE, "MX", 3600, ["10 pmg1.faster.test."]),
    RecordSet.of(ZONE, "TXT", 3600, ["v=spf1 include:_pmg.faster.test -all"]),
    RecordSet.of(f"_dmarc.{ZONE}", "TXT", 3600, ["v=DMARC1; p=reject"]),
    RecordSet.of(f"sel._domainkey.{ZONE}", "TXT", 3600, ["v=DKIM1;k=rsa;p=AB"]),
]
EXPECTED: dict[Key, RecordSet] = {rs.key: rs for rs in WANT}


class NoTransfer(FakeDns):
    """A server set that refuses every zone transfer (our key may not transfer from them)."""

    def read_zone_at(self, zone: str, server: str) -> tuple[int, dict[Key, RecordSet]] | None:
        return None


def both_ways(dns: FakeDns, server: str, min_serial: int | None, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The mismatches by transfer; asserts the query-per-RRset path finds exactly the same."""
    by_transfer = verify.server_mismatches(dns, ZONE, server, EXPECTED, min_serial)
    with monkeypatch.context() as m:
        m.setattr(verify, "AXFR_MIN_RRSETS", 10**6)
        assert verify.server_mismatches(dns, ZONE, server, EXPECTED, min_serial) == by_transfer
    return by_transfer


@pytest.fixture
def dns() -> FakeDns:
    fake = FakeDns(secondaries=("ns2",), auto_sync=False)
    fake.add_zone(ZONE, WANT, serial=5)
    fake.sync()
    return fake


def test_a_server_serving_the_plan_has_no_mismatch_and_costs_one_soa_and_one_transfer(
    dns: FakeDns, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(dns)
    assert verify.server_mismatches(recorder, ZONE, "ns2", EXPECTED, 5) == []  # type: ignore[arg-type]
    assert recorder.calls == ["serial", "read_zone_at"]
    assert both_ways(dns, PRIMARY, 5, monkeypatch) == []
    recorder.calls.clear()
    assert verify.server_mismatches(recorder, ZONE, "ns2", EXPECTED, None) == []  # type: ignore[arg-type]
    assert recorder.calls == ["read_zone_at"]  # no serial to wait for: the transfer alone


def test_a_secondary_behind_the_update_is_not_transferred_from(dns: FakeDns) -> None:
    dns.set_rrset(ZONE, RecordSet.of(ZONE, "MX", 3600, ["10 pmg2.faster.test."]))  # serial 6 at the primary only
    recorder = Recorder(dns)
    assert verify.server_mismatches(recorder, ZONE, "ns2", EXPECTED, 6) == ["ns2: serial 5 older than 6"]  # type: ignore[arg-type]
    assert recorder.calls == ["serial"]


def test_lagging_serial_and_content_are_reported_alike(dns: FakeDns, monkeypatch: pytest.MonkeyPatch) -> None:
    dns.set_rrset(ZONE, RecordSet.of(ZONE, "MX", 3600, ["10 pmg2.faster.test."]))
    assert both_ways(dns, "ns2", 6, monkeypatch) == ["ns2: serial 5 older than 6"]
    assert both_ways(dns, PRIMARY, 6, monkeypatch) == [f"{PRIMARY}: MX {ZONE} is ['10 pmg2.faster.test.']"]
    dns.delete_rrset(ZONE, (f"_dmarc.{ZONE}", "TXT"))
    assert both_ways(dns, PRIMARY, None, monkeypatch) == [
        f"{PRIMARY}: TXT _dmarc.{ZONE} is absent",
        f"{PRIMARY}: MX {ZONE} is ['10 pmg2.faster.test.']",
    ]


def test_a_server_without_the_zone_or_refusing_the_transfer_is_asked_per_rrset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dns = NoTransfer(secondaries=("ns2",))
    dns.add_zone(ZONE, WANT[:3], serial=9)
    assert both_ways(dns, "ns2", 9, monkeypatch) == [f"ns2: TXT sel._domainkey.{ZONE} is absent"]
    empty = FakeDns(secondaries=("ns2",))
    assert both_ways(empty, "ns2", None, monkeypatch) == [f"ns2: no SOA for {ZONE}"]


def test_few_expected_rrsets_are_queried_not_transferred(dns: FakeDns) -> None:
    recorder = Recorder(dns)
    one = {WANT[3].key: WANT[3]}
    assert verify.server_mismatches(recorder, ZONE, "ns2", one, 5) == []  # type: ignore[arg-type]
    assert recorder.calls == ["serial", "query"]
