"""Before/after figures of the issue-8 fixes, old and new code path in the same process, in interleaved rounds.

    PYTHONPATH=.:infra/local .venv/bin/python -m benchmarks.ab_fixes           # the local stack must be up (DNS rows)
    PYTHONPATH=.:infra/local .venv/bin/python -m benchmarks.ab_fixes --ports   # CPU per port inside one worker thread

Each "before" is the old code path, switched on in process: cryptography's RSA key check on import (Mailcow simulator),
no reuse of hosts_zone's transfer, the gate's SOA + query per RRset, the probe signed by dkimpy's pure-Python RSA, the
worker's 64 striped locks. Medians over the rounds; CPU is this process's (``time.process_time``).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import replace
from typing import Any
from unittest import mock

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from benchmarks.counting import CountingWire, Tally
from benchmarks.harness import REPO, created_event
from functions._core.model import keys, verify
from functions._core.model.ports import DnsChange
from functions._core.model.records import RecordSet
from functions._core.platform.config import Secret, Settings
from functions.adapters.dns import Rfc2136Dns, TcpWire
from functions.adapters.s3 import S3Store
from functions.runtime import dispatch
from functions.runtime.consumer import SubjectMutexes
from functions.runtime.main import build_ports
from tests.integration.stack import settings_for
from tests.stackenv import load_stack_env

Row = tuple[str, str, float, float, float]  # fix, side, CPU ms, wall ms, messages (or another count)


def _rounds(rounds: int, n: int, sides: dict[str, Callable[[], float]]) -> dict[str, tuple[float, float, float]]:
    """Run each side ``n`` times per round, sides alternating; medians of CPU and wall ms per call, and of the
    per-call value each call returns (messages, or 0)."""
    got: dict[str, list[tuple[float, float, float]]] = {side: [] for side in sides}
    for _ in range(rounds):
        for side, fn in sides.items():
            cpu, wall, extra = time.process_time(), time.perf_counter(), 0.0
            for _ in range(n):
                extra += fn()
            got[side].append(
                ((time.process_time() - cpu) / n * 1000, (time.perf_counter() - wall) / n * 1000, extra / n)
            )
    return {side: tuple(statistics.median(v[i] for v in vals) for i in range(3)) for side, vals in got.items()}  # type: ignore[misc]


def key_import(rounds: int = 5) -> list[Row]:
    """Fix 1: loading an imported 2048-bit private key in the Mailcow simulator."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    def load(skip: bool) -> Callable[[], float]:
        def one() -> float:
            serialization.load_pem_private_key(pem, None, unsafe_skip_rsa_key_validation=skip)
            return 0.0

        return one

    res = _rounds(rounds, 10, {"before": load(False), "after": load(True)})
    return [("1 Mailcow simulator: load an imported key", side, *v) for side, v in res.items()]


def probe(rounds: int = 5) -> list[Row]:
    """Fix 4: one DKIM probe (sign + dkimpy verification against the TXT)."""
    pair = keys.generate("ab", 2048)

    def dkimpy_signature(msg: bytes, selector: str, domain: str, private_pem: Secret) -> bytes:
        pem = private_pem.reveal().encode("ascii")
        headers = [b"from", b"to", b"subject", b"date"]
        signed: bytes = dkim.sign(msg, selector.encode(), domain.encode(), pem, include_headers=headers)
        return signed

    def side(signer: Callable[[bytes, str, str, Secret], bytes]) -> Callable[[], float]:
        def one() -> float:
            with mock.patch.object(keys, "_dkim_signature", signer):
                assert keys.probe_verifies("ab.test", pair.selector, pair.private_pem, lambda _: pair.txt.encode())
            return 0.0

        return one

    res = _rounds(rounds, 20, {"before": side(dkimpy_signature), "after": side(keys._dkim_signature)})
    return [("4 DKIM probe (sign + verify)", side_, *v) for side_, v in res.items()]


def dns_gate(settings: Settings, rounds: int = 8) -> list[Row]:
    """Fixes 2 and 3 against the local BIND: one customer zone holding a managed set of 11 RRsets."""
    zone = f"ab{uuid.uuid4().hex[:10]}.test"
    subprocess.run([str(REPO / "infra/local/zone-add"), zone], check=True, capture_output=True)
    try:
        return _dns_rows(settings, zone, rounds)
    finally:
        subprocess.run([str(REPO / "infra/local/zone-del"), zone], check=False, capture_output=True)


