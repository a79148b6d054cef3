"""dispatch.run: verdicts, authorization, and the one JSON log line per outcome."""

from __future__ import annotations

import json
import logging

import pytest

from functions._core.model.ports import Ports
from functions._core.platform.errors import DnsServfail
from functions.runtime import dispatch
from tests.conftest import load_event
from tests.fakes.dns import FakeDns
from tests.fakes.mailcow import fake_mailcow
from tests.fakes.pmg import fake_gateway
from tests.fakes.settings import make_settings
from tests.fakes.store import MemoryStore


@pytest.fixture
def ports() -> Ports:
    dns = FakeDns()
    dns.add_zone("alpha.test")
    gw = fake_gateway(make_settings())
    return Ports(fake_mailcow()[0], gw.client, dns, MemoryStore(), MemoryStore(), make_settings(), smtp=gw.smtp)


def _body(name: str = "domain.created", **changes: object) -> bytes:
    raw = load_event(name)
    raw.update(changes)
    return json.dumps(raw).encode()


def test_done_with_a_json_log_line(ports: Ports, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mailplane.outcome"):
        result = dispatch.run(_body(), "billing", ports)
    assert result.verdict == "done" and result.outcome is not None
    line = json.loads(caplog.records[-1].getMessage())
    assert line["outcome"] == "provisioned" and line["type"] == "domain.created" and line["attempt"] == 0
    assert line["changes"]["dns"] == 11  # RRsets in the one UPDATE
    assert line["changes"]["mailcow"] == 3  # domain, dkim, the SOGo restart that makes it webmail-ready
    assert "PRIVATE" not in caplog.text


@pytest.mark.parametrize(
    ("publisher", "reason"),
    [(None, "no validated user_id"), ("monitoring", "may not send domain.created"), ("scheduler", "may not send")],
)
def test_unauthorized_publishers_are_parked_without_effects(ports: Ports, publisher: str | None, reason: str) -> None:
    result = dispatch.run(_body(), publisher, ports)
    assert result.verdict == "park" and reason in result.reason
    assert ports.mail.get_domain("alpha.test") is None


def test_invalid_event_is_parked_and_transient_is_retried_until_the_last_rung(ports: Ports) -> None:
    assert dispatch.run(b"{not json", "billing", ports).verdict == "park"
    unknown_zone = load_event("domain.created")
    unknown_zone["subject"] = unknown_zone["data"]["domain"] = "elsewhere.test"
    assert dispatch.run(json.dumps(unknown_zone).encode(), "billing", ports).verdict == "park"
    fake_dns = ports.dns
    assert isinstance(fake_dns, FakeDns)
    fake_dns.faults.append(DnsServfail("burst"))
    assert dispatch.run(_body(), "billing", ports, attempt=1, last_attempt=False).verdict == "retry"
    fake_dns.faults.append(DnsServfail("burst"))
    assert dispatch.run(_body(), "billing", ports, attempt=5, last_attempt=True).verdict == "park"


def test_no_handler_yet_is_parked(ports: Ports) -> None:
    result = dispatch.run(_body("domain.deleted"), "billing", ports)
    assert result.verdict in ("park", "done")  # parked until a handler is routed; done once it is
