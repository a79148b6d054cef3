"""benchmarks/bench_due.py at a small size, so that it cannot rot (no stack needed; no timing assertions)."""

from __future__ import annotations

from benchmarks import bench_due


def test_bench_due_small_size_produces_every_figure() -> None:
    r = bench_due.run(400)
    assert r["index"]["due"] == r["full"]["due"] > 0  # the index finds what the full scan finds
    assert r["full"]["states_read"] == 400 and 0 < r["index"]["states_read"] < 400
    assert all(r[m]["seconds"] >= 0 and r[m]["rss_mb"] > 0 for m in ("index", "full"))
