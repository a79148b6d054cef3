"""Fixtures of the chaos suite: one isolated slice of the stack per test (see harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import Redacted, Slice
from tests.stackenv import load_stack_env


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "broker_restart: stops and restarts the shared RabbitMQ (affects everyone using the local stack)"
    )


@pytest.fixture
def chaos_slice(tmp_path: Path) -> Iterator[Slice]:
    """A fresh vhost, own simulators, a SERVFAIL proxy and a provider zone; removed afterwards.

    The stack's environment is read here and wrapped at once, so no traceback ever prints its passwords.
    """
    try:
        env = Redacted(load_stack_env())
    except RuntimeError as exc:
        pytest.fail(str(exc))
    sl = Slice.open(env, tmp_path)
    try:
        yield sl
    finally:
        sl.close()
