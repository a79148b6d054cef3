"""The benchmark suite at its small size, so that it cannot rot: it runs end to end on the local stack, tears its
sandbox down, and produces every figure. No timing assertions: figures depend on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]

SYSTEMS = ("mailcow", "pmg", "dns", "s3")


@pytest.fixture(scope="module")
def suite(stack_env: dict[str, str], repo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "figures.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), str(repo / "infra/local")])}
    cmd = [sys.executable, "-m", "benchmarks", "--size", "small", "--json", str(out)]
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=840)
    assert done.returncode == 0, done.stderr[-3000:]
    figures: dict[str, Any] = json.loads(out.read_text())
    figures["table"] = done.stdout
    return figures


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and value >= 0


def test_no_benchmark_failed(suite: dict[str, Any]) -> None:
    assert suite["errors"] == {}
    assert suite["machine"]["nproc"] and suite["machine"]["python"]


def test_throughput_baseline_and_stack_limit(suite: dict[str, Any]) -> None:
    t = suite["throughput"]
    assert t["mailplane"]["done"] == t["mailplane"]["events"] == suite["config"]["domains"]
    assert _number(t["mailplane"]["rate"]) and _number(t["baseline"]["rate"])
    assert t["baseline"]["domains"] == suite["config"]["baseline"]
    assert set(suite["capacity"]) == set(SYSTEMS)
    assert all(_number(c["calls_per_s"]) and c["calls_per_domain"] > 0 for c in suite["capacity"].values())
    assert all(t["baseline"]["per_domain"][s] > 0 and s in t["mailplane"]["calls"] for s in SYSTEMS)


def test_replay_figures(suite: dict[str, Any]) -> None:
    replay = suite["throughput"]["replay"]
    assert replay["done"] == replay["events"]
    assert set(replay["calls"]) == set(SYSTEMS)
    assert all({"read", "write"} <= set(replay["calls"][s]) for s in SYSTEMS)


def test_calls_per_event_per_type(suite: dict[str, Any]) -> None:
    scenarios = suite["calls"]["scenarios"]
    assert "domain.created (new hosted domain)" in scenarios
    for name, sc in scenarios.items():
        if "skipped" in sc:
            continue
        assert sc["verdicts"] == {"done": sc["events"]}, name
        assert sc["minimum"] is not None and set(sc["calls"]) == set(SYSTEMS), name


def test_runtime_overhead_memory_and_failover(suite: dict[str, Any]) -> None:
    o = suite["overhead"]
    assert _number(o["throughput"]["rate"]) and _number(o["raw_throughput"]["rate"])
    for key in ("p50_ms", "p99_ms", "in_worker_p50_ms", "in_worker_p99_ms"):
        assert _number(o["latency"][key]), key
    assert _number(o["latency"]["raw_p99_ms"]) and _number(o["with_ledger"]["rate"])
    m = suite["memory"]
    assert m["done"] >= m["backlog"] and _number(m["peak_rss_mib"])
    f = suite["failover"]
    assert _number(f["withdrawal"]["p50_ms"]) and _number(f["withdrawal"]["p99_ms"]), f.get("output")


def test_table_lists_every_goal(suite: dict[str, Any]) -> None:
    table = suite["table"]
    for figure in (
        "ratio mailplane / baseline",
        "share of the stack limit",
        "writes per event",
        "reads per event",
        "no-op events/s",
        "delivery -> ack",
        "node.down",
        "peak RSS",
        "minimum",
    ):
        assert figure in table, figure
