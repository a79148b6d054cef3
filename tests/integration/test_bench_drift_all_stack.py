"""benchmarks/bench_drift_all.py at a tiny size on the stack (BIND's bulk zone path, LocalStack S3), so that it
cannot rot: the bulk run finds exactly the drift seeded and matches the per-domain path (no timing assertions)."""

from __future__ import annotations

import pytest

from benchmarks import bench_drift_all

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]


def test_bench_drift_all_tiny_size(stack_env: dict[str, str]) -> None:
    r = bench_drift_all.run(60, 20)
    assert r["identical_on_sample"] is True and r["unexpected"] == 0
    assert r["summary"] == {"drift": r["drift_seeded"], "provisioned": 60 - r["drift_seeded"]}
    # both timed; rounded, so a quick zone load reads 0.0
    assert r["drift_seeded"] == 2 and r["bulk"]["seconds"] >= 0 and r["bind_zones_seconds"] >= 0
