"""Real mail on the local stack's mail plane (docs/mail-plane.md), for the demo, the stack tests and the benchmark:
send through the internet's sender MTA or moo's submission port, find messages in Maildirs by a header set here,
read the receiver's verdicts.

Nothing here asks mailplane's own state: the path of a message is read from the Received headers the real Postfix
instances wrote, the SPF/DKIM/DMARC verdicts from the Authentication-Results header of the receiver's rspamd.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
import smtplib
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import httpx

TAG = "X-Mailplane-Test"
RECEIVER_AUTHSERV = "mx.inbox.test"


@dataclass(frozen=True)
class Delivered:
    tag: str
    path: Path
    headers: email.message.Message

    @property
    def received(self) -> list[str]:
        return [" ".join(str(h).split()) for h in self.headers.get_all("Received", [])]

    def hops(self) -> list[str]:
        """The ``by`` hosts of the Received headers, the last hop first."""
        return [m.group(1) for r in self.received if (m := re.search(r"\bby (\S+)", r))]

    def verdicts(self) -> dict[str, str]:
        """The receiver's Authentication-Results: {"spf": "pass", "dkim": "pass", "dkim.d": ..., "dkim.s": ..., ...}."""
        for raw in self.headers.get_all("Authentication-Results", []):
            text = " ".join(str(raw).split())
            if not text.startswith(RECEIVER_AUTHSERV + ";"):
                continue
            out: dict[str, str] = {}
            for part in text.split(";")[1:]:
                m = re.match(r"\s*(spf|dkim|dmarc)=(\w+)", part)
                if m:
                    out[m.group(1)] = m.group(2)
                    for key, value in re.findall(r"header\.([ds])=(\S+)", part):
                        out[f"{m.group(1)}.{key}"] = value
            return out
        return {}


def message(sender: str, rcpt: str, subject: str) -> tuple[str, EmailMessage]:
    tag = uuid.uuid4().hex
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"], msg[TAG] = sender, rcpt, subject, tag
    msg["Message-ID"] = f"<{tag}@{sender.rpartition('@')[2]}>"
    msg.set_content(f"{subject}\n")
    return tag, msg


def send(hostport: str, msg: EmailMessage) -> None:
    host, _, port = hostport.rpartition(":")
    with smtplib.SMTP(host, int(port), timeout=10) as s:
        s.send_message(msg)


def scan(maildir: Path, seen: dict[Path, Delivered | None] | None = None) -> dict[str, Delivered]:
    """Every message of a Maildir (new/ and cur/) that carries our tag header. ``seen``: the files read before (and
    what they held), kept by the caller between polls: a delivered file never changes, so only new ones are read."""
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    seen = {} if seen is None else seen
    for sub in ("new", "cur"):
        folder = maildir / sub
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path in seen:
                continue
            try:
                headers = parser.parsebytes(path.read_bytes())
            except OSError:
                continue
            tag = headers.get(TAG)
            seen[path] = Delivered(str(tag), path, headers) if tag else None
    return {d.tag: d for d in seen.values() if d is not None}


def wait_for(maildir: Path, tags: set[str], timeout: float) -> dict[str, Delivered]:
    """The messages with ``tags`` once all are in ``maildir``; whatever arrived when the timeout ends."""
    deadline, seen = time.monotonic() + timeout, dict[Path, Delivered | None]()
    while True:
        got = {t: d for t, d in scan(maildir, seen).items() if t in tags}
        if len(got) == len(tags) or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def mailbox_dir(env: Mapping[str, str], address: str) -> Path:
    local, _, domain = address.partition("@")
    return Path(env["MAILPLANE_MAIL_DIR"]) / "moo/vmail" / domain / local