def _dns_rows(settings: Settings, zone: str, rounds: int) -> list[Row]:
    tally = Tally()
    port = Rfc2136Dns(settings.dns, wire=CountingWire(TcpWire(settings.dns), tally))
    want = _managed_set(zone)
    serial = port.apply(zone, [DnsChange(None, rs) for rs in want])
    expected = {rs.key: rs for rs in want}
    server = port.servers(zone)[0]
    minimum = verify.AXFR_MIN_RRSETS

    def messages(fn: Callable[[], None]) -> float:
        before = sum(tally.snapshot().values())
        fn()
        return float(sum(tally.snapshot().values()) - before)

    def hosts_then_read(old: bool) -> Callable[[], float]:
        """Before: ``hosts_zone`` (SOA + AXFR), then ``read_zone``; after: ``read_zone`` alone (refused = not ours)."""

        def one() -> None:
            if old:
                assert port.hosts_zone(zone)
            assert port.read_zone(zone)[want[0].key] == want[0]

        return lambda: messages(one)

    def gate(old: bool) -> Callable[[], float]:
        def one() -> None:
            verify.AXFR_MIN_RRSETS = 10**6 if old else minimum
            assert verify.server_mismatches(port, zone, server, expected, serial) == []

        return lambda: messages(one)

    try:
        two = _rounds(rounds, 50, {"before": hosts_then_read(True), "after": hosts_then_read(False)})
        three = _rounds(rounds, 50, {"before": gate(True), "after": gate(False)})
    finally:
        verify.AXFR_MIN_RRSETS = minimum
    return [("2 hosts_zone + read_zone", s, *v) for s, v in two.items()] + [
        ("3 gate: one server, 11 RRsets", s, *v) for s, v in three.items()
    ]


def _managed_set(zone: str) -> list[RecordSet]:
    pair = keys.generate("ab", 2048)
    moo = "moo.faster.test."
    return [
        RecordSet.of(zone, "MX", 3600, ["10 pmg1.faster.test.", "20 pmg2.faster.test."]),
        RecordSet.of(zone, "TXT", 3600, ["v=spf1 include:_pmg.faster.test -all"]),
        RecordSet.of(f"_dmarc.{zone}", "TXT", 3600, ["v=DMARC1; p=reject; rua=mailto:d@faster.test"]),
        RecordSet.of(f"ab._domainkey.{zone}", "TXT", 3600, [pair.txt]),
        RecordSet.of(f"_mta-sts.{zone}", "TXT", 3600, ["v=STSv1; id=20261128"]),
        RecordSet.of(f"mta-sts.{zone}", "CNAME", 3600, ["web6.faster.test."]),
        RecordSet.of(f"_smtp._tls.{zone}", "TXT", 3600, ["v=TLSRPTv1; rua=mailto:t@faster.test"]),
        RecordSet.of(f"autoconfig.{zone}", "CNAME", 3600, [moo]),
        RecordSet.of(f"autodiscover.{zone}", "CNAME", 3600, [moo]),
        RecordSet.of(f"_autodiscover._tcp.{zone}", "SRV", 3600, [f"0 1 443 {moo}"]),
        RecordSet.of(f"_owner.{zone}", "TXT", 3600, ["mailplane"]),
    ]


class _Striped:
    """The worker's former locks: 64 stripes, a subject maps to crc32 % 64."""

    def __init__(self) -> None:
        self.locks = [threading.Lock() for _ in range(64)]

    @contextmanager
    def hold(self, subject: str) -> Iterator[None]:
        with self.locks[zlib.crc32(subject.encode()) % len(self.locks)]:
            yield


def locks(rounds: int = 5) -> list[Row]:
    """Fix 5: 16 handler threads, 800 distinct subjects, a 10 ms handler (I/O wait); the 'messages' column is the
    share of handler wall time spent waiting at the lock, in %."""

    def side(make: Callable[[], _Striped | SubjectMutexes]) -> Callable[[], float]:
        def one() -> float:
            mutexes = make()
            waits: list[float] = []
            busy: list[float] = []

            def work(subject: str) -> None:
                start = time.perf_counter()
                held: AbstractContextManager[None] = mutexes.hold(subject)
                with held:
                    waits.append(time.perf_counter() - start)
                    time.sleep(0.01)
                busy.append(time.perf_counter() - start)

            with ThreadPoolExecutor(16) as pool:
                list(pool.map(work, [f"d{uuid.uuid4().hex[:10]}.test" for _ in range(800)]))
            return 100 * sum(waits) / sum(busy)

        return one

    res = _rounds(rounds, 1, {"before": side(_Striped), "after": side(SubjectMutexes)})
    return [("5 worker locks: 800 events, 16 threads (wall = ms per run)", s, *v) for s, v in res.items()]


