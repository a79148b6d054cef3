"""benchmarks/bench_growth.py at a small size, so that it cannot rot (no stack; no timing assertions): a short
"year" with fast rotations, once without and once with the weekly sweep."""

from __future__ import annotations

from benchmarks import bench_growth


def test_bench_growth_small_size_produces_every_figure() -> None:
    r = bench_growth.run(3, 45, rotate_days=5)
    plain, swept = r["without_sweep"], r["weekly_sweep"]
    assert plain["rotations"] == swept["rotations"] >= 3  # the same year both times
    assert set(plain["events"]) == {"done"} and set(swept["events"]) == {"done"}
    ledger = plain["by_class"]["idem/"]["objects_per_domain"], swept["by_class"]["idem/"]["objects_per_domain"]
    assert ledger[1] < ledger[0]  # the sweep removed the expired ledger records
    assert swept["by_class"]["domains/"] == plain["by_class"]["domains/"]  # states are never swept
    assert swept["objects_per_domain"] < plain["objects_per_domain"] and swept["sweeps"] == 45 // 7
