"""The one loader for event files (`mailplane publish FILE`, `invoke -e FILE`, `plan FILE`).

A file is read as bytes (at most ``MAX_BODY`` + 1 of them, so ``/dev/zero`` or a huge file cannot exhaust memory)
and validated by ``envelope.parse`` exactly as the worker will validate it: an event the worker would refuse is
refused here, before any system or the broker is contacted, and ``publish`` sends the file's bytes unchanged (the
worker parses what the operator checked, not a re-serialisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from functions._core.platform.envelope import MAX_BODY, Envelope, parse
from functions._core.platform.errors import EventInvalid

__all__ = ["EventFile", "load"]


@dataclass(frozen=True)
class EventFile:
    """An event file's bytes and the event they hold (validated, normalised; ``publisher`` unset)."""

    body: bytes
    event: Envelope


def load(path: Path) -> EventFile:
    """Read and validate the CloudEvent in ``path``.

    Raises:
        EventInvalid: the file cannot be read, or holds no valid event (the reason names the file).
    """
    try:
        with path.open("rb") as handle:
            body = handle.read(MAX_BODY + 1)
    except OSError as exc:
        raise EventInvalid(f"{path}: cannot read the event file ({exc.strerror or type(exc).__name__})") from None
    if len(body) > MAX_BODY:
        raise EventInvalid(f"{path}: body: larger than the limit of {MAX_BODY} bytes")
    try:
        return EventFile(body, parse(body))
    except EventInvalid as exc:
        raise EventInvalid(f"{path}: {exc}") from None
