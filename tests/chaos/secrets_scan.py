"""The secrets scan of a chaos run: no secret value the stack holds appears in a log line, a parked message
(headers and body) or an outbound event.

Secrets: every secret setting of the run (``Secret`` fields: AMQP, Mailcow API key, PMG password, TSIG secret, key
encryption key, S3 keys), every secret of the stack's environment and ``$MAILPLANE_STACK_DIR/secrets``, the PEM
bodies of the private keys under the stack dir and the run's dir (TLS keys), and the plaintexts of the DKIM keys
the run sealed in its state bucket (unsealed here with the key encryption key).

Matching: a plain secret is searched verbatim, and also base64-encoded (HTTP Basic, AMQP PLAIN) and
percent-encoded. A private key is searched by its key material: every 32-character window, at offsets that are
multiples of 16, of its base64 body (a leak of 48 or more consecutive characters of it contains one), except the
windows that also occur in its public key (published in DNS and outbound events by design). Values shorter than
8 characters (LocalStack's ``test`` credentials) are not secrets worth the name and are skipped, by name.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from functions._core.model import keys
from functions._core.platform.config import Secret, Settings
from functions._core.platform.errors import AutomationError
from functions._core.platform.store import ObjectStore
from functions.runtime.main import build_ports
from tests.chaos.harness import Slice

MIN_LENGTH = 8
WINDOW, STEP = 32, 16
_PEM = re.compile(rb"-----BEGIN ([A-Z ]*PRIVATE KEY)-----\s+(.*?)-----END \1-----", re.S)
_B64_RUN = re.compile(rb"[A-Za-z0-9+/]{%d,}" % WINDOW)
_ENV_SECRET = re.compile(r"PASSWORD|SECRET|API_KEY|KEK|TOKEN")
_BLOB = re.compile(r"^keys/(?P<domain>[^/]+)/(?P<selector>[^/]+)\.bin$")


@dataclass(frozen=True)
class Hit:
    secret: str  # the secret's name, never its value
    where: str  # the haystack's name


@dataclass
class Secrets:
    plain: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> value
    keys: dict[str, set[bytes]] = dataclasses.field(default_factory=dict)  # name -> windows of its key material
    skipped: list[str] = dataclasses.field(default_factory=list)  # names of values too short to scan for

    def add(self, name: str, value: str) -> None:
        if len(value) < MIN_LENGTH:
            self.skipped.append(name)
        elif value not in self.plain.values():
            self.plain[name] = value

    def add_pem(self, name: str, pem: bytes) -> None:
        """A private key (PEM): its material, minus what its public key shows."""
        m = _PEM.search(pem)
        if m is None:
            raise ValueError(f"{name}: no PEM private key")
        body = re.sub(rb"\s+", b"", m.group(2))
        public = _public_b64(pem)
        windows = {body[i : i + WINDOW] for i in range(0, len(body) - WINDOW + 1, STEP)}
        self.keys[name] = {w for w in windows if w not in public}

    def __len__(self) -> int:
        return len(self.plain) + len(self.keys)


def _public_b64(pem: bytes) -> bytes:
    """Base64 of the key's public forms (SubjectPublicKeyInfo and PKCS#1), which are public by design."""
    try:
        pub = serialization.load_pem_private_key(pem, password=None).public_key()
    except (ValueError, TypeError):
        return b""
    forms = [(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)]
    try:
        forms.append((serialization.Encoding.DER, serialization.PublicFormat.PKCS1))
        out = b" ".join(base64.b64encode(pub.public_bytes(e, f)) for e, f in forms)
    except ValueError:  # not RSA: no PKCS#1 form
        out = base64.b64encode(pub.public_bytes(*forms[0]))
    return out


def _variants(value: str) -> list[bytes]:
    """The value, percent-encoded, and base64-encoded at each of the three alignments (``user:password``)."""
    raw = value.encode()
    out = [raw, base64.b64encode(raw).rstrip(b"=")]
    for k in (1, 2):  # preceded by k bytes: the first 4 and the last 4 characters depend on the neighbours
        middle = base64.b64encode(b"\0" * k + raw)[4:-4]
        if len(middle) >= MIN_LENGTH:
            out.append(middle)
    quoted = urllib.parse.quote(value, safe="").encode()
    return out + ([quoted] if quoted != raw else [])


