"""Real Postfix instances of the local stack's mail plane: Debian's postfix, one configuration directory each.

Every instance is ``<root>/{etc,queue,data,log}`` started with ``postfix -c <root>/etc``: its own main.cf and master.cf
(written here, nothing taken from /etc/postfix), its own queue, its log in ``<root>/log/maillog`` (postlogd, no
syslog), listening on one loopback address (``inet_interfaces``; the address must be on ``lo``, infra/local/up adds
it) and sending from it (``smtp_bind_address``), so a receiver sees the right client address. Clients resolve
through the stack's caching resolver: the instance is started through ``infra/local/with-resolver`` and its
daemons inherit that view. No chroot, no local delivery.

Used by the PMG simulator (one instance per node: the maps PMG renders, the node's certificate), the Mailcow
simulator (moo: the domains, mailboxes and relayhosts Mailcow has) and ``python -m sim.mta`` (the stack's internet
sender and receiver, started by infra/local/up).
"""

from __future__ import annotations

import argparse
import os
import pwd
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
WITH_RESOLVER = REPO / "infra/local/with-resolver"

_MASTER = """\
{listen} inet n - n - - smtpd
{extra}pickup    unix  n - n 60   1 pickup
cleanup   unix  n - n -    0 cleanup
qmgr      unix  n - n 300  1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n -    - trivial-rewrite
bounce    unix  - - n -    0 bounce
defer     unix  - - n -    0 bounce
trace     unix  - - n -    0 bounce
verify    unix  - - n -    1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -    - proxymap
smtp      unix  - - n -    - smtp
relay     unix  - - n -    - smtp
showq     unix  n - n -    - showq
error     unix  - - n -    - error
retry     unix  - - n -    - error
discard   unix  - - n -    - discard
virtual   unix  - n n -    - virtual
anvil     unix  - - n -    1 anvil
scache    unix  - - n -    1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class PostfixError(RuntimeError):
    """A postfix command failed (the message has its output)."""


class Postfix:
    """One Postfix instance: ``main`` adds to (or overrides) the base main.cf, ``services`` are master.cf lines."""

    def __init__(
        self,
        root: Path,
        address: str,
        hostname: str,
        *,
        port: int = 25,
        main: Mapping[str, str] | None = None,
        services: Sequence[str] = (),
        maps: Sequence[str] = (),
        mail_dirs: Sequence[str] = (),
    ) -> None:
        self.root, self.address, self.hostname, self.port = root, address, hostname, port
        self.etc = root / "etc"
        self._main = dict(main or {})
        self._services = list(services)
        self._maps = list(maps)
        self._mail_dirs = list(mail_dirs)  # under root, owned by the virtual delivery agent's user (nobody)

    # ---------------------------------------------------------------- configuration

    def main_cf(self) -> dict[str, str]:
        base = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.root / "queue"),
            "data_directory": str(self.root / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "inet_interfaces": self.address,
            "inet_protocols": "ipv4",
            "smtp_bind_address": self.address,
            "myhostname": self.hostname,
            "myorigin": "$myhostname",
            "mydestination": "",
            "mynetworks": f"127.0.0.1/32 {self.address}/32",  # a client on this host connects from either
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "local_transport": "error:5.1.1 no local delivery",
            "biff": "no",
            "append_dot_mydomain": "no",
            "smtpd_peername_lookup": "no",
            "smtpd_banner": "$myhostname ESMTP",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtp_tls_security_level": "may",
            "maillog_file": str(self.root / "log/maillog"),
            "maillog_file_prefixes": str(self.root),
            "smtp_connect_timeout": "5s",
            # the stack's pace: a deferred message is tried again within seconds, not minutes
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "4s",
        }
        base.update(self._main)
        return base

    def setup(self) -> None:
        """Write the configuration and create the directories and empty maps (idempotent)."""
        for sub in ("etc", "queue", "data", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chown(self.root / "data", *user_ids("postfix"))
        for sub in self._mail_dirs:
            (self.root / sub).mkdir(parents=True, exist_ok=True)
            os.chown(self.root / sub, *user_ids("nobody"))
        main = "".join(f"{k} = {v}\n" for k, v in self.main_cf().items())
        listen = f"{self.address}:{self.port}"
        extra = "".join(line.rstrip("\n") + "\n" for line in self._services)
        _write(self.etc / "main.cf", main)
        _write(self.etc / "master.cf", _MASTER.format(listen=listen, extra=extra))
        for name in self._maps:
            if not (self.etc / name).exists():
                self.write_map(name, "")
                self.postmap(name)

    # ---------------------------------------------------------------- lifecycle

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise PostfixError(f"{' '.join(cmd[:4])}: {(done.stdout + done.stderr).strip()[-500:]}")
        return done

    def running(self) -> bool:
        return self._run("postfix", "-c", str(self.etc), "status", check=False).returncode == 0

    def start(self) -> None:
        if not self.running():
            self._run(str(WITH_RESOLVER), "postfix", "-c", str(self.etc), "start")

    def stop(self) -> None:
        if self.running():
            self._run("postfix", "-c", str(self.etc), "stop")

    def reload(self) -> None:
        if self.running():
            self._run("postfix", "-c", str(self.etc), "reload")

    # ---------------------------------------------------------------- maps

    def write_map(self, name: str, text: str) -> float:
        """Replace ``etc/<name>`` (temp file + rename, as PMG's file_set_contents); returns its mtime."""
        return _write(self.etc / name, text)

    def postmap(self, name: str) -> float:
        """``postmap`` the hash map ``etc/<name>``; returns the mtime of ``<name>.db``."""
        self._run("postmap", "-c", str(self.etc), f"hash:{self.etc / name}")
        return (self.etc / f"{name}.db").stat().st_mtime


def _write(path: Path, text: str) -> float:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path.stat().st_mtime


def user_ids(user: str) -> tuple[int, int]:
    """(uid, gid) of a system user (postfix's mail_owner, the virtual delivery agent's nobody)."""
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


# ---------------------------------------------------------------- the stack's internet: a sender and a receiver


def internet_sender(root: Path, address: str, hostname: str) -> Postfix:
    """An MTA on the internet: takes mail from 127.0.0.1 and delivers it by MX lookup through the resolver."""
    return Postfix(root, address, hostname)


def internet_receiver(root: Path, address: str, hostname: str, domain: str, milter: str) -> Postfix:
    """An MTA on the internet receiving for ``domain`` into one Maildir (``<root>/maildir/``), every message passed
    through ``milter`` (rspamd: SPF, DKIM and DMARC verdicts in an Authentication-Results header) first."""
    uid, gid = user_ids("nobody")
    return Postfix(
        root,
        address,
        hostname,
        main={
            "virtual_mailbox_domains": domain,
            "virtual_mailbox_maps": "static:maildir/",
            "virtual_mailbox_base": str(root),
            "virtual_uid_maps": f"static:{uid}",
            "virtual_gid_maps": f"static:{gid}",
            "smtpd_milters": f"inet:{milter}",
            "milter_default_action": "tempfail",
        },
        mail_dirs=["maildir"],
    )


def _main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim.mta", description="Start or stop one of the stack's MTAs.")
    p.add_argument("action", choices=("start", "stop"))
    p.add_argument("role", choices=("sender", "receiver"))
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--hostname", required=True)
    p.add_argument("--domain", default="")
    p.add_argument("--milter", default="")
    args = p.parse_args(argv)
    if args.role == "sender":
        mta = internet_sender(args.root, args.address, args.hostname)
    else:
        mta = internet_receiver(args.root, args.address, args.hostname, args.domain, args.milter)
    try:
        if args.action == "start":
            mta.setup()
            mta.start()
        else:
            mta.stop()
    except (PostfixError, OSError) as exc:
        print(f"sim.mta: {args.role}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
