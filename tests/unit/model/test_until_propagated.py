"""The in-place propagation wait of the gate (functions/_core/model/verify.py ``until_propagated``)."""

from __future__ import annotations

import pytest

from functions._core.model.verify import until_propagated
from functions._core.platform.errors import NotPropagated


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


def test_asks_again_until_every_server_serves_it() -> None:
    t, answers = FakeTime(), iter([NotPropagated("ns3: serial 4 older than 5")] * 3)

    def check() -> str:
        err = next(answers, None)
        if err is not None:
            raise err
        return "ok"

    assert until_propagated(5.0, check, sleep=t.sleep, monotonic=t.monotonic) == "ok"
    assert 0 < t.now < 5.0


def test_a_server_that_never_catches_up_raises_after_the_wait() -> None:
    t, calls = FakeTime(), []

    def check() -> None:
        calls.append(t.now)
        raise NotPropagated(f"ns3 lags ({len(calls)})")

    with pytest.raises(NotPropagated, match="ns3 lags"):
        until_propagated(2.0, check, sleep=t.sleep, monotonic=t.monotonic)
    assert len(calls) > 2 and calls[-1] >= 2.0 and t.now == calls[-1]


def test_zero_wait_asks_once() -> None:
    t, calls = FakeTime(), []

    def check() -> None:
        calls.append(1)
        raise NotPropagated("lag")

    with pytest.raises(NotPropagated):
        until_propagated(0.0, check, sleep=t.sleep, monotonic=t.monotonic)
    assert calls == [1]
