"""PMG's stock API certificate, per node: self-signed, subject ``CN=<node>``, no subjectAltName (PMG::Ticket, which
runs ``openssl req -x509 -subj /CN=<nodename>``). A client that pins it as a CA fails the hostname check (no SAN;
urllib3 never checks the CN); PMG's own cluster pins it by SHA-256 fingerprint, and so can mailplane.

    python -m sim.pmg.tls DIR pmg1 pmg2 pmg3    # create (once) DIR/<node>.pem + .key; print one fingerprint per line
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path


def node_certs(directory: Path, names: Sequence[str]) -> dict[str, tuple[Path, Path]]:
    """``{node: (cert_pem, key_pem)}``, created once per node in ``directory`` (kept across restarts)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        if not (cert.exists() and key.exists()):
            _create(name, cert, key)
        out[name] = (cert, key)
    return out


def _create(name: str, cert_path: Path, key_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
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
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    tmp_key, tmp_cert = key_path.with_suffix(".key.tmp"), cert_path.with_suffix(".pem.tmp")
    tmp_key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    tmp_key.chmod(0o600)
    tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp_key.replace(key_path)
    tmp_cert.replace(cert_path)


def fingerprint(cert_pem: Path) -> str:
    """SHA-256 over the DER certificate, as ``AA:BB:...`` (what ``openssl x509 -fingerprint -sha256`` prints)."""
    der = ssl.PEM_cert_to_DER_cert(cert_pem.read_text())
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m sim.pmg.tls DIR NODE...", file=sys.stderr)
        return 2
    for cert, _ in node_certs(Path(argv[0]), argv[1:]).values():
        print(fingerprint(cert))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
