"""MTA-STS served (issue 15): domain.created -> the policy fetchable by a sender -> ``_mta-sts`` published.

On the local stack (web6 = nginx, Pebble, BIND, the validating resolver, LocalStack), ``--domains`` fresh hosted zones
(one batched infra/local/zone-add), then one domain.created at a time, handled in process with ``[mta_sts] serve``
on (a NotPropagated, e.g. the debounced SOGo restart, is retried after 0.2 s instead of the broker's ladder):

- ``cert``: the ACME order for ``mta-sts.<domain>`` (DNS-01 through our RFC 2136 channel, Pebble), delivery included;
- ``fetchable``: event start -> mailplane's own sender-style fetch (HTTPS through the resolver, Pebble root, body
  equal to the desired policy) first succeeds;
- ``published``: event start -> the handler returns (the ``_mta-sts`` TXT is on every authoritative server);
- ``baseline``: the same domain.created with serving off (``--baseline`` more zones), for the cost of serving.

Afterwards every served domain is checked with ``mta-sts-query`` (postfix-mta-sts-resolver) under
infra/local/with-resolver: the count of VALID answers is printed. A benchmark, not a test: it asserts nothing about
timing; it prints figures and the load average next to them.

    . .stack/env.sh && PYTHONPATH=.:infra/local .venv/bin/python -m benchmarks.bench_mtasts --domains 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "infra" / "local")]

from benchmarks.bench_dns_gate import load, show  # noqa: E402
from functions import domain_created  # noqa: E402
from functions._core.model import mtasts  # noqa: E402
from functions._core.model.ports import Ports  # noqa: E402
from functions._core.platform.config import Settings  # noqa: E402
from functions._core.platform.envelope import parse  # noqa: E402
from functions._core.platform.errors import NotPropagated  # noqa: E402
from functions.ops.demo import with_mta_sts  # noqa: E402
from functions.runtime.main import build_ports  # noqa: E402
from tests.stackenv import load_stack_env  # noqa: E402


def serving(base: Settings, env: dict[str, str]) -> Settings:
    """``base`` with MTA-STS served by the stack's web6 (demo.with_mta_sts: Pebble, web6's cert dir, the resolver)."""
    served = with_mta_sts(base, env)
    assert served.mta_sts.serve, "the stack's env has no ACME CA or web6 (infra/local/up)"
    return served


def event(domain: str) -> Any:
    raw = json.loads((REPO / "events" / "domain.created.json").read_text())
    raw["id"] = str(uuid.uuid4())
    raw["subject"] = raw["data"]["domain"] = domain
    return parse(json.dumps(raw).encode(), publisher="billing")


def handle(ev: Any, ports: Ports, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return str(domain_created.handle(ev, ports).status)
        except NotPropagated:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class Marks:
    """Wraps ``mtasts.ensure_cert`` and ``mtasts.wait_served`` to time-stamp when each returns (per process)."""

    def __init__(self) -> None:
        self.cert: list[float] = []
        self.served_at: float | None = None
        self._orig: dict[str, Callable[..., Any]] = {}

    def __enter__(self) -> Marks:
        ensure, wait = mtasts.ensure_cert, mtasts.wait_served
        self._orig = {"ensure_cert": ensure, "wait_served": wait}

        def timed_ensure(*a: Any, **k: Any) -> list[str]:
            t = time.perf_counter()
            out = ensure(*a, **k)
            if any(c.startswith("+ certificate") for c in out):
                self.cert.append(time.perf_counter() - t)
            return out

        def timed_wait(*a: Any, **k: Any) -> None:
            wait(*a, **k)
            if self.served_at is None:
                self.served_at = time.perf_counter()

        mtasts.ensure_cert, mtasts.wait_served = timed_ensure, timed_wait
        return self

    def __exit__(self, *exc: object) -> None:
        mtasts.ensure_cert = self._orig["ensure_cert"]
        mtasts.wait_served = self._orig["wait_served"]


def sender_valid(env: dict[str, str], domain: str) -> bool:
    """mta-sts-query as a sender: VALID (through the stack's resolver, the Pebble root as the only trust)."""
    run_env = {**os.environ, "SSL_CERT_FILE": env["MAILPLANE_ACME_ROOT"]}
    cmd = [str(REPO / "infra/local/with-resolver"), str(REPO / ".venv/bin/mta-sts-query"), domain]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=run_env, check=False)
    return "STSFetchResult.VALID" in done.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--domains", type=int, default=10)
    ap.add_argument("--baseline", type=int, default=3, help="domains created with serving off, for comparison")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    env = {**load_stack_env(), **os.environ}  # the stack's env.sh, so that it runs without sourcing it too
    base = Settings.load(env["MAILPLANE_CONFIG"], env)
    settings = serving(base, env)
    ports, plain = build_ports(settings), build_ports(base)
    tag = uuid.uuid4().hex[:6]
    served = [f"sts{tag}{i}.test" for i in range(args.domains)]
    baseline = [f"bas{tag}{i}.test" for i in range(args.baseline)]
    subprocess.run([str(REPO / "infra/local/zone-add"), *served, *baseline], check=True, capture_output=True)
    print(f"mta-sts bench: {args.domains} served + {args.baseline} baseline domains (load {load()})")
    fetchable: list[float] = []
    published: list[float] = []
    certs: list[float] = []
    base_times: list[float] = []
    statuses: dict[str, int] = {}
    for d in served:
        with Marks() as m:
            t0 = time.perf_counter()
            st = handle(event(d), ports)
            t1 = time.perf_counter()
        statuses[st] = statuses.get(st, 0) + 1
        published.append(t1 - t0)
        if m.served_at is not None:
            fetchable.append(m.served_at - t0)
        certs += m.cert
    for d in baseline:
        t0 = time.perf_counter()
        handle(event(d), plain)
        base_times.append(time.perf_counter() - t0)
    valid = sum(sender_valid(env, d) for d in served)
    show("ACME order + delivery (mta-sts.<domain>, DNS-01)", certs)
    show("event -> policy fetchable by a sender", fetchable)
    show("event -> _mta-sts published (handler done)", published)
    show("baseline: domain.created, serving off", base_times)
    print(f"statuses {statuses}; mta-sts-query VALID for {valid} of {len(served)}")
    if args.json:
        out = {
            "statuses": statuses,
            "valid": valid,
            "cert": certs,
            "fetchable": fetchable,
            "published": published,
            "baseline": base_times,
            "load": load(),
        }
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
