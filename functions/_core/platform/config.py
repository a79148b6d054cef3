"""Settings: one frozen object built at start from a TOML file; secrets come from the environment or files.

A secret is written in TOML as ``{ env = "NAME" }`` or ``{ file = "/path" }`` and is held as a ``Secret`` whose repr
is ``***``. Any other string may also be ``{ env = "NAME" }`` (endpoints that a deployment sets at run time).
A missing or unknown setting raises ConfigError naming it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from functions._core.platform.errors import ConfigError

_SLOT = re.compile(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?")  # a DKIM delegation slot (a selector label)
_SHA256 = re.compile(r"[0-9A-Fa-f]{2}(:?[0-9A-Fa-f]{2}){31}")  # AA:BB:... or 64 hex digits
MAP_WRITES = ("retouch", "space", "off")
DELIVERIES = ("dir", "store")  # mta_sts.delivery


def sha256_fingerprint(text: str) -> str:
    """``text`` as ``AA:BB:...`` (upper case, colons), the form PMG's cluster.conf and openssl print.

    Raises:
        ConfigError: not a SHA-256 fingerprint (32 bytes in hex, with or without colons).
    """
    if not _SHA256.fullmatch(text) or (":" in text and len(text) != 95):
        raise ConfigError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits, optionally AA:BB:... separated)")
    digits = text.replace(":", "").upper()
    return ":".join(digits[i : i + 2] for i in range(0, 64, 2))


class Secret:
    """A secret value that never prints."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself; call only where it is sent to the system that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class MxHost:
    name: str
    ipv4: str
    ipv6: str
    api_url: str = ""  # PMG API of this node, e.g. https://pmg1.faster.cz:8006
    smtp: str = ""  # host:port the prober and the SMTP acceptance gate connect to; default <name>:25
    # SHA-256 fingerprint of this node's API certificate (``mailplane pmg fingerprint NODE`` prints it); when set,
    # the PMG client pins it instead of verifying a CA chain (PMG's stock certificate is CN-only, no SAN)
    api_fingerprint: str = ""
    # a node being brought into service (`mailplane plan node.add NODE`): known to the prober, the gate and the
    # `_pmg` SPF, but not yet in the MX set and MTA-STS policy that domain.created writes (docs/nodes.md)
    joining: bool = False

    def __post_init__(self) -> None:
        if self.api_fingerprint:
            object.__setattr__(self, "api_fingerprint", sha256_fingerprint(self.api_fingerprint))


@dataclass(frozen=True)
class ProviderSettings:
    zone: str
    mx_hosts: tuple[MxHost, ...]
    protected_zones: tuple[str, ...] = ()
    mx_preference: int = 10
    min_mx_in_rotation: int = 2


@dataclass(frozen=True)
class MailcowSettings:
    host: str
    ipv4: str
    ipv6: str
    url: str
    api_key: Secret
    verify_tls: bool = True
    ca_file: str = ""
    timeout: float = 15.0
    # SOGo (webmail, CalDAV/CardDAV, ActiveSync) reads Mailcow's domain list only when its container starts:
    # a new domain is webmail-ready once a SOGo restart requested after it was added has succeeded
    # (functions/_core/model/webmail.py). false: SOGo is not used here; no restart, no wait.
    sogo_restart: bool = True
    # seconds: a burst's first new domain waits this long for the others (one restart for all), and two restarts
    # are at least this far apart
    sogo_restart_interval: float = 120.0
    sogo_restart_timeout: float = 75.0  # the restart request (container_ctrl.php waits for Docker, up to 60 s)


@dataclass(frozen=True)
class PmgSettings:
    user: str
    password: Secret
    verify_tls: bool = True
    ca_file: str = ""
    timeout: float = 35.0  # above PMG's own 30 s proxy timeout to the master
    # PMG rebuilds a postfix map only when its file is newer than the .db in whole seconds, so a second write to the
    # same map within one second is not used by postfix. "retouch": after writing, make sure a write to that map
    # starts >= 1 s later (rewrite an entry's comment if none did); "space": >= 1 s between writes to one map (this
    # process only); "off": neither (shows the loss). Measured in BENCHMARKS.md.
    map_writes: str = "retouch"

    def __post_init__(self) -> None:
        if self.map_writes not in MAP_WRITES:
            raise ConfigError(f"setting pmg.map_writes must be one of {', '.join(MAP_WRITES)}, not {self.map_writes!r}")


