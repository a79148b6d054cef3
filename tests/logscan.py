"""No secret in any log line of the suite: a handler that checks every log record emitted in-process during the run.

tests/conftest.py installs one ``SecretScan`` on the root logger (and on ``mailplane.outcome``, which stops
propagating once ``setup_logging`` ran) for the whole session, with the root level at INFO (what a worker logs in
production), and fails the run at its end if any line held a secret: a value of the stack's env file or of the unit
tests' placeholder secrets (API keys, passwords, TSIG, the key-encryption key), or a PEM private-key marker. Lines
are checked as they are emitted and only violations are kept (logger name and what matched, never the value).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|API_KEY|KEK|TOKEN")
MIN_SECRET_LEN = 8  # shorter values ("test" for LocalStack) are placeholders that appear in ordinary text


def secret_values(*envs: Mapping[str, str]) -> dict[str, str]:
    """name -> value of every secret-looking variable (by name) long enough to be recognised in text."""
    out: dict[str, str] = {}
    for env in envs:
        for name, value in env.items():
            if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LEN:
                out[name] = value
    return out


class SecretScan(logging.Handler):
    """Checks each record's message (and exception text) for the given secrets and for PEM private keys."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        super().__init__(level=logging.NOTSET)
        self.secrets = dict(secrets)
        self.found: list[str] = []
        self.checked = 0

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "_secret_scanned", False):  # a record reaching two of our loggers is checked once
            return
        record._secret_scanned = True
        self.checked += 1
        try:
            text = record.getMessage()
        except Exception:  # a malformed record is logging's problem, not a leak
            return
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        for what in self.matches(text):
            self.found.append(f"{record.name} ({record.levelname}): {what}")

    def matches(self, text: str) -> Iterable[str]:
        if PEM_PRIVATE.search(text):
            yield "a PEM private key"
        for name, value in self.secrets.items():
            if value in text:
                yield f"the value of {name}"
