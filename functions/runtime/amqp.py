"""pika plumbing shared by the worker, the CLI and tests: connection parameters and a confirming publisher."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from typing import Any

import pika
import pika.exceptions

from functions._core.platform.config import BrokerSettings, Secret

CE_CONTENT_TYPE = "application/cloudevents+json"


def params(
    broker: BrokerSettings, user: str | None = None, password: Secret | None = None
) -> pika.ConnectionParameters:
    """Connection parameters with explicit heartbeat and timeouts (as ``user`` when given, else the worker)."""
    secret = password if password is not None else broker.password
    return pika.ConnectionParameters(
        host=broker.host,
        port=broker.port,
        virtual_host=broker.vhost,
        credentials=pika.PlainCredentials(user or broker.user, secret.reveal()),
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
