"""benchmarks/bench_mtasts.py (issue 15) at the smallest size on the local stack, so that it cannot rot. Asserts what
a user relies on (the domain provisioned with its certificate, the policy fetchable before the TXT, mta-sts-query
VALID), never timing: figures depend on the machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]


def test_mtasts_benchmark_runs(stack_env: dict[str, str], repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "mtasts.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), str(repo / "infra/local")])}
    cmd = [sys.executable, "-m", "benchmarks.bench_mtasts", "--domains", "1", "--baseline", "1", "--json", str(out)]
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    r = json.loads(out.read_text())
    assert r["statuses"] == {"provisioned": 1} and r["valid"] == 1
    assert len(r["cert"]) == 1 and len(r["fetchable"]) == 1 and len(r["baseline"]) == 1
    assert r["fetchable"][0] < r["published"][0]  # the policy was fetchable before the TXT went out
