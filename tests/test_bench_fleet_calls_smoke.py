"""benchmarks/bench_fleet_calls.py at CI size: the calls per event do not grow with the fleet (issue 17, item 1).

A correctness property, not a timing: at two fleet sizes (PMG, Mailcow, the object store and BIND seeded directly),
every event type makes the same number of requests to each system, and none of them is a listing that grows with
the fleet (PMG map listings, Mailcow ``get/.../all`` of domains, store listings across domains). Bytes are printed
by the benchmark, not asserted (names and key material differ by a few bytes).
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import bench_fleet_calls
from benchmarks.harness import Sandbox

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]

SMALL, LARGE = 3, 60


@pytest.fixture(scope="module")
def figures(stack_env: dict[str, str]) -> dict[str, Any]:
    with Sandbox() as sb:
        return bench_fleet_calls.run(sb, (SMALL, LARGE), zones=LARGE, store=LARGE)


def test_every_event_type_is_handled_at_both_sizes(figures: dict[str, Any]) -> None:
    for size in (SMALL, LARGE):
        for event in bench_fleet_calls.EVENTS:
            sc = figures["per_size"][size][event]
            assert sc["verdicts"] == {"done": sc["events"]}, (size, event, sc["verdicts"])
    assert figures["fleet"][LARGE] == {"pmg": LARGE, "mailcow": LARGE, "store": LARGE, "zones": LARGE}


@pytest.mark.parametrize("event", bench_fleet_calls.EVENTS)
def test_calls_per_event_do_not_grow_with_the_fleet(figures: dict[str, Any], event: str) -> None:
    small, large = (figures["per_size"][s][event]["figures"] for s in (SMALL, LARGE))
    for system in bench_fleet_calls.SYSTEMS:
        # dns: an UPDATE's read-back polls the primary until it serves it (inline signing lags the UPDATE by
        # milliseconds), so one transfer round more or less is timing; growing with the fleet would be many more
        slack = 1 if system == "dns" else 0
        assert abs(large[system]["calls"] - small[system]["calls"]) <= slack, (event, system, small[system], large)
        assert abs(large[system]["listings"] - small[system]["listings"]) <= slack, (event, system)
        if system != "dns":  # dns: AXFRs of the event's own zone, counted apart
            assert large[system]["listings"] == 0, (event, system)
    assert sum(large[s]["calls"] for s in bench_fleet_calls.SYSTEMS) > 0


def test_the_table_shows_every_event_and_system(figures: dict[str, Any]) -> None:
    table = bench_fleet_calls.render(figures)
    for event in bench_fleet_calls.EVENTS:
        for system in bench_fleet_calls.SYSTEMS:
            assert f"| {event} | {system} |" in table
