"""SmtpProbe: the SmtpProbePort over smtplib, a sender's session with one PMG node.

One session per check: banner, EHLO (``smtp_probe.helo``), ``MAIL FROM:<>``, one ``RCPT TO`` per recipient,
``QUIT``; nothing is ever sent as DATA. The session comes from ``smtp_probe.source`` (a local address outside PMG's
trusted networks; "" = the system's choice) and reports the source address it really used, so every answer names
its vantage point (repeat it with ``swaks --from '<>' --to postmaster@DOMAIN --server HOST:PORT --local-interface
SOURCE --quit-after RCPT``).
"""

from __future__ import annotations

import smtplib

from functions._core.model.ports import SmtpAnswer
from functions._core.platform.config import SmtpProbeSettings


def split_target(target: str, default_port: int = 25) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``), port defaulting to 25."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or (":" in host and not host.startswith("[")):
        return target.strip("[]"), default_port
    return host.strip("[]"), int(port)


class SmtpProbe:
    """Implements SmtpProbePort; never raises for what the server does (the answer says it)."""

    def __init__(self, settings: SmtpProbeSettings) -> None:
        self._settings = settings

    def rcpt(self, target: str, recipients: tuple[str, ...]) -> SmtpAnswer:
        s = self._settings
        host, port = split_target(target)
        source = s.source or ""
        try:
            with smtplib.SMTP(
                timeout=s.timeout, local_hostname=s.helo, source_address=(source, 0) if source else None
            ) as session:
                session.connect(host, port)
                if session.sock is not None:
                    source = str(session.sock.getsockname()[0])
                session.ehlo_or_helo_if_needed()
                code, text = session.mail("")
                if code != 250:
                    return SmtpAnswer(target, source, (), f"MAIL FROM:<> refused: {code} {_text(text)}")
                replies = tuple((c, _text(t)) for c, t in (session.rcpt(r) for r in recipients))
                return SmtpAnswer(target, source, replies)
        except (OSError, smtplib.SMTPException) as exc:
            return SmtpAnswer(target, source, (), f"{type(exc).__name__}: {exc}"[:300])


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").replace("\n", " ")[:500]
