"""The MTA-STS web host (web6's role): certificates delivered where its web server reads them, and the sender's view.

Delivery (``kind = "dir"``): one file per name, ``<cert_dir>/<name>.pem`` holding the full chain and the private
key, replaced atomically (write + rename), mode 0600. nginx picks it per handshake by the SNI name
(``ssl_certificate $ssl_server_name``-style variables, infra/web6/nginx.conf), so a new or renewed certificate
needs no reload. In production the directory is on web6 itself (the worker that runs there, or a mount of it).

The fetch is what a sending MTA does (RFC 8461 3.3): resolve the name through the public DNS (``mta_sts.resolver``),
connect to port 443 with that SNI name, verify the certificate chain against ``mta_sts.trust_file`` (or the system
store) and the name, GET without following redirects, read at most 64 KiB.
"""

from __future__ import annotations

import datetime as dt
import http.client
import os
import socket
import ssl
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import dns.exception
import dns.resolver

from functions._core.model.ports import Fetched
from functions._core.platform.config import MtaStsSettings

MAX_BODY = 65536


class _Conn(http.client.HTTPSConnection):
    def __init__(self, host: str, ip: str, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(host, 443, context=context, timeout=timeout)
        self._ip, self._ctx = ip, context

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self.host)


class DirWebHost:
    def __init__(self, settings: MtaStsSettings) -> None:
        self._s = settings
        self._dir = Path(settings.cert_dir)

    # ---------------------------------------------------------------- certificates

    def _path(self, name: str) -> Path:
        if "/" in name or name.startswith(".") or not name:
            raise ValueError(f"bad certificate name {name!r}")
        return self._dir / f"{name}.pem"

    def install(self, name: str, chain_pem: str, key_pem: str) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(chain_pem.rstrip("\n") + "\n" + key_pem.rstrip("\n") + "\n")
            os.replace(tmp, self._path(name))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def remove(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def installed(self, name: str) -> str | None:
        try:
            text = self._path(name).read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        end = "-----END CERTIFICATE-----"
        return text[: text.rindex(end) + len(end)] + "\n" if end in text else None

    # ---------------------------------------------------------------- the sender's view

    def _resolve(self, host: str) -> str:
        r = dns.resolver.Resolver(configure=not self._s.resolver)
        if self._s.resolver:
            ip, _, port = self._s.resolver.partition(":")
            r.nameservers, r.port = [ip], int(port or 53)
        r.lifetime = self._s.fetch_timeout
        answer = r.resolve(host, "A")
        return str(answer[0])

    def fetch(self, url: str) -> Fetched:
        host = urlsplit(url).hostname or ""
        path = urlsplit(url).path or "/"
        try:
            ip = self._resolve(host)
        except (dns.exception.DNSException, OSError) as exc:
            return Fetched(url, error=f"cannot resolve {host}: {type(exc).__name__}")
        ctx = ssl.create_default_context(cafile=self._s.trust_file or None)
        conn = _Conn(host, ip, ctx, self._s.fetch_timeout)
        try:
            conn.request("GET", path, headers={"User-Agent": "mailplane-mta-sts-check"})
            cert = conn.sock.getpeercert() if isinstance(conn.sock, ssl.SSLSocket) else None
            resp = conn.getresponse()
            body = resp.read(MAX_BODY + 1)
        except ssl.SSLCertVerificationError as exc:
            return Fetched(url, error=f"certificate not valid for {host}: {exc.verify_message}")
        except (ssl.SSLError, OSError, http.client.HTTPException) as exc:
            return Fetched(url, error=f"{type(exc).__name__}: {str(exc)[:160]}")
        finally:
            conn.close()
        not_after = None
        if cert and isinstance(cert.get("notAfter"), str):
            not_after = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(str(cert["notAfter"])), dt.UTC)
        if len(body) > MAX_BODY:
            return Fetched(url, resp.status, resp.getheader("Content-Type", ""), b"", not_after, "body over 64 KiB")
        return Fetched(url, resp.status, resp.getheader("Content-Type", "") or "", body, not_after)
