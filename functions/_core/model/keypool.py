"""A sealed pool of pre-generated DKIM keys: RSA generation (~50 ms of CPU per 2048-bit key) leaves domain.created's
path and runs when a worker is idle, or in ``mailplane keypool refill`` (the scheduler's hourly job).

Layout in the private state bucket: one object per entry of ``batch`` keys, ``keypool/<random hex>.bin``, holding
``MAGIC`` + the keys sealed like a domain's key (AES-256-GCM under ``dkim.key_encryption_key``; associated data
``keypool/<name>``, so a pool blob cannot be passed off as a domain's key or another pool entry). Never plaintext at
rest, never logged.

Taking is a compare-and-set: read an entry (body + ETag), then overwrite it with a tombstone ``If-Match`` that ETag.
Of two takers of one entry exactly one write succeeds; the other moves on to another entry. The taker keeps the
entry's keys in memory and hands them out one per new domain (two object-store calls per ``batch`` domains); a
taken key is never handed out again (its blob is gone), and each is re-sealed for ``<domain>/<selector>`` before
anything is published with it (provisioning's ``persist_key``). A crash between the take and that store wastes the
keys held in memory; the retry takes another (or generates one): the domain's key is the one it stored, and no key
serves two domains.
Tombstones are deleted later (the taker's idle step, or whoever meets one). An empty pool, or a store error while
taking, falls back to generating inline: the pool never blocks or fails an event.

Concurrent refills may overshoot the target by what each found missing (bounded; the pool is a cache of work).
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from functions._core.model import keys
from functions._core.platform.config import Secret
from functions._core.platform.errors import AutomationError, PreconditionFailed
from functions._core.platform.store import ObjectStore

__all__ = ["PREFIX", "KeyPool", "Refill"]

log = logging.getLogger("mailplane.keypool")

PREFIX = "keypool/"
MAGIC = b"MPK1"  # a sealed pool entry; anything else under the prefix is a tombstone or foreign
TOMBSTONE = b"TAKEN"
_EMPTY_RECHECK_S = 30.0  # an empty listing is trusted this long (no LIST per event while the pool is empty)
_TRIES = 6  # entries tried per take before falling back to generation
BATCH = 8  # keys per entry


@dataclass(frozen=True)
class Refill:
    found: int  # keys in the pool before the refill (entries listed x batch)
    added: int  # keys added
    swept: int  # tombstones deleted


class KeyPool:
    """Pre-generated keys in ``store`` (the raw state bucket); ``size`` is the target of a refill (0 = off)."""

    def __init__(
        self,
        store: ObjectStore,
        kek: Secret,
        *,
        size: int,
        bits: int = 2048,
        batch: int = BATCH,
        generate: Callable[[str, int], keys.KeyPair] = keys.generate,
    ) -> None:
        self.store, self.kek, self.size, self.bits, self._generate = store, kek, size, bits, generate
        self.batch = max(1, batch)
        self._held: list[tuple[Secret, str]] = []  # keys of entries this process took, not handed out yet
        self._names: list[str] = []  # this process's shuffled view of the listing, consumed by take()
        self._listed_empty_at: float | None = None
        self._taken: list[str] = []  # our tombstones, deleted by the next idle step
        self._mutex = threading.Lock()

    # --- the event path -----------------------------------------------------------------------------------------

    def take(self, selector: str) -> keys.KeyPair | None:
        """A pool key under ``selector``, taken by compare-and-set; None when the pool is off, empty or failing
        (the caller generates the key itself). Never raises for the store."""
        if self.size <= 0:
            return None
        try:
            for _ in range(_TRIES):
                with self._mutex:
                    if self._held:
                        pem, public_b64 = self._held.pop()
                        return keys.KeyPair(selector, public_b64, pem)
                name = self._next_name()
                if name is None:
                    return None
                self._take_one(name)
        except AutomationError as exc:  # the pool is an optimisation: fall back to generating
            log.warning("key pool unavailable (%s); generating the key inline", exc.reason)
        return None

    def _next_name(self) -> str | None:
        with self._mutex:
            if not self._names:
                if self._listed_empty_at is not None and time.monotonic() - self._listed_empty_at < _EMPTY_RECHECK_S:
                    return None
                names = [n for n in self.store.list(PREFIX) if n not in self._taken]
                random.shuffle(names)  # two processes rarely start at the same entry
                self._names = names
                self._listed_empty_at = None if names else time.monotonic()
            return self._names.pop() if self._names else None

    def _take_one(self, name: str) -> None:
        """Take entry ``name`` into ``_held`` if it is still in the pool and no other taker wins it."""
        obj = self.store.get(name)
        if obj is None:
            return
        if not obj.body.startswith(MAGIC):  # a tombstone another taker left: clean it up
            if obj.body == TOMBSTONE:
                self.store.delete(name)
            return
        try:
            self.store.put(name, TOMBSTONE, if_match=obj.etag, content_type="application/octet-stream")
        except PreconditionFailed:
            return  # another taker won this entry
        held = self._unseal(name, obj.body)
        with self._mutex:
            self._taken.append(name)
            self._held.extend(held)

    # --- sealing ------------------------------------------------------------------------------------------------

    def _seal(self, name: str, pairs: list[keys.KeyPair]) -> bytes:
        nonce = os.urandom(12)
        doc = json.dumps([{"pem": p.private_pem.reveal(), "public": p.public_b64} for p in pairs]).encode()
        return MAGIC + nonce + self._aead().encrypt(nonce, doc, name.encode())

    def _unseal(self, name: str, body: bytes) -> list[tuple[Secret, str]]:
        blob = body[len(MAGIC) :]
        try:
            doc = json.loads(self._aead().decrypt(blob[:12], blob[12:], name.encode()))
        except InvalidTag:
            raise PreconditionFailed(f"key pool entry {name} cannot be decrypted") from None
        return [(Secret(d["pem"]), str(d["public"])) for d in doc]

    def _aead(self) -> AESGCM:
        return keys.kek_cipher(self.kek)

    # --- refills (idle time, CLI, scheduler) --------------------------------------------------------------------

    def count(self) -> int:
        """Keys in the pool: entries listed under its prefix (minus this process's own tombstones; others' count
        until someone meets them) times ``batch``."""
        return self.batch * sum(1 for n in self.store.list(PREFIX) if n not in self._taken)

    def sweep_taken(self) -> int:
        """Delete this process's tombstones; returns how many."""
        with self._mutex:
            taken, self._taken = self._taken, []
        for name in taken:
            self.store.delete(name)
        return len(taken)

    def add_entry(self, keep_going: Callable[[], bool] = lambda: True) -> int:
        """Generate up to ``batch`` keys (while ``keep_going()``) and store them sealed as one entry
        (If-None-Match); returns how many keys it stored (0: stopped before the first)."""
        name = f"{PREFIX}{os.urandom(16).hex()}.bin"
        pairs: list[keys.KeyPair] = []
        while len(pairs) < self.batch and keep_going():
            pairs.append(self._generate("pool", self.bits))
        if pairs:
            self.store.put(name, self._seal(name, pairs), if_none_match=True, content_type="application/octet-stream")
        return len(pairs)

    def refill(
        self, *, target: int | None = None, limit: int | None = None, keep_going: Callable[[], bool] = lambda: True
    ) -> Refill:
        """Top the pool up to ``target`` (default: ``size``): at most ``limit`` new keys, and only while
        ``keep_going()`` (the worker's idle check between keys).

        Raises:
            StoreUnavailable, StoreRejected: the store failed.
        """
        swept = self.sweep_taken()
        want = self.size if target is None else target
        found = self.count()
        missing = max(0, want - found)
        if limit is not None:
            missing = min(missing, limit)
        added = 0
        while added < missing:
            stored = self.add_entry(keep_going)
            added += stored
            if stored < self.batch:
                break
        if added:
            with self._mutex:
                self._listed_empty_at = None  # the next take lists again
            log.info("key pool: %d found, %d added (target %d)", found, added, want)
        return Refill(found, added, swept)
