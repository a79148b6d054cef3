"""pika plumbing shared by the worker, the CLI and tests: connection parameters (the one place that builds them:
TLS, login) and a confirming publisher."""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pika
import pika.credentials
import pika.exceptions

from functions._core.platform.config import BrokerSettings, Secret
from functions._core.platform.errors import ConfigError

CE_CONTENT_TYPE = "application/cloudevents+json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientCert:
    """An X.509 client certificate and its private key (PEM files). RabbitMQ's EXTERNAL mechanism
    (rabbitmq_auth_mechanism_ssl, ``ssl_cert_login_from = common_name``) takes the user from its CN."""

    cert_file: str
    key_file: str


Credential = Secret | ClientCert  # a password (SASL PLAIN) or a client certificate (SASL EXTERNAL)


def credential_from_env(user: str, env: Mapping[str, str] | None = None) -> Credential:
    """How ``user`` logs in: $MAILPLANE_AMQP_<USER>_CERT and _KEY (a client certificate, EXTERNAL) when set, else
    $MAILPLANE_AMQP_<USER>_PASSWORD.

    Raises:
        ConfigError: neither is set, or only one of _CERT and _KEY.
    """
    env = os.environ if env is None else env
    var = f"MAILPLANE_AMQP_{user.upper()}"
    cert, key = env.get(f"{var}_CERT"), env.get(f"{var}_KEY")
    if cert and key:
        return ClientCert(cert, key)
    if cert or key:
        raise ConfigError(f"environment variables {var}_CERT and {var}_KEY are set together")
    password = env.get(f"{var}_PASSWORD")
    if password is None:
        raise ConfigError(f"environment variable {var}_PASSWORD (or {var}_CERT and {var}_KEY) is not set")
    return Secret(password)


def tls_context(broker: BrokerSettings, cert: ClientCert | None = None) -> ssl.SSLContext:
    """Verifies the broker's certificate against ``broker.ca_file`` (or the system trust store) and its host name;
    presents ``cert`` when given. TLS 1.2 at least.

    Raises:
        ConfigError: a CA, certificate or key file that cannot be read or does not fit (the path, never contents).
    """
    try:
        ctx = ssl.create_default_context(cafile=broker.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"broker.ca_file {broker.ca_file}: cannot load: {_why(exc)}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        try:
            ctx.load_cert_chain(cert.cert_file, cert.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"client certificate {cert.cert_file} / key {cert.key_file}: {_why(exc)}") from None
    return ctx


def _ssl_options(broker: BrokerSettings, cert: ClientCert | None) -> pika.SSLOptions | None:
    if broker.tls:
        return pika.SSLOptions(tls_context(broker, cert), server_hostname=broker.host)
    if cert is not None:
        raise ConfigError("a client certificate needs broker.tls = true")
    log.warning(
        "broker: plaintext AMQP to %s:%d (broker.tls = false): credentials and events cross the network in clear",
        broker.host,
        broker.port,
    )
    return None


def _why(exc: Exception) -> str:
    """The library's short reason (e.g. "No such file or directory", "KEY_VALUES_MISMATCH"); never file contents."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__


def params(
    broker: BrokerSettings, user: str | None = None, credential: Credential | None = None
) -> pika.ConnectionParameters:
    """Connection parameters with TLS, explicit heartbeat and timeouts, as ``user`` with ``credential`` when given,
    else as the worker (``broker.password``, or ``broker.cert_file`` / ``key_file``).

    Raises:
        ConfigError: unreadable TLS files, or no credential.
    """
    if credential is None:
        credential = ClientCert(broker.cert_file, broker.key_file) if broker.cert_file else broker.password
    if credential is None:
        raise ConfigError("no broker credential: set broker.password or broker.cert_file and broker.key_file")
    cert = credential if isinstance(credential, ClientCert) else None
    login: pika.PlainCredentials | pika.credentials.ExternalCredentials
    if isinstance(credential, Secret):
        login = pika.PlainCredentials(user or broker.user, credential.reveal())
    else:
        login = pika.credentials.ExternalCredentials()
    return pika.ConnectionParameters(
        host=broker.host,
        port=broker.port,
        virtual_host=broker.vhost,
        credentials=login,
        ssl_options=_ssl_options(broker, cert),
        heartbeat=broker.heartbeat,
        blocked_connection_timeout=30,
        socket_timeout=10,
        connection_attempts=1,
    )


def event_properties(
    event: Mapping[str, Any], user_id: str, headers: Mapping[str, Any] | None = None
) -> pika.BasicProperties:
    """AMQP properties mirroring a structured CloudEvent (broker.md §11); ``user_id`` is validated by RabbitMQ."""
    return pika.BasicProperties(
        content_type=CE_CONTENT_TYPE,
        delivery_mode=2,
        message_id=str(event.get("id", "")),
        type=str(event.get("type", "")),
        app_id=str(event.get("source", ""))[:255],
        timestamp=int(time.time()),
        user_id=user_id,
        headers={"ce-subject": str(event.get("subject", ""))[:255], **(headers or {})},
    )


class Publisher:
    """Publishes with confirms and mandatory routing; one connection per thread (pika is not thread-safe)."""

    def __init__(self, connection_params: pika.ConnectionParameters) -> None:
        self._params = connection_params
        self._local = threading.local()

    def _channel(self) -> Any:
        ch = getattr(self._local, "channel", None)
        if ch is None or not ch.is_open:
            conn = pika.BlockingConnection(self._params)
            ch = conn.channel()
            ch.confirm_delivery()
            self._local.connection, self._local.channel = conn, ch
        return ch

    def publish(self, exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties) -> None:
        """Publish and wait for the broker's confirm; reconnects once if the connection was lost.

        Raises:
            pika.exceptions.UnroutableError, pika.exceptions.NackError, pika.exceptions.AMQPError
        """
        for attempt in (1, 2):
            try:
                self._channel().basic_publish(exchange, routing_key, body, properties, mandatory=True)
                return
            except (pika.exceptions.StreamLostError, pika.exceptions.ConnectionClosed, pika.exceptions.ChannelClosed):
                self._local.channel = None
                if attempt == 2:
                    raise

    def publish_event(self, exchange: str, event: Mapping[str, Any], user_id: str) -> None:
        body = json.dumps(event, sort_keys=True).encode()
        self.publish(exchange, str(event["type"]), body, event_properties(event, user_id))

    def close(self) -> None:
        conn = getattr(self._local, "connection", None)
        if conn is not None and conn.is_open:
            conn.close()
        self._local.channel = None
