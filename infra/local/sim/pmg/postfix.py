"""The data plane of one simulated PMG node: the postfix maps it USES, as opposed to the files its API shows.

PMG writes ``/etc/pmg/{domains,transport,mynetworks}`` and then rebuilds what postfix reads:

- ``domains`` and ``transport`` are ``hash:`` maps. PMG runs ``postmap FILE`` only when the file's mtime is newer
  than ``FILE.db``'s, both taken in WHOLE seconds (PMG::Utils run_postmap: ``return if $mtime_src <= $mtime_dst``).
  Two writes to one map within the same second therefore leave the second one in the file but not in the .db:
  postfix does not see it until a later change to that file in a later second.
- ``mynetworks`` is rendered into main.cf and postfix is reloaded (no postmap): it takes effect on every rewrite.

``NodePostfix.write`` is the file write, ``rewrite`` is PMG's rewrite_config (postmap under the rule above, the
main.cf reload), ``effective`` is what postfix answers from. ``rcpt`` answers ``RCPT TO`` as PMG's postfix would
(permit_mynetworks, reject_unauth_destination against relay_domains, greylisting, recipient verification).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim.mta import Postfix

POSTMAPPED = ("domains", "transport")  # hash: maps rebuilt by postmap, under the whole-second rule
RELOADED = ("mynetworks",)  # rendered into main.cf; effective after every rewrite + reload
MAPS = POSTMAPPED + RELOADED


@dataclass
class MapFile:
    """One config file and what postfix uses of it (``db``: the text at the last postmap or reload)."""

    text: str = ""
    mtime: float = 0.0
    db: str = ""
    db_mtime: float = 0.0
    postmaps: int = 0


@dataclass(frozen=True)
class SmtpPolicy:
    """How the node's postfix treats a relayed recipient from an untrusted client."""

    greylist: bool = True  # PMG greylists by default: 450 4.7.1 on the first attempt
    verify_recipients: bool = False  # reject_unverified_recipient: 550 5.1.1 for an unknown user


