"""benchmarks/bench_grow.py at a small size, so that it cannot rot (no stack needed; no timing assertions)."""

from __future__ import annotations

from benchmarks import bench_grow


def test_bench_grow_small_size_produces_every_figure() -> None:
    r = bench_grow.run_fakes(120)
    assert r["halted"] == "" and r["written"] == {"provider": 3, "policies": 120, "mx": 120}
    assert r["plan"]["calls"]["dns.read_zone"] == 121  # one AXFR per zone plus the provider zone
    assert r["apply"]["calls"]["dns.apply"] == 1 + 2 * 120  # one UPDATE for the provider, two per zone
    assert r["replay_written"] == {} and r["replay_dns_updates"] == 0
    assert all(r[p]["seconds"] >= 0 and r[p]["cpu_s"] >= 0 for p in ("plan", "apply"))
