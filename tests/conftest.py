"""Shared fixtures: sample events, the local stack's environment (for tests marked ``stack``); the session-wide
secret scan of every log line (tests/logscan.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.settings import FAKE_ENV
from tests.logscan import SecretScan, secret_values
from tests.stackenv import REPO, load_stack_env

SCAN_LOGGERS = ("", "mailplane.outcome")  # root, and the outcome logger that stops propagating after setup_logging
NOISY = ("pika", "botocore", "urllib3", "httpx", "httpcore")
_scan: SecretScan | None = None


def load_event(name: str) -> dict[str, Any]:
    """Load ``events/<name>.json`` as a dict."""
    data: dict[str, Any] = json.loads((REPO / "events" / f"{name}.json").read_text())
    return data


def pytest_sessionstart(session: pytest.Session) -> None:
    """Install the secret scan on every log line of the run (root level INFO: what a worker logs in production)."""
    global _scan
    try:
        stack = load_stack_env()
    except RuntimeError:
        stack = {}
    _scan = SecretScan(secret_values(stack, FAKE_ENV))
    for name in SCAN_LOGGERS:
        logging.getLogger(name).addHandler(_scan)
    root = logging.getLogger()
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    for noisy in NOISY:  # as functions.runtime.main.setup_logging does in production
        logging.getLogger(noisy).setLevel(logging.WARNING)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when any log line held a secret (named, never shown)."""
    if _scan is None:
        return
    for name in SCAN_LOGGERS:
        logging.getLogger(name).removeHandler(_scan)
    if _scan.found:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"SECRET IN LOG: {f}" for f in dict.fromkeys(_scan.found)]
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line("\n".join(lines), red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