@dataclass
class NodePostfix:
    """The three maps of one node."""

    maps: dict[str, MapFile] = field(default_factory=lambda: {name: MapFile() for name in MAPS})
    own_networks: tuple[str, ...] = ()  # trusted without being listed (the node's own interface addresses)
    # the node's real Postfix (infra/local/up: ``sim.serve pmg --postfix-dir``): the files are written there, postmap
    # runs there under the same whole-second rule (the mtimes are the real files'), mynetworks reloads it
    instance: Postfix | None = field(default=None, repr=False, compare=False)
    _relay_keys: tuple[str, frozenset[str]] = field(default=("", frozenset()), repr=False, compare=False)

    def write(self, name: str, text: str, now: float) -> None:
        """Write ``/etc/pmg/<name>`` (the mtime is ``now``); postfix does not see it before ``rewrite``."""
        entry = self.maps[name]
        entry.text, entry.mtime = text, now
        if self.instance is not None:
            entry.mtime = self.instance.write_map(name, text if name in POSTMAPPED else _trusted(text))

    def rewrite(self, now: float, names: tuple[str, ...] = MAPS) -> None:
        """PMG's rewrite after a change: postmap the hash maps whose file is newer (whole seconds), reload main.cf."""
        reload = False
        for name in names:
            entry = self.maps[name]
            if name in POSTMAPPED and int(entry.mtime) <= int(entry.db_mtime):
                continue  # PMG::Utils run_postmap: not newer in whole seconds -> no postmap
            reload |= name not in POSTMAPPED and entry.db != entry.text  # main.cf changed: postfix reload
            entry.db, entry.db_mtime = entry.text, now
            entry.postmaps += name in POSTMAPPED
            if self.instance is not None and name in POSTMAPPED:
                entry.db_mtime = self.instance.postmap(name)
        if reload and self.instance is not None:
            self.instance.reload()

    def attach(self, instance: Postfix | None) -> None:
        """Drive ``instance`` from now on: its files become this node's (all maps rewritten and rebuilt)."""
        self.instance = instance
        if instance is not None:
            for name, entry in self.maps.items():
                entry.mtime = instance.write_map(name, entry.text if name in POSTMAPPED else _trusted(entry.text))
                entry.db, entry.db_mtime = entry.text, instance.postmap(name) if name in POSTMAPPED else entry.mtime
            instance.reload()

    def effective(self, name: str) -> str:
        return self.maps[name].db

    def stale(self) -> list[str]:
        """Maps whose file differs from what postfix uses."""
        return [name for name, entry in self.maps.items() if entry.text != entry.db]

    # ------------------------------------------------------------ postfix's answers

    def trusts(self, client: str) -> bool:
        """permit_mynetworks: the client address is in mynetworks (listed or the node's own)."""
        try:
            addr = ipaddress.ip_address(client)
        except ValueError:
            return False
        for cidr in (*_cidrs(self.effective("mynetworks")), *self.own_networks):
            try:
                if addr in ipaddress.ip_network(cidr, strict=False):
                    return True
            except ValueError:
                continue
        return False

    def relays(self, domain: str) -> bool:
        """reject_unauth_destination: the domain is a key of the relay_domains hash map (exact, case-insensitive);
        the keys are parsed once per postmap, like postfix's hash lookup (a fleet of 10,000 relay domains)."""
        db = self.effective("domains")
        if self._relay_keys[0] is not db:
            self._relay_keys = (db, frozenset(line.split()[0].lower() for line in db.split("\n") if _entry(line)))
        return domain.lower() in self._relay_keys[1]

    def rcpt(self, client: str, address: str, policy: SmtpPolicy) -> tuple[int, str]:
        """The reply to ``RCPT TO:<address>`` from ``client``."""
        domain = address.rpartition("@")[2]
        if self.trusts(client):
            return 250, "2.1.5 Ok"
        if not self.relays(domain):
            return 554, f"5.7.1 <{address}>: Relay access denied"
        if policy.verify_recipients:
            return 550, f"5.1.1 <{address}>: Recipient address rejected: undeliverable address: User unknown"
        if policy.greylist:
            return 450, f"4.7.1 <{address}>: Recipient address rejected: Service is unavailable (try later)"
        return 250, "2.1.5 Ok"


def node_instance(root: Path, address: str, hostname: str, port: int = 25) -> Postfix:
    """The real Postfix of one PMG node, configured as PMG's main.cf does for what this simulator models: relay
    domains and transports from hash maps, mynetworks = the node itself + /etc/pmg/mynetworks (PMG's default
    127.0.0.0/8 would trust the whole local stack: only 127.0.0.1, the simulator's own address, stays), STARTTLS with
    /etc/pmg/pmg-tls.pem. No greylisting and no recipient verification (a real postfix answers 250 where the Python
    front-end's ``SmtpPolicy`` would defer)."""
    from sim.mta import Postfix

    etc = root / "etc"
    return Postfix(
        root,
        address,
        hostname,
        port=port,
        main={
            "relay_domains": f"hash:{etc}/domains",
            "transport_maps": f"hash:{etc}/transport",
            "mynetworks": f"127.0.0.1/32 {address}/32 {etc}/mynetworks",
            "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_chain_files": f"{etc}/pmg-tls.pem",
        },
    )


def _trusted(text: str) -> str:
    """A mynetworks file as postfix reads it (``mynetworks = ... /file``): one network per line, IPv6 bracketed."""
    return "".join((f"[{c.split('/')[0]}]/{c.split('/')[1]}" if ":" in c else c) + "\n" for c in _cidrs(text))


def _entry(line: str) -> bool:
    return bool(line.strip()) and not line.startswith("#")


def _cidrs(text: str) -> list[str]:
    """The networks of a mynetworks file (``cidr #comment`` lines)."""
    out = []
    for line in text.split("\n"):
        m = re.match(r"^\s*([0-9A-Fa-f:.]+/\d+)", line)
        if m:
            out.append(m.group(1))
    return out