@dataclass(frozen=True)
class SmtpProbeSettings:
    """[smtp_probe]: the acceptance gate's SMTP probe of every PMG node (``RCPT TO:<postmaster@DOMAIN>``).

    The probe must come from an address OUTSIDE PMG's trusted networks (permit_mynetworks accepts anything from
    inside, which proves nothing); the gate checks this on every node with a control recipient under ``.invalid``.
    """

    source: str = ""  # local address to connect from ("" = the system's choice); locally 127.0.0.2
    helo: str = "mailplane-probe.invalid"
    timeout: float = 10.0
    max_wait_seconds: int = 900  # from the first attempt; then the domain is reported degraded


@dataclass(frozen=True)
class DnsSettings:
    primary: str
    tsig_name: str
    tsig_secret: Secret
    port: int = 53
    tsig_algorithm: str = "hmac-sha256"
    timeout: float = 5.0
    # Authoritative servers to verify; empty = the zone's NS names resolved at the primary.
    servers: tuple[str, ...] = ()
    # Recursive resolvers for the public view of zones hosted elsewhere ("host" or "host:port"; the first is asked);
    # empty = the first name server in /etc/resolv.conf.
    resolvers: tuple[str, ...] = ()
    # Seconds a verification keeps asking every authoritative server in place (NOTIFY + IXFR take about a second)
    # before it raises NotPropagated to the broker's retry ladder; 0 = one round of questions.
    propagation_wait: float = 5.0
    # The zones we host are DNSSEC-signed by the DNS servers (BIND dnssec-policy, inline-signing): mailplane reports
    # each zone's chain of trust (the DS the customer registers at the parent; awaiting_ds until a validating
    # resolver trusts it; a wrong DS). A domain.created may override it per domain (data.dns.dnssec).
    dnssec: bool = False
    # The validating resolver that judges the chain (AD bit; "host" or "host:port"); empty = the first of resolvers.
    validating_resolver: str = ""


@dataclass(frozen=True)
class PolicySettings:
    spf_include: str
    dmarc_rua: str
    dmarc_ruf: str
    tlsrpt_rua: str
    mta_sts_host: str
    dmarc_policy: str = "reject"
    mta_sts_mode: str = "enforce"
    mta_sts_max_age: int = 604800


@dataclass(frozen=True)
class DkimSettings:
    key_size: int = 2048
    selector_format: str = "mp%Y%m%d"  # strftime; a letter is appended when a selector was used before
    rotate_after_days: int = 180
    retire_days: int = 7
    keep_days: int = 30
    propagation_seconds: int = 3600
    key_encryption_key: Secret = field(default_factory=lambda: Secret(""))
    # rotation (functions/_core/model/rotation.py, `mailplane rotate-due`)
    rotate_jitter_days: int = 30  # per-domain offset in [0, N) days added to rotate_after_days (hash of the name)
    rotate_max_per_run: int = 100  # new rotations one rotate-due run starts at most (it runs hourly)
    revoke_hours: int = 0  # a retired key is served revoked (empty p=) this long before it is withdrawn; 0 = none
    emergency_propagation_seconds: int = 300  # T_prop for a key replacing a compromised one (the smaller one wins)
    emergency_revoke_hours: int = 48  # a compromised key is served revoked this long, then withdrawn
    # DKIM delegation (domain.created ``dkim.delegate`` for zones hosted elsewhere, reference/dns.md §5.4): the
    # customer publishes ``<slot>._domainkey.<domain> CNAME <slot>.<domain>.<delegation_zone>.`` once per slot;
    # mailplane then publishes and rotates the keys in ``delegation_zone`` (a zone our DNS serves). "" = not offered.
    delegation_zone: str = ""
    delegation_slots: tuple[str, ...] = ("mpa", "mpb", "mpc")  # selectors, used round robin (>= 3: see rotation.py)
    # pre-generated sealed keys in the state bucket (functions/_core/model/keypool.py): domain.created takes one
    # instead of generating (~50 ms of CPU); refilled by idle workers and `mailplane keypool refill`. 0 = off.
    key_pool_size: int = 0

    def __post_init__(self) -> None:
        slots = self.delegation_slots
        bad = [s for s in slots if not _SLOT.fullmatch(s)]
        if bad or len(set(slots)) != len(slots) or len(slots) < 3:
            raise ConfigError("dkim.delegation_slots must be at least 3 distinct lowercase DNS labels (e.g. mpa, mpb)")
        if self.key_pool_size < 0:
            raise ConfigError(f"dkim.key_pool_size must be >= 0, got {self.key_pool_size}")


