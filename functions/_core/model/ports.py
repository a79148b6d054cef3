"""Ports: one narrow interface per external system, in mailplane's vocabulary. Handlers import only these.

Adapters (functions/adapters/) implement them against the real systems; tests/fakes implement them in memory
over the same behavioural models the simulators use.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from functions._core.model.keypool import KeyPool
from functions._core.model.records import Key, RecordSet
from functions._core.platform.config import Settings
from functions._core.platform.idempotency import Ledger
from functions._core.platform.locks import SubjectLocks
from functions._core.platform.store import ObjectStore

# ---------------------------------------------------------------- Mailcow


@dataclass(frozen=True)
class MailDomain:
    """A Mailcow domain as mailplane manages it (quotas in MiB)."""

    domain: str
    description: str
    mailboxes: int
    aliases: int
    quota_mib: int  # total domain quota
    maxquota_mib: int  # max per mailbox
    defquota_mib: int  # default per mailbox
    active: bool = True
    relayhost: int = 0  # relayhost id, 0 = none
    mailboxes_in_use: int = 0  # mailboxes that exist now (read-only; Mailcow refuses to delete a domain that has any)


@dataclass(frozen=True)
class DkimKey:
    """The DKIM key Mailcow signs with for a domain (public part only)."""

    selector: str
    public_key_b64: str  # base64 SubjectPublicKeyInfo, the p= value


@dataclass(frozen=True)
class Relayhost:
    id: int
    hostname: str  # e.g. "[pmg1.faster.cz]:25"
    active: bool


@dataclass(frozen=True)
class MailTransport:
    id: int
    destination: str
    nexthop: str
    active: bool


class MailPort(Protocol):
    """Mailcow. Every call raises MailcowUnavailable (transient) or MailcowRejected (permanent) on failure."""

    def get_domain(self, domain: str) -> MailDomain | None: ...
    def list_domains(self) -> list[MailDomain]: ...  # every domain (get/domain/all)
    def add_domain(self, want: MailDomain) -> None: ...  # never generates a DKIM key (key_size 0)
    def edit_domain(self, domain: str, changes: Mapping[str, int | str]) -> None: ...
    def delete_domain(self, domain: str) -> None: ...
    def get_dkim(self, domain: str) -> DkimKey | None: ...
    def import_dkim(self, domain: str, selector: str, private_pem: str, *, overwrite: bool) -> None: ...
    def delete_dkim(self, domain: str) -> None: ...  # success if absent; delete/domain leaves the key behind
    def list_mailboxes(self, domain: str) -> list[str]: ...  # usernames (local@domain)
    def delete_mailbox(self, username: str) -> None: ...  # success if absent
    def list_relayhosts(self) -> list[Relayhost]: ...
    def add_relayhost(self, hostname: str) -> int: ...  # returns the new id (found by re-reading)
    def edit_relayhost(self, relayhost_id: int, *, hostname: str | None = None, active: bool | None = None) -> None: ...
    def delete_relayhost(self, relayhost_id: int) -> None: ...
    def list_transports(self) -> list[MailTransport]: ...
    def add_transport(self, destination: str, nexthop: str) -> int: ...
    def edit_transport(self, transport_id: int, *, nexthop: str | None = None, active: bool | None = None) -> None: ...
    def delete_transport(self, transport_id: int) -> None: ...
    def restart_sogo(self) -> None: ...  # SOGo re-reads the domain list; sent once (slow), never retried in place


# ---------------------------------------------------------------- PMG


@dataclass(frozen=True)
class RelayDomain:
    domain: str
    comment: str = ""


@dataclass(frozen=True)
class GatewayTransport:
    """A PMG transport map entry, normalised: ``use_mx`` is the effective value (0 for IP hosts and lmtp)."""

    domain: str
    host: str
    port: int = 25
    protocol: str = "smtp"
    use_mx: bool = False
    comment: str = ""


@dataclass(frozen=True)
class TrustedNetwork:
    cidr: str
    comment: str = ""


@dataclass(frozen=True)
class GatewayNode:
    cid: int
    name: str
    ip: str
    role: str  # "master" | "node"
    reachable: bool
    insync: bool


class GatewayPort(Protocol):
    """The PMG cluster (all /config calls go to the master). Raises PmgUnavailable or PmgRejected.

    add_* treat "already exists" and delete_* treat "does not exist" as success (the caller re-reads anyway).
    Per-event logic reads per item (get_*: the entry whose key is exactly the argument, or None); the list_*
    listings grow with the fleet and are for fleet-wide commands only (drift --all, adopt --all).
    """

    def list_relay_domains(self) -> list[RelayDomain]: ...
    def get_relay_domain(self, domain: str) -> RelayDomain | None: ...
    def add_relay_domain(self, item: RelayDomain) -> None: ...
    def update_relay_domain(self, item: RelayDomain) -> None: ...
    def delete_relay_domain(self, domain: str) -> None: ...
    def list_transports(self) -> list[GatewayTransport]: ...
    def get_transport(self, domain: str) -> GatewayTransport | None: ...
    def add_transport(self, item: GatewayTransport) -> None: ...
    def update_transport(self, item: GatewayTransport) -> None: ...
    def delete_transport(self, domain: str) -> None: ...
    def list_networks(self) -> list[TrustedNetwork]: ...
    def get_network(self, cidr: str) -> TrustedNetwork | None: ...
    def add_network(self, item: TrustedNetwork) -> None: ...
    def delete_network(self, cidr: str) -> None: ...
    def cluster_nodes(self) -> list[GatewayNode]: ...
    def settle(self) -> None: ...  # make the relay-domain/transport writes of this thread effective on the master
    def retouch(self, domain: str) -> None: ...  # rewrite both maps through domain's entries, unchanged (then settle)
    def reload_postfix(self, node: str) -> None: ...  # `postfix reload` on one node: every daemon re-reads its maps


# ---------------------------------------------------------------- SMTP (the sender's view of the PMG nodes)


@dataclass(frozen=True)
class SmtpAnswer:
    """One SMTP session as a sender saw it: banner, EHLO, ``MAIL FROM:<>``, then one RCPT per recipient."""

    target: str  # host:port connected to
    source: str  # the local address the session came from (the vantage point)
    replies: tuple[tuple[int, str], ...] = ()  # (code, text) per RCPT, in order
    error: str = ""  # no session (refused, timeout, no banner, MAIL refused): the reason; replies are empty


class SmtpProbePort(Protocol):
    """Sends RCPT TO for each recipient in one session; never raises for what the server answers."""

    def rcpt(self, target: str, recipients: tuple[str, ...]) -> SmtpAnswer: ...


# ---------------------------------------------------------------- DNS


@dataclass(frozen=True)
class DnsChange:
    """One RRset change, applied with compare-and-set: ``before`` is what the plan was computed from.

    before None  -> prerequisite "RRset does not exist" (for CNAME: "name not in use");
    before set   -> prerequisite "RRset exists with exactly these values";
    after None   -> delete the RRset; otherwise replace it with ``after``.
    """

    before: RecordSet | None
    after: RecordSet | None

    @property
    def key(self) -> Key:
        rs = self.after if self.after is not None else self.before
        assert rs is not None
        return rs.key


class DnsPort(Protocol):
    """Authoritative DNS over RFC 2136 + TSIG.

    Raises DnsServfail (transient), DnsConflict (re-read and re-plan), DnsRefused (permanent).
    """

    def hosts_zone(self, zone: str) -> bool: ...  # the primary serves this zone and our key may update it
    def read_zone(self, zone: str) -> dict[Key, RecordSet]: ...  # every RRset in the zone (AXFR)
    def read_rrset(self, name: str, rtype: str) -> RecordSet | None: ...  # one RRset as the primary serves it
    def apply(self, zone: str, changes: list[DnsChange]) -> int: ...  # ONE atomic UPDATE; returns the new serial
    def servers(self, zone: str) -> list[str]: ...  # authoritative servers to verify ("host" or "host:port")
    def serial(self, zone: str, server: str) -> int | None: ...
    def read_zone_at(self, zone: str, server: str) -> tuple[int, dict[Key, RecordSet]] | None: ...  # AXFR from server
    def query(self, server: str, name: str, rtype: str) -> RecordSet | None: ...  # RD=0, TXT strings joined
    def resolve(self, name: str, rtype: str) -> RecordSet | None: ...  # public view (external zones)
    def query_ds(self, server: str, zone: str) -> tuple[str, ...]: ...  # DS of the KSKs server serves (SHA-256)
    # (name, rtype) as the validating resolver judges it: secure (AD) | insecure | bogus, and the RRset
    def resolve_validated(self, name: str, rtype: str) -> tuple[str, RecordSet | None]: ...


# ---------------------------------------------------------------- certificates (ACME) and the MTA-STS web host


class Challenge(Protocol):
    """How an ACME challenge is answered (functions/adapters/acme.py calls it).

    ``kind`` "dns-01": ``present`` publishes TXT ``value`` at ``_acme-challenge.<name>``; "http-01": it serves
    ``value`` at ``http://<name>/.well-known/acme-challenge/<token>``. ``cleanup`` removes it again.
    """

    kind: str

    def present(self, name: str, token: str, value: str) -> None: ...
    def cleanup(self, name: str, token: str, value: str) -> None: ...


class CertPort(Protocol):
    """An ACME CA. Raises CaUnavailable (transient) for every failure of the CA or of a challenge."""

    def issue(self, names: Sequence[str], key_pem: str, challenge: Challenge) -> str: ...  # full chain PEM


@dataclass(frozen=True)
class Fetched:
    """An HTTPS GET as a sender makes it: resolved through the public DNS, certificate verified for the name."""

    url: str
    status: int = 0  # 0 = no HTTP answer (see error)
    content_type: str = ""
    body: bytes = b""
    not_after: dt.datetime | None = None  # the served certificate's expiry
    error: str = ""  # resolution, connection, TLS or certificate failure: the reason


class WebHostPort(Protocol):
    """The MTA-STS web host: certificates per name (delivered where its web server reads them) and the sender's
    view of what it serves."""

    def install(self, name: str, chain_pem: str, key_pem: str) -> None: ...  # atomic, no reload needed
    def remove(self, name: str) -> None: ...  # success if absent
    def installed(self, name: str) -> str | None: ...  # the chain PEM delivered for name, None if none
    def fetch(self, url: str) -> Fetched: ...  # never raises for what the server (or the network) answers


# ---------------------------------------------------------------- the nodes' SMTP certificates (DANE)


class NodeTlsPort(Protocol):
    """The SMTP certificate of each gateway node: PMG's custom certificate API and what STARTTLS presents."""

    def upload(self, node: str, key_pem: str, chain_pem: str) -> None: ...  # POST .../certificates/custom/smtp
    def presented(self, node: str) -> str | None: ...  # leaf PEM the node presents on STARTTLS; None = no TLS


# ---------------------------------------------------------------- the bundle


@dataclass(frozen=True)
class Ports:
    """Everything a handler may touch; built once by runtime/main.py (or by tests from fakes)."""

    mail: MailPort
    gateway: GatewayPort
    dns: DnsPort
    state: ObjectStore  # private: rotation state, encrypted keys, ledger
    web: ObjectStore  # served by the MTA-STS web host
    settings: Settings
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    ledger: Ledger | None = None  # idempotency ledger (A7); None = handlers alone (tests, dry runs)
    locks: SubjectLocks | None = None  # per-subject leases across workers; None = no cross-process guard
    smtp: SmtpProbePort | None = None  # the acceptance gate's SMTP probe; None = no probe (domain.created refuses)
    keypool: KeyPool | None = None  # pre-generated sealed DKIM keys (dkim.key_pool_size); None = generate inline
    certs: CertPort | None = None  # the ACME CA; None = no certificates (MTA-STS is published without serving it)
    web_host: WebHostPort | None = None  # the MTA-STS web host (certificates, the sender's fetch); None = none
    node_tls: NodeTlsPort | None = None  # the nodes' SMTP certificates (DANE); None = no certificate lifecycle
