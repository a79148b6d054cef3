"""The two network sources of `mailplane health`: the MX hosts' SMTP certificates and the broker's queues.

Certificates: what a sending MTA observes. For each ``[[provider.mx_hosts]]`` the collector connects to its SMTP
address (``smtp``, default ``<name>:25``), says EHLO, and when the host offers STARTTLS upgrades and reads the
served certificate's notAfter (without verifying the chain: an expired or mis-issued certificate must still be
measured). A host that offers no STARTTLS gets ``result="no_starttls"`` and no expiry series (the alert
"MailplaneCertificateCheckFailing" reports it); one that cannot be reached ``unreachable``; a failed handshake
``tls_error``. Later kinds (the MTA-STS web host's HTTPS certificate) are added in ``targets``: every metric and
alert is keyed by ``kind``.

Broker: per queue a passive ``queue.declare`` (message and consumer counts, nothing created), and the head of the
parked queue read with ``basic.get`` and given back by closing the channel unacked (no nack: a closed channel
returns the message without counting a delivery failure against it), as `mailplane dlq list` does.
"""

from __future__ import annotations

import datetime as dt
import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from cryptography import x509

from functions._core.platform.config import Secret, Settings
from functions.ops.health import Sink
from functions.ops.probe import split_hostport
from functions.runtime.amqp import params


@dataclass(frozen=True)
class CertTarget:
    kind: str  # "smtp" (STARTTLS on the MX hosts); "mta_sts" when the MTA-STS web host lands
    host: str  # the name in the series (and the SNI name)
    address: str  # host:port to connect to


@dataclass(frozen=True)
class CertResult:
    result: str  # ok | no_starttls | unreachable | tls_error
    not_after: dt.datetime | None = None


def targets(settings: Settings) -> list[CertTarget]:
    """The certificates to check: the MX hosts' SMTP (the MTA-STS certificates: add their targets here)."""
    return [CertTarget("smtp", h.name, h.smtp or f"{h.name}:25") for h in settings.provider.mx_hosts]


def smtp_certificate(target: CertTarget, timeout: float) -> CertResult:
    """EHLO, STARTTLS when offered, and the served certificate's notAfter."""
    host, port = split_hostport(target.address, 25)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # measure it whatever it is; never send mail
    try:
        with smtplib.SMTP(host, port, local_hostname="mailplane-health", timeout=timeout) as smtp:
            smtp.ehlo()
            if not smtp.has_extn("starttls"):
                return CertResult("no_starttls")
            smtp._host = target.host  # type: ignore[attr-defined]  # SNI: the MX name, not the address
            code, _ = smtp.starttls(context=ctx)
            if code != 220:
                return CertResult("tls_error")
            der = smtp.sock.getpeercert(binary_form=True) if isinstance(smtp.sock, ssl.SSLSocket) else None
    except ssl.SSLError:
        return CertResult("tls_error")
    except (OSError, smtplib.SMTPException):
        return CertResult("unreachable")
    if not der:
        return CertResult("tls_error")
    return CertResult("ok", x509.load_der_x509_certificate(der).not_valid_after_utc)


def certificates(sink: Sink, settings: Settings, now: dt.datetime, *, timeout: float = 10.0) -> None:
    """One check per target, in turn (a handful of MX hosts); a failed check is a ``result``, never an error."""
    for target in targets(settings):
        found = smtp_certificate(target, timeout)
        sink.set("mailplane_certificate_check", 1, target.kind, target.host, found.result)
        if found.not_after is not None:
            where = (target.kind, target.host)
            sink.set("mailplane_certificate_expiry_timestamp_seconds", found.not_after.timestamp(), *where)
            days = (found.not_after - now).total_seconds() / 86400
            sink.set("mailplane_certificate_days_to_expiry", round(days, 3), *where)


def queues(settings: Settings) -> list[str]:
    """Every work rung, every wait rung and the parked queue (infra/rabbitmq/definitions.json)."""
    b = settings.broker
    rungs = range(len(b.retry_delays) + 1)  # as the worker consumes them: rung 0 and one per retry delay
    return [*(f"{b.work_queue_prefix}.{k}" for k in rungs), *(f"q.wait.{k}" for k in rungs if k), b.parked_queue]


@contextmanager
def _connection(settings: Settings, user: str, password: Secret) -> Iterator[Any]:
    conn = pika.BlockingConnection(params(settings.broker, user, password))
    try:
        yield conn
    finally:
        if conn.is_open:
            conn.close()


def _parked_at(props: Any) -> dt.datetime | None:
    """When the head message was parked: our header, else the broker's x-death time (delivery limit)."""
    headers = props.headers or {}
    text = headers.get("x-mailplane-parked-at")
    if text:
        return dt.datetime.fromisoformat(str(text))
    deaths = headers.get("x-death") or []
    when = deaths[0].get("time") if deaths else None
    return when.replace(tzinfo=dt.UTC) if isinstance(when, dt.datetime) and when.tzinfo is None else when


def broker(sink: Sink, settings: Settings, user: str, password: Secret, now: dt.datetime) -> None:
    """Queue counters and the parked head's age.

    Raises:
        pika.exceptions.AMQPError: the broker cannot be reached or refused a queue (the source is marked down).
    """
    with _connection(settings, user, password) as conn:
        for name in queues(settings):
            ch = conn.channel()  # a refused declare closes its channel only
            ok = ch.queue_declare(name, passive=True).method
            sink.set("mailplane_queue_messages", ok.message_count, name)
            sink.set("mailplane_queue_consumers", ok.consumer_count, name)
            ch.close()
        ch = conn.channel()
        method, props, _ = ch.basic_get(settings.broker.parked_queue, auto_ack=False)
        at = None if method is None else _parked_at(props)
        sink.set("mailplane_parked_oldest_age_seconds", 0.0 if at is None else max(0.0, (now - at).total_seconds()))
        ch.close()  # the head message goes back unacked