@dataclass(frozen=True)
class TtlSettings:
    mx: int = 3600
    txt: int = 3600
    cname: int = 3600
    srv: int = 3600
    dkim: int = 3600


@dataclass(frozen=True)
class StoreSettings:
    kind: str = "dir"  # "s3" or "dir"
    path: str = "/var/lib/mailplane"
    state_bucket: str = "mailplane-state"
    web_bucket: str = "mailplane-mta-sts"
    endpoint_url: str = ""  # "" = AWS S3; else https://... (MinIO); http:// only on a trusted network (warned)
    region: str = "us-east-1"
    access_key_id: Secret = field(default_factory=lambda: Secret(""))
    secret_access_key: Secret = field(default_factory=lambda: Secret(""))
    timeout: float = 10.0
    ca_file: str = ""  # CA bundle that signed the endpoint's certificate; "" = the system trust store

    def __post_init__(self) -> None:
        if self.ca_file and not self.endpoint_url.startswith("https://"):
            raise ConfigError("store.ca_file needs an https:// store.endpoint_url")


@dataclass(frozen=True)
class BrokerSettings:
    """[broker]: AMQPS by default (CA-verified server certificate, host name checked against ``host``).

    Login: ``password`` (SASL PLAIN inside TLS), or a client certificate ``cert_file`` + ``key_file`` (SASL EXTERNAL:
    RabbitMQ's rabbitmq_auth_mechanism_ssl takes the user from the certificate's CN, which must then be ``user``).
    ``tls = false`` (plaintext: credentials and events in clear) only when set explicitly; it is warned at start.
    """

    host: str
    user: str
    password: Secret | None = None
    port: int = 5671  # AMQPS; plaintext AMQP is 5672
    tls: bool = True
    ca_file: str = ""  # CA bundle that signed the broker's certificate; "" = the system trust store
    cert_file: str = ""  # client certificate (PEM) for EXTERNAL; its CN is the RabbitMQ user
    key_file: str = ""  # the client certificate's private key (PEM); read by the TLS library only, never logged
    vhost: str = "mailplane"
    exchange: str = "events"
    parked_exchange: str = "parked"
    work_queue_prefix: str = "q.work"
    parked_queue: str = "q.parked"
    retry_delays: tuple[int, ...] = (10, 60, 300, 1800, 7200, 21600)
    lease_seconds: int = 300  # idempotency lease: well above a handler's run time, well below the retry ladder
    replayer: str = "operator"  # may re-inject parked events; they keep their original publisher
    prefetch: int = 32
    heartbeat: int = 30
    # event type -> publishers (validated AMQP user_id) allowed to send it
    publishers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError(
                "broker.cert_file and broker.key_file are set together (a client certificate and its key)"
            )
        if not self.tls and (self.ca_file or self.cert_file):
            raise ConfigError("broker.ca_file and broker.cert_file need broker.tls = true")
        if self.password is None and not self.cert_file:
            raise ConfigError("missing setting broker.password (or broker.cert_file and broker.key_file)")
        if self.password is not None and self.cert_file:
            raise ConfigError("set broker.password or a client certificate (broker.cert_file), not both")


