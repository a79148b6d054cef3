"""Retention per class of stored object: what `mailplane sweep` may delete on a store without lifecycle rules.

- ``ledger`` (``idem/``): idempotency records past their ``expires_at`` (written with each record:
  ``retention.ledger_days`` after completion; functions/_core/platform/idempotency.py).
- ``audit`` (``audit/``): audit records older than ``retention.audit_days`` by their ``at`` time; 0 keeps them.
- ``keys`` (``keys/<domain>/<selector>.bin``): a sealed private key whose key record in the domain's state is
  DESTROYED, or WITHDRAWN for ``dkim.keep_days`` (the rotation's destroy step was due and did not run). Only when
  the blob holds exactly the key that record describes (its public key is compared after unsealing), so a delegation
  slot's new key, stored just before its state names it, is never taken for the old one. Never touched: the key
  Mailcow signs with, a key on its way (GENERATED .. READY), the previous key within its retire window (RETIRING,
  REVOKED, WITHDRAWN for less than ``keep_days``), and a blob no key record names (a domain.created in progress).
- ``tlsrpt`` (``tlsrpt/<domain>/<day>.json``): TLS report day objects whose day is ``retention.tlsrpt_days`` or
  more before today (functions/_core/model/tlsrpt_store.py); a key that names no day is left alone.

The public part of every key stays in the domain's state (status DESTROYED, with its history) as the audit trail of
what was published. Domain states, policies and the due index are not retention classes: they live as long as the
domain. Everything is read before anything is deleted per object, and a second run deletes nothing more.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

from functions._core.model import state, tlsrpt_store
from functions._core.model.state import DomainState, KeyRecord
from functions._core.platform import idempotency
from functions._core.platform.config import Settings
from functions._core.platform.errors import AutomationError
from functions._core.platform.idempotency import Sweep
from functions._core.platform.store import ObjectStore

CLASSES = ("ledger", "audit", "keys", "tlsrpt")
AUDIT_PREFIX = "audit/"
KEYS_PREFIX = "keys/"
GONE = ("DESTROYED",)


def sweep(store: ObjectStore, settings: Settings, now: dt.datetime, *, apply: bool, only: str = "") -> dict[str, Sweep]:
    """Every retention class (or ``only`` one): counted, or the expired objects deleted with ``apply``.

    Raises:
        StoreUnavailable: the store failed (run it again: it resumes with what is still there).
        ValueError: ``only`` names no class.
    """
    if only and only not in CLASSES:
        raise ValueError(f"no retention class {only!r} (classes: {', '.join(CLASSES)})")
    out: dict[str, Sweep] = {}
    if only in ("", "ledger"):
        out["ledger"] = idempotency.sweep(store, now, apply=apply)
    if only in ("", "audit"):
        out["audit"] = sweep_audit(store, settings.retention.audit_days, now, apply=apply)
    if only in ("", "keys"):
        out["keys"] = sweep_keys(store, settings, now, apply=apply)
    if only in ("", "tlsrpt"):
        out["tlsrpt"] = sweep_tlsrpt(store, settings.retention.tlsrpt_days, now, apply=apply)
    return out


def sweep_tlsrpt(store: ObjectStore, days: int, now: dt.datetime, *, apply: bool) -> Sweep:
    """TLS report day objects ``days`` or more days old (by the day in their key); other keys are left alone."""
    kept = expired = unreadable = 0
    cutoff = now.astimezone(dt.UTC).date() - dt.timedelta(days=days)
    for key in store.list(tlsrpt_store.PREFIX):
        try:
            day = dt.date.fromisoformat(key.rsplit("/", 1)[-1].removesuffix(".json"))
        except ValueError:
            unreadable += 1
            continue
        if day <= cutoff:
            expired += 1
            if apply:
                store.delete(key)
        else:
            kept += 1
    return Sweep(kept, expired, unreadable)


def sweep_audit(store: ObjectStore, days: int, now: dt.datetime, *, apply: bool) -> Sweep:
    """Audit records whose ``at`` is ``days`` or more ago (``days`` 0: none); unreadable ones are left alone."""
    kept = expired = unreadable = 0
    for key in store.list(AUDIT_PREFIX):
        at = _audit_time(store, key)
        if at is None:
            unreadable += 1
        elif days and now >= at + dt.timedelta(days=days):
            expired += 1
            if apply:
                store.delete(key)
        else:
            kept += 1
    return Sweep(kept, expired, unreadable)


def _audit_time(store: ObjectStore, key: str) -> dt.datetime | None:
    obj = store.get(key)
    try:
        at = dt.datetime.fromisoformat(json.loads(obj.body)["at"]) if obj is not None else None
    except (ValueError, KeyError, TypeError):
        return None
    return at if at is not None and at.tzinfo is not None else None


def key_expired(rec: KeyRecord | None, keep_days: int, now: dt.datetime) -> bool:
    """Whether a retired key's sealed private key is past its retention (``rec``: its record in the state)."""
    if rec is None:
        return False
    if rec.status in GONE:
        return True
    since = dt.datetime.fromisoformat(rec.changed_at or rec.created_at)
    return rec.status == "WITHDRAWN" and now >= since + dt.timedelta(days=keep_days)


def sweep_keys(store: ObjectStore, settings: Settings, now: dt.datetime, *, apply: bool) -> Sweep:
    """Sealed private keys past their retention (see the module docstring); unreadable or unreferenced ones and
    blobs that hold another key than their record describes are left alone (counted as unreadable)."""
    kept = expired = unreadable = 0
    for domain, selector, st in _blobs(store):
        records = [k for k in st.keys if k.selector == selector] if st is not None else []
        if st is None or len(records) != 1:
            unreadable += 1
            continue
        if not key_expired(records[0], settings.dkim.keep_days, now):
            kept += 1
            continue
        if not _holds(store, domain, records[0], settings):
            unreadable += 1
            continue
        expired += 1
        if apply:
            store.delete(state.key_blob_key(domain, selector))
    return Sweep(kept, expired, unreadable)


def _blobs(store: ObjectStore) -> Iterator[tuple[str, str, DomainState | None]]:
    """(domain, selector, the domain's state or None) per sealed key; each state read once (keys list by domain)."""
    current: tuple[str, DomainState | None] = ("", None)
    for key in store.list(KEYS_PREFIX):
        domain, _, name = key[len(KEYS_PREFIX) :].rpartition("/")
        if not domain or "/" in domain or not name.endswith(".bin"):
            yield "", "", None
            continue
        if current[0] != domain:
            obj = store.get(state.state_key(domain))
            current = (domain, None if obj is None else state.parse(domain, obj.body, obj.etag))
        yield domain, name[: -len(".bin")], current[1]


def _holds(store: ObjectStore, domain: str, rec: KeyRecord, settings: Settings) -> bool:
    """The blob unseals (with our key-encryption key) to exactly the key ``rec`` describes."""
    try:
        pair = state.load_key(store, domain, rec.selector, settings)
    except (AutomationError, ValueError):
        return False
    return pair.public_b64 == rec.public_b64
