"""benchmarks/bench_mail.py (issue 13) at the smallest size on the local stack, so that it cannot rot: both domains
provisioned and their first message delivered by the real MTAs. The rotation part runs in
tests/integration/test_mail_stack.py already (not repeated here: it needs a minute of real time). Never timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.stack, pytest.mark.timeout(200)]


def test_mail_benchmark_delivers_every_first_message(stack_env: dict[str, str], repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "mail.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), str(repo / "infra/local")])}
    cmd = [sys.executable, "-m", "benchmarks.bench_mail", "--domains", "2", "--no-rotation", "--json", str(out)]
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    r = json.loads(out.read_text())
    assert r["statuses"] == {"provisioned": 2}
    assert len(r["total"]) == 2 and all(t > 0 for t in r["total"])  # both delivered (a lost one is left out)
    assert "rotation" not in r