def add_mailbox(env: Mapping[str, str], address: str) -> None:
    """Create a mailbox through the Mailcow API, as the customer would in Mailcow's UI (mailplane manages none)."""
    local, _, domain = address.partition("@")
    password = uuid.uuid4().hex + "-Aa1"
    body = {"local_part": local, "domain": domain, "name": local, "password": password, "password2": password}
    ctx = ssl.create_default_context(cafile=env["MAILPLANE_SIM_CA"])
    with httpx.Client(base_url=env["MAILPLANE_MAILCOW_URL"], verify=ctx, timeout=10) as c:
        r = c.post(
            "/api/v1/add/mailbox",
            json={**body, "quota": "0", "active": "1"},
            headers={"X-API-Key": env["MAILPLANE_MAILCOW_API_KEY"]},
        )
    r.raise_for_status()
    if "mailbox_added" not in r.text and "object_exists" not in r.text:
        raise RuntimeError(f"Mailcow did not add the mailbox {address}: {r.text[:200]}")


class Flow:
    """``send(subject)`` (returning the message's tag) at ``rate`` per second in a thread until ``stop()``: the
    continuous mail of the rotation and node tests and the benchmark. A refused submission is kept in ``errors``."""

    def __init__(self, send: Callable[[str], str], rate: float = 2.0) -> None:
        self._send, self._period = send, 1.0 / rate
        self.tags: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                self.tags.append(self._send(f"flow {n}"))
            except (OSError, smtplib.SMTPException) as exc:
                self.errors.append(f"{n}: {exc}")
            self._stop.wait(self._period)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(15)
        return self.tags


def rcpt(hostport: str, address: str, source: str = "127.0.0.2") -> tuple[int, str]:
    """RCPT TO:<address> at a node from an untrusted address (the answer a sender on the internet gets)."""
    host, _, port = hostport.rpartition(":")
    with smtplib.SMTP(host, int(port), timeout=10, source_address=(source, 0)) as s:
        s.ehlo("probe.sender.test")
        s.mail("")
        code, text = s.rcpt(address)
        return code, text.decode(errors="replace")


def gateway(d: Delivered, nodes: tuple[str, ...]) -> str:
    """The PMG node a message passed (the ``by`` of the Received header it wrote); "" if none."""
    return next((h for h in d.hops() if h in nodes), "")


def roundtrip(env: Mapping[str, str], domain: str, nodes: tuple[str, ...], timeout: float = 30) -> list[str]:
    """The demo's two messages: internet -> postmaster@domain (a Mailcow mailbox, created here), and that mailbox ->
    the internet's receiver. Returns the report lines; raises RuntimeError when one is not delivered in time."""
    box = f"postmaster@{domain}"
    add_mailbox(env, box)
    lines = []
    tag, msg = message("alice@mta.sender.test", box, "mailplane demo: inbound")
    send(env["MAILPLANE_SENDER_SMTP"], msg)
    got = wait_for(mailbox_dir(env, box), {tag}, timeout)
    if tag not in got:
        raise RuntimeError(f"inbound message to {box} not delivered within {timeout:.0f} s")
    lines.append(f"in:  alice@mta.sender.test -> {box}: via {gateway(got[tag], nodes)} to moo, {got[tag].path}")
    tag, msg = message(box, f"bob@{env['MAILPLANE_RECEIVER_DOMAIN']}", "mailplane demo: outbound")
    send(env["MAILPLANE_MOO_SUBMISSION"], msg)
    got = wait_for(Path(env["MAILPLANE_RECEIVER_MAILDIR"]), {tag}, timeout)
    if tag not in got:
        raise RuntimeError(f"outbound message from {box} not delivered within {timeout:.0f} s")
    d = got[tag]
    lines.append(f"out: {box} -> bob@{env['MAILPLANE_RECEIVER_DOMAIN']}: via {gateway(d, nodes)}, {d.path}")
    results = [" ".join(str(h).split()) for h in d.headers.get_all("Authentication-Results", [])]
    lines += [f"     Authentication-Results: {r}" for r in results if r.startswith(RECEIVER_AUTHSERV)]
    v = d.verdicts()
    if (v.get("spf"), v.get("dkim"), v.get("dmarc")) != ("pass", "pass", "pass"):
        raise RuntimeError(f"outbound message from {box} did not pass SPF, DKIM and DMARC: {v}")
    return lines
