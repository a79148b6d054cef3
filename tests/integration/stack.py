"""Helpers for tests on the real local stack: settings, zones, publishing, the worker, and write counters."""

from __future__ import annotations

import json
import ssl
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dkim
import dns.message
import dns.query
import httpx
import pika

from functions._core.model import state
from functions._core.platform.config import Settings
from functions.runtime.amqp import Publisher, credential_from_env, params
from functions.runtime.consumer import Worker
from functions.runtime.main import build_ports
from tests.conftest import load_event
from tests.stackenv import REPO


def settings_for(env: dict[str, str]) -> Settings:
    return Settings.load(env["MAILPLANE_CONFIG"], env)


def unique_domain(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}.test"


def zone_add(*zones: str) -> None:
    subprocess.run([str(REPO / "infra/local/zone-add"), *zones], check=True, capture_output=True)


def created_event(domain: str, sample: str = "domain.created", **data: Any) -> dict[str, Any]:
    raw = load_event(sample)
    raw["id"] = str(uuid.uuid4())
    raw["subject"] = raw["data"]["domain"] = domain
    raw["data"].update(data)
    return raw


def publish(env: dict[str, str], settings: Settings, event: dict[str, Any], user: str = "billing") -> None:
    """Publish as ``user`` the way `mailplane publish --as USER` logs in (billing: by its client certificate)."""
    pub = Publisher(params(settings.broker, user, credential_from_env(user, env)))
    try:
        pub.publish_event(settings.broker.exchange, event, user)
    finally:
        pub.close()


def publish_raw(
    env: dict[str, str],
    settings: Settings,
    body: bytes,
    routing_key: str,
    user: str,
    *,
    subject: str,
    user_id: bool = True,
) -> None:
    """Publish bytes as ``user`` with a chosen routing key; ``user_id=False`` leaves the AMQP user_id unset."""
    pub = Publisher(params(settings.broker, user, credential_from_env(user, env)))
    props = pika.BasicProperties(
        content_type="application/cloudevents+json",
        delivery_mode=2,
        message_id=str(uuid.uuid4()),
        user_id=user if user_id else None,
        headers={"ce-subject": subject},
    )
    try:
        pub.publish(settings.broker.exchange, routing_key, body, props)
    finally:
        pub.close()


def run_worker(settings: Settings) -> Worker:
    worker = Worker(build_ports(settings), until_idle=True, idle_seconds=1.0)
    worker.run()
    return worker


@contextmanager
def operator_channel(env: dict[str, str], settings: Settings) -> Iterator[Any]:
    conn = pika.BlockingConnection(params(settings.broker, "operator", credential_from_env("operator", env)))
    try:
        yield conn.channel()
    finally:
        conn.close()


def take(env: dict[str, str], settings: Settings, queue: str, subject: str) -> list[tuple[dict[str, Any], bytes]]:
    """Remove and return the messages of ``queue`` about ``subject`` (headers, body); others are left in place."""
    found: list[tuple[dict[str, Any], bytes]] = []
    with operator_channel(env, settings) as ch:
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=False)
            if method is None:
                break
            headers = dict(props.headers or {})
            if headers.get("ce-subject") == subject:
                ch.basic_ack(method.delivery_tag)
                found.append((headers, body))
    return found  # closing the channel requeues the unacked others


def sim_requests(url: str, ca: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{url}/_sim/requests", verify=ssl.create_default_context(cafile=ca), timeout=5)
    resp.raise_for_status()
    data: list[dict[str, Any]] = resp.json()
    return data


def pmg_tls(env: dict[str, str]) -> ssl.SSLContext:
    """Trusts exactly the PMG simulator's three CN-only node certificates (no host name in them to check)."""
    ctx = ssl.create_default_context()
    for cert in sorted((Path(env["MAILPLANE_STACK_DIR"]) / "sim" / "pmg-tls").glob("pmg*.pem")):
        ctx.load_verify_locations(cafile=str(cert))
    ctx.check_hostname = False
    return ctx


def pmg_control(env: dict[str, str], method: str, path: str, body: Any = None) -> Any:
    """The PMG simulator's control plane (/_sim/state, /_sim/faults, /_sim/requests)."""
    url = f"{env['MAILPLANE_PMG1_URL']}/_sim/{path}"
    resp = httpx.request(method, url, json=body, verify=pmg_tls(env), timeout=10)
    resp.raise_for_status()
    return resp.json()


def sim_writes(env: dict[str, str]) -> dict[str, int]:
    ca = env["MAILPLANE_SIM_CA"]
    return {
        "mailcow": sum(1 for r in sim_requests(env["MAILPLANE_MAILCOW_URL"], ca) if r.get("write")),
        "pmg": int(pmg_control(env, "GET", "state")["writes"]),
    }


def soa_serial(env: dict[str, str], zone: str) -> int:
    q = dns.message.make_query(zone, "SOA")
    answer = dns.query.udp(q, env["MAILPLANE_DNS_SERVER"], port=int(env["MAILPLANE_DNS_PORT"]), timeout=3)
    return int(answer.answer[0][0].serial)


def body_json(body: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(body)
    return data


def mailcow_signature_verifies(settings: Settings, domain: str, txt: Callable[[str], bytes | None]) -> str:
    """Sign with the key Mailcow reports active (its sealed copy in S3, checked to be the same key) and verify with
    dkimpy, resolving the selector with ``txt`` (a name -> joined TXT data); returns the selector."""
    ports = build_ports(settings, probe=False)
    key = ports.mail.get_dkim(domain)
    assert key is not None
    pair = state.load_key(ports.state, domain, key.selector, settings)
    assert pair.public_b64 == key.public_key_b64
    msg = f"From: a@{domain}\r\nTo: b@example.net\r\nSubject: signed\r\n\r\nhello\r\n".encode()
    pem = pair.private_pem.reveal().encode()
    sig = dkim.sign(msg, key.selector.encode(), domain.encode(), pem, include_headers=[b"from", b"subject"])

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes | None:
        return txt(name.decode() if isinstance(name, bytes) else name)

    assert dkim.verify(sig + msg, dnsfunc=dnsfunc, minkey=2048), f"{domain}: signature by {key.selector} fails"
    return key.selector
