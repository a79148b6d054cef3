"""`mailplane pmg fingerprint NODE`: the SHA-256 fingerprint of the certificate a PMG node's API serves.

PMG's stock API certificate is self-signed with only a CN (no subjectAltName), so no CA file verifies it; pin it by
fingerprint instead (``api_fingerprint`` of the node in ``[[provider.mx_hosts]]``), as PMG's own cluster does. Compare
the printed value out of band (on the node: ``openssl x509 -in /etc/pmg/pmg-api.pem -noout -fingerprint -sha256``)
before pinning it: this command trusts whatever answers.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import urllib.parse

from functions._core.platform.config import MxHost, Settings
from functions._core.platform.errors import ConfigError


def api_hostport(host: MxHost) -> tuple[str, int]:
    """Host and port of the node's API (``api_url``, default ``https://<name>:8006``)."""
    url = urllib.parse.urlsplit(host.api_url or f"https://{host.name}:8006")
    return url.hostname or host.name, url.port or 8006


def served_fingerprint(address: tuple[str, int], timeout: float) -> str:
    """``AA:BB:...``: SHA-256 over the DER certificate served at ``address`` (no verification: it is what we check).

    Raises:
        OSError: no TLS answer (refused, timeout, handshake failure).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(address, timeout) as raw, ctx.wrap_socket(raw, server_hostname=address[0]) as tls:
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise OSError(f"{address[0]}:{address[1]} sent no certificate")
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, 64, 2))


def find_node(settings: Settings, node: str) -> MxHost:
    """The mx host named ``node`` (full name, or its first label such as ``pmg1``).

    Raises:
        ConfigError: no such node in provider.mx_hosts.
    """
    for host in settings.provider.mx_hosts:
        if node in (host.name, host.name.split(".")[0]):
            return host
    names = ", ".join(h.name for h in settings.provider.mx_hosts)
    raise ConfigError(f"no PMG node {node!r} in provider.mx_hosts ({names})")
