"""Endpoints and credentials of the local stack, read from the env file that infra/local/up writes."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stack_dir() -> Path:
    return Path(os.environ.get("MAILPLANE_STACK_DIR", str(REPO / ".stack")))


def load_stack_env() -> dict[str, str]:
    """Parse ``$STACK_DIR/env.sh`` (lines ``export NAME=value``, shell-quoted).

    Raises:
        RuntimeError: the stack is not up (no env file).
    """
    path = stack_dir() / "env.sh"
    if not path.exists():
        raise RuntimeError(f"{path} is missing: start the local stack with infra/local/up")
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("export ") and "=" in line:
            name, _, value = line[len("export ") :].partition("=")
            parts = shlex.split(value)
            env[name] = parts[0] if parts else ""
    return env
