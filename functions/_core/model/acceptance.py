"""The acceptance gate: does the mail platform accept mail for a domain, as a sender sees it?

Besides the DNS gate (verify.py), a domain counts as provisioned only when every PMG node's SMTP service accepts
``RCPT TO:<postmaster@DOMAIN>`` (the relay domain is effective in that node's postfix, after the cluster sync and
PMG's postmap) and Mailcow has the domain active and webmail-ready. Answers are read as a sender reads them:

- ``554 5.7.1 ... Relay access denied``: the relay domain is not effective on that node;
- ``250``/``251``, a greylisting ``450`` (PMG greylists by default) or a recipient-verification ``550 5.1.1 ...
  user unknown``: the domain is relayed there;
- anything else (no session, other 4xx/5xx): not proven.

A probe from inside PMG's trusted networks proves nothing (permit_mynetworks accepts any recipient), so each
session also asks for ``postmaster@`` a name under ``.invalid``: a node that accepts that one trusts the probe's
source address, and its answer is not counted. Every check names the node, the address probed and the source.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from functions._core.model.nodes import short
from functions._core.model.ports import Ports, SmtpAnswer
from functions._core.model.webmail import Webmail
from functions._core.platform.errors import ConfigError, PmgRejected, PmgUnavailable

log = logging.getLogger(__name__)

CONTROL = "postmaster@relay-check.mailplane.invalid"  # no PMG relays .invalid: accepting it means "trusted source"


@dataclass(frozen=True)
class Acceptance:
    """One check of the gate: a PMG node's SMTP answer, or Mailcow's domain state."""

    node: str  # mx host name, or "mailcow"
    check: str  # "smtp rcpt" | "mailcow domain active" | "mailcow webmail ready"
    ok: bool
    answer: str  # what was observed, e.g. "450 4.7.1 <postmaster@a.test>: ..." or "inactive"
    source: str = ""  # local address the SMTP probe came from
    target: str = ""  # host:port probed

    def describe(self) -> str:
        where = f" {self.target} from {self.source}" if self.target else ""
        return f"{self.node}: {self.check}{where}: {self.answer}"

    def as_json(self) -> dict[str, str | bool]:
        return {k: v for k, v in self.__dict__.items() if v != ""}


def relayed(code: int, text: str) -> bool:
    """Whether a RCPT reply shows the domain is relayed (see the module docstring)."""
    if code in (250, 251):
        return True
    if code == 450:
        return True  # greylisting (or another deferral after the relay check passed)
    return code == 550 and (text.startswith("5.1.1") or "user unknown" in text.lower())


def read_answer(node: str, domain: str, answer: SmtpAnswer) -> Acceptance:
    """The verdict on one node's session (``answer`` holds the replies to the domain's and the control RCPT)."""
    base = {"node": node, "check": "smtp rcpt", "source": answer.source, "target": answer.target}
    if answer.error or len(answer.replies) < 2:
        return Acceptance(ok=False, answer=f"no SMTP answer ({answer.error or 'session ended early'})", **base)
    (code, text), (control_code, _) = answer.replies[0], answer.replies[1]
    reply = f"{code} {text}"
    if control_code in (250, 251):
        why = f"{reply}; but {CONTROL} got {control_code}: the source {answer.source} is trusted (permit_mynetworks)"
        return Acceptance(ok=False, answer=why + ", which proves nothing", **base)
    return Acceptance(ok=relayed(code, text), answer=reply, **base)


def require_probe(ports: Ports) -> None:
    """Refuse, before anything is written, to provision without the SMTP probe the gate needs.

    Raises:
        ConfigError: no SMTP probe is configured.
    """
    if ports.smtp is None:
        raise ConfigError("no SMTP probe configured: the acceptance gate cannot ask the PMG nodes")


def smtp_checks(ports: Ports, domain: str) -> list[Acceptance]:
    """RCPT TO:<postmaster@domain> on every PMG node (``MxHost.smtp``, default ``<name>:25``).

    Raises:
        ConfigError: no SMTP probe is configured.
    """
    require_probe(ports)
    assert ports.smtp is not None
    out = []
    for host in ports.settings.provider.mx_hosts:
        answer = ports.smtp.rcpt(host.smtp or f"{host.name}:25", (f"postmaster@{domain}", CONTROL))
        out.append(read_answer(host.name, domain, answer))
    return out


def mailcow_checks(ports: Ports, domain: str, web: Webmail) -> list[Acceptance]:
    """Mailcow has the domain, active, and webmail-ready (``web``: functions/_core/model/webmail.py's step)."""
    have = ports.mail.get_domain(domain)
    active = have is not None and have.active
    out = [Acceptance("mailcow", "mailcow domain active", active, "active" if active else "absent or inactive")]
    out.append(Acceptance("mailcow", "mailcow webmail ready", web.ready, "ready" if web.ready else web.waiting))
    return out


def gate(ports: Ports, domain: str, web: Webmail) -> list[Acceptance]:
    """Every check of the acceptance gate, passing or not (``web``: this attempt's SOGo readiness step)."""
    return [*smtp_checks(ports, domain), *mailcow_checks(ports, domain, web)]


def relay_refused(checks: Iterable[Acceptance]) -> list[str]:
    """The MX hosts whose postfix answered the domain's RCPT with "Relay access denied" (it answers, but from maps
    without the domain): the ones a reload can help; a node that does not answer is not among them."""
    return [c.node for c in checks if c.check == "smtp rcpt" and not c.ok and c.answer.startswith("554 5.7.1")]


def reload_postfix(ports: Ports, hosts: Iterable[str]) -> list[str]:
    """``postfix reload`` on each MX host (``pmg1.faster.cz`` -> node ``pmg1``): its daemons re-read the relay-domain
    map at once instead of answering from the one they opened before the last postmap. Best effort: a node that
    refuses or does not answer is logged and left to restart its daemons by itself. Returns the nodes reloaded."""
    done = []
    for host in hosts:
        node = short(host)
        try:
            ports.gateway.reload_postfix(node)
        except (PmgUnavailable, PmgRejected) as exc:
            log.warning("postfix reload on %s failed: %s", node, exc)
            continue
        done.append(node)
    return done


def reload_where_refused(ports: Ports, domain: str) -> list[str]:
    """Ask every MX host for ``domain`` once and reload Postfix where it answers "Relay access denied" (a zone hosted
    elsewhere, activated by key.rotate: no gate waits for it). Best effort, never raises for a refusal: a node that
    has not synced the domain yet still refuses after this. Returns the nodes reloaded; none without an SMTP probe."""
    if ports.smtp is None:
        return []
    return reload_postfix(ports, relay_refused(smtp_checks(ports, domain)))
