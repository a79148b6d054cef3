"""The local stack as infra/local/up builds it: RabbitMQ users, permissions and retry topology, and BIND zones.

Runs against the real services (``infra/local/up``); every test uses unique names and removes what it published.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update
import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from functions._core.platform.config import Settings
from functions.runtime.amqp import credential_from_env, params
from tests.stackenv import REPO

pytestmark = pytest.mark.stack


@contextmanager
def amqp(env: dict[str, str], user: str) -> Iterator[BlockingChannel]:
    """A channel of a fresh connection as ``user`` to the mailplane vhost."""
    settings = Settings.load(env["MAILPLANE_CONFIG"], env)
    conn = pika.BlockingConnection(params(settings.broker, user, credential_from_env(user, env)))
    try:
        yield conn.channel()
    finally:
        if conn.is_open:
            conn.close()


def props(message_id: str, user_id: str) -> pika.BasicProperties:
    return pika.BasicProperties(
        message_id=message_id, user_id=user_id, delivery_mode=2, content_type="application/cloudevents+json"
    )


def take(ch: BlockingChannel, queue: str, message_id: str, timeout: float = 5.0) -> tuple[Any, Any, bytes]:
    """basic_get from ``queue`` until our message appears; other messages are given back. Returns it unacked.

    Raises:
        AssertionError: the message did not arrive within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        others: list[int] = []
        try:
            while True:
                method, properties, body = ch.basic_get(queue)
                if method is None:
                    break
                if properties.message_id == message_id:
                    return method, properties, body
                others.append(method.delivery_tag)
        finally:
            for tag in others:  # not ours: give it back untouched
                ch.basic_nack(tag, requeue=True)
        time.sleep(0.05)
    consumers = ch.queue_declare(queue, passive=True).method.consumer_count
    raise AssertionError(f"message {message_id} did not arrive in {queue} within {timeout} s ({consumers} consumers)")


def publish_as_billing(env: dict[str, str], key: str, message_id: str, user_id: str = "billing") -> None:
    with amqp(env, "billing") as ch:
        ch.confirm_delivery()
        ch.basic_publish("events", key, b"{}", props(message_id, user_id), mandatory=True)


def test_broker_validates_user_id(stack_env: dict[str, str]) -> None:
    mid = f"test-{uuid.uuid4()}"
    with amqp(stack_env, "billing") as ch:
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
            ch.basic_publish("events", "domain.created", b"{}", props(mid, "monitoring"), mandatory=True)
    assert exc.value.reply_code == 406
    assert "PRECONDITION_FAILED" in exc.value.reply_text and "user_id" in exc.value.reply_text

    publish_as_billing(stack_env, "domain.created", mid)  # its own user_id: accepted (confirmed)
    with amqp(stack_env, "admin") as admin:
        method, properties, _ = take(admin, "q.work.0", mid)
        admin.basic_ack(method.delivery_tag)
    assert properties.user_id == "billing"


def test_topic_permission_refuses_foreign_routing_key(stack_env: dict[str, str]) -> None:
    with amqp(stack_env, "billing") as ch:
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
            ch.basic_publish("events", "key.rotate", b"{}", props(f"test-{uuid.uuid4()}", "billing"), mandatory=True)
    assert exc.value.reply_code == 403
    assert "ACCESS_REFUSED" in exc.value.reply_text


def test_domain_created_routes_to_first_rung(stack_env: dict[str, str]) -> None:
    mid = f"test-{uuid.uuid4()}"
    publish_as_billing(stack_env, "domain.created", mid)
    with amqp(stack_env, "admin") as admin:
        admin.queue_declare("q.work.0", passive=True)
        method, properties, body = take(admin, "q.work.0", mid)
        admin.basic_ack(method.delivery_tag)
    assert method.exchange == "events" and method.routing_key == "domain.created"
    assert properties.user_id == "billing" and body == b"{}"


def test_rejected_message_climbs_the_ladder(stack_env: dict[str, str]) -> None:
    """q.work.0 --reject--> retry(1) -> q.wait.1 (TTL 1 s) -> work(1) -> q.work.1."""
    mid = f"test-{uuid.uuid4()}"
    publish_as_billing(stack_env, "domain.created", mid)
    with amqp(stack_env, "admin") as admin:
        method, _, _ = take(admin, "q.work.0", mid)
        rejected_at = time.monotonic()
        admin.basic_reject(method.delivery_tag, requeue=False)
        method, properties, _ = take(admin, "q.work.1", mid, timeout=10.0)
        waited = time.monotonic() - rejected_at
        admin.basic_ack(method.delivery_tag)
    assert waited >= 0.9, f"arrived after {waited:.2f} s, before the 1 s wait TTL"
    deaths = {(d["queue"], d["reason"]) for d in properties.headers["x-death"]}
    assert deaths == {("q.work.0", "rejected"), ("q.wait.1", "expired")}
    assert method.exchange == "work" and method.routing_key == "1"
    assert properties.user_id == "billing"  # the validated publisher survives dead lettering


def _zone_script(name: str, zone: str, env: dict[str, str]) -> None:
    run_env = {**os.environ, "MAILPLANE_STACK_DIR": env["MAILPLANE_STACK_DIR"]}
    done = subprocess.run(
        [str(REPO / "infra" / "local" / name), zone], env=run_env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr


def test_zone_add_accepts_signed_updates_only(stack_env: dict[str, str]) -> None:
    zone = f"t{uuid.uuid4().hex[:12]}.test"
    server, port = stack_env["MAILPLANE_DNS_SERVER"], int(stack_env["MAILPLANE_DNS_PORT"])
    keyring = dns.tsigkeyring.from_text(
        {stack_env["MAILPLANE_TSIG_NAME"]: (dns.tsig.HMAC_SHA256, stack_env["MAILPLANE_TSIG_SECRET"])}
    )
    _zone_script("zone-add", zone, stack_env)
    try:
        _zone_script("zone-add", zone, stack_env)  # idempotent

        unsigned = dns.update.UpdateMessage(zone)
        unsigned.add("evil", 300, "A", "127.0.0.66")
        assert dns.query.tcp(unsigned, server, port=port, timeout=5).rcode() == dns.rcode.REFUSED

        signed = dns.update.UpdateMessage(zone, keyring=keyring, keyalgorithm=dns.tsig.HMAC_SHA256)
        signed.present("@", "SOA")
        signed.add("www", 300, "A", "127.0.0.9")
        assert dns.query.tcp(signed, server, port=port, timeout=5).rcode() == dns.rcode.NOERROR

        def answer(name: str) -> list[str]:
            query = dns.message.make_query(dns.name.from_text(name, origin=dns.name.from_text(zone)), "A")
            response = dns.query.tcp(query, server, port=port, timeout=5)
            return [rd.to_text() for rrset in response.answer for rd in rrset]

        # inline-signing: the UPDATE lands in the unsigned zone; the signed zone serves it once re-signed (ms later)
        deadline = time.monotonic() + 5
        while answer("www") != ["127.0.0.9"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert answer("www") == ["127.0.0.9"]
        assert answer("evil") == []
    finally:
        _zone_script("zone-del", zone, stack_env)
