"""Growth over a simulated year (issue 17, item 4): objects and bytes per domain in the private store after a year
of DKIM rotations, with and without `mailplane sweep` (the stand-in for S3 lifecycle rules on a store without them).

``python -m benchmarks.bench_growth --domains 200`` provisions N domains, then moves an injected clock through 365
days, one tick a day (nothing sleeps): each tick runs `rotate-due` (the due index, as in production) and sends every
key.rotate it publishes through the worker's own path (runtime/dispatch.py: ledger claim, subject lease, handler).
Rotations follow the settings of infra/local/platform.test.toml (rotate_after_days 180 + up to 30 days' jitter,
retire_days 7, keep_days 30; ``--rotate-days 90`` for quarterly), and every 50th domain has one emergency rotation
(``compromised``: audit records) in the middle of the year. Mailcow, PMG, DNS and the store are the in-process
fakes (the same models as the simulators): the figures are object counts and sizes, which do not depend on them.
The same year runs twice: without any sweep, and with `mailplane sweep --apply` once a week.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import time
from typing import Any

T0 = dt.datetime(2027, 1, 4, 3, 0, tzinfo=dt.UTC)
CLASSES = ("domains/", "keys/", "idem/", "locks/", "audit/", "index/", "mailcow/")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def simulate(n: int, days: int, *, sweep_every: int, rotate_days: int = 0, emergency_every: int = 50) -> dict[str, Any]:
    from functions._core.model import retention
    from functions._core.model.due_index import IndexedStore
    from functions._core.model.ports import Ports
    from functions._core.platform.idempotency import Ledger
    from functions._core.platform.locks import SubjectLocks
    from functions.ops import rotate_due
    from functions.runtime import dispatch
    from tests.conftest import load_event
    from tests.fakes.dns import FakeDns
    from tests.fakes.mailcow import fake_mailcow
    from tests.fakes.pmg import fake_gateway
    from tests.fakes.settings import make_settings
    from tests.fakes.store import MemoryStore

    s = make_settings()
    if rotate_days:
        s = dataclasses.replace(s, dkim=dataclasses.replace(s.dkim, rotate_after_days=rotate_days))
    clock, store, fdns = Clock(), MemoryStore(), FakeDns()
    gw = fake_gateway(s)
    lease = dt.timedelta(seconds=s.broker.lease_seconds)
    ports = Ports(
        mail=fake_mailcow()[0],
        gateway=gw.client,
        dns=fdns,
        state=IndexedStore(store, s.dkim),
        web=MemoryStore(),
        settings=s,
        clock=clock,
        ledger=Ledger(store, owner="sim", clock=clock, lease=lease, keep=dt.timedelta(days=s.retention.ledger_days)),
        locks=SubjectLocks(store, lease=lease, clock=clock),
        smtp=gw.smtp,
    )
    names = [f"g{i:05d}.growth.test" for i in range(n)]
    outcomes: dict[str, int] = {}

    def send(raw: dict[str, Any], publisher: str) -> None:
        verdict = dispatch.run(json.dumps(raw).encode(), publisher, ports).verdict
        outcomes[verdict] = outcomes.get(verdict, 0) + 1

    for i, d in enumerate(names):
        fdns.add_zone(d)
        raw = load_event("domain.created")
        raw["id"], raw["subject"], raw["data"]["domain"] = f"created-{i}", d, d
        send(raw, "billing")
    start, sweeps = time.perf_counter(), 0
    for day in range(1, days + 1):
        clock.now = T0 + dt.timedelta(days=day)
        gw.clock.sleep(86_400)  # PMG's clock moves with the day (its whole-second map rule)
        published: list[dict[str, Any]] = []
        rotate_due.run(ports.state, s, clock.now, published.append)
        if day == days // 2:
            for i in range(0, n, emergency_every) if emergency_every else ():
                raw = load_event("key.rotate")
                raw["id"], raw["subject"] = f"compromised-{i}", names[i]
                raw["data"] = {"domain": names[i], "reason": "compromised"}
                published.append(raw)
        for raw in published:
            send(raw, "scheduler")
        if sweep_every and day % sweep_every == 0:
            retention.sweep(store, s, clock.now, apply=True)
            sweeps += 1
    counts = {c: [0, 0] for c in (*CLASSES, "other")}
    for key, obj in store.objects.items():
        c = next((c for c in CLASSES if key.startswith(c)), "other")
        counts[c][0] += 1
        counts[c][1] += len(obj.body)
    total_n, total_b = sum(v[0] for v in counts.values()), sum(v[1] for v in counts.values())
    rotations = _keys_made(store) - n
    return {
        "domains": n,
        "days": days,
        "sweep_every_days": sweep_every,
        "sweeps": sweeps,
        "rotations": rotations,
        "events": outcomes,
        "objects_per_domain": round(total_n / n, 2),
        "bytes_per_domain": round(total_b / n),
        "by_class": {
            c: {"objects_per_domain": round(v[0] / n, 2), "bytes_per_domain": round(v[1] / n)}
            for c, v in counts.items()
            if v[0]
        },
        "web_objects_per_domain": round(len(ports.web.objects) / n, 2),  # type: ignore[attr-defined]
        "seconds": round(time.perf_counter() - start, 1),
    }


def _keys_made(store: Any) -> int:
    """Keys ever created: every key record in the states (destroyed ones keep their public part)."""
    total = 0
    for key, obj in store.objects.items():
        if key.startswith("domains/") and key.endswith(".json"):
            total += len(json.loads(obj.body).get("keys", []))
    return total


def run(n: int, days: int = 365, *, rotate_days: int = 0) -> dict[str, Any]:
    return {
        "without_sweep": simulate(n, days, sweep_every=0, rotate_days=rotate_days),
        "weekly_sweep": simulate(n, days, sweep_every=7, rotate_days=rotate_days),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--domains", type=int, default=200)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--rotate-days", type=int, default=0, help="rotate_after_days (default: the settings', 180)")
    args = ap.parse_args()
    r = run(args.domains, args.days, rotate_days=args.rotate_days)
    a, b = r["without_sweep"], r["weekly_sweep"]
    print(f"private store after {a['days']} simulated days, {a['domains']} domains, {a['rotations']} rotations:")
    print(f"{'class':<12}{'objects/domain':>16}{'bytes/domain':>14}{'swept: objects':>16}{'bytes':>10}")
    for c in (*CLASSES, "other"):
        x, y = a["by_class"].get(c), b["by_class"].get(c)
        if x or y:
            x = x or {"objects_per_domain": 0, "bytes_per_domain": 0}
            y = y or {"objects_per_domain": 0, "bytes_per_domain": 0}
            print(
                f"{c:<12}{x['objects_per_domain']:>16}{x['bytes_per_domain']:>14}"
                f"{y['objects_per_domain']:>16}{y['bytes_per_domain']:>10}"
            )
    print(
        f"{'total':<12}{a['objects_per_domain']:>16}{a['bytes_per_domain']:>14}"
        f"{b['objects_per_domain']:>16}{b['bytes_per_domain']:>10}"
    )
    print(json.dumps(r))


if __name__ == "__main__":
    main()