@dataclass(frozen=True)
class NodeSettings:
    """[nodes]: failover of a gateway node (node.down / node.up), the health prober and planned retirement.

    The quorum minimum is ``provider.min_mx_in_rotation``.
    """

    hold_down_seconds: int = 300  # a node.up within this time of the last transition is retried later
    smarthost: str = "relayhost"  # how Mailcow sends through the nodes: "relayhost" | "transport" | "none"
    smarthost_format: str = "[{host}]:25"  # Mailcow relayhost hostname / transport nexthop of a node
    rotation_names: tuple[str, ...] = ()  # round-robin names in the provider zone holding every node's addresses
    probe_interval: float = 10.0  # seconds between probe rounds
    probe_timeout: float = 5.0  # per check (SMTP banner, API)
    fail_after: int = 3  # consecutive failed rounds before node.down
    recover_after: int = 5  # consecutive good rounds before node.up
    require_api: bool = False  # a failing PMG API alone also counts as a failure
    observer: str = ""  # observer name in the events; "" = this host's name
    retire_waves: tuple[int, ...] = (1, 10, 100)  # zones per wave before "the rest"
    retire_error_budget: int = 3  # failed zones that halt a retirement run (node.add uses the same waves and budget)
    # node.retire: seconds after its MX phase before the MTA-STS policies drop the node; None = policy.mta_sts_max_age
    retire_policy_after_seconds: int | None = None


@dataclass(frozen=True)
class AcmeSettings:
    """[acme]: the ACME CA mailplane orders certificates from (functions/adapters/acme.py). "" directory = none."""

    directory: str = ""  # e.g. https://acme-v02.api.letsencrypt.org/directory; locally Pebble
    ca_file: str = ""  # CA bundle for the directory's own TLS certificate; "" = the system trust store
    contact: str = ""  # account e-mail address (optional)
    account_key: Secret | None = None  # PEM (EC P-256 or RSA); unset = a key generated per process
    timeout_seconds: int = 60  # an order not valid by then fails (transient, retried)
    root_file: str = ""  # the CA's issuing root, when it is not in the system trust store (Pebble's)


@dataclass(frozen=True)
class MtaStsSettings:
    """[mta_sts]: serving each domain's policy over HTTPS (certificate per mta-sts.<domain>, RFC 8461 order)."""

    serve: bool = False  # issue certificates and publish _mta-sts only once the policy is fetchable
    renew_before_days: int = 30  # renew a certificate this long before it expires (renew-due's pass)
    renew_max_per_run: int = 200  # cert.renew events one `mailplane renew-due` run publishes at most
    expiry_warn_days: int = 14  # status/drift: a served certificate expiring sooner is drift (renewal overdue)
    # how certificates reach the web host (docs/mta-sts.md, "Delivery"): "dir" = the worker writes them into cert_dir, a
    # directory the web server reads per SNI name (a worker on web6, the local stack); "store" = the worker only
    # stores them sealed (certs/<name>.json) and web6 pulls them (`mailplane web6 sync`, infra/web6/README.md)
    delivery: str = "dir"
    cert_dir: str = ""
    # how a sender reaches the web host: resolvers for the fetch ("" = /etc/resolv.conf) and the trust store
    # ("" = the system's; locally the ACME root)
    resolver: str = ""
    trust_file: str = ""
    fetch_timeout: float = 5.0
    fetch_wait_seconds: int = 20  # how long one attempt waits for the policy to become fetchable (then retried)
    # new domains: "testing" or "enforce" (per domain: domain.created mta_sts.mode); policy.mta_sts_mode = default
    enforce_after_days: int = 14  # `mailplane mta-sts enforce --all-clean`: days of clean TLS reports needed
    tlsrpt_max_bytes: int = 1048576  # a TLS report (decompressed) larger than this is refused
    tlsrpt_summary_days: int = 7  # the period `mailplane status` and `tls-rpt summary` show (days ending today)

    def __post_init__(self) -> None:
        if not 0 <= self.expiry_warn_days < self.renew_before_days or self.renew_max_per_run < 1:
            raise ConfigError(
                "mta_sts.expiry_warn_days must be below mta_sts.renew_before_days (renewal comes first), "
                "mta_sts.renew_max_per_run at least 1"
            )
        if self.enforce_after_days < 1 or self.tlsrpt_summary_days < 1 or self.tlsrpt_max_bytes < 1024:
            raise ConfigError(
                "mta_sts.enforce_after_days and mta_sts.tlsrpt_summary_days must be at least 1, "
                "mta_sts.tlsrpt_max_bytes at least 1024"
            )
        if self.delivery not in DELIVERIES:
            raise ConfigError(f"mta_sts.delivery must be one of {', '.join(DELIVERIES)}, not {self.delivery!r}")
        if self.delivery == "store" and self.cert_dir:
            raise ConfigError(
                "mta_sts.cert_dir is for delivery 'dir': with 'store' the workers write no files, web6 pulls the "
                "certificates into its own directory (mailplane web6 sync --cert-dir)"
            )


