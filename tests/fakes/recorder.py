"""A proxy that records every port call, so tests can count reads and writes per system."""

from __future__ import annotations

from typing import Any

READ_PREFIXES = ("get", "list", "etags", "read", "query", "resolve", "servers", "serial", "hosts_zone", "cluster_nodes")


class Recorder:
    """Wraps a port; ``calls`` lists method names in call order."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return attr(*args, **kwargs)

        return call

    @property
    def writes(self) -> list[str]:
        return [c for c in self.calls if not c.startswith(READ_PREFIXES)]

    @property
    def reads(self) -> list[str]:
        return [c for c in self.calls if c.startswith(READ_PREFIXES)]

    def reset(self) -> None:
        self.calls.clear()


def writes_of(*recorders: Recorder) -> dict[str, list[str]]:
    return {type(r._target).__name__: r.writes for r in recorders}
