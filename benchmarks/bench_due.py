"""rotate-due at fleet size (issue 17, item 2): the due index against the full scan it replaces, same store, same run.

``python -m benchmarks.bench_due --domains 100000`` seeds N provisioned domains into a directory store (the
`store.kind = "dir"` adapter; states and index entries written as files directly, the way the worker's
IndexedStore leaves them), keys activated evenly over the past 210 days (about 7 % due: a two-week backlog, more
than the steady state of ~1/195 a day), then runs rotate-due (dry run) twice, each in a fresh process: through the
due index, and with ``--full-scan`` (the baseline: every state read). Prints wall time, states read and peak RSS
of each, next to the limits (60 s, 300 MB). No stack needed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from functions._core.model import due_index
from functions._core.model.state import DomainState, KeyRecord
from functions._core.platform.config import Settings

NOW = dt.datetime(2027, 6, 1, 3, 0, tzinfo=dt.UTC)
LIMIT_S, LIMIT_MB = 60.0, 300.0


def settings() -> Settings:
    from tests.fakes.settings import make_settings

    s = make_settings()
    return replace(s, dkim=replace(s.dkim, rotate_jitter_days=30, rotate_max_per_run=100))


def seed(root: Path, n: int) -> None:
    """N states plus their index entries, and the index marker."""
    s = settings()
    for i in range(n):
        domain = f"d{i:06d}.fleet.test"
        since = NOW - dt.timedelta(days=210 * i / n)  # ~7 % due: a two-week backlog, more than steady state
        key = KeyRecord("fc20260101", "MIIB" + "A" * 390, "ACTIVE", since.isoformat(timespec="seconds"))
        st = DomainState(domain, {"dns": {"hosted": True}, "domain": domain}, (key,), "provisioned")
        path = root / "domains" / f"{domain}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(st.body())
        day = due_index.due_day(st, s.dkim)
        if day is not None:
            entry = root / due_index.entry_key(day, domain)
            entry.parent.mkdir(parents=True, exist_ok=True)
            entry.write_bytes(json.dumps({"domain": domain}).encode())
    (root / due_index.MARKER).write_bytes(b'{"version": 1}')


def measure(root: Path, full: bool) -> dict[str, Any]:
    from functions.adapters.dirstore import DirStore
    from functions.ops import rotate_due

    start = time.perf_counter()
    report = rotate_due.run(DirStore(root), settings(), NOW, None, full_scan=full)
    took = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": round(took, 2), "states_read": report.scanned, "due": len(report.due), "rss_mb": round(rss, 1)}


def run(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mp-bench-due-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        seed(root, n)
        seeded = time.perf_counter() - start
        out: dict[str, Any] = {"domains": n, "seed_seconds": round(seeded, 1), "limit": {"s": LIMIT_S, "mb": LIMIT_MB}}
        for mode in ("index", "full"):
            cmd = [sys.executable, "-m", "benchmarks.bench_due", "--measure", str(root)]
            done = subprocess.run([*cmd, *(["--full"] if mode == "full" else [])], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-2000:])
            out[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--domains", type=int, default=100_000)
    ap.add_argument("--measure")
    ap.add_argument("--full", action="store_true")
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.full)))
        return
    r = run(args.domains)
    print(f"rotate-due at {r['domains']} domains (seeded in {r['seed_seconds']} s), dry run, dir store:")
    print(f"{'mode':<12}{'seconds':>10}{'states read':>14}{'due':>8}{'peak RSS MB':>14}")
    for mode in ("index", "full"):
        m = r[mode]
        print(f"{mode:<12}{m['seconds']:>10}{m['states_read']:>14}{m['due']:>8}{m['rss_mb']:>14}")
    print(f"{'limit':<12}{LIMIT_S:>10}{'':>14}{'':>8}{LIMIT_MB:>14}")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
