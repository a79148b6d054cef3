"""`mailplane web6 sync`: web6's certificate directory made exactly the MTA-STS certificates the state store holds.

Runs ON web6 for ``mta_sts.delivery = "store"`` (docs/mta-sts.md, infra/web6/README.md): the workers store each
certificate sealed (``certs/<name>.json``, ``mtasts.ensure_cert``) and write no files; this pass pulls them into
the directory nginx reads per handshake, in the same file format (``webhost.CertDir``, shared with delivery "dir").

One pass (``sync``):

1. every entry under ``certs/`` is read, its key unsealed and checked (``check``): the chain holds only
   certificates, its leaf names the entry's ``mta-sts.<domain>``, is valid now, and the key is the leaf's;
2. a good entry is installed when ``<name>.pem`` differs from it (content or mode), else it is unchanged;
3. a bad entry is refused with its reason, and the file already there for its name stays (bad store content never
   deletes or replaces a good file); an entry whose key is not ``certs/<mta-sts name>.json`` maps to no file;
4. the ``<name>.pem`` of an mta-sts name with no entry left (domain.deleted) is removed, unless more than
   ``max_removals`` would go at once: then none is (a store that lists nothing by mistake must not empty the
   directory), and the pass says so.

Nothing else in the directory is touched (other files, dotfiles, temporary files, names nginx never asks for). A
second pass over the same store writes nothing. Reports name certificates and reasons, never key material.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from functions._core.model import keys, mtasts
from functions._core.platform.config import Secret
from functions._core.platform.errors import PermanentError
from functions._core.platform.store import ObjectStore
from functions.adapters.webhost import CertDir, pem_file

MAX_REMOVALS = 20  # files one pass may remove; more is held back for an operator (--max-removals)
_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")
_KEY_BLOCKS = (["PRIVATE KEY"], ["EC PRIVATE KEY"], ["RSA PRIVATE KEY"])


@dataclass(frozen=True)
class Synced:
    """What one pass did, by name; ``refused`` pairs an entry with its reason, ``held`` the removals not done."""

    installed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    refused: tuple[tuple[str, str], ...] = ()
    held: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.refused and not self.held

    def lines(self) -> list[str]:
        """One line per change or refusal, then the counts (no key material, untrusted names quoted)."""
        out = [f"installed {n}" for n in self.installed] + [f"removed {n}" for n in self.removed]
        out += [f"refused {e}: {why}; the file there (if any) is left as it is" for e, why in self.refused]
        if self.held:
            out.append(
                f"held: {len(self.held)} files have no entry in the store, more than one pass removes "
                f"(--max-removals); none removed: check the store settings, then run with a higher --max-removals"
            )
        out.append(
            f"web6 sync: {len(self.installed)} installed, {len(self.removed)} removed, {len(self.unchanged)} "
            f"unchanged, {len(self.refused)} refused" + (f", {len(self.held)} removals held" if self.held else "")
        )
        return out


def sync(
    store: ObjectStore, kek: Secret, target: CertDir, now: dt.datetime, *, max_removals: int = MAX_REMOVALS
) -> Synced:
    """Make ``target`` the set of good certificates under ``certs/`` in ``store`` (see the module docstring).

    Raises:
        ConfigError: ``kek`` is not a key-encryption key (before anything is read or written).
        StoreUnavailable, StoreRejected: the store could not be listed or read; nothing is removed then.
        OSError: the directory could not be written.
    """
    keys.kek_cipher(kek)
    installed, unchanged, refused, listed = [], [], [], set()
    for key in store.list(mtasts.CERT_PREFIX):
        name = key.removeprefix(mtasts.CERT_PREFIX).removesuffix(".json")
        if mtasts.cert_state_key(name) != key or not mtasts.is_cert_name(name):
            refused.append((_show(key), "not the entry of an mta-sts.<domain> certificate"))
            continue
        pair, why = _entry(store, kek, name, now)
        if pair is None and not why:
            continue  # deleted since the listing: its file goes with the others below
        listed.add(name)  # in the store, good or bad: its file is never removed
        if pair is None:
            refused.append((name, why))
        elif target.current(name, pem_file(*pair)):
            unchanged.append(name)
        else:
            target.install(name, *pair)
            installed.append(name)
    gone = [n for n in target.names() if mtasts.is_cert_name(n) and n not in listed]
    held = gone if len(gone) > max_removals else []
    removed = [] if held else gone
    for name in removed:
        target.remove(name)
    return Synced(tuple(installed), tuple(removed), tuple(unchanged), tuple(refused), tuple(held))


def _entry(store: ObjectStore, kek: Secret, name: str, now: dt.datetime) -> tuple[tuple[str, str] | None, str]:
    """((chain, key), "") for a good entry, (None, reason) for a bad one, (None, "") when it is gone."""
    try:
        cert = mtasts.read_cert(store, name)
    except ValueError as exc:
        return None, str(exc)
    if cert is None:
        return None, ""
    try:
        key = mtasts.unseal_key(cert, kek)
    except PermanentError:
        return None, "the private key cannot be unsealed (another key-encryption key, or sealed for another name)"
    why = check(name, cert.chain, key, now)
    return (None, why) if why else ((cert.chain, key.reveal()), "")


def check(name: str, chain_pem: str, key: Secret, now: dt.datetime) -> str:
    """Why ``chain_pem`` with ``key`` must not be served for ``name`` ("": it may). The chain must be PEM
    certificates only, its first (the leaf) must name ``name`` and be valid at ``now``, and ``key`` must be one PEM
    private key whose public key is the leaf's. Reasons never quote the key."""
    if not chain_pem.isascii() or set(_BLOCK.findall(chain_pem)) != {"CERTIFICATE"}:
        return "the chain is not a list of PEM certificates"
    try:
        leaf = x509.load_pem_x509_certificates(chain_pem.encode("ascii"))[0]
    except ValueError:
        return "the chain does not parse"
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower() for n in sans.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if name not in names:
        return f"the certificate is for {_show(', '.join(names)) if names else 'no DNS name'}, not {name}"
    if now < leaf.not_valid_before_utc:
        return f"the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M}Z"
    if now >= leaf.not_valid_after_utc:
        return f"the certificate expired {leaf.not_valid_after_utc:%Y-%m-%d %H:%M}Z"
    text = key.reveal()
    if not text.isascii() or _BLOCK.findall(text) not in _KEY_BLOCKS:
        return "the private key is not one PEM private key"
    try:
        private = serialization.load_pem_private_key(text.encode("ascii"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "the private key does not parse"
    if _spki(private.public_key()) != _spki(leaf.public_key()):
        return "the private key does not match the certificate"
    return ""


def _spki(public: PublicKeyTypes) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _show(text: str) -> str:
    """Untrusted text (a store key, names from a certificate) quoted and bounded for a report line."""
    return repr(text if len(text) <= 120 else text[:117] + "...")
