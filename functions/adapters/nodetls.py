"""NodeTlsPort: the gateway nodes' SMTP certificates (DANE).

``upload`` goes through PMG's API (``POST /nodes/{node}/certificates/custom/smtp``, PmgClient); ``presented`` is
what a sending MTA sees: EHLO, STARTTLS, the leaf certificate of the handshake (not verified here: DANE decides),
at the node's SMTP address (``provider.mx_hosts[].smtp``, default ``<name>:25``).
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence

from functions._core.platform.config import MxHost
from functions.adapters.pmg import PmgClient


def _short(name: str) -> str:
    return name.split(".", 1)[0].lower()


class NodeTls:
    def __init__(self, gateway: PmgClient, hosts: Sequence[MxHost], *, timeout: float = 5.0) -> None:
        self._gateway, self._timeout = gateway, timeout
        self._targets = {_short(h.name): (h.smtp or f"{h.name}:25") for h in hosts}

    def upload(self, node: str, key_pem: str, chain_pem: str) -> None:
        self._gateway.upload_smtp_certificate(node, key_pem, chain_pem)

    def presented(self, node: str) -> str | None:
        """The leaf PEM of a STARTTLS handshake with ``node``; None when it offers no TLS or does not answer."""
        host, _, port = self._targets[node].rpartition(":")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with smtplib.SMTP(host.strip("[]"), int(port), timeout=self._timeout) as smtp:
                smtp.ehlo("mailplane.invalid")
                if not smtp.has_extn("starttls"):
                    return None
                smtp.starttls(context=ctx)
                sock = smtp.sock
                der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        except (OSError, smtplib.SMTPException):
            return None
        return ssl.DER_cert_to_PEM_cert(der) if der else None