@dataclass(frozen=True)
class DaneSettings:
    """[dane]: TLSA 3 1 1 for the MX hosts and their SMTP certificate lifecycle (cert.renew, _core/model/dane.py)."""

    enabled: bool = False  # renew-due publishes cert.renew; status --provider shows DANE
    tlsa_ttl: int = 3600  # TTL of _25._tcp.<mx host> TLSA; a rollover waits 2 x this twice
    renew_before_days: int = 30  # renew (same key) this long before the presented certificate expires
    rollover_days: int = 365  # roll to a new key when the current one is this old (renew-due)
    alarm_before_days: int = 14  # the expiry alarm (health metric mailplane_smtp_cert_expiry_days)
    smtp_timeout: float = 5.0  # STARTTLS handshake that reads the presented certificate


@dataclass(frozen=True)
class DeletionSettings:
    """[deletion]: domain.deleted suspends a domain first and removes it once the grace period has passed."""

    grace_days: int = 30  # used when the event carries no grace_days; 0 = remove at once


@dataclass(frozen=True)
class RetentionSettings:
    """[retention]: how long what accumulates over time is kept (docs/runbook.md, "Retention").

    The S3 lifecycle rules of infra/terraform (variables ``ledger_retention_days``, ``audit_retention_days``) apply
    the same numbers on AWS; `mailplane sweep` applies them on stores without lifecycle rules. A retired DKIM key's
    sealed private key is deleted ``dkim.keep_days`` after the key was withdrawn from DNS (by the rotation's destroy
    step; `sweep` catches keys whose rotation never got there); its public part stays in the domain's state.
    """

    ledger_days: int = 14  # an idempotency-ledger record is kept this long after the event completed
    audit_days: int = 730  # audit records (audit/: each step on a compromised key); 0 = kept for good
    tlsrpt_days: int = 90  # TLS report day objects (tlsrpt/<domain>/<day>.json) older than this many days

    def __post_init__(self) -> None:
        if self.ledger_days < 1 or self.audit_days < 0 or self.tlsrpt_days < 1:
            raise ConfigError(
                "retention.ledger_days and retention.tlsrpt_days must be at least 1, retention.audit_days at least 0"
            )


