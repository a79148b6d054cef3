"""In-memory certificates for the DANE lifecycle: the nodes' SMTP certificates (NodeTlsPort) and an ACME CA (CertPort).

FakeNodeTls models PMG's custom certificate upload (the key must match the chain's leaf) and what each node presents
on STARTTLS; FakeCa issues a short chain for the given key after answering its challenge (present, then cleanup).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from functions._core.model.ports import Challenge


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def self_signed(name: str, now: dt.datetime, days: int = 3650) -> tuple[str, str]:
    """(cert PEM, key PEM): PMG's stock SMTP certificate (self-signed, CN=name)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subj = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subj)
        .issuer_name(subj)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return _pem(cert), _key_pem(key)


class FakeCa:
    """An ACME CA: answers the challenge, then signs a leaf for ``names`` over the given key (valid ``days``)."""

    def __init__(self, clock: Callable[[], dt.datetime], days: int = 90) -> None:
        self.clock, self.days = clock, days
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake ACME intermediate")])
        self.issued: list[tuple[str, ...]] = []
        self.challenges: list[tuple[str, str]] = []

    def issue(self, names: Sequence[str], key_pem: str, challenge: Challenge) -> str:
        challenge.present(names[0], "tok", f"v-{len(self.issued)}")
        self.challenges.append((challenge.kind, names[0]))
        challenge.cleanup(names[0], "tok", f"v-{len(self.issued)}")
        key = serialization.load_pem_private_key(key_pem.encode("ascii"), password=None)
        now = self.clock()
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self._name)
            .public_key(key.public_key())  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=self.days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.issued.append(tuple(names))
        return _pem(leaf) + self._intermediate()

    def _intermediate(self) -> str:
        now = self.clock()
        cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(1)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .sign(self._key, hashes.SHA256())
        )
        return _pem(cert)


class FakeNodeTls:
    """The nodes' SMTP certificates: ``upload`` as PMG's custom/smtp endpoint (key must match), ``presented`` as
    STARTTLS shows it. ``lag`` = nodes that keep presenting their old certificate (a reload that did not happen)."""

    def __init__(self, nodes: Sequence[str], now: dt.datetime) -> None:
        self.chains: dict[str, str] = {}
        self.keys: dict[str, str] = {}
        for n in nodes:
            self.chains[n], self.keys[n] = self_signed(n, now)
        self.uploads: list[str] = []
        self.lag: set[str] = set()
        self.down: set[str] = set()
        self._shown = dict(self.chains)

    def upload(self, node: str, key_pem: str, chain_pem: str) -> None:
        leaf = x509.load_pem_x509_certificate(chain_pem.encode("ascii"))
        key = serialization.load_pem_private_key(key_pem.encode("ascii"), password=None)
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        if leaf.public_key().public_bytes(serialization.Encoding.DER, pub) != key.public_key().public_bytes(
            serialization.Encoding.DER, pub
        ):
            raise ValueError("key does not match the certificate")
        self.chains[node], self.keys[node] = chain_pem, key_pem
        self.uploads.append(node)
        if node not in self.lag:
            self._shown[node] = chain_pem

    def reload(self, node: str) -> None:
        self._shown[node] = self.chains[node]

    def presented(self, node: str) -> str | None:
        if node in self.down:
            return None
        return self._shown[node]
