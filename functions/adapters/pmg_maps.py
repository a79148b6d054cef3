"""Keeping PMG's whole-second postmap rule from losing a write (used by PmgClient only).

PMG rebuilds ``/etc/pmg/{domains,transport}.db`` only when the file's mtime is newer than the .db's in WHOLE
seconds, so of two writes to one map within a second postfix uses only the first until a later change to that file
in a later second (shared/live/pmg). A write is therefore safe once some write to the same map STARTED at least
1 s after it completed: that later write lands in a later second, and the first write of that second runs postmap
over the whole file, ours included.

- ``retouch`` (default): writes go out at once; ``settle()`` (called once the writes of an event are done) waits
  until 1 s after this thread's last write to each map and, unless another write to that map started by then (a
  burst covers itself), rewrites the comment of one of our entries in it. Safe across processes (each settles its
  own writes); costs at most 1 s and one PUT per map per event, overlapped by concurrent handlers.
- ``space``: a write waits until 1 s after the previous write to that map by this process. Serialises every write
  to a map to one per second per process, and does not protect against another process writing in the same second.
- ``off``: neither (to show the loss).

Limit: a delete that leaves a map without any entry of ours has nothing to re-touch (PMG's API rewrites a map only
through an entry); postfix may then keep the deleted key until the next change to that map.
The touch reads per item (PmgClient._touchable): the event's own entry, else entries of ours this client saw last;
a process that knows no live one lists the map once (its first delete) and remembers some from the listing.
Benchmark: benchmarks/bench_pmg_maps.py, figures in BENCHMARKS.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

MAPS = ("domains", "transport")  # the postmapped maps; mynetworks is reloaded, not postmapped
GAP = 1.0  # s: a write that starts this long after another lands in a later whole second


class MapWrites:
    """Per-client bookkeeping of writes to PMG's postmapped maps; thread-safe."""

    def __init__(self, mode: str, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.mode, self._clock, self._sleep = mode, clock, sleep
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}  # map -> the latest start of a write to it (any thread)
        self._done: dict[str, float] = {}  # map -> completion of the previous write ("space")
        self._spacing = {name: threading.Lock() for name in MAPS}
        self._local = threading.local()  # .pending: map -> (completed at, touch)

    def _pending(self) -> dict[str, tuple[float, Callable[[], None]]]:
        if not hasattr(self._local, "pending"):
            self._local.pending = {}
        pending: dict[str, tuple[float, Callable[[], None]]] = self._local.pending
        return pending

    def write(self, name: str, op: Callable[[], None], touch: Callable[[], None]) -> None:
        """Run ``op``, a write to map ``name``; ``touch`` rewrites that map without changing it (for ``settle``)."""
        if self.mode == "space":
            with self._spacing[name]:
                wait = self._done.get(name, float("-inf")) + GAP - self._clock()
                if wait > 0:
                    self._sleep(wait)
                try:
                    op()
                finally:
                    self._done[name] = self._clock()
            return
        self._mark(name)
        op()
        if self.mode == "retouch":
            self._pending()[name] = (self._clock(), touch)

    def _mark(self, name: str) -> None:
        start = self._clock()
        with self._lock:
            self._started[name] = max(self._started.get(name, start), start)

    def settle(self) -> int:
        """Make this thread's writes effective on the master; returns the number of touches sent."""
        pending, touched = self._pending(), 0
        while pending:
            name, (done, touch) = next(iter(pending.items()))
            if self._started.get(name, float("-inf")) >= done + GAP:
                del pending[name]  # a later write to this map (ours or another thread's) rebuilds it
                continue
            wait = done + GAP - self._clock()
            if wait > 0:
                self._sleep(wait)
                continue
            del pending[name]
            self._mark(name)
            touch()
            touched += 1
        return touched