@dataclass(frozen=True)
class Settings:
    provider: ProviderSettings
    mailcow: MailcowSettings
    pmg: PmgSettings
    dns: DnsSettings
    policy: PolicySettings
    broker: BrokerSettings
    dkim: DkimSettings = field(default_factory=DkimSettings)
    ttl: TtlSettings = field(default_factory=TtlSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    deletion: DeletionSettings = field(default_factory=DeletionSettings)
    nodes: NodeSettings = field(default_factory=NodeSettings)
    smtp_probe: SmtpProbeSettings = field(default_factory=SmtpProbeSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    acme: AcmeSettings = field(default_factory=AcmeSettings)
    mta_sts: MtaStsSettings = field(default_factory=MtaStsSettings)
    dane: DaneSettings = field(default_factory=DaneSettings)

    def __post_init__(self) -> None:
        if self.mta_sts.enforce_after_days > self.retention.tlsrpt_days:
            raise ConfigError(
                f"setting mta_sts.enforce_after_days ({self.mta_sts.enforce_after_days}) must not exceed "
                f"retention.tlsrpt_days ({self.retention.tlsrpt_days}): the reports it judges would be swept"
            )
        ladder = sum(self.broker.retry_delays)
        if self.smtp_probe.max_wait_seconds >= ladder:
            raise ConfigError(
                f"setting smtp_probe.max_wait_seconds ({self.smtp_probe.max_wait_seconds}) must be below the retry "
                f"ladder's total ({ladder} s of broker.retry_delays), or events are parked before they turn degraded"
            )

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Settings:
        """Read the TOML file at ``path``; resolve secret references against ``env`` (default: os.environ).

        Raises:
            ConfigError: the file is missing or unreadable, or a setting is missing, unknown or of the wrong type.
        """
        return _load(cls, path, env)


@dataclass(frozen=True)
class Web6Settings:
    """The settings file of `mailplane web6 sync` on web6 (sample: infra/web6/sync.toml): ``[store]``, with
    credentials that may only list and read ``certs/``, and ``[dkim] key_encryption_key``, the key that unseals the
    certificates' private keys (the other ``[dkim]`` settings are not read). Nothing else: web6 holds no Mailcow,
    PMG, DNS or broker secret."""

    store: StoreSettings
    dkim: DkimSettings

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Web6Settings:
        """Read the TOML file at ``path`` like ``Settings.load``.

        Raises:
            ConfigError: the file is missing or unreadable, or a setting is missing, unknown or of the wrong type.
        """
        return _load(cls, path, env)


T = TypeVar("T")


def _load(cls: type[T], path: str | os.PathLike[str], env: Mapping[str, str] | None) -> T:
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc}") from None
    return _build(cls, raw, "", os.environ if env is None else env)


def _build(cls: type[T], raw: Any, where: str, env: Mapping[str, str]) -> T:
    if not isinstance(raw, dict):
        raise ConfigError(f"setting {where or '<root>'} must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown setting {_join(where, unknown[0])}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing setting {_join(where, name)}")
            continue
        kwargs[name] = _value(hints[name], raw[name], _join(where, name), env)
    return cls(**kwargs)


def _value(tp: Any, raw: Any, where: str, env: Mapping[str, str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # ``X | None``: TOML has no null, so a value given is an X
        (tp,) = (a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    if tp is Secret:
        return Secret(_reference(raw, where, env, allow_file=True))
    if dataclasses.is_dataclass(tp):
        return _build(tp, raw, where, env)  # type: ignore[arg-type]
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if not isinstance(raw, list):
            raise ConfigError(f"setting {where} must be a list")
        return tuple(_value(item, v, f"{where}[{i}]", env) for i, v in enumerate(raw))
    if origin in (Mapping, dict) or origin is types.MappingProxyType:
        if not isinstance(raw, dict):
            raise ConfigError(f"setting {where} must be a table")
        return types.MappingProxyType(
            {k: _value(typing.get_args(tp)[1], v, f"{where}.{k}", env) for k, v in raw.items()}
        )
    if tp is str:
        return _reference(raw, where, env, allow_file=False) if isinstance(raw, dict) else _typed(str, raw, where)
    if tp is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    return _typed(tp, raw, where)


def _typed(tp: type[Any], raw: Any, where: str) -> Any:
    if not isinstance(raw, tp) or (tp is int and isinstance(raw, bool)):
        raise ConfigError(f"setting {where} must be of type {tp.__name__}")
    return raw


def _reference(raw: Any, where: str, env: Mapping[str, str], *, allow_file: bool) -> str:
    if isinstance(raw, dict) and set(raw) == {"env"}:
        value = env.get(raw["env"])
        if value is None:
            raise ConfigError(f"setting {where}: environment variable {raw['env']} is not set")
        return value
    if allow_file and isinstance(raw, dict) and set(raw) == {"file"}:
        try:
            return Path(raw["file"]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"setting {where}: cannot read {raw['file']}: {exc.strerror}") from None
    if allow_file:
        raise ConfigError(f'setting {where} is a secret: write {{ env = "NAME" }} or {{ file = "/path" }}')
    raise ConfigError(f'setting {where} must be a string or {{ env = "NAME" }}')


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