def scan(haystacks: Iterable[tuple[str, bytes]], secrets: Secrets) -> list[Hit]:
    """Every (secret, haystack) pair where the secret shows; names only."""
    plain = {name: _variants(v) for name, v in secrets.plain.items()}
    windows: dict[bytes, str] = {w: name for name, ws in secrets.keys.items() for w in ws}
    hits: list[Hit] = []
    for where, text in haystacks:
        found = {name for name, forms in plain.items() if any(f in text for f in forms)}
        if windows:
            found |= set(_key_hits(text, windows))
        hits += [Hit(name, where) for name in sorted(found)]
    return hits


def _key_hits(text: bytes, windows: dict[bytes, str]) -> Iterator[str]:
    # JSON escapes newlines as "\n": a PEM's 64-character lines stay runs of base64 either way
    for run in _B64_RUN.findall(text.replace(b"\\n", b"\n")):
        for i in range(len(run) - WINDOW + 1):
            name = windows.get(run[i : i + WINDOW])
            if name is not None:
                yield name


# ---------------------------------------------------------------------------------------------- collecting


def settings_secrets(settings: Settings, out: Secrets, prefix: str = "settings") -> None:
    """Every ``Secret`` field of the settings, by its dotted name."""

    def walk(obj: Any, path: str) -> None:
        if isinstance(obj, Secret):
            out.add(path, obj.reveal())
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name), f"{path}.{f.name}")
        elif isinstance(obj, list | tuple):
            for i, item in enumerate(obj):
                walk(item, f"{path}[{i}]")
        elif isinstance(obj, dict):
            for k, item in obj.items():
                walk(item, f"{path}[{k}]")

    walk(settings, prefix)


def env_secrets(env: dict[str, str], stack_dir: Path, out: Secrets) -> None:
    for name, value in env.items():
        if _ENV_SECRET.search(name):
            out.add(f"env {name}", value)
    for path in sorted((stack_dir / "secrets").glob("*")):
        if path.is_file():
            out.add(f"stack secret {path.name}", path.read_text().strip())


def pem_secrets(dirs: Iterable[Path], out: Secrets) -> None:
    """Private keys in ``*.key`` / ``*.pem`` files under ``dirs`` (virtualenvs skipped)."""
    for root in dirs:
        for here, subdirs, files in os.walk(root):
            subdirs[:] = [d for d in subdirs if "venv" not in d and d != "site-packages"]
            for name in sorted(files):
                path = Path(here) / name
                if path.suffix not in (".key", ".pem") or path.stat().st_size > 100_000:
                    continue
                data = path.read_bytes()
                if _PEM.search(data):
                    out.add_pem(f"private key {path.name}", data)


def dkim_secrets(state: ObjectStore, kek: Secret, out: Secrets) -> int:
    """The plaintexts of the DKIM keys sealed in ``state``; returns how many."""
    n = 0
    for key in state.list("keys/"):
        m = _BLOB.match(key)
        if m is None:
            continue
        try:
            blob = state.get(key)
            if blob is None:
                continue
            pem = keys.unseal(blob.body, kek, m["domain"], m["selector"]).reveal()
        except (AutomationError, ValueError):  # a blob LocalStack tore (SIGKILL mid-PUT): nothing to leak from it
            out.skipped.append(f"unreadable sealed key {key}")
            continue
        out.add_pem(f"dkim key {m['selector']} of {m['domain']}", pem.encode())
        n += 1
    return n


def scan_run(sl: Slice, raw: list[tuple[str, bytes]]) -> tuple[list[Hit], dict[str, Any]]:
    """Scan the run's worker logs and ``raw`` (parked messages, outcome events) for every secret of the stack."""
    stack_dir = Path(sl.stack_env["MAILPLANE_STACK_DIR"])
    secrets = Secrets()
    settings_secrets(sl.settings, secrets)
    env_secrets(sl.stack_env, stack_dir, secrets)
    pem_secrets([stack_dir, sl.workdir], secrets)
    sealed = dkim_secrets(build_ports(sl.settings, probe=False).state, sl.settings.dkim.key_encryption_key, secrets)
    logs = [
        (f"log {w.name}/{p.name}", p.read_bytes()) for w in sl.workers for p in sorted(w.dir.iterdir()) if p.is_file()
    ]
    hits = scan([*logs, *raw], secrets)
    size = sum(len(t) for _, t in logs + raw)
    figures = {
        "secrets scanned for": f"{len(secrets.plain)} values + {len(secrets.keys)} private keys ({sealed} sealed DKIM)",
        "scanned": f"{len(logs)} log files, {len(raw)} parked/outbound parts, {size} bytes",
        "skipped (too short to be secrets)": sorted(set(secrets.skipped))[:8],
        "secret hits": len(hits),
    }
    return hits, figures
