"""benchmarks/bench_dns_gate.py (issue 14) at the smallest size on the local stack, so that it cannot rot. Asserts
what a user relies on (every domain provisioned through the gate on every server, the TLSA served everywhere, the
rollover ending with only the new key's TLSA), never timing: figures depend on the machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]


def test_dns_gate_benchmark_runs_every_part(stack_env: dict[str, str], repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "dns_gate.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), str(repo / "infra/local")])}
    args = ["--domains", "2", "--adopts", "1", "--rollovers", "1", "--tlsa-ttl", "1", "--json", str(out)]
    cmd = [sys.executable, "-m", "benchmarks.bench_dns_gate", *args]
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    r = json.loads(out.read_text())
    assert r["gate"]["statuses"] == {"provisioned": 2} and len(r["gate"]["times"]) == 2
    assert len(r["tlsa"]["times"]) == 1
    (run,) = r["rollover"]["runs"]
    assert [p[0] for p in run["phases"]][-1] == "VERIFIED->IDLE" and run["total"] > 0
