"""The MTA-STS web host (web6's role): certificates delivered where its web server reads them, and the sender's view.

The certificate files (``CertDir``): one per name, ``<dir>/<name>.pem`` holding the full chain and then the private
key, written to a temporary file in the same directory, fsynced and renamed over the old one (a handshake reads the
old or the new file, never a mix), mode 0600 (0640 when the web server reads it through the directory's group).
nginx picks it per handshake by the SNI name (``ssl_certificate $ssl_server_name``-style variables,
infra/web6/nginx.conf), so a new or renewed certificate needs no reload.

Delivery (``mta_sts.delivery``):

- ``"dir"`` (``DirWebHost``): the worker writes the files into ``mta_sts.cert_dir`` itself (a worker on web6, or a
  mount of its directory; the local stack).
- ``"store"`` (``StoreWebHost``): the worker writes nothing on the web host. The sealed entry in the state store
  (``certs/<name>.json``, written by ``mtasts.ensure_cert`` before it asks the web host) is the delivery; web6 pulls
  it into its directory with ``mailplane web6 sync`` (functions/ops/web6_sync.py), which uses the same ``CertDir``.

The fetch (``SenderView``) is what a sending MTA does (RFC 8461 3.3): resolve the name through the public DNS
(``mta_sts.resolver``), connect to port 443 with that SNI name, verify the certificate chain against
``mta_sts.trust_file`` (or the system store) and the name, GET without following redirects, read at most 64 KiB.
"""

from __future__ import annotations

import datetime as dt
import http.client
import os
import socket
import ssl
import stat
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import dns.exception
import dns.resolver

from functions._core.model import mtasts
from functions._core.model.ports import Fetched
from functions._core.platform.config import MtaStsSettings
from functions._core.platform.store import ObjectStore

MAX_BODY = 65536
MODES = (0o600, 0o640)  # owner only, or the web server's group too; never more
_END = "-----END CERTIFICATE-----"


def pem_file(chain_pem: str, key_pem: str) -> str:
    """The text of ``<name>.pem``: the chain, then the key, each ending in one newline (what nginx reads)."""
    return chain_pem.rstrip("\n") + "\n" + key_pem.rstrip("\n") + "\n"


class CertDir:
    """``<path>/<name>.pem`` per name, written atomically with ``mode``; nothing else in the directory is touched."""

    def __init__(self, path: str | os.PathLike[str], *, mode: int = 0o600) -> None:
        if mode not in MODES:
            raise ValueError(f"certificate file mode must be one of {', '.join(oct(m) for m in MODES)}")
        self.path, self.mode = Path(path), mode

    def file(self, name: str) -> Path:
        if "/" in name or "\0" in name or name.startswith(".") or not name:
            raise ValueError(f"bad certificate name {name!r}")
        return self.path / f"{name}.pem"

    def install(self, name: str, chain_pem: str, key_pem: str) -> None:
        """Write ``<name>.pem`` atomically: temporary file, fsync, rename, fsync of the directory."""
        target = self.file(name)
        self.path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-")  # created 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                if self.mode != 0o600:
                    os.fchmod(f.fileno(), self.mode)
                f.write(pem_file(chain_pem, key_pem))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._sync_dir()

    def remove(self, name: str) -> None:
        try:
            self.file(name).unlink()
        except FileNotFoundError:
            return
        self._sync_dir()

    def installed(self, name: str) -> str | None:
        """The chain of ``<name>.pem`` (None: no file, or no certificate in it)."""
        text = self.read(name)
        if text is None or _END not in text:
            return None
        return text[: text.rindex(_END) + len(_END)] + "\n"

    def read(self, name: str) -> str | None:
        try:
            return self.file(name).read_text(encoding="ascii")
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def current(self, name: str, text: str) -> bool:
        """``<name>.pem`` is a regular file (not a link) with exactly ``text`` and this directory's mode."""
        try:
            st = self.file(name).lstat()
        except FileNotFoundError:
            return False
        return stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == self.mode and self.read(name) == text

    def names(self) -> list[str]:
        """The names of the ``<name>.pem`` entries (files or links; no dotfiles, no directories), sorted."""
        if not self.path.is_dir():
            return []
        with os.scandir(self.path) as entries:
            return sorted(
                e.name.removesuffix(".pem")
                for e in entries
                if e.name.endswith(".pem") and not e.name.startswith(".") and not e.is_dir(follow_symlinks=False)
            )

    def _sync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Conn(http.client.HTTPSConnection):
    def __init__(self, host: str, ip: str, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(host, 443, context=context, timeout=timeout)
        self._ip, self._ctx = ip, context

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self.host)


class SenderView:
    """The policy fetched as a sender fetches it (``WebHostPort.fetch``)."""

    def __init__(self, settings: MtaStsSettings) -> None:
        self._s = settings

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


class DirWebHost(SenderView):
    """Delivery ``"dir"``: the worker writes the certificate files into ``mta_sts.cert_dir``."""

    def __init__(self, settings: MtaStsSettings) -> None:
        super().__init__(settings)
        self._dir = CertDir(settings.cert_dir)

    def install(self, name: str, chain_pem: str, key_pem: str) -> None:
        self._dir.install(name, chain_pem, key_pem)

    def remove(self, name: str) -> None:
        self._dir.remove(name)

    def installed(self, name: str) -> str | None:
        return self._dir.installed(name)


class StoreWebHost:
    """Delivery ``"store"``: the sealed entry in the state store is what web6 pulls (``mailplane web6 sync``), so
    ``installed`` is the chain stored there and installing or removing is nothing more to do here: web6 installs
    it, or removes it once the entry is gone, at its next sync. ``fetch`` is the sender's view, as with ``"dir"``."""

    def __init__(self, state: ObjectStore, sender: SenderView) -> None:
        self._state, self._sender = state, sender

    def install(self, name: str, chain_pem: str, key_pem: str) -> None:
        return None

    def remove(self, name: str) -> None:
        return None

    def installed(self, name: str) -> str | None:
        try:
            cert = mtasts.read_cert(self._state, name)
        except ValueError:
            return None  # a broken entry is delivered to no one (web6 refuses it); ensure_cert writes a good one
        return None if cert is None else cert.chain.rstrip("\n") + "\n"

    def fetch(self, url: str) -> Fetched:
        return self._sender.fetch(url)