class _PortClock:
    """Exclusive thread CPU per category: a nested timed call is subtracted from its caller's category."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self._local = threading.local()

    def timed(self, category: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            stack: list[float] = self._local.__dict__.setdefault("stack", [])
            start = time.thread_time()
            stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                total, inner = time.thread_time() - start, stack.pop()
                self.spent[category] += total - inner
                if stack:
                    stack[-1] += total

        return call

    def port(self, category: str, target: Any) -> Any:
        clock = self

        class Timed:
            def __getattr__(self, name: str) -> Any:
                attr = getattr(target, name)
                return clock.timed(category, attr) if callable(attr) and not name.startswith("_") else attr

        return Timed()


def ports_cpu(settings: Settings, n: int = 20) -> dict[str, dict[str, float]]:
    """CPU per domain.created inside one worker thread, by port, through ``dispatch.run`` (ledger and lock included)
    on the shared stack; old and new code paths of fixes 3-4 alternate per domain (the first two are warm-up)."""
    clock = _PortClock()
    ports = build_ports(settings)
    timed_ports = replace(
        ports,
        mail=clock.port("Mailcow client (httpx, TLS)", ports.mail),
        gateway=clock.port("PMG client (proxmoxer, TLS)", ports.gateway),
        dns=clock.port("DNS (dnspython)", ports.dns),
    )
    domains = [f"cpu{uuid.uuid4().hex[:8]}.test" for _ in range(2 * n + 2)]
    subprocess.run([str(REPO / "infra/local/zone-add"), *domains], check=True, capture_output=True)
    out: dict[str, dict[str, float]] = {"before": defaultdict(float), "after": defaultdict(float)}
    try:
        with _timed_library(clock):
            for i, domain in enumerate(domains):
                side = "before" if i % 2 == 0 else "after"
                with _old_paths(side == "before", clock):
                    clock.spent.clear()
                    start = time.thread_time()
                    body = json.dumps(created_event(domain, i=i)).encode()
                    result = dispatch.run(body, "billing", timed_ports)
                    total = time.thread_time() - start
                assert result.verdict == "done", result.reason
                if i >= 2:
                    for category, spent in clock.spent.items():
                        out[side][category] += spent * 1000 / n
                    out[side]["everything else (dispatch, plans, state, ledger logic, logs)"] += (
                        (total - sum(clock.spent.values())) * 1000 / n
                    )
    finally:
        subprocess.run([str(REPO / "infra/local/zone-del"), *domains], check=False, capture_output=True)
    return out


@contextmanager
def _timed_library(clock: _PortClock) -> Iterator[None]:
    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(keys, "generate", clock.timed("RSA key generation", keys.generate)))
        stack.enter_context(mock.patch.object(dkim, "verify", clock.timed("DKIM probe (sign + verify)", dkim.verify)))
        sign = keys._dkim_signature
        stack.enter_context(mock.patch.object(keys, "_dkim_signature", clock.timed("DKIM probe (sign + verify)", sign)))
        for name in ("get", "put", "delete", "list"):
            method = getattr(S3Store, name)
            stack.enter_context(mock.patch.object(S3Store, name, clock.timed("S3 client (boto3)", method)))
        yield


@contextmanager
def _old_paths(old: bool, clock: _PortClock) -> Iterator[None]:
    """The old code paths of fixes 3-4 (gate per RRset, probe signed by dkimpy); fix 2 changed the handlers."""
    if not old:
        yield
        return

    def dkimpy_signature(msg: bytes, selector: str, domain: str, private_pem: Secret) -> bytes:
        pem = private_pem.reveal().encode("ascii")
        headers = [b"from", b"to", b"subject", b"date"]
        signed: bytes = dkim.sign(msg, selector.encode(), domain.encode(), pem, include_headers=headers)
        return signed

    with (
        mock.patch.object(verify, "AXFR_MIN_RRSETS", 10**6),
        mock.patch.object(keys, "_dkim_signature", clock.timed("DKIM probe (sign + verify)", dkimpy_signature)),
    ):
        yield


def main() -> None:
    if "--ports" in sys.argv:
        sides = ports_cpu(settings_for(load_stack_env()))
        print("| CPU ms per domain.created, one worker thread | before | after |")
        print("|---|---|---|")
        for category in sorted(sides["before"], key=lambda c: -sides["before"][c]):
            print(f"| {category} | {sides['before'][category]:.1f} | {sides['after'].get(category, 0.0):.1f} |")
        print(f"| **total** | {sum(sides['before'].values()):.1f} | {sum(sides['after'].values()):.1f} |")
        return
    rows = key_import() + dns_gate(settings_for(load_stack_env())) + probe() + locks()
    print("| fix | side | CPU ms | wall ms | messages (locks: wait %) |")
    print("|---|---|---|---|---|")
    for fix, side, cpu, wall, extra in rows:
        print(f"| {fix} | {side} | {cpu:.3f} | {wall:.3f} | {extra:.1f} |")


if __name__ == "__main__":
    main()
