"""DKIM delegation by CNAME on the real stack: a customer zone "hosted elsewhere" (served by BIND, but our TSIG key
may neither transfer nor update it: `infra/local/zone-add --foreign`), the delegation zone dkim.faster.test (ours),
RabbitMQ + the worker for domain.created, the Mailcow simulator, LocalStack S3, and a controllable clock for the
rotation. Receivers are modelled by dkimpy resolving the selector at BIND and following the customer's CNAME.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import uuid
from dataclasses import replace
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest

from functions._core.model import state
from functions._core.model.ports import Ports
from functions._core.platform.config import Settings
from functions._core.platform.outcome import Outcome
from functions.ops.status import domain_status
from functions.runtime import dispatch
from functions.runtime.main import build_ports
from tests.conftest import load_event
from tests.integration import stack
from tests.stackenv import REPO

pytestmark = pytest.mark.stack

KZ = "dkim.faster.test"
DAY, HOUR = dt.timedelta(days=1), dt.timedelta(hours=1)
START = (dt.datetime.now(dt.UTC) + 200 * DAY).replace(microsecond=0)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def foreign_zone(domain: str, lines: list[str]) -> None:
    """(Re)create the customer's zone, hosted "elsewhere", holding ``lines`` (zone-file lines)."""
    subprocess.run([str(REPO / "infra/local/zone-del"), domain], check=True, capture_output=True)
    subprocess.run(
        [str(REPO / "infra/local/zone-add"), "--foreign", domain],
        input="\n".join(lines).encode(),
        check=True,
        capture_output=True,
    )


def bind(env: dict[str, str], name: str, rtype: str) -> list[Any]:
    query = dns.message.make_query(name, rtype)
    query.flags &= ~dns.flags.RD
    answer = dns.query.tcp(query, env["MAILPLANE_DNS_SERVER"], port=int(env["MAILPLANE_DNS_PORT"]), timeout=3)
    return list(answer.answer)


def receiver_txt(env: dict[str, str], name: str) -> bytes | None:
    """What a receiver's resolver finds for the TXT at ``name``: CNAMEs followed (BIND does not chase them into
    another zone, so every hop is asked again), strings joined."""
    for _ in range(8):
        rrsets = bind(env, name, "TXT")
        txt = [r for r in rrsets if r.rdtype == dns.rdatatype.TXT]
        if txt:
            return b"".join(txt[0][0].strings)
        cname = [r for r in rrsets if r.rdtype == dns.rdatatype.CNAME]
        if not cname:
            return None
        name = cname[-1][0].target.to_text()
    return None


def signature_verifies(env: dict[str, str], settings: Settings, domain: str) -> str:
    """The key Mailcow reports signs a message that dkimpy verifies through the customer's CNAME."""
    return stack.mailcow_signature_verifies(settings, domain, lambda name: receiver_txt(env, name))


def rotate(ports: Ports, domain: str, reason: str = "nudge", event_id: str | None = None) -> tuple[Outcome, bytes]:
    raw = load_event("key.rotate")
    raw["id"] = event_id or f"n-{uuid.uuid4().hex}"
    raw["subject"], raw["source"] = domain, "urn:mailplane:scheduler"
    raw["data"] = {"domain": domain, "reason": reason}
    body = json.dumps(raw).encode()
    result = dispatch.run(body, "scheduler", ports)
    assert result.verdict == "done" and result.outcome is not None, result.reason
    return result.outcome, body


def statuses(settings: Settings, domain: str) -> dict[str, str]:
    return {k.selector: k.status for k in state.load(build_ports(settings, probe=False).state, domain).keys}


def test_delegated_domain_from_created_to_a_full_rotation(stack_env: dict[str, str]) -> None:
    base = stack.settings_for(stack_env)
    settings = replace(base, dkim=replace(base.dkim, propagation_seconds=3600, retire_days=7, revoke_hours=0))
    domain = stack.unique_domain("deleg")
    foreign_zone(domain, [])
    customer_serial = stack.soa_serial(stack_env, domain)
    try:
        # domain.created through RabbitMQ and the worker: the key goes into OUR zone, the customer gets CNAMEs
        stack.publish(stack_env, base, stack.created_event(domain, "domain.created.delegate"))
        stack.run_worker(base)
        ((_, body),) = stack.take(stack_env, base, "q.outcomes", domain)
        data = stack.body_json(body)["data"]
        assert data["status"] == "awaiting_dns", data
        cnames = [ln for ln in data["instructions"] if "._domainkey." in ln]
        assert cnames == [f"{s}._domainkey.{domain}. 3600 IN CNAME {s}.{domain}.{KZ}." for s in ("fca", "fcb", "fcc")]
        assert receiver_txt(stack_env, f"fca.{domain}.{KZ}") is not None  # served by BIND in the delegation zone
        assert build_ports(base, probe=False).mail.get_dkim(domain) is None  # nobody signs yet
        assert stack.soa_serial(stack_env, domain) == customer_serial

        # the customer publishes what they were asked to; the scheduler's next nudge activates the key
        foreign_zone(domain, data["instructions"])
        clock = Clock(START)
        ports = replace(build_ports(settings, probe=False), clock=clock)
        out, _ = rotate(ports, domain)
        assert out.detail["transitions"] == ["fca: PUBLISHED->ACTIVE"], out.detail
        assert signature_verifies(stack_env, settings, domain) == "fca"
        overall, checks = domain_status(domain, build_ports(base, probe=False))
        assert overall == "provisioned", [c for c in checks if not c.ok]
        customer_serial = stack.soa_serial(stack_env, domain)

        # a rotation writes only the delegation zone; a replay of any step changes nothing
        out, scheduled = rotate(ports, domain, "scheduled")
        assert statuses(settings, domain) == {"fca": "ACTIVE", "fcb": "VISIBLE"}, out.detail
        assert signature_verifies(stack_env, settings, domain) == "fca"
        kz_serial = stack.soa_serial(stack_env, KZ)
        again = dispatch.run(scheduled, "scheduler", ports)
        assert again.verdict == "done" and stack.soa_serial(stack_env, KZ) == kz_serial

        clock.now = START + HOUR
        rotate(ports, domain)
        assert statuses(settings, domain) == {"fca": "RETIRING", "fcb": "ACTIVE"}
        assert signature_verifies(stack_env, settings, domain) == "fcb"
        assert receiver_txt(stack_env, f"fca._domainkey.{domain}") is not None  # mail in flight still verifies

        clock.now = START + HOUR + 7 * DAY - dt.timedelta(seconds=1)
        rotate(ports, domain)
        assert receiver_txt(stack_env, f"fca._domainkey.{domain}") is not None  # not before the grace period
        clock.now = START + HOUR + 7 * DAY
        rotate(ports, domain)
        assert statuses(settings, domain) == {"fca": "WITHDRAWN", "fcb": "ACTIVE"}
        assert receiver_txt(stack_env, f"fca._domainkey.{domain}") is None
        assert signature_verifies(stack_env, settings, domain) == "fcb"
        assert stack.soa_serial(stack_env, domain) == customer_serial  # the customer's zone was never written
    finally:
        subprocess.run([str(REPO / "infra/local/zone-del"), domain], check=False, capture_output=True)
