"""Broker restart in the middle of a chaos run: RabbitMQ is stopped (SIGTERM to the node, as infra/local/down does)
and started again with infra/local/up, while two workers process a mixed stream with the usual faults.

THIS RESTARTS THE SHARED LOCAL BROKER: every other user of the local stack sees a short outage. It runs only when
``MAILPLANE_CHAOS_BROKER_RESTART=1`` (or ``CI`` is set); select or exclude it with ``-m broker_restart``.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos.driver import Knobs, print_figures, restart_rabbitmq, run_chaos
from tests.chaos.harness import Slice

pytestmark = [pytest.mark.stack, pytest.mark.broker_restart]

ENABLED = os.environ.get("MAILPLANE_CHAOS_BROKER_RESTART") == "1" or bool(os.environ.get("CI"))
EVENTS = int(os.environ.get("MAILPLANE_CHAOS_RESTART_EVENTS", "300"))


@pytest.mark.skipif(not ENABLED, reason="restarts the shared RabbitMQ: set MAILPLANE_CHAOS_BROKER_RESTART=1")
@pytest.mark.timeout(600)
def test_broker_restart_mid_run_loses_nothing_and_processing_resumes_within_seconds(chaos_slice: Slice) -> None:
    knobs = Knobs(events=EVENTS, seed=11, waves=6, restart_broker=restart_rabbitmq(chaos_slice.stack_env))
    run = run_chaos(chaos_slice, knobs)
    print_figures(f"chaos run with a broker restart: {EVENTS} events", run.figures)
    f = run.figures
    assert run.report.problems == []
    assert f["lost"] == 0 and f["duplicated"] == 0
    assert f["worker exit codes after SIGTERM"] == [0, 0]
    assert f["processing again after the broker's return (s)"] < 10
