"""DKIM keys: generation, the TXT value, encryption at rest, selectors, and the probe-signature check."""

from __future__ import annotations

import base64
import datetime as dt
import os
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dkim
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from functions._core.config import Secret
from functions._core.errors import ConfigError, PermanentError

TxtLookup = Callable[[str], bytes | None]  # "sel._domainkey.example.com." -> joined TXT data, or None


@dataclass(frozen=True)
class KeyPair:
    """A DKIM key pair; ``private_pem`` is a Secret so it never prints."""

    selector: str
    public_b64: str
    private_pem: Secret

    @property
    def txt(self) -> str:
        return dkim_txt(self.public_b64)


def generate(selector: str, bits: int) -> KeyPair:
    """Generate an RSA key pair for ``selector`` (PKCS#8 PEM, base64 SubjectPublicKeyInfo)."""
    if bits < 2048:
        raise ConfigError(f"dkim.key_size {bits} is below 2048 bits")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyPair(selector, base64.b64encode(spki).decode("ascii"), Secret(pem.decode("ascii")))


REVOKED_TXT = "v=DKIM1;k=rsa;p="  # RFC 6376 §3.6.1: an empty p= means the key is revoked


def dkim_txt(public_b64: str) -> str:
    """The DKIM TXT value in Mailcow's format."""
    return f"v=DKIM1;k=rsa;t=s;s=email;p={public_b64}"


def next_selector(fmt: str, now: dt.datetime, used: Iterable[str]) -> str:
    """A dated selector from ``fmt`` (strftime) that was never used before: a letter is appended on reuse."""
    base = str(now.strftime(fmt)).lower()
    taken = set(used)
    for suffix in ["", *string.ascii_lowercase]:
        candidate: str = base + suffix
        if candidate not in taken:
            return candidate
    raise PermanentError(f"no free DKIM selector left for {base}")


def _kek(secret: Secret) -> AESGCM:
    try:
        raw = base64.b64decode(secret.reveal(), validate=True)
    except ValueError:
        raise ConfigError("dkim.key_encryption_key is not valid base64") from None
    if len(raw) != 32:
        raise ConfigError("dkim.key_encryption_key must be 32 bytes (base64)")
    return AESGCM(raw)


def seal(pair: KeyPair, kek: Secret, domain: str) -> bytes:
    """Encrypt the private key with AES-256-GCM; the domain and selector are bound as associated data."""
    nonce = os.urandom(12)
    aad = f"{domain}/{pair.selector}".encode()
    return nonce + _kek(kek).encrypt(nonce, pair.private_pem.reveal().encode("ascii"), aad)


def unseal(blob: bytes, kek: Secret, domain: str, selector: str) -> Secret:
    """Decrypt a private key sealed by ``seal``.

    Raises:
        PermanentError: wrong key-encryption key, or the blob belongs to another domain/selector.
    """
    try:
        pem = _kek(kek).decrypt(blob[:12], blob[12:], f"{domain}/{selector}".encode())
    except InvalidTag:
        raise PermanentError(f"stored DKIM key {selector} of {domain} cannot be decrypted") from None
    return Secret(pem.decode("ascii"))


def probe_verifies(domain: str, selector: str, private_pem: Secret, lookup: TxtLookup) -> bool:
    """Sign a probe message with the key and verify it with dkimpy, resolving the selector through ``lookup``."""
    msg = (
        f"From: probe@{domain}\r\nTo: probe@{domain}\r\nSubject: mailplane DKIM probe\r\n"
        f"Date: {dt.datetime.now(dt.UTC):%a, %d %b %Y %H:%M:%S +0000}\r\n\r\nprobe\r\n"
    ).encode()
    sig = dkim.sign(
        msg,
        selector.encode(),
        domain.encode(),
        private_pem.reveal().encode("ascii"),
        include_headers=[b"from", b"to", b"subject", b"date"],
    )

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes | None:
        return lookup(name.decode() if isinstance(name, bytes) else name)

    try:
        return bool(dkim.verify(sig + msg, dnsfunc=dnsfunc, minkey=2048))
    except dkim.DKIMException:
        return False
