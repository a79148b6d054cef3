"""What a handler returns: the status, the changes per system, and the outbound events to publish."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Outcome:
    function: str
    event_id: str
    subject: str
    status: str
    changes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    emit: tuple[Mapping[str, Any], ...] = ()  # outbound CloudEvents (structured JSON dicts)
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def writes(self) -> int:
        return sum(len(v) for v in self.changes.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "event_id": self.event_id,
            "subject": self.subject,
            "status": self.status,
            "changes": {k: list(v) for k, v in self.changes.items()},
            "emit": [dict(e) for e in self.emit],
            "detail": dict(self.detail),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Outcome:
        """Rebuild an Outcome stored by the idempotency ledger."""
        return cls(
            d["function"],
            d["event_id"],
            d["subject"],
            d["status"],
            {k: tuple(v) for k, v in d["changes"].items()},
            tuple(d["emit"]),
            d["detail"],
        )
