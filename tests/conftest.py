"""Shared fixtures: sample events, the local stack's environment (for tests marked ``stack``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.stackenv import REPO, load_stack_env


def load_event(name: str) -> dict[str, Any]:
    """Load ``events/<name>.json`` as a dict."""
    data: dict[str, Any] = json.loads((REPO / "events" / f"{name}.json").read_text())
    return data


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    """The local stack's endpoints and credentials; fails (not skips) when the stack is down."""
    try:
        return load_stack_env()
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
