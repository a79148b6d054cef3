"""Poison isolation: a delivery that kills its worker is parked alone after a bounded number of deaths.

A worker that dies (SIGKILL, OOM, a crash in a C extension) gives every unacked delivery of its prefetch window
back to the queue, each with its quorum-queue ``x-delivery-count`` raised. The broker cannot tell the delivery that
killed the process from its innocent neighbours, and its delivery limit would move all of them down the retry
ladder together (and park them after the last rung). So the worker keeps its own count, of the deaths that
happened *while a delivery was running*:

* a first delivery (no ``x-delivery-count``) runs as usual, at no extra cost;
* a redelivery (count >= 1) is a suspect: before it runs, its death record ``deaths/<sha256(body)>.json`` in the
  state bucket goes up by one; the record is deleted when the run ends, whatever the verdict. A record left
  behind means that the process died while this delivery was running;
* a suspect whose record shows a death runs **alone** in its process (``SoloGate``: no other handler runs
  meanwhile), so a further death is its own;
* once the record shows ``MAX_DEATHS`` deaths, the delivery is parked (``PoisonError``, with the count) without
  running it again.

A neighbour comes back at most once per death of the poison, which dies at most ``MAX_DEATHS + 1`` times: below
the work queues' delivery limit (5), so no neighbour moves down the ladder. The broker's delivery limit stays the
backstop (the store down, a death before the record is written). A store error here is logged, never raised: the
death record must not stop work that would otherwise succeed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

from functions._core.platform.errors import AutomationError, PoisonError
from functions._core.platform.store import ObjectStore

__all__ = ["MAX_DEATHS", "DeathRecords", "SoloGate", "delivery_count"]

log = logging.getLogger("mailplane.poison")

MAX_DEATHS: Final = 3  # deaths while running, recorded on redeliveries, before a delivery is parked as poison
PREFIX: Final = "deaths/"


def delivery_count(headers: Mapping[str, Any]) -> int:
    """How often the queue delivered this message before without a verdict (quorum queues' ``x-delivery-count``)."""
    try:
        return max(0, int(headers.get("x-delivery-count") or 0))
    except (TypeError, ValueError):
        return 0


class DeathRecords:
    """Per-delivery death records in ``store`` (see the module docstring)."""

    def __init__(self, store: ObjectStore, *, owner: str, limit: int = MAX_DEATHS) -> None:
        """``owner`` names this worker in the records; ``limit`` deaths make a delivery poison.

        Raises:
            ValueError: a limit below 1.
        """
        if limit < 1:
            raise ValueError(f"need a death limit >= 1, got {limit}")
        self.store, self.owner, self.limit = store, owner, limit

    @staticmethod
    def key(body: bytes) -> str:
        return f"{PREFIX}{hashlib.sha256(body).hexdigest()}.json"

    def deaths(self, body: bytes) -> int:
        """Deaths recorded while this delivery ran (0 when there is no readable record, or the store fails)."""
        try:
            found = self.store.get(self.key(body))
            return int(json.loads(found.body)["deaths"]) if found is not None else 0
        except AutomationError as exc:
            log.warning("cannot read the death record of a redelivery: %s", exc.reason)
        except (ValueError, TypeError, KeyError):
            log.warning("unreadable death record %s: counting from 0", self.key(body))
        return 0

    def starting(self, body: bytes, deaths: int) -> None:
        """Record that this delivery is about to run: if the process dies now, that is one more death."""
        doc = {"deaths": deaths + 1, "owner": self.owner, "at": datetime.now(UTC).isoformat(timespec="seconds")}
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

    def poison(self, deaths: int, count: int) -> PoisonError | None:
        """The error to park with once ``deaths`` reached the limit, else None."""
        if deaths < self.limit:
            return None
        return PoisonError(
            f"the worker process died {deaths} times while running this delivery (x-delivery-count {count}; the"
            " last runs alone in their process): parked without running it again, so that it takes no other"
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
