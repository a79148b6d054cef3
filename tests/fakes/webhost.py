"""The MTA-STS web host as nginx on web6 behaves (infra/web6/nginx.conf), in memory: certificates per name, and the
sender's fetch answered from the web bucket (``MemoryStore``) and the installed certificate.

No certificate for the name: the handshake fails (the sender's error); no policy object: 404; otherwise 200 with the
object's Content-Type and body, and the expiry of the installed leaf. ``fetched`` counts the fetches. With
``cert_dir`` the certificates are read from that directory at every fetch, as nginx reads them per handshake (what
``mailplane web6 sync`` writes, for ``mta_sts.delivery = "store"``), instead of from what ``install`` was given."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from cryptography import x509

from functions._core.model.ports import Fetched
from functions.adapters.webhost import CertDir
from tests.fakes.store import MemoryStore


class FakeWebHost:
    def __init__(self, web: MemoryStore, cert_dir: CertDir | None = None) -> None:
        self.web = web
        self.cert_dir = cert_dir
        self.certs: dict[str, tuple[str, str]] = {}
        self.fetched: list[str] = []
        self.on_fetch: Callable[[str], None] | None = None

    def install(self, name: str, chain_pem: str, key_pem: str) -> None:
        self.certs[name] = (chain_pem.rstrip("\n") + "\n", key_pem)

    def remove(self, name: str) -> None:
        self.certs.pop(name, None)

    def installed(self, name: str) -> str | None:
        got = self.certs.get(name)
        return got[0] if got else None

    def fetch(self, url: str) -> Fetched:
        self.fetched.append(url)
        if self.on_fetch is not None:
            self.on_fetch(url)
        parts = urlsplit(url)
        host = parts.hostname or ""
        chain = self.cert_dir.installed(host) if self.cert_dir is not None else self.installed(host)
        if chain is None:
            return Fetched(url, error="SSLError: tlsv1 alert internal error (no certificate for the name)")
        leaf = x509.load_pem_x509_certificate(chain.encode("ascii"))
        key = f"{host}{parts.path}"
        obj = self.web.get(key)
        if obj is None:
            return Fetched(url, 404, "text/html", b"", leaf.not_valid_after_utc)
        return Fetched(url, 200, self.web.content_types.get(key, ""), obj.body, leaf.not_valid_after_utc)
