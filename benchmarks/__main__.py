"""``python -m benchmarks``: see benchmarks/suite.py."""

from __future__ import annotations

from benchmarks.suite import run

raise SystemExit(run())
