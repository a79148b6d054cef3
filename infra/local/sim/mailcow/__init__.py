"""Mailcow simulator: ``model`` holds the state and every quirk of reference/mailcow.md; ``app`` is the HTTP front-end.

The in-process fake (tests/fakes/mailcow.py) and the HTTPS simulator (``python -m sim.serve mailcow``) are the same
model behind the same app: one model, two front-ends.
"""

from __future__ import annotations

from sim.mailcow.app import HangupError, MailcowApp
from sim.mailcow.model import MailcowModel

__all__ = ["HangupError", "MailcowApp", "MailcowModel"]
