"""Per-domain state in the private object store: the last request, the DKIM keys (public part) and their status.

Private keys live beside it, sealed (AES-GCM), at ``keys/<domain>/<selector>.bin``; ``domains/<domain>.json`` holds
no secret. Writes are conditional (If-None-Match / If-Match), so two workers cannot overwrite each other.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives import serialization

from functions._core.model import keys
from functions._core.model.keypool import KeyPool
from functions._core.platform.config import Settings
from functions._core.platform.errors import DnsConflict, PermanentError, PreconditionFailed
from functions._core.platform.store import ObjectStore, put_over


@dataclass(frozen=True)
class KeyRecord:
    selector: str
    public_b64: str
    status: str  # GENERATED | PUBLISHED | VISIBLE | READY | ACTIVE | RETIRING | REVOKED | WITHDRAWN | DESTROYED
    created_at: str
    # rotation (functions/_core/model/rotation.py); optional, written only when set
    changed_at: str | None = None  # ISO time of the last status change
    serial: int | None = None  # primary's SOA serial right after the TXT was published
    replaces: str | None = None  # selector this key replaces
    event: str | None = None  # id of the key.rotate event that created this key
    compromised_by: str | None = None  # id of the key.rotate that declared it compromised: revoke, then withdraw
    # adoption (functions/_core/model/adoption.py): Mailcow's own key, taken over; no sealed private key exists
    adopted: bool | None = None
    txt: str | None = None  # the DKIM TXT as the operator published it, when not in Mailcow's format

    @property
    def text(self) -> str:
        """The TXT value this key is published with."""
        return self.txt if self.txt is not None else keys.dkim_txt(self.public_b64)

    def to_json(self) -> dict[str, Any]:
        optional = ("changed_at", "serial", "replaces", "event", "compromised_by", "adopted", "txt")
        return {k: v for k, v in self.__dict__.items() if k not in optional or v is not None}


def asked_mta_sts_mode(request: Mapping[str, Any]) -> str | None:
    """The initial MTA-STS mode a domain.created's data asks for (``mta_sts.mode``), None when it asks none."""
    mode = (request.get("mta_sts") or {}).get("mode")
    return mode if isinstance(mode, str) and mode else None


@dataclass(frozen=True)
class DomainState:
    domain: str
    request: dict[str, Any] = field(default_factory=dict)  # last applied domain.created data (no secrets)
    keys: tuple[KeyRecord, ...] = ()
    status: str = "new"  # new | provisioned | awaiting_dns | degraded | suspended | deleted
    etag: str | None = None
    suspended_at: str | None = None  # ISO time domain.deleted suspended the domain
    delete_after: str | None = None  # ISO time its removal becomes due (suspended_at + grace days)
    history: tuple[dict[str, str], ...] = ()  # rotation transitions, newest last (bounded; see rotation.py)
    # the acceptance gate while it waits or after it gave up: {"event", "since", "failed": [checks]}; {} = passed
    acceptance: dict[str, Any] = field(default_factory=dict)
    webmail: dict[str, Any] = field(default_factory=dict)  # SOGo readiness (functions/_core/model/webmail.py)
    # this domain's MTA-STS mode when it differs from the platform's policy.mta_sts_mode, e.g. promoted by
    # `mailplane mta-sts enforce` (functions/ops/enforce.py): {"mode", "since", "reason"}; {} = the platform's
    mta_sts: dict[str, Any] = field(default_factory=dict)

    def mta_sts_mode(self, settings: Settings, request: Mapping[str, Any] | None = None) -> str:
        """The MTA-STS mode this domain's policy has: its own (``mta_sts``), else the initial one ``request`` (a
        domain.created's data) asks for (``mta_sts.mode``), else the platform's."""
        mode = self.mta_sts.get("mode")
        if isinstance(mode, str) and mode:
            return mode
        return asked_mta_sts_mode(request or {}) or settings.policy.mta_sts_mode

    @property
    def current(self) -> KeyRecord | None:
        """The key Mailcow signs with, else the newest not yet active."""
        live = [k for k in self.keys if k.status in ("ACTIVE", "PUBLISHED", "GENERATED")]
        active = [k for k in live if k.status == "ACTIVE"]
        chosen = active or live
        return chosen[-1] if chosen else None

    def with_key_status(self, selector: str, status: str) -> DomainState:
        return replace(self, keys=tuple(replace(k, status=status) if k.selector == selector else k for k in self.keys))

    def body(self) -> bytes:
        data = {
            "domain": self.domain,
            "request": self.request,
            "status": self.status,
            "keys": [k.to_json() for k in self.keys],
        }
        data.update({k: v for k, v in (("suspended_at", self.suspended_at), ("delete_after", self.delete_after)) if v})
        if self.history:
            data["history"] = list(self.history)
        if self.acceptance:
            data["acceptance"] = self.acceptance
        if self.webmail:
            data["webmail"] = self.webmail
        if self.mta_sts:
            data["mta_sts"] = self.mta_sts
        return json.dumps(data, sort_keys=True, indent=1, default=dict).encode()


