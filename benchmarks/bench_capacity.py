"""The stack's own limit: each dependency's capacity, loaded alone, divided by its calls per event.

For one system at a time, ``threads`` clients run that system's share of domain.created (``Naive.system_calls``: the
same requests the handler makes, with plain libraries) for ``n`` fresh domains as fast as the system answers. The
capacity in domains/s is ``n / elapsed``; in calls/s it is that times the calls per domain the probe counted. The
slowest system bounds any provisioner on this machine: that is the stack's limit.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from benchmarks.harness import Sandbox
from benchmarks.naive_baseline import SYSTEMS, Naive
from functions._core.model import keys


@dataclass(frozen=True)
class Capacity:
    system: str
    domains_per_s: float
    calls_per_s: float
    calls_per_domain: float


def probe(naive: Naive, system: str, domains: list[str], threads: int, pair: keys.KeyPair) -> Capacity:
    """Run ``system``'s calls for every domain from ``threads`` threads; measure the rate.

    The first domain runs alone, untimed: it opens connections and creates what is shared (PMG trusted networks).
    """
    naive.system_calls(system, domains[0], pair)
    todo: queue.Queue[str] = queue.Queue()
    for d in domains[1:]:
        todo.put(d)
    errors: list[BaseException] = []
    before = naive.calls[system]

    def client() -> None:
        while True:
            try:
                domain = todo.get_nowait()
            except queue.Empty:
                return
            try:
                naive.system_calls(system, domain, pair)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    pool = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    start = time.monotonic()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - start
    if errors:
        raise RuntimeError(f"capacity probe {system}: {len(errors)} failures, first: {errors[0]!r}")
    rate = (len(domains) - 1) / elapsed
    per_domain = (naive.calls[system] - before) / (len(domains) - 1)
    return Capacity(system, rate, rate * per_domain, per_domain)


def run(sb: Sandbox, n: int, threads: int, latency_ms: float, tag: str = "c") -> dict[str, Capacity]:
    """Probe every system with ``n`` domains of its own (zones added here), simulators reset and at ``latency_ms``."""
    domains = [sb.domain(i, tag) for i in range(n)]
    sb.add_zones(domains)
    sb.reset_sims()
    sb.set_latency(latency_ms)
    naive = Naive(sb.settings)
    s = sb.settings.dkim
    pair = keys.generate(keys.next_selector(s.selector_format, datetime.now(UTC), ()), s.key_size)
    out = {system: probe(naive, system, domains, threads, pair) for system in SYSTEMS}
    sb.reset_sims()
    return out
