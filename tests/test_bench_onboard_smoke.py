"""benchmarks/bench_onboard.py (bulk onboarding) and bench_cpu.py at a small size on the local stack, so that they
cannot rot. Asserts what a user relies on (every domain provisioned and accepted by every PMG node, none parked;
both sides of the CPU comparison complete), never timing: figures depend on the machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]


def _run(repo: Path, module: str, out: Path, *args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), str(repo / "infra/local")])}
    cmd = [sys.executable, "-m", module, *args, "--json", str(out)]
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=840)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_bulk_onboarding_of_20_provisions_all_and_parks_none(
    stack_env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    r = _run(repo, "benchmarks.bench_onboard", tmp_path / "onboard.json", "--domains", "20", "--pool", "8")
    assert r["done"] == 20 and r["statuses"] == {"provisioned": 20}
    assert r["parked"] == 0 and r["rcpt_refused"] == 0  # every relay domain effective on every node's postfix
    assert r["pmg_writes_per_domain"] >= 2 and all(v > 0 for v in r["pmg_master_ceiling_domains_per_s"].values())
    assert r["cpu_ms_per_event"]["mailplane workers"] > 0


def test_cpu_before_after_runs_every_side(stack_env: dict[str, str], repo: Path, tmp_path: Path) -> None:
    r = _run(repo, "benchmarks.bench_cpu", tmp_path / "cpu.json", "--domains", "6", "--pool", "4")
    before, pool, after = r["runs"]
    assert (before["side"], pool["side"], after["side"]) == ("before", "pool", "after")
    assert before["done"] == pool["done"] == after["done"] == 6
    assert pool["refill"]["keys"] >= 6 and after["refill"]["keys"] >= 6 and after["worker_cpu_ms_per_event"] > 0
