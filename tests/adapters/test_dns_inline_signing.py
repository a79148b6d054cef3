"""An UPDATE to a primary with inline signing: accepted at once, served (queries, transfers) once re-signed.
``apply`` returns only when the primary serves what it wrote, so the serial it returns and the next read are new."""

from __future__ import annotations

import dataclasses
import logging

import dns.rcode
import dns.update
import dns.zone
import pytest

from functions._core.model.ports import DnsChange
from functions.adapters.dns import Rfc2136Dns
from tests.adapters.test_dns import BASE, SETTINGS, ZONE, RecordingWire, rs

SIGNED = BASE.replace(" 7 3600 ", " 9 3600 ") + "new IN A 192.0.2.9\n"


class SigningWire(RecordingWire):
    """The UPDATE lands in the unsigned zone; the served zone shows it after ``lag`` more transfers (or never)."""

    def __init__(self, lag: int | None) -> None:
        super().__init__()
        self.lag, self.pending = lag, False

    def send(self, update: dns.update.UpdateMessage) -> int:
        self.sent.append(update)
        self.pending = True
        return dns.rcode.NOERROR

    def transfer(self, zone: str, server: tuple[str, int] | None = None) -> dns.zone.Zone:
        if self.pending and self.lag is not None:
            if self.lag == 0:
                self.zone, self.pending = dns.zone.from_text(SIGNED, origin=ZONE, relativize=False), False
            else:
                self.lag -= 1
        return super().transfer(zone, server)


def _port(wire: SigningWire, wait: float) -> Rfc2136Dns:
    return Rfc2136Dns(dataclasses.replace(SETTINGS, propagation_wait=wait), wire=wire)


def test_apply_returns_the_serial_of_the_re_signed_zone() -> None:
    wire = SigningWire(lag=3)
    serial = _port(wire, 5.0).apply(ZONE, [DnsChange(None, rs(f"new.{ZONE}", "A", 300, "192.0.2.9"))])
    assert serial == 9  # not the 7 the primary served while re-signing
    assert len(wire.transfers) == 4 and len(wire.sent) == 1


def test_a_change_the_primary_never_serves_returns_after_the_wait(caplog: pytest.LogCaptureFixture) -> None:
    wire = SigningWire(lag=None)
    with caplog.at_level(logging.WARNING):
        serial = _port(wire, 0.2).apply(ZONE, [DnsChange(None, rs(f"new.{ZONE}", "A", 300, "192.0.2.9"))])
    assert serial == 7 and len(wire.sent) == 1  # the verification after it reports the lag
    assert "does not serve the update" in caplog.text


def test_no_wait_configured_reads_nothing_after_the_update() -> None:
    wire = SigningWire(lag=0)
    _port(wire, 0.0).apply(ZONE, [DnsChange(None, rs(f"new.{ZONE}", "A", 300, "192.0.2.9"))])
    assert wire.transfers == []


def test_a_failing_read_back_does_not_fail_the_applied_update(caplog: pytest.LogCaptureFixture) -> None:
    wire = SigningWire(lag=None)
    wire.transfer_error = OSError("connection reset")
    with caplog.at_level(logging.WARNING):
        serial = _port(wire, 0.5).apply(ZONE, [DnsChange(None, rs(f"new.{ZONE}", "A", 300, "192.0.2.9"))])
    assert serial == 7 and len(wire.sent) == 1
    assert len(wire.transfers) > 1  # asked again within the wait, each round one transfer
    assert "does not serve the update" in caplog.text