def state_key(domain: str) -> str:
    return f"domains/{domain}.json"


def key_blob_key(domain: str, selector: str) -> str:
    return f"keys/{domain}/{selector}.bin"


def load(store: ObjectStore, domain: str) -> DomainState:
    obj = store.get(state_key(domain))
    if obj is None:
        return DomainState(domain)
    return parse(domain, obj.body, obj.etag)


def parse(domain: str, body: bytes, etag: str | None) -> DomainState:
    """A state from its stored body (``load``; the due index reads the body of every state it sees written)."""
    raw = json.loads(body)
    return DomainState(
        domain=domain,
        request=raw.get("request", {}),
        keys=tuple(KeyRecord(**k) for k in raw.get("keys", [])),
        status=raw.get("status", "new"),
        etag=etag,
        suspended_at=raw.get("suspended_at"),
        delete_after=raw.get("delete_after"),
        history=tuple(raw.get("history", ())),
        acceptance=raw.get("acceptance", {}),
        webmail=raw.get("webmail", {}),
        mta_sts=raw.get("mta_sts", {}),
    )


def save(store: ObjectStore, st: DomainState, before: DomainState) -> DomainState:
    """Write ``st`` if it differs from ``before`` (conditional on ``before``'s ETag); returns the stored state.

    Raises:
        DnsConflict: another worker changed the state since it was read (transient: re-read and re-plan).
    """
    if st.body() == before.body() and before.etag is not None:
        return before
    try:
        etag = put_over(store, state_key(st.domain), st.body(), before.etag)
    except PreconditionFailed:
        raise DnsConflict(f"state of {st.domain} changed concurrently; re-planning") from None
    return replace(st, etag=etag)


def next_slot(st: DomainState, slots: tuple[str, ...]) -> str | None:
    """The delegation slot after the newest key's (round robin) that holds no key, or only a destroyed one."""
    taken = {k.selector for k in st.keys if k.status != "DESTROYED"}
    last = st.keys[-1].selector if st.keys else None
    start = slots.index(last) + 1 if last in slots else 0
    return next((s for s in slots[start:] + slots[:start] if s not in taken), None)


def new_key(
    st: DomainState, settings: Settings, now: dt.datetime, *, delegated: bool = False, pool: KeyPool | None = None
) -> keys.KeyPair:
    """Generate a key (in memory; see ``persist_key``) under a dated selector never used for this domain, or for a
    delegated domain under the next free slot (the customer's CNAMEs fix the selector names). With ``pool``, a
    pre-generated key is taken from it (compare-and-set, functions/_core/model/keypool.py); an empty pool falls back
    to generating.

    Raises:
        PermanentError: every delegation slot still holds a key that is not destroyed.
    """
    if delegated:
        selector = next_slot(st, settings.dkim.delegation_slots)
        if selector is None:
            raise PermanentError(f"{st.domain}: every DKIM delegation slot holds a key that is not destroyed yet")
    else:
        selector = keys.next_selector(settings.dkim.selector_format, now, (k.selector for k in st.keys))
    pooled = pool.take(selector) if pool is not None else None
    return pooled if pooled is not None else keys.generate(selector, settings.dkim.key_size)


def with_new_key(st: DomainState, rec: KeyRecord) -> DomainState:
    """``st`` with ``rec`` appended; a destroyed key of a reused delegation slot leaves the list (its history stays)."""
    kept = tuple(k for k in st.keys if k.selector != rec.selector or k.status != "DESTROYED")
    return replace(st, keys=(*kept, rec))


def persist_key(store: ObjectStore, domain: str, pair: keys.KeyPair, settings: Settings) -> keys.KeyPair:
    """Store the sealed private key once; if a concurrent worker stored one under this selector first, use it."""
    kek = settings.dkim.key_encryption_key
    blob_key = key_blob_key(domain, pair.selector)
    try:
        store.put(blob_key, keys.seal(pair, kek, domain), if_none_match=True, content_type="application/octet-stream")
        return pair
    except PreconditionFailed:
        return load_key(store, domain, pair.selector, settings)


def load_key(store: ObjectStore, domain: str, selector: str, settings: Settings) -> keys.KeyPair:
    """Unseal a stored private key and rebuild the pair (the public part is derived from it).

    The key is not re-validated on load (cryptography's RSA consistency check, ~35 ms of CPU per load, the largest
    single cost of a retried domain.created): AES-GCM authenticates the blob, bound to the domain and selector, so it
    is exactly the key mailplane sealed."""
    obj = store.get(key_blob_key(domain, selector))
    if obj is None:
        raise DnsConflict(f"DKIM key {selector} of {domain} is not stored yet")
    pem = keys.unseal(obj.body, settings.dkim.key_encryption_key, domain, selector)
    priv = serialization.load_pem_private_key(
        pem.reveal().encode("ascii"), password=None, unsafe_skip_rsa_key_validation=True
    )
    spki = priv.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return keys.KeyPair(selector, base64.b64encode(spki).decode("ascii"), pem)
