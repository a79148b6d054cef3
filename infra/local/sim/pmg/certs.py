"""A simulated PMG node's certificates (``/etc/pmg/pmg-tls.pem`` for SMTP, PMG's ``certificates/custom/smtp`` API).

PMG's postfix presents ``/etc/pmg/pmg-tls.pem`` (key + chain in one file) on STARTTLS; at install PMG writes a
self-signed one (``CN=<nodename>``). ``POST /nodes/{node}/certificates/custom/smtp`` (parameters ``certificates``:
the PEM chain, ``key``: the PEM private key, ``force``: overwrite an existing custom certificate, ``restart``:
reload the services) replaces it; the key must match the leaf. The SMTP front-end (smtp.py) reads ``tls_files``
per STARTTLS, so an upload is presented by the next handshake (what postfix does after ``restart``/reload).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class CertError(ValueError):
    """A certificate upload PMG refuses (its message)."""


@dataclass
class NodeCert:
    chain: str
    key: str
    custom: bool = False


def stock(name: str) -> NodeCert:
    """The self-signed certificate PMG's installer creates for the node."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return NodeCert(cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), pem.decode("ascii"))


def checked(chain: str, key: str) -> NodeCert:
    """A custom certificate as PMG accepts it.

    Raises:
        CertError: unparsable PEM, or a key that does not belong to the leaf.
    """
    try:
        certs = x509.load_pem_x509_certificates(chain.encode("ascii"))
    except ValueError:
        raise CertError("unable to parse certificate") from None
    try:
        priv = serialization.load_pem_private_key(key.encode("ascii"), password=None)
    except (ValueError, TypeError):
        raise CertError("unable to parse private key") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if certs[0].public_key().public_bytes(der, spki) != priv.public_key().public_bytes(der, spki):
        raise CertError("certificate and private key do not match")
    return NodeCert(chain if chain.endswith("\n") else chain + "\n", key, custom=True)


def info(nc: NodeCert, filename: str = "/etc/pmg/pmg-tls.pem") -> list[dict[str, Any]]:
    """``pve-certificate-info`` of the leaf (what the upload and ``certificates/info`` return)."""
    cert = x509.load_pem_x509_certificates(nc.chain.encode("ascii"))[0]
    fp = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    try:
        san = [str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value]
    except x509.ExtensionNotFound:
        san = []
    return [
        {
            "filename": filename,
            "fingerprint": ":".join(fp[i : i + 2] for i in range(0, len(fp), 2)),
            "subject": cert.subject.rfc4514_string(),
            "issuer": cert.issuer.rfc4514_string(),
            "notbefore": int(cert.not_valid_before_utc.timestamp()),
            "notafter": int(cert.not_valid_after_utc.timestamp()),
            "san": san,
            "pem": x509.load_pem_x509_certificates(nc.chain.encode("ascii"))[0]
            .public_bytes(serialization.Encoding.PEM)
            .decode("ascii"),
        }
    ]


def tls_files(nc: NodeCert, directory: Path) -> Path:
    """One PEM file (key + chain, as /etc/pmg/pmg-tls.pem) for ``ssl.SSLContext.load_cert_chain``; mode 0600."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".pem", delete=False) as f:
        f.write(nc.key + nc.chain)
    path = Path(f.name)
    path.chmod(0o600)
    return path
