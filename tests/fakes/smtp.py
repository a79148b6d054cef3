"""The in-process SMTP probe: answers each PMG node's RCPT from the simulator model's effective maps."""

from __future__ import annotations

from collections.abc import Mapping

from sim.pmg import PmgModel

from functions._core.model.ports import SmtpAnswer


class FakeSmtp:
    """SmtpProbePort over ``PmgModel.rcpt``: ``targets`` maps a probed host:port to the model's node name."""

    def __init__(self, model: PmgModel, targets: Mapping[str, str], source: str = "127.0.0.2") -> None:
        self.model, self.targets, self.source = model, dict(targets), source
        self.sessions: list[str] = []

    def rcpt(self, target: str, recipients: tuple[str, ...]) -> SmtpAnswer:
        self.sessions.append(target)
        node = self.targets.get(target)
        if node is None:
            return SmtpAnswer(target, self.source, (), "ConnectionRefusedError: nothing listens there")
        try:
            replies = tuple(self.model.rcpt(node, self.source, r) for r in recipients)
        except ConnectionRefusedError as exc:
            return SmtpAnswer(target, self.source, (), f"SMTPServerDisconnected: {exc}")
        return SmtpAnswer(target, self.source, replies)
