"""moo's mail plane: a real Postfix taking mail for what the Mailcow simulator has, and Redis for its DKIM signer.

Mailcow's Postfix reads its tables from MySQL (domains, mailboxes, aliases, sender-dependent relayhosts); here the
same rows are rendered into hash maps of a real Postfix (``sim.mta``) after every change through the API:

- ``domains``: active domains (``virtual_mailbox_domains``);
- ``mailboxes``: active mailboxes -> ``<domain>/<local part>/`` Maildirs under ``<root>/vmail``;
- ``aliases``: active aliases -> their ``goto`` (``virtual_alias_maps``);
- ``relayhosts``: ``@domain`` -> the hostname of the domain's active relayhost (``sender_dependent_relayhost_maps``,
  as Mailcow's ``mysql_sender_dependent_relayhost_maps``); a domain without one sends directly by MX.

Port 25 takes mail from the PMG nodes (and anyone) for those domains; port 587 stands in for authenticated
submission (clients on 127.0.0.1 only: Mailcow asks SASL) and passes every message through rspamd, which signs from
Redis in Mailcow's layout (``DKIM_SELECTORS`` domain -> selector, ``DKIM_PRIV_KEYS`` selector.domain -> PEM): the
simulator's DKIM hashes are written to that Redis as the API changes them.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sim.mta import Postfix, user_ids

if TYPE_CHECKING:
    from sim.mailcow.model import MailcowModel

MAPS = ("domains", "mailboxes", "aliases", "relayhosts")
DKIM_REDIS = ("DKIM_SELECTORS", "DKIM_PRIV_KEYS", "DKIM_PUB_KEYS")


def moo_instance(root: Path, address: str, hostname: str, milter: str, fallback: str = "") -> Postfix:
    """``fallback``: main.cf ``relayhost`` (Mailcow's data/conf/postfix/extra.cf, the operator's own setting): where
    mail of a domain without an active relayhost goes; Postfix tries the listed destinations in order."""
    uid, gid = user_ids("nobody")
    etc = root / "etc"
    return Postfix(
        root,
        address,
        hostname,
        main={
            "virtual_mailbox_domains": f"hash:{etc}/domains",
            "virtual_mailbox_maps": f"hash:{etc}/mailboxes",
            "virtual_alias_maps": f"hash:{etc}/aliases",
            "virtual_mailbox_base": str(root / "vmail"),
            "virtual_uid_maps": f"static:{uid}",
            "virtual_gid_maps": f"static:{gid}",
            "sender_dependent_relayhost_maps": f"hash:{etc}/relayhosts",
            "relayhost": fallback,
            "milter_default_action": "tempfail",  # rspamd unreachable: no unsigned mail leaves
        },
        services=[
            f"{address}:587 inet n - n - - smtpd -o smtpd_milters=inet:{milter} "
            "-o smtpd_recipient_restrictions=permit_mynetworks,reject"
        ],
        maps=MAPS,
        mail_dirs=["vmail"],
    )


def render(model: MailcowModel) -> dict[str, str]:
    """The four maps from the model's rows (call with the model's lock held)."""
    active = {d for d, row in model.domains.items() if row.active}
    boxes = [m for m in model.mailboxes.values() if m.active and m.domain in active]
    aliases = [
        a for a in model.aliases.values() if a.active and a.domain in active and a.address not in model.mailboxes
    ]
    relay = {}
    for d in sorted(active):
        rid = model.domains[d].relayhost
        host = model.relayhosts.get(int(rid)) if rid.isdigit() else None
        if host is not None and host.active:
            relay[d] = host.hostname
    return {
        "domains": "".join(f"{d} OK\n" for d in sorted(active)),
        "mailboxes": "".join(
            f"{m.username} {m.domain}/{m.local_part}/\n" for m in sorted(boxes, key=lambda m: m.username)
        ),
        "aliases": "".join(
            f"{a.address} {a.goto.replace(' ', '')}\n" for a in sorted(aliases, key=lambda a: a.address)
        ),
        "relayhosts": "".join(f"@{d} {h}\n" for d, h in relay.items()),
    }


class Redis:
    """Just enough RESP for HSET/HDEL/DEL (no dependency for a test double's mirror)."""

    def __init__(self, host: str, port: int) -> None:
        self.addr = (host, port)
        self._sock: socket.socket | None = None

    def command(self, *args: str) -> bytes:
        if self._sock is None:
            self._sock = socket.create_connection(self.addr, timeout=5)
        data = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
        )
        try:
            self._sock.sendall(data)
            reply = self._sock.recv(65536)
        except OSError:
            self._sock.close()
            self._sock = None
            raise
        if reply.startswith(b"-"):
            raise OSError(f"redis: {reply.decode(errors='replace').strip()}")
        return reply


class MooMail:
    """Keeps moo's Postfix maps and Redis equal to the model, re-rendered shortly after each change."""

    def __init__(self, model: MailcowModel, postfix: Postfix, redis: Redis) -> None:
        self.model, self.postfix, self.redis = model, postfix, redis
        self.node, self.server_address = "moo", ("postfix", 0)
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._maps: dict[str, str] = {}
        self._dkim: dict[str, dict[str, str]] = {name: {} for name in DKIM_REDIS}
        postfix.setup()
        for name in DKIM_REDIS:
            redis.command("DEL", name)
        self.sync()
        postfix.start()
        model.listeners.append(self._changed.set)
        threading.Thread(target=self._run, name="moo-mail", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._changed.wait(0.5):
                self._changed.clear()
                time.sleep(0.02)  # a burst of writes renders once
                try:
                    self.sync()
                except OSError as exc:  # Redis restarting: the next change (or tick) tries again
                    print(f"moo-mail: {exc}", flush=True)
                    self._changed.set()

    def sync(self) -> None:
        with self.model.lock:
            maps = render(self.model)
            dkim = {name: dict(self.model.redis[name]) for name in DKIM_REDIS}
        for name, old in self._dkim.items():
            new = dkim[name]
            for key in new.keys() - old.keys() | {k for k in new.keys() & old.keys() if new[k] != old[k]}:
                self.redis.command("HSET", name, key, new[key])
            for key in old.keys() - new.keys():
                self.redis.command("HDEL", name, key)
            self._dkim[name] = new
        changed = [name for name in MAPS if self._maps.get(name) != maps[name]]
        for name in changed:
            self.postfix.write_map(name, maps[name])
            self.postfix.postmap(name)
            self._maps[name] = maps[name]
        if changed:
            self.postfix.reload()  # hash maps are re-read when their .db changes, but only in whole seconds

    def shutdown(self) -> None:
        self._stop.set()
        self.postfix.stop()

    def server_close(self) -> None:
        pass
