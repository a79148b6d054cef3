"""TLS on the local stack, as a client observes it: RabbitMQ speaks AMQPS only (5671) with a certificate from the
stack's CA for localhost/127.0.0.1, logs publishers in by client certificate (EXTERNAL, CN = user), and LocalStack
serves S3 over HTTPS with the same CA. Every connection is built by ``functions.runtime.amqp.params`` or the S3
adapter, exactly as the worker and the CLI build theirs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from functions._core.platform.config import BrokerSettings, Secret, Settings
from functions._core.platform.errors import NotAuthorized, StoreUnavailable
from functions.adapters.s3 import S3Store
from functions.runtime import dispatch
from functions.runtime.amqp import ClientCert, Publisher, credential_from_env, event_properties, params
from functions.runtime.consumer import Worker
from functions.runtime.main import build_ports
from tests.conftest import load_event
from tests.integration.stack import created_event, settings_for, take, unique_domain
from tests.stackenv import REPO

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def settings(stack_env: dict[str, str]) -> Settings:
    return settings_for(stack_env)


def connect(broker: BrokerSettings, user: str, credential: Secret | ClientCert) -> pika.BlockingConnection:
    return pika.BlockingConnection(params(broker, user, credential))


def scheduler(env: dict[str, str]) -> Secret:
    return Secret(env["MAILPLANE_AMQP_SCHEDULER_PASSWORD"])


@pytest.fixture
def forwarder() -> Iterator[int]:
    """A TCP relay on 127.0.0.2:<port> to the broker's 127.0.0.1:5671: the same server, under an address its
    certificate does not name."""
    server = socket.create_server(("127.0.0.2", 0))

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            src.close()
            dst.close()

    def accept() -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", 5671), timeout=5)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def foreign_client_cert(directory: Path, cn: str) -> ClientCert:
    """A client certificate for ``cn`` that the stack's CA did not sign (self-signed)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{cn}.pem", directory / f"{cn}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ClientCert(str(cert_file), str(key_file))


def take_work(env: dict[str, str], settings: Settings, message_id: str) -> list[tuple[str | None, bytes]]:
    """Remove the messages with ``message_id`` from q.work.0 (as admin): their (user_id, body); others go back."""
    admin = connect(settings.broker, "admin", Secret(env["MAILPLANE_AMQP_ADMIN_PASSWORD"]))
    mine: list[tuple[str | None, bytes]] = []
    try:
        ch = admin.channel()
        deadline = time.monotonic() + 30  # the queue may hold many earlier messages: a time bound, not a count
        while time.monotonic() < deadline:
            method, props, body = ch.basic_get("q.work.0")
            if method is None and mine:
                break
            if method is None:
                admin.sleep(0.05)
            elif props.message_id == message_id:
                ch.basic_ack(method.delivery_tag)
                mine.append((props.user_id, body))
    finally:
        admin.close()  # others' messages, unacked, go back
    return mine


# ------------------------------------------------------------------------------------------------ server side


def test_the_stack_ca_verifies_the_broker(stack_env: dict[str, str], settings: Settings) -> None:
    assert settings.broker.tls and settings.broker.port == 5671
    conn = connect(settings.broker, "scheduler", scheduler(stack_env))
    try:
        assert conn.is_open
    finally:
        conn.close()


def test_another_ca_is_refused(stack_env: dict[str, str], settings: Settings) -> None:
    other_ca = dataclasses.replace(settings.broker, ca_file=stack_env["MAILPLANE_SIM_CA"])  # a real, unrelated CA
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        connect(other_ca, "scheduler", scheduler(stack_env))


def test_a_host_name_the_certificate_does_not_name_is_refused(
    stack_env: dict[str, str], settings: Settings, forwarder: int
) -> None:
    elsewhere = dataclasses.replace(settings.broker, host="127.0.0.2", port=forwarder)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        connect(elsewhere, "scheduler", scheduler(stack_env))


