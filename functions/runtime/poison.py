"""Poison isolation: a delivery that kills its worker is parked alone after a bounded number of deaths.

A worker that dies (SIGKILL, OOM, a crash in a C extension) gives every unacked delivery of its prefetch window
back to the queue, each with its quorum-queue ``x-delivery-count`` raised. The broker cannot tell the delivery that
killed the process from its innocent neighbours, and its delivery limit would move all of them down the retry
ladder together (and park them after the last rung). So the worker keeps its own count, of the deaths that
happened *while a delivery was running*:

* a first delivery, or one given back once (``x-delivery-count`` < ``RECORD_AFTER``, 2: the bystanders of a single
  death), runs as usual, at no extra cost;
* a delivery given back more often is a suspect: before it runs, its death record ``deaths/<sha256(body)>.json`` in the
  state bucket goes up by one; the record is deleted when the run ends, whatever the verdict. A record left
  behind means that the process died while this delivery was running;
* a suspect with ``SOLO_AFTER`` (2) deaths on record runs **alone** in its process (``SoloGate``: no other handler
  runs meanwhile), so a further death is its own: a *solo death*;
* once the record shows ``MAX_DEATHS`` (3) solo deaths, the delivery is parked (``PoisonError``, with the counts)
  without running it again.

A poison message thus costs ``RECORD_AFTER`` + ``SOLO_AFTER`` + ``MAX_DEATHS`` = 7 deaths, and a neighbour comes
back at most once per death: below the work queues' delivery limit (10), so no neighbour moves down the ladder. A
valid delivery is parked only if random deaths (the OOM killer, a node failure) hit four of its runs and then three
solo runs in a row. The broker's delivery limit stays the backstop (the store down, a death before the record is
written). A store error here is logged, never raised: the death record must not stop work that would otherwise
succeed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from functions._core.platform.errors import AutomationError, PoisonError
from functions._core.platform.store import ObjectStore

__all__ = [
    "MAX_DEATHS",
    "RECORD_AFTER",
    "SOLO_AFTER",
    "DeathRecords",
    "Record",
    "SoloGate",
    "delivery_count",
    "suspect",
]

log = logging.getLogger("mailplane.poison")

RECORD_AFTER: Final = 2  # x-delivery-count from which a redelivery runs under a death record
SOLO_AFTER: Final = 2  # deaths on record after which a redelivery runs alone in its process
MAX_DEATHS: Final = 3  # solo deaths on record after which a delivery is parked as poison
PREFIX: Final = "deaths/"


def suspect(headers: Mapping[str, Any]) -> bool:
    """Whether this delivery runs under a death record: given back ``RECORD_AFTER`` times or more."""
    return delivery_count(headers) >= RECORD_AFTER


def delivery_count(headers: Mapping[str, Any]) -> int:
    """How often the queue delivered this message before without a verdict (quorum queues' ``x-delivery-count``)."""
    try:
        return max(0, int(headers.get("x-delivery-count") or 0))
    except (TypeError, ValueError):
        return 0


@dataclass(frozen=True)
class Record:
    """Deaths recorded while a delivery ran: all of them, and those while it ran alone."""

    deaths: int = 0
    solo: int = 0

    @property
    def alone(self) -> bool:
        """Whether the next run must be alone in its process."""
        return self.deaths >= SOLO_AFTER


class DeathRecords:
    """Per-delivery death records in ``store`` (see the module docstring)."""

    def __init__(self, store: ObjectStore, *, owner: str, limit: int = MAX_DEATHS) -> None:
        """``owner`` names this worker in the records; ``limit`` solo deaths make a delivery poison.

        Raises:
            ValueError: a limit below 1.
        """
        if limit < 1:
            raise ValueError(f"need a death limit >= 1, got {limit}")
        self.store, self.owner, self.limit = store, owner, limit

    @staticmethod
    def key(body: bytes) -> str:
        return f"{PREFIX}{hashlib.sha256(body).hexdigest()}.json"

    def read(self, body: bytes) -> Record:
        """The deaths recorded while this delivery ran (none when there is no readable record, or the store fails)."""
        try:
            found = self.store.get(self.key(body))
            if found is None:
                return Record()
            doc = json.loads(found.body)
            return Record(int(doc["deaths"]), int(doc["solo"]))
        except AutomationError as exc:
            log.warning("cannot read the death record of a redelivery: %s", exc.reason)
        except (ValueError, TypeError, KeyError):
            log.warning("unreadable death record %s: counting from 0", self.key(body))
        return Record()

    def starting(self, body: bytes, record: Record) -> None:
        """Record that this delivery is about to run: if the process dies now, that is one more death."""
        doc = {
            "deaths": record.deaths + 1,
            "solo": record.solo + (1 if record.alone else 0),
            "owner": self.owner,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        try:
            self.store.put(self.key(body), json.dumps(doc).encode())
        except AutomationError as exc:
            log.warning("cannot write the death record of a redelivery: %s", exc.reason)

    def finished(self, body: bytes) -> None:
        """The run ended (any verdict) or the delivery is parked: drop its record."""
        try:
            self.store.delete(self.key(body))
        except AutomationError as exc:
            log.warning("cannot delete the death record %s: %s", self.key(body), exc.reason)

    def poison(self, record: Record, count: int) -> PoisonError | None:
        """The error to park with once the solo deaths reached the limit, else None."""
        if record.solo < self.limit:
            return None
        return PoisonError(
            f"the worker process died {record.deaths} times while running this delivery, {record.solo} of them while"
            f" it ran alone (x-delivery-count {count}): parked without running it again, so that it takes no other"
            " delivery down with it"
        )


class SoloGate:
    """Shared by ordinary handler runs, exclusive for a suspect with a death on record (waiting solos go first)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0
        self._solo = False
        self._waiting = 0

    @contextmanager
    def hold(self, solo: bool) -> Iterator[None]:
        """Run the block shared (``solo`` False) or alone (True), blocking until that is possible."""
        with self._cond:
            if solo:
                self._waiting += 1
                self._cond.wait_for(lambda: not self._solo and self._running == 0)
                self._waiting -= 1
                self._solo = True
            else:
                self._cond.wait_for(lambda: not self._solo and self._waiting == 0)
                self._running += 1
        try:
            yield
        finally:
            with self._cond:
                if solo:
                    self._solo = False
                else:
                    self._running -= 1
                self._cond.notify_all()