def test_plaintext_is_refused(stack_env: dict[str, str], settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    plaintext = dataclasses.replace(settings.broker, tls=False, ca_file="")
    with pytest.raises(pika.exceptions.AMQPConnectionError):  # the TLS listener drops an AMQP greeting
        connect(plaintext, "scheduler", scheduler(stack_env))
    with pytest.raises(pika.exceptions.AMQPConnectionError):  # and nothing listens on 5672
        connect(dataclasses.replace(plaintext, port=5672), "scheduler", scheduler(stack_env))
    warned = [r.getMessage() for r in caplog.records if "plaintext AMQP" in r.getMessage()]
    assert warned and all(stack_env["MAILPLANE_AMQP_SCHEDULER_PASSWORD"] not in w for w in warned)


# ------------------------------------------------------------------------------------------------ EXTERNAL login


def test_a_client_certificate_publishes_as_its_cn_only(stack_env: dict[str, str], settings: Settings) -> None:
    billing = credential_from_env("billing", stack_env)
    assert isinstance(billing, ClientCert)  # env.sh gives billing a certificate: no password is sent
    event = created_event(unique_domain("tls"))
    body = b"{}"
    conn = connect(settings.broker, "billing", billing)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            ch.basic_publish("events", "domain.created", body, event_properties(event, "monitoring"), mandatory=True)
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("events", "domain.created", body, event_properties(event, "billing"), mandatory=True)
    finally:
        conn.close()
    assert refused.value.reply_code == 406 and "user_id" in refused.value.reply_text
    assert "'billing'" in refused.value.reply_text  # the broker names the certificate's CN as the login
    assert take_work(stack_env, settings, event["id"]) == [("billing", body)]  # the refused one never arrived


def test_a_certificate_from_another_ca_is_refused(
    stack_env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    with pytest.raises((pika.exceptions.AMQPConnectionError, ssl.SSLError, ConnectionError)):
        connect(settings.broker, "billing", foreign_client_cert(tmp_path, "billing")).close()


def test_worker_on_its_certificate_authorizes_the_certificate_identity(
    stack_env: dict[str, str], settings: Settings
) -> None:
    """The worker (itself logged in by certificate, CN=worker) authorizes by the validated user_id, which a
    certificate login fixes to the CN: billing may send domain.deleted here, and not domain.created."""
    worker_cert = credential_from_env("worker", stack_env)
    assert isinstance(worker_cert, ClientCert)
    broker = dataclasses.replace(
        settings.broker,
        password=None,
        cert_file=worker_cert.cert_file,
        key_file=worker_cert.key_file,
        publishers={"domain.deleted": ("billing",)},
    )
    on_cert = dataclasses.replace(settings, broker=broker)
    created, deleted = created_event(unique_domain("tlsc")), load_event("domain.deleted")
    deleted["id"], deleted["subject"] = str(uuid.uuid4()), unique_domain("tlsd")
    deleted["data"]["domain"] = deleted["subject"]
    pub = Publisher(params(settings.broker, "billing", credential_from_env("billing", stack_env)))
    try:
        for event in (created, deleted):
            pub.publish_event(settings.broker.exchange, event, "billing")
    finally:
        pub.close()

    results: dict[str, dispatch.Result] = {}
    worker = Worker(build_ports(on_cert), until_idle=True, idle_seconds=1.0)
    worker.on_result = lambda r: results.__setitem__(r.event.subject, r) if r.event else None
    worker.run()

    refused, allowed = results[created["subject"]], results[deleted["subject"]]
    assert refused.event is not None and refused.event.publisher == "billing"
    assert refused.verdict == "park" and isinstance(refused.error, NotAuthorized)
    assert allowed.event is not None and allowed.event.publisher == "billing"
    assert allowed.verdict == "done", allowed.reason  # never provisioned: nothing to delete, but authorized
    ((headers, _),) = take(stack_env, settings, settings.broker.parked_queue, created["subject"])
    assert headers["x-mailplane-publisher"] == "billing"


# ------------------------------------------------------------------------------------------------ object store


def test_localstack_serves_s3_over_https_with_the_stack_ca(stack_env: dict[str, str], settings: Settings) -> None:
    assert settings.store.endpoint_url.startswith("https://") and settings.store.ca_file
    store = S3Store(settings.store, settings.store.state_bucket)
    store.probe()  # conditional writes over HTTPS, verified with store.ca_file

    other_ca = dataclasses.replace(settings.store, ca_file=stack_env["MAILPLANE_SIM_CA"])
    with pytest.raises(StoreUnavailable, match="SSL"):
        S3Store(other_ca, settings.store.state_bucket).get("tls/absent")


def test_s3_calls_share_one_tls_connection(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """LocalStack's gateway closes every connection unless the client asks for keep-alive: without it each call was
    a new TCP + TLS handshake (half the S3 client's CPU per call). 20 calls after the first: no new handshake."""
    store = S3Store(settings.store, settings.store.state_bucket)
    key = f"tls/keep-alive-{uuid.uuid4().hex}"
    store.put(key, b"1")
    handshakes = []
    real = ssl.SSLSocket.do_handshake

    def counted(sock: ssl.SSLSocket, *args: Any) -> None:
        handshakes.append(sock)
        real(sock, *args)

    monkeypatch.setattr(ssl.SSLSocket, "do_handshake", counted)
    for _ in range(10):
        assert (got := store.get(key)) is not None and got.body == b"1"
        store.put(key, b"1")
    store.delete(key)
    assert handshakes == []


# ------------------------------------------------------------------------------------------------ Wazuh


def test_wazuh_integration_publishes_over_amqps_with_its_ca_file(
    stack_env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    """infra/wazuh/custom-mailplane.py builds its own connection (it runs with Wazuh's Python): amqps, ca_file."""
    alert = json.loads((REPO / "infra/wazuh/sample-alert.json").read_text())
    alert["id"], alert["agent"]["name"] = f"tls-{uuid.uuid4().hex}", "pmg-tls-test"  # a node the worker would park
    (tmp_path / "alert.json").write_text(json.dumps(alert))
    env = {**os.environ, "MP_MONITORING": stack_env["MAILPLANE_AMQP_MONITORING_PASSWORD"]}

    def run(ca_file: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "options.json").write_text(json.dumps({"ca_file": ca_file}))
        argv = [
            sys.executable,
            str(REPO / "infra/wazuh/custom-mailplane.py"),
            str(tmp_path / "alert.json"),
            "env:MP_MONITORING",
            "amqps://monitoring@127.0.0.1:5671/mailplane",
            str(tmp_path / "options.json"),
        ]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)

    refused = run(stack_env["MAILPLANE_SIM_CA"])
    assert refused.returncode == 2 and "certificate verify failed" in refused.stderr
    done = run(stack_env["MAILPLANE_STACK_CA"])
    assert done.returncode == 0, done.stderr
    ((user_id, body),) = take_work(stack_env, settings, f"wazuh-{alert['id']}-node.down")
    assert user_id == "monitoring" and json.loads(body)["type"] == "node.down"
