"""Behavioural model of the Mailcow API (reference/mailcow.md §1-§9, checklist §11). No HTTP here.

State: SQL-like tables (domain, alias_domain, mailbox, alias, relayhosts, transports), Redis-like hashes
(DKIM_PUB_KEYS ``<domain>``, DKIM_SELECTORS ``<domain>``, DKIM_PRIV_KEYS ``<selector>.<domain>``, DOMAIN_MAP), API keys,
PHP sessions, a fail2ban counter, faults and a request log (shared by both front-ends).

Handlers take the decoded request data and return an ``Outcome``: the messages PHP pushes to ``$_SESSION['return']``
(HTTP 200 even when every entry is ``danger``) and whether the handler returned false. An uncaught PHP error raises
``PhpFatalError`` (the front-end answers with an empty body). SQL lookups of domains are case-insensitive (MySQL
collation); Redis keys are exact: ``add/dkim`` with ``Example.COM`` stores a key that ``get/dkim/example.com`` misses.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import ipaddress
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import dkim
import idna
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

MIB = 1048576
TAGGING_LIMIT = 25
MAX_KEY_SIZE = 8192  # the simulator refuses larger keys (real Mailcow tries; generation would take minutes)
VERSION = "2026-07a"
DKIM_HASHES = ("DKIM_PUB_KEYS", "DKIM_SELECTORS", "DKIM_PRIV_KEYS")
SOGO_FAULTS = ("sogo_restart_ms", "sogo_restart_fail")
LOG_LINES = 9999  # mailcow.conf LOG_LINES: Mailcow trims its Redis logs to it every minute, the simulator at once
READ_LINES = 1000  # vars.inc.php $LOG_LINES: what get/logs/<app> returns without a count
SOGO_RESTART_FAILED = "Container sogo-mailcow: restart failed (simulated)"

# The "Default" domain template (init_db.inc.php l.1425-1445) plus the undocumented DKIM fields of add/domain.
DOMAIN_DEFAULTS: dict[str, Any] = {
    "aliases": 400,
    "mailboxes": 10,
    "defquota": 3072,
    "maxquota": 10240,
    "quota": 10240,
    "active": 1,
    "gal": 1,
    "backupmx": 0,
    "relay_all_recipients": 0,
    "relay_unknown_only": 0,
    "rl_value": "",
    "rl_frame": "s",
    "tags": [],
    "restart_sogo": 0,
    "key_size": 2048,
    "dkim_selector": "dkim",
}
DOMAIN_FLAGS = ("active", "gal", "backupmx", "relay_all_recipients", "relay_unknown_only")


class PhpFatalError(Exception):
    """An uncaught PHP error (TypeError, PDOException): the client gets ``status`` with an empty body."""

    def __init__(self, status: int, what: str) -> None:
        super().__init__(what)
        self.status = status


# ---------------------------------------------------------------- PHP semantics

_INT_PREFIX = re.compile(r"\s*([+-]?\d+)")
_NUMERIC = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*\Z")
_SPLIT = re.compile(r"[ ,;\n]")
_DOMAIN = re.compile(r"([a-z\d](-*[a-z\d])*)(\.([a-z\d](-*[a-z\d])*))*\Z", re.IGNORECASE)
_LABELS = re.compile(r"[^.]{1,63}(\.[^.]{1,63})*\Z")
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+\Z")
_BRACKETED = re.compile(r"\[(.+)\].*")


def intval(value: Any) -> int:
    """PHP ``intval()``: ``"1"``, ``1`` and ``true`` give 1; ``"true"`` gives 0; leading digits count."""
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        m = _INT_PREFIX.match(value)
        return int(m.group(1)) if m else 0
    if isinstance(value, list | dict):
        return 1 if value else 0
    return 0


def php_empty(value: Any) -> bool:
    """PHP ``empty()``: None, false, 0, 0.0, "", "0" and empty arrays."""
    return value is None or value is False or value in (0, "", "0") or value == [] or value == {}


def is_numeric(value: Any) -> bool:
    """PHP ``is_numeric()`` (booleans are not numeric)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and bool(_NUMERIC.match(value))


def php_str(value: Any) -> str:
    """A scalar as PHP's string functions see it.

    Raises:
        PhpFatalError: an array where a string is expected (PHP 8 TypeError -> HTTP 500, empty body).
    """
    if isinstance(value, list | dict):
        raise PhpFatalError(500, "TypeError: array given where a string is expected")
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    return str(value)


def split_list(value: Any) -> list[str]:
    """``preg_split("/( |,|;|\\n)/")`` + ``trim`` + ``array_filter``.

    Raises:
        PhpFatalError: a JSON list where a string is expected.
    """
    return [p.strip() for p in _SPLIT.split(php_str(value)) if p.strip()]


def as_array(value: Any) -> list[Any]:
    """PHP ``(array)`` cast: null -> [], scalar -> [scalar], object -> its values."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return list(value.values())
    return [value]


def to_ascii(name: str) -> str:
    """``idn_to_ascii(..., UTS46)``: the A-label form (lower case); ASCII input that IDNA refuses is kept as is."""
    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return name.lower() if name.isascii() else ""


def to_unicode(name: str) -> str:
    """The U-label form for ``domain_h_name``."""
    try:
        return idna.decode(name)
    except (idna.IDNAError, UnicodeError):
        return name


def is_valid_domain_name(name: Any) -> bool:
    """Mailcow's ``is_valid_domain_name()``: LDH labels, <= 253 characters, labels <= 63 (single labels pass)."""
    if not isinstance(name, str) or php_empty(name):
        return False
    ascii_name = to_ascii(name)
    return bool(_DOMAIN.match(ascii_name) and len(ascii_name) <= 253 and _LABELS.match(ascii_name))


def norm_domain(value: Any) -> str:
    """``idn_to_ascii(strtolower(trim($d)))`` as the domain handlers do it."""
    raw = php_str(value).strip().lower()
    return to_ascii(raw) if raw else ""


def valid_selector(selector: str) -> bool:
    """``ctype_alnum(str_replace(['-', '_', '.'], '', $selector))``."""
    rest = re.sub(r"[-_.]", "", selector)
    return bool(rest) and rest.isascii() and rest.isalnum()


def escape_colon(value: str) -> str:
    """``str_replace(':', '\\:', $v)`` as the relayhost/transport handlers apply it to credentials."""
    return value.replace(":", "\\:")


def is_ip(value: str) -> bool:
    """PHP ``filter_var($v, FILTER_VALIDATE_IP)``."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- rows


@dataclass
class DomainRow:
    domain: str
    description: str
    aliases: int
    mailboxes: int
    defquota: int  # MiB
    maxquota: int  # MiB
    quota: int  # MiB
    active: int = 1
    gal: int = 1
    backupmx: int = 0
    relay_all_recipients: int = 0
    relay_unknown_only: int = 0
    relayhost: str = "0"  # VARCHAR: "0" = none
    rl_value: str = ""
    rl_frame: str = ""
    created: str = ""
    modified: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class AliasDomainRow:
    alias_domain: str
    target_domain: str
    active: int = 0
    rl_value: str = ""
    rl_frame: str = ""
    created: str = ""
    modified: str | None = None


@dataclass
class MailboxRow:
    username: str
    local_part: str
    domain: str
    name: str
    quota: int  # bytes, 0 = unlimited
    active: int = 1
    created: str = ""
    modified: str | None = None
    relayhost: str = "0"


@dataclass
class AliasRow:
    id: int
    address: str
    goto: str
    domain: str
    active: int = 0
    sogo_visible: int = 0
    created: str = ""
    modified: str | None = None


@dataclass
class RelayhostRow:
    id: int
    hostname: str
    username: str
    password: str
    active: int = 1


@dataclass
class TransportRow:
    id: int
    destination: str
    nexthop: str
    username: str
    password: str
    is_mx_based: int = 0
    active: int = 0


# ---------------------------------------------------------------- outcomes, keys, faults, requests


@dataclass
class Outcome:
    """What a handler pushed to ``$_SESSION['return']`` and whether it returned false."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    failed: bool = False

    def push(self, kind: str, log: list[Any], msg: str | list[Any]) -> None:
        self.entries.append({"type": kind, "log": log, "msg": msg})

    def fail(self, log: list[Any], msg: str | list[Any]) -> Outcome:
        """Push a danger entry and mark the handler as having returned false."""
        self.push("danger", log, msg)
        self.failed = True
        return self


@dataclass(frozen=True)
class ApiKey:
    key: str
    access: str  # "rw" | "ro"
    active: bool = True
    allow_from: tuple[str, ...] = ()
    skip_ip_check: bool = True


@dataclass(frozen=True)
class Auth:
    """Result of authenticating a request: ``access`` None = not logged in."""

    access: str | None = None
    error: str | None = None  # the 401 message
    new_session: str | None = None  # MCSESSID to set
    banned: bool = False


@dataclass
class FailRule:
    path_prefix: str
    status: int  # 0 = hang, then close the connection without an answer
    count: int = 1
    apply: bool = False  # True: run the request, then lose the answer


@dataclass
class Faults:
    latency_ms: int = 0
    error_rate: float = 0.0
    hang_ms: int = 1000
    fail_next: list[FailRule] = field(default_factory=list)
    sogo_restart_ms: int = 0  # how long a SOGo restart through container_ctrl.php takes (the request waits)
    sogo_restart_fail: int = 0  # the next N SOGo restarts fail (dockerapi answers danger; SOGo keeps its old view)


@dataclass(frozen=True)
class Fault:
    status: int
    apply: bool = False


@dataclass
class RequestRecord:
    method: str
    path: str
    write: bool
    cookie: bool
    status: int = 0
    bytes_in: int = 0  # URL + body received
    bytes_out: int = 0  # body sent (headers not counted)


def parse_faults(data: Any) -> tuple[Faults, int | None]:
    """Validate a ``POST /_sim/faults`` body; returns the faults and an optional new RNG seed.

    Raises:
        ValueError: unknown fields or values out of range.
    """
    if not isinstance(data, dict):
        raise ValueError("faults must be a JSON object")
    unknown = set(data) - {"latency_ms", "error_rate", "hang_ms", "fail_next", "seed", *SOGO_FAULTS}
    if unknown:
        raise ValueError(f"unknown fault fields: {sorted(unknown)}")
    faults = Faults(
        latency_ms=_bounded_int(data.get("latency_ms", 0), "latency_ms", 0, 600_000),
        hang_ms=_bounded_int(data.get("hang_ms", 1000), "hang_ms", 0, 600_000),
        fail_next=[_fail_rule(r) for r in data.get("fail_next", [])],
        sogo_restart_ms=_bounded_int(data.get("sogo_restart_ms", 0), "sogo_restart_ms", 0, 600_000),
        sogo_restart_fail=_bounded_int(data.get("sogo_restart_fail", 0), "sogo_restart_fail", 0, 1_000_000),
    )
    rate = data.get("error_rate", 0.0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
        raise ValueError("error_rate must be a number in 0..1")
    faults.error_rate = float(rate)
    seed = data.get("seed")
    if seed is not None:
        seed = _bounded_int(seed, "seed", 0, 2**63)
    return faults, seed


def _fail_rule(raw: Any) -> FailRule:
    if not isinstance(raw, dict) or not isinstance(raw.get("path_prefix"), str):
        raise ValueError("fail_next entries need a path_prefix string")
    if set(raw) - {"path_prefix", "status", "count", "apply"}:
        raise ValueError("unknown fail_next fields")
    status = _bounded_int(raw.get("status", 500), "status", 0, 599)
    if 0 < status < 100:
        raise ValueError("status must be 0 (hang) or an HTTP status")
    return FailRule(
        path_prefix=raw["path_prefix"],
        status=status,
        count=_bounded_int(raw.get("count", 1), "count", 1, 1_000_000),
        apply=bool(raw.get("apply", False)),
    )


def _bounded_int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}")
    return value


def php_json(value: Any) -> str:
    """PHP ``json_encode()`` with default flags: compact, ``\\/`` for slashes, ``\\uXXXX`` for non-ASCII."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).replace("/", "\\/")


def _logged(raw: str) -> str:
    """One ``$_POST`` field as api_log() writes it."""
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not value:  # PHP keeps the falsy decoded value: null and false print as "", an empty array as "Array"
        return "Array" if isinstance(value, list | dict) else "0" if value == 0 and value is not False else ""
    if isinstance(value, dict):
        value = {k: "*" if re.search("pass", k, re.IGNORECASE) else v for k, v in value.items() if k != "csrf_token"}
    return php_json(value)


def generate_rsa(bits: int) -> tuple[str, str] | None:
    """A fresh RSA pair as (base64 SPKI, PKCS#8 PEM), like ``openssl_pkey_new`` + export; None if keygen fails."""
    if not 1024 <= bits <= MAX_KEY_SIZE:
        return None
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return spki_b64(key.public_key()), pem


def spki_b64(public_key: Any) -> str:
    """Base64 of the DER SubjectPublicKeyInfo: the PEM body joined, as ``openssl_pkey_get_details`` gives it."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode("ascii")


def public_from_pem(pem: str) -> str | None:
    """The base64 SPKI of a private key in PEM (PKCS#8 or PKCS#1), or None if it does not parse.

    Like PHP's ``openssl_pkey_get_private``, parsing does not run the RSA consistency check (56 ms per key, which
    made this simulator the stack's slowest dependency); a PEM that does not decode is refused as before.
    """
    try:
        key = serialization.load_pem_private_key(
            pem.encode("utf-8"), password=None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return spki_b64(key.public_key())


def dkim_length(pubkey: str) -> str:
    """Mailcow guesses the key length from ``strlen(pubkey)``."""
    size = len(pubkey)
    for limit, name in ((391, "1024"), (564, "2048"), (736, "3072"), (1416, "4096")):
        if size < limit:
            return name
    return ">= 8192"


# ---------------------------------------------------------------- state


class _State:
    """Tables, hashes and helpers shared by the handler groups."""

    def __init__(self, *, hostname: str, clock: Callable[[], dt.datetime]) -> None:
        self.hostname = hostname
        self.clock = clock
        self.show_dkim_priv_keys = False
        self.split_dkim_255 = False
        self.faults = Faults()
        # SOGo learns domains only when its container starts (bootstrap-sogo.sh reads the domain table then)
        self.sogo_domains: set[str] = set()
        self.sogo_restarts = 0  # successful restarts
        self.sogo_restart_failures = 0
        self.sogo_started: str | None = None
        self.api_log: collections.deque[str] = collections.deque(maxlen=LOG_LINES)  # Redis API_LOG, newest first
        self.domains: dict[str, DomainRow] = {}
        self.alias_domains: dict[str, AliasDomainRow] = {}
        self.mailboxes: dict[str, MailboxRow] = {}
        self.aliases: dict[int, AliasRow] = {}
        self.relayhosts: dict[int, RelayhostRow] = {}
        self.transports: dict[int, TransportRow] = {}
        self.mta_sts: dict[str, dict[str, Any]] = {}
        self.redis: dict[str, dict[str, str]] = {name: {} for name in (*DKIM_HASHES, "DOMAIN_MAP")}
        self.next_id = {"alias": 1, "relayhosts": 1, "transports": 1}

    def clear_tables(self) -> None:
        for table in (self.domains, self.alias_domains, self.mailboxes, self.aliases):
            table.clear()
        self.relayhosts.clear()
        self.transports.clear()
        self.mta_sts.clear()
        for hash_ in self.redis.values():
            hash_.clear()
        self.next_id = {"alias": 1, "relayhosts": 1, "transports": 1}
        self.sogo_domains.clear()
        self.sogo_restarts = self.sogo_restart_failures = 0
        self.sogo_started = None
        self.api_log.clear()

    def now(self) -> str:
        return self.clock().strftime("%Y-%m-%d %H:%M:%S")

    def new_id(self, table: str) -> int:
        value = self.next_id[table]
        self.next_id[table] = value + 1
        return value

    def domain_row(self, name: str) -> DomainRow | None:
        """``SELECT ... FROM domain WHERE domain = :d`` (case-insensitive collation)."""
        return self.domains.get(to_ascii(name.strip()))

    def alias_domain_row(self, name: str) -> AliasDomainRow | None:
        return self.alias_domains.get(to_ascii(name.strip()))

    def has_domain_access(self, name: str) -> bool:
        """``hasDomainAccess()`` for the admin: a valid name that exists as domain or alias domain."""
        if not is_valid_domain_name(name):
            return False
        return self.domain_row(name) is not None or self.alias_domain_row(name) is not None

    def mailboxes_of(self, domain: str) -> list[MailboxRow]:
        return [m for m in self.mailboxes.values() if m.domain == domain]

    def real_aliases_of(self, domain: str) -> list[AliasRow]:
        """Aliases of a domain that are not a mailbox's self-alias."""
        return [a for a in self.aliases.values() if a.domain == domain and a.address not in self.mailboxes]

    def hget(self, hash_: str, key: str) -> str | None:
        return self.redis[hash_].get(key)

    def hset(self, hash_: str, key: str, value: str) -> None:
        self.redis[hash_][key] = value

    def hdel(self, hash_: str, key: str) -> None:
        self.redis[hash_].pop(key, None)

    # -- SOGo and the API log ------------------------------------------------------------------

    def restart_sogo(self) -> str | None:
        """``docker('post', 'sogo-mailcow', 'restart')``: SOGo starts again and reads the domain table.

        Returns None on success, else dockerapi's message; a failed restart leaves SOGo's view as it was.
        """
        if self.faults.sogo_restart_fail > 0:
            self.faults.sogo_restart_fail -= 1
            self.sogo_restart_failures += 1
            return SOGO_RESTART_FAILED
        self.sogo_domains = set(self.domains)
        self.sogo_restarts += 1
        self.sogo_started = self.now()
        return None

    def log_api(self, uri: str, method: str, remote: str, post: dict[str, str]) -> None:
        """``api_log($_POST)`` (json_api.php): every field JSON-decoded, its top-level keys matching /pass/i
        masked, re-encoded; pushed to API_LOG (trimmed to LOG_LINES). Nothing else is masked: an add/dkim_import
        body keeps its ``private_key_file``."""
        data = ", ".join(f"{name}='{_logged(value)}'" for name, value in post.items() if name != "csrf_token")
        line = {"time": int(self.clock().timestamp()), "uri": uri, "method": method, "remote": remote, "data": data}
        self.api_log.appendleft(php_json(line))

    def api_logs(self, extra: str | None) -> list[dict[str, Any]] | None:
        """``get_logs('api-mailcow', $extra)``: the newest READ_LINES, the newest N, or the range "from-to"
        (1-based); None (answered ``{}``) for a bad range or an empty log."""
        if extra is None:
            first, last = 0, READ_LINES - 1
        else:
            extra = re.sub(r"[^\d-]", "", extra)
            if is_numeric(extra) and intval(extra) >= 1:
                first, last = 0, intval(extra) - 1
            else:
                low, _, high = extra.partition("-")
                first, last = intval(low) - 1, intval(high) - 1
                if first < 0 or last < first:
                    return None
        lines = list(self.api_log)[first : last + 1]
        return [json.loads(line) for line in lines] or None


# ---------------------------------------------------------------- DKIM (functions.dkim.inc.php)


class _Dkim(_State):
    def dkim_add(self, data: dict[str, Any], out: Outcome | None = None) -> Outcome:
        """``add/dkim``: the field is ``domains``; an existing key is "invalid"; unknown domain -> access_denied."""
        out = Outcome() if out is None else out
        log: list[Any] = ["dkim", "add", data]
        key_size = intval(data.get("key_size"))
        selector = php_str(data["dkim_selector"]) if data.get("dkim_selector") is not None else "dkim"
        for domain in split_list(data.get("domains")):
            if not is_valid_domain_name(domain) or self.hget("DKIM_PUB_KEYS", domain) is not None:
                out.push("danger", log, ["dkim_domain_or_sel_invalid", domain])
            elif not valid_selector(selector):
                out.push("danger", log, ["dkim_domain_or_sel_invalid", domain])
            elif not self.has_domain_access(domain):
                out.push("danger", log, ["access_denied", domain])
            else:
                self._dkim_generate(domain, selector, key_size, out, log)
        return out

    def _dkim_generate(self, domain: str, selector: str, bits: int, out: Outcome, log: list[Any]) -> None:
        pair = generate_rsa(bits)
        if pair is None:
            out.push("danger", log, ["dkim_domain_or_sel_invalid", domain])
            return
        self._dkim_store(domain, selector, *pair)
        out.push("success", log, ["dkim_added", domain])

    def _dkim_store(self, domain: str, selector: str, pubkey: str, pem: str) -> None:
        self.hset("DKIM_PUB_KEYS", domain, pubkey)
        self.hset("DKIM_SELECTORS", domain, selector)
        self.hset("DKIM_PRIV_KEYS", f"{selector}.{domain}", pem)

    def dkim_details(self, domain: str) -> dict[str, Any] | None:
        """``get/dkim/{domain}``: exact Redis key (no lower-casing); blind keys are returned too."""
        pubkey = self.hget("DKIM_PUB_KEYS", domain)
        if pubkey is None:
            return None
        txt = f"v=DKIM1;k=rsa;t=s;s=email;p={pubkey}"
        if self.split_dkim_255:
            txt = '"' + '" "'.join(txt[i : i + 255] for i in range(0, len(txt), 255)) + '"'
        selector = self.hget("DKIM_SELECTORS", domain) or ""
        pem = self.hget("DKIM_PRIV_KEYS", f"{selector}.{domain}") or ""
        privkey = base64.b64encode(pem.encode()).decode() if self.show_dkim_priv_keys else ""
        return {
            "pubkey": pubkey,
            "length": dkim_length(pubkey),
            "dkim_txt": txt,
            "dkim_selector": selector,
            "privkey": privkey,
        }

    def dkim_sign(self, domain: str, message: bytes) -> bytes | None:
        """The data plane: ``message`` with the DKIM-Signature rspamd adds with the domain's key from Redis
        (``DKIM_SELECTORS`` / ``DKIM_PRIV_KEYS``), or None when the domain has no key. The key never leaves."""
        selector = self.hget("DKIM_SELECTORS", domain)
        pem = self.hget("DKIM_PRIV_KEYS", f"{selector}.{domain}") if selector else None
        if selector is None or pem is None:
            return None
        headers = [b"from", b"to", b"subject", b"date"]
        sig = dkim.sign(message, selector.encode(), domain.encode(), pem.encode(), include_headers=headers)
        return bytes(sig) + message

    def dkim_delete(
        self, items: list[Any], out: Outcome | None = None, *, logged: dict[str, Any] | None = None
    ) -> Outcome:
        """``delete/dkim``: ``dkim_removed`` even when no key existed. ``logged``: the ``$_data`` of an internal
        call (dkim_import passes ``{"domains": "<domain>"}``, a string; the API passes the list)."""
        out = Outcome() if out is None else out
        log: list[Any] = ["dkim", "delete", {"domains": items} if logged is None else logged]
        for item in items:
            domain = php_str(item)
            if not is_valid_domain_name(domain):
                out.push("danger", log, ["dkim_domain_or_sel_invalid", domain])
                continue
            selector = self.hget("DKIM_SELECTORS", domain)
            self.hdel("DKIM_PUB_KEYS", domain)
            if selector is not None:
                self.hdel("DKIM_PRIV_KEYS", f"{selector}.{domain}")
            self.hdel("DKIM_SELECTORS", domain)
            out.push("success", log, ["dkim_removed", domain])
        return out

    def dkim_duplicate(self, attr: dict[str, Any]) -> Outcome:
        """``add/dkim_duplicate``: overwrites without checks; the target's old private key stays orphaned."""
        out = Outcome()
        log: list[Any] = ["dkim", "duplicate", attr]
        source = php_str(attr.get("from_domain"))
        pubkey = self.hget("DKIM_PUB_KEYS", source)
        selector = self.hget("DKIM_SELECTORS", source)
        if not is_valid_domain_name(source) or pubkey is None or selector is None:
            return out.fail(log, ["dkim_domain_or_sel_invalid", source])
        pem = self.hget("DKIM_PRIV_KEYS", f"{selector}.{source}") or ""
        for target in as_array(attr.get("to_domain")):
            name = php_str(target)
            self._dkim_store(name, selector, pubkey, pem)
            out.push("success", log, ["dkim_duplicated", source, name])
        return out

    def dkim_import(self, attr: dict[str, Any]) -> Outcome:
        """``add/dkim_import``: success is always ``[dkim_removed, dkim_added]``; no domain-existence check."""
        out = Outcome()
        log: list[Any] = ["dkim", "import", attr]  # the PEM included, as functions.dkim.inc.php logs $_data
        pem = re.sub(r"\r\n?", "\n", php_str(attr.get("private_key_file")).strip())
        pubkey = public_from_pem(pem)
        if pubkey is None:
            return out.fail(log, ["private_key_error", "error:1E08010C:DECODER routines::unsupported"])
        domain = php_str(attr.get("domain"))
        selector = php_str(attr["dkim_selector"]) if attr.get("dkim_selector") is not None else "dkim"
        if not is_valid_domain_name(domain):
            return out.fail(log, ["dkim_domain_or_sel_invalid", domain])
        if self.hget("DKIM_PUB_KEYS", domain) is not None and intval(attr.get("overwrite_existing")) == 0:
            return out.fail(log, ["dkim_domain_or_sel_exists", domain])
        if not valid_selector(selector):
            return out.fail(log, ["dkim_domain_or_sel_invalid", domain])
        self.dkim_delete([domain], out, logged={"domains": domain})
        self._dkim_store(domain, selector, pubkey, pem)
        out.push("success", log, ["dkim_added", domain])
        return out


# ---------------------------------------------------------------- domains (functions.mailbox.inc.php)


class _Domains(_Dkim):
    def add_domain(self, attr: dict[str, Any]) -> Outcome:
        """``add/domain``: template defaults; auto DKIM unless key_size/dkim_selector empty; reuses a blind key."""
        out = Outcome()
        log: list[Any] = ["mailbox", "add", "domain", attr, None]
        values = {**DOMAIN_DEFAULTS, **{k: v for k, v in attr.items() if k in DOMAIN_DEFAULTS}}
        domain = norm_domain(attr.get("domain"))
        error = self._new_domain_error(domain, values)
        if error is not None:
            return out.fail(log, error)
        description = php_str(attr.get("description"))
        row = DomainRow(
            domain,
            description or domain,
            intval(values["aliases"]),
            intval(values["mailboxes"]),
            intval(values["defquota"]),
            intval(values["maxquota"]),
            intval(values["quota"]),
            created=self.now(),
        )
        self._set_flags(row, {k: intval(values[k]) for k in DOMAIN_FLAGS})
        self._set_ratelimit(row, values)
        self.domains[domain] = row
        self.hset("DOMAIN_MAP", domain, "1")
        self._append_tags(row, as_array(values["tags"]), out, log)
        self._domain_dkim(domain, values, out)
        if intval(values["restart_sogo"]) and self.restart_sogo() is not None:
            out.push("warning", log, "domain_added_sogo_failed")  # no domain_added, and the handler returns false
            out.failed = True
            return out
        out.push("success", log, ["domain_added", domain])
        return out

    def seed_domains(self, count: int, *, prefix: str = "seed", pubkey: str = "", selector: str = "dkim") -> int:
        """Test-only fast path (``POST /_sim/seed``): ``count`` domains ``<prefix><i>.test`` with the template's
        defaults, each with the DKIM public key ``pubkey`` (none when empty; no private key), written straight into
        the tables and Redis hashes: no API calls, no log entries, no SOGo restart. Returns the domains added.

        Raises:
            ValueError: a negative count or a prefix that is not a DNS label.
        """
        if count < 0 or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", prefix):
            raise ValueError(f"seed: bad count or prefix: {count!r}, {prefix!r}")
        d = DOMAIN_DEFAULTS
        for i in range(count):
            domain = f"{prefix}{i}.test"
            self.domains[domain] = DomainRow(
                domain,
                "seeded",
                intval(d["aliases"]),
                intval(d["mailboxes"]),
                intval(d["defquota"]),
                intval(d["maxquota"]),
                intval(d["quota"]),
                created=self.now(),
            )
            self.hset("DOMAIN_MAP", domain, "1")
            if pubkey:
                self.hset("DKIM_PUB_KEYS", domain, pubkey)
                self.hset("DKIM_SELECTORS", domain, selector)
        return count

    def _new_domain_error(self, domain: str, values: dict[str, Any]) -> str | list[Any] | None:
        defquota, maxquota, quota = (intval(values[k]) for k in ("defquota", "maxquota", "quota"))
        checks: list[tuple[bool, str | list[Any]]] = [
            (defquota > maxquota, "mailbox_defquota_exceeds_mailbox_maxquota"),
            (maxquota > quota, "mailbox_quota_exceeds_domain_quota"),
            (defquota == 0, "defquota_empty"),
            (maxquota == 0, "maxquota_empty"),
            (not is_valid_domain_name(domain), "domain_invalid"),
        ]
        for numeric in ("aliases", "mailboxes", "defquota", "maxquota", "quota"):
            checks.append((not is_numeric(values[numeric]), ["object_is_not_numeric", values[numeric]]))
        exists = self.domain_row(domain) is not None or self.alias_domain_row(domain) is not None
        checks += [(exists, ["domain_exists", domain]), (domain == self.hostname, "domain_cannot_match_hostname")]
        return next((msg for failed, msg in checks if failed), None)

    @staticmethod
    def _set_flags(row: DomainRow, flags: dict[str, int]) -> None:
        """relay_unknown_only forces relay_all_recipients; either relay flag forces backupmx."""
        if flags["relay_unknown_only"] == 1:
            flags["relay_all_recipients"] = 1
        if flags["relay_all_recipients"] == 1:
            flags["backupmx"] = 1
        for name, value in flags.items():
            setattr(row, name, value)

    @staticmethod
    def _set_ratelimit(row: DomainRow, values: dict[str, Any]) -> None:
        value, frame = php_str(values.get("rl_value")), php_str(values.get("rl_frame"))
        if value and frame in ("s", "m", "h", "d"):
            row.rl_value, row.rl_frame = str(intval(value)), frame

    def _append_tags(self, row: DomainRow, tags: list[Any], out: Outcome, log: list[Any]) -> None:
        """Tags are appended; a repeated tag breaks ``UNIQUE(tag_name, domain)``: uncaught PDOException."""
        for tag in tags:
            name = php_str(tag).strip()
            if not name:
                continue
            if len(row.tags) >= TAGGING_LIMIT:
                out.push("warning", log, ["tag_limit_exceeded", f"limit {TAGGING_LIMIT}"])
                return
            if name in row.tags:
                raise PhpFatalError(200, "PDOException: Duplicate entry for key tag_name")
            row.tags.append(name)

    def _domain_dkim(self, domain: str, values: dict[str, Any], out: Outcome) -> None:
        if php_empty(values["key_size"]) or php_empty(values["dkim_selector"]):
            return
        if self.hget("DKIM_SELECTORS", domain) is not None:
            out.push(
                "success", ["mailbox", "add", "domain", {"domain": domain}, None], ["domain_add_dkim_available", domain]
            )
            return
        self.dkim_add(
            {"key_size": values["key_size"], "dkim_selector": values["dkim_selector"], "domains": domain}, out
        )

    def domain_details(self, name: str, tags: list[str] | None = None) -> dict[str, Any] | None:
        """``get/domain/{name}``: an alias-domain name answers with its target's object; unknown -> None."""
        if not is_valid_domain_name(name):
            return None
        alias = self.alias_domain_row(name)
        row = self.domain_row(alias.target_domain if alias is not None else name)
        if row is None or (tags and not set(tags) & set(row.tags)):
            return None
        return self._details(row)

    def domains_all(self, tags: list[str] | None = None) -> list[dict[str, Any]]:
        rows = sorted(self.domains.values(), key=lambda r: r.domain)
        return [self._details(r) for r in rows if not tags or set(tags) & set(r.tags)]

    def _details(self, row: DomainRow) -> dict[str, Any]:
        boxes = self.mailboxes_of(row.domain)
        in_use = sum(m.quota for m in boxes)
        max_new = min(row.quota * MIB - in_use, row.maxquota * MIB)
        aliases = len(self.real_aliases_of(row.domain))
        data: dict[str, Any] = {
            "max_new_mailbox_quota": max_new,
            "def_new_mailbox_quota": min(max_new, row.defquota * MIB),
            "quota_used_in_domain": str(in_use),
            "bytes_total": 0,
            "msgs_total": 0,
            "mboxes_in_domain": len(boxes),
            "mboxes_left": row.mailboxes - len(boxes),
            "domain_name": row.domain,
            "domain_h_name": to_unicode(row.domain),
            "description": row.description,
            "max_num_aliases_for_domain": row.aliases,
            "max_num_mboxes_for_domain": row.mailboxes,
            "def_quota_for_mbox": row.defquota * MIB,
            "max_quota_for_mbox": row.maxquota * MIB,
            "max_quota_for_domain": row.quota * MIB,
            "relayhost": row.relayhost,
        }
        for flag in ("backupmx", "gal"):
            data[flag] = data[f"{flag}_int"] = getattr(row, flag)
        data["rl"] = {"value": row.rl_value, "frame": row.rl_frame} if row.rl_value else False
        data["active"] = data["active_int"] = row.active
        for flag in ("relay_all_recipients", "relay_unknown_only"):
            data[flag] = data[f"{flag}_int"] = getattr(row, flag)
        data.update(created=row.created, modified=row.modified, aliases_in_domain=aliases)
        data.update(aliases_left=row.aliases - aliases, domain_admins="-")
        if row.tags:
            data["tags"] = list(row.tags)
        return data

    def edit_domain(self, items: list[Any], attr: dict[str, Any]) -> Outcome:
        """``edit/domain``: partial; 0/"" mean unchanged for aliases/maxquota/quota/description; relayhost unchecked."""
        out = Outcome()
        log: list[Any] = ["mailbox", "edit", "domain", {"domain": items, **attr}, None]
        for item in items:
            domain = norm_domain(item)
            row = self.domain_row(domain) if is_valid_domain_name(domain) else None
            if row is None:
                out.push("danger", log, "domain_invalid")
                continue
            new = self._edited(row, attr)
            error = self._edit_error(row, new)
            if error is not None:
                out.push("danger", log, error)
                continue
            flags = {k: new.pop(k) for k in DOMAIN_FLAGS}
            for name, value in new.items():
                setattr(row, name, value)
            self._set_flags(row, flags)
            row.modified = self.now()
            self._append_tags(row, as_array(attr.get("tags")), out, log)
            out.push("success", log, ["domain_modified", domain])
        return out

    @staticmethod
    def _edited(row: DomainRow, attr: dict[str, Any]) -> dict[str, Any]:
        new: dict[str, Any] = {}
        for name in (*DOMAIN_FLAGS, "mailboxes", "defquota"):  # isset()
            new[name] = intval(attr[name]) if attr.get(name) is not None else getattr(row, name)
        for name in ("aliases", "maxquota", "quota"):  # !empty()
            new[name] = intval(attr[name]) if not php_empty(attr.get(name)) else getattr(row, name)
        description = attr.get("description")
        new["description"] = php_str(description) if not php_empty(description) else row.description
        new["relayhost"] = str(intval(attr["relayhost"])) if attr.get("relayhost") is not None else row.relayhost
        return new

    def _edit_error(self, row: DomainRow, new: dict[str, Any]) -> str | list[Any] | None:
        boxes = self.mailboxes_of(row.domain)
        biggest = max((m.quota for m in boxes), default=0)
        used = sum(m.quota for m in boxes)
        aliases = len(self.real_aliases_of(row.domain))
        checks: list[tuple[bool, str | list[Any]]] = [
            (new["aliases"] < aliases, ["aliases_in_use", aliases]),
            (new["defquota"] > new["maxquota"], "mailbox_defquota_exceeds_mailbox_maxquota"),
            (new["defquota"] == 0, "defquota_empty"),
            (new["maxquota"] > new["quota"], "mailbox_quota_exceeds_domain_quota"),
            (new["maxquota"] == 0, "maxquota_empty"),
            (biggest > new["maxquota"] * MIB, ["max_quota_in_use", biggest // MIB]),
            (used > new["quota"] * MIB, ["domain_quota_m_in_use", used // MIB]),
            (len(boxes) > new["mailboxes"], ["mailboxes_in_use", len(boxes)]),
        ]
        return next((msg for failed, msg in checks if failed), None)

    def delete_domain(self, items: list[Any]) -> Outcome:
        """``delete/domain``: ``domain_removed`` even if absent; refuses non-empty domains; keeps the DKIM key."""
        out = Outcome()
        log: list[Any] = ["mailbox", "delete", "domain", {"domain": items}, None]
        for item in items:
            domain = norm_domain(item)
            if not is_valid_domain_name(domain):
                out.push("danger", log, "domain_invalid")
            elif self.mailboxes_of(domain):
                out.push("danger", log, ["domain_not_empty", domain])
            else:
                self._drop_domain(domain)
                out.push("success", log, ["domain_removed", domain])
        return out

    def _drop_domain(self, domain: str) -> None:
        self.domains.pop(domain, None)
        self.hdel("DOMAIN_MAP", domain)
        for alias_domain in [a.alias_domain for a in self.alias_domains.values() if a.target_domain == domain]:
            self.alias_domains.pop(alias_domain)
            self.hdel("DOMAIN_MAP", alias_domain)
            self._drop_aliases_of(alias_domain)
        self._drop_aliases_of(domain)

    def _drop_aliases_of(self, domain: str) -> None:
        for alias_id in [a.id for a in self.aliases.values() if a.domain == domain]:
            del self.aliases[alias_id]

    def delete_domain_tags(self, domain: str, items: list[Any]) -> Outcome:
        """``delete/domain/tag/{domain}`` with body ``["tag1", ...]``."""
        out = Outcome()
        log: list[Any] = ["mailbox", "delete", "tags_domain", {"domain": domain, "tags": items}, None]
        row = self.domain_row(domain) if is_valid_domain_name(domain) else None
        if row is None:
            return out.fail(log, "domain_invalid")
        drop = {php_str(t) for t in items}
        row.tags = [t for t in row.tags if t not in drop]
        out.push("success", log, ["domain_modified", row.domain])
        return out


# ---------------------------------------------------------------- alias domains, mailboxes, aliases


class _Mailboxes(_Domains):
    def add_alias_domain(self, attr: dict[str, Any]) -> Outcome:
        """``add/alias-domain``: ``active`` defaults to 0; DKIM only when key_size and dkim_selector are sent."""
        out = Outcome()
        log: list[Any] = ["mailbox", "add", "alias_domain", attr, None]
        target = norm_domain(attr.get("target_domain"))
        if not is_valid_domain_name(target):
            return out.fail(log, "target_domain_invalid")
        if not self.has_domain_access(target):
            return out.fail(log, "access_denied")
        for raw in split_list(attr.get("alias_domain")):
            alias = norm_domain(raw)
            error = self._alias_domain_error(alias, target)
            if error is not None:
                out.push("danger", log, error)
                continue
            row = AliasDomainRow(alias, target, active=intval(attr.get("active")), created=self.now())
            self.alias_domains[alias] = row
            self.hset("DOMAIN_MAP", alias, "1")
            if not php_empty(attr.get("key_size")) and not php_empty(attr.get("dkim_selector")):
                self.dkim_add(
                    {"key_size": attr["key_size"], "dkim_selector": attr["dkim_selector"], "domains": alias}, out
                )
            out.push("success", log, ["aliasd_added", alias])
        return out

    def _alias_domain_error(self, alias: str, target: str) -> list[Any] | None:
        target_row = self.domain_row(target)
        checks: list[tuple[bool, list[Any]]] = [
            (not is_valid_domain_name(alias), ["alias_domain_invalid", alias]),
            (alias == target, ["aliasd_targetd_identical", target]),
            (target_row is None, ["targetd_not_found", target]),
            (
                self.domain_row(alias) is not None or self.alias_domain_row(alias) is not None,
                ["alias_domain_invalid", alias],
            ),
            (target_row is not None and target_row.backupmx == 1, ["targetd_relay_domain", target]),
        ]
        return next((msg for failed, msg in checks if failed), None)

    def alias_domain_details(self, name: str) -> dict[str, Any] | None:
        row = self.alias_domain_row(name) if is_valid_domain_name(name) else None
        if row is None:
            return None
        target = self.domain_row(row.target_domain)
        return {
            "alias_domain": row.alias_domain,
            "parent_is_backupmx": target is not None and target.backupmx == 1,
            "target_domain": row.target_domain,
            "active": row.active,
            "active_int": row.active,
            "rl": {"value": row.rl_value, "frame": row.rl_frame} if row.rl_value else False,
            "created": row.created,
            "modified": row.modified,
        }

    def alias_domains_all(self) -> list[dict[str, Any]]:
        return [d for name in sorted(self.alias_domains) if (d := self.alias_domain_details(name)) is not None]

    def edit_alias_domain(self, items: list[Any], attr: dict[str, Any]) -> Outcome:
        out = Outcome()
        log: list[Any] = ["mailbox", "edit", "alias_domain", {"alias_domain": items, **attr}, None]
        for item in items:
            alias = norm_domain(item)
            row = self.alias_domain_row(alias) if is_valid_domain_name(alias) else None
            if row is None:
                out.push("danger", log, ["alias_domain_invalid", alias])
                continue
            if attr.get("target_domain") is not None:
                target = norm_domain(attr["target_domain"])
                if self.domain_row(target) is None:
                    out.push("danger", log, ["targetd_not_found", target])
                    continue
                row.target_domain = target
            if attr.get("active") is not None:
                row.active = intval(attr["active"])
            row.modified = self.now()
            out.push("success", log, ["aliasd_modified", alias])
        return out

    def delete_alias_domain(self, items: list[Any]) -> Outcome:
        """``delete/alias-domain``: absent -> access_denied (not idempotent); the DKIM key stays."""
        out = Outcome()
        log: list[Any] = ["mailbox", "delete", "alias_domain", {"alias_domain": items}, None]
        for item in items:
            alias = norm_domain(item)
            if self.alias_domains.pop(alias, None) is None:
                out.push("danger", log, "access_denied")
                continue
            self.hdel("DOMAIN_MAP", alias)
            self._drop_aliases_of(alias)
            out.push("success", log, ["alias_domain_removed", alias])
        return out

    def add_mailbox(self, attr: dict[str, Any]) -> Outcome:
        """``add/mailbox``: password2 required; unknown domain -> access_denied; quota in MiB, 0 = unlimited."""
        out = Outcome()
        log: list[Any] = ["mailbox", "add", "mailbox", {**attr, "password": "*", "password2": "*"}, None]
        local = php_str(attr.get("local_part")).strip().lower()
        domain = norm_domain(attr.get("domain"))
        username = f"{local}@{domain}"
        error = self._new_mailbox_error(attr, local, domain, username)
        if error is not None:
            return out.fail(log, error)
        name = php_str(attr.get("name")) or local
        quota = intval(attr.get("quota")) * MIB
        self.mailboxes[username] = MailboxRow(
            username, local, domain, name, quota, active=intval(attr.get("active", 1)), created=self.now()
        )
        alias_id = self.new_id("alias")
        self.aliases[alias_id] = AliasRow(alias_id, username, username, domain, active=1)
        self._mailbox_ratelimit(username, attr, out)
        out.push("success", log, ["mailbox_added", username])
        return out

    @staticmethod
    def _mailbox_ratelimit(username: str, attr: dict[str, Any], out: Outcome) -> None:
        """add/mailbox calls ``ratelimit('edit', 'mailbox', ...)`` with the template's rl_frame "s" / rl_value "",
        which answers ``rl_saved`` (or ``rl_timeframe``) before ``mailbox_added``."""
        data = {"object": username, "rl_frame": attr.get("rl_frame", "s"), "rl_value": attr.get("rl_value", "")}
        log: list[Any] = ["ratelimit", "edit", "mailbox", data]
        if data["rl_frame"] not in ("s", "m", "h", "d"):
            out.push("danger", log, "rl_timeframe")
            return
        out.push("success", log, ["rl_saved", username])

    def _new_mailbox_error(
        self, attr: dict[str, Any], local: str, domain: str, username: str
    ) -> str | list[Any] | None:
        password, password2 = attr.get("password"), attr.get("password2")
        if not local or not _EMAIL.match(username):
            return "mailbox_invalid"
        if php_empty(password) or php_empty(password2):
            return "password_complexity"
        if password != password2:
            return "password_mismatch"
        if not self.has_domain_access(domain):
            return "access_denied"
        row = self.domain_row(domain)
        if row is None:
            return ["domain_not_found", domain]
        return self._mailbox_limit_error(row, username, intval(attr.get("quota")))

    def _mailbox_limit_error(self, row: DomainRow, username: str, quota_mib: int) -> str | list[Any] | None:
        boxes = self.mailboxes_of(row.domain)
        left = row.quota - sum(m.quota for m in boxes) // MIB
        checks: list[tuple[bool, list[Any]]] = [
            (username in self.mailboxes, ["object_exists", username]),
            (any(a.address == username for a in self.aliases.values()), ["is_alias", username]),
            (len(boxes) >= row.mailboxes, ["max_mailbox_exceeded", len(boxes), row.mailboxes]),
            (quota_mib > row.maxquota, ["mailbox_quota_exceeded", row.maxquota]),
            (quota_mib > left, ["mailbox_quota_left_exceeded", left]),
        ]
        return next((msg for failed, msg in checks if failed), None)

    def mailbox_details(self, username: str) -> dict[str, Any] | None:
        row = self.mailboxes.get(username.strip().lower())
        if row is None:
            return None
        return {
            "username": row.username,
            "domain": row.domain,
            "local_part": row.local_part,
            "name": row.name,
            "active": row.active,
            "active_int": row.active,
            "quota": row.quota,
            "quota_used": 0,
            "messages": 0,
            "created": row.created,
            "modified": row.modified,
            "attributes": {"relayhost": row.relayhost},
        }

    def mailboxes_all(self, domain: str | None = None) -> list[dict[str, Any]]:
        names = sorted(u for u, m in self.mailboxes.items() if domain is None or m.domain == norm_domain(domain))
        return [d for u in names if (d := self.mailbox_details(u)) is not None]

    def delete_mailbox(self, items: list[Any]) -> Outcome:
        out = Outcome()
        log: list[Any] = ["mailbox", "delete", "mailbox", {"username": items}, None]
        for item in items:
            username = php_str(item).strip().lower()
            if self.mailboxes.pop(username, None) is None:
                out.push("danger", log, "access_denied")
                continue
            for alias_id in [a.id for a in self.aliases.values() if a.address == username]:
                del self.aliases[alias_id]
            out.push("success", log, ["mailbox_removed", username])
        return out

    def add_alias(self, attr: dict[str, Any]) -> Outcome:
        """``add/alias``: ``active`` and ``sogo_visible`` default to 0; success carries the new id."""
        out = Outcome()
        log: list[Any] = ["mailbox", "add", "alias", attr, None]
        address = php_str(attr.get("address")).strip().lower()
        gotos = [g for g in re.split(r"[\s,;]+", php_str(attr.get("goto")).strip().lower()) if g]
        domain = address.rpartition("@")[2]
        if "@" not in address:
            return out.fail(log, ["alias_invalid", address])
        if not self.has_domain_access(domain):
            return out.fail(log, "access_denied")
        if address in self.mailboxes or any(a.address == address for a in self.aliases.values()):
            return out.fail(log, ["is_alias_or_mailbox", address])
        if not gotos:
            return out.fail(log, "goto_empty")
        bad = next((g for g in gotos if not _EMAIL.match(g)), None)
        if bad is not None:
            return out.fail(log, ["goto_invalid", bad])
        alias_id = self.new_id("alias")
        self.aliases[alias_id] = AliasRow(
            alias_id,
            address,
            ",".join(gotos),
            domain,
            intval(attr.get("active")),
            intval(attr.get("sogo_visible")),
            created=self.now(),
        )
        out.push("success", log, ["alias_added", address, alias_id])
        return out

    def alias_details(self, alias_id: str) -> dict[str, Any] | None:
        row = self.aliases.get(intval(alias_id))
        if row is None:
            return None
        data = asdict(row)
        data.update(active_int=row.active, sogo_visible_int=row.sogo_visible, in_primary_domain=row.domain)
        return data

    def aliases_all(self) -> list[dict[str, Any]]:
        return [d for i in sorted(self.aliases) if (d := self.alias_details(str(i))) is not None]

    def delete_alias(self, items: list[Any]) -> Outcome:
        out = Outcome()
        log: list[Any] = ["mailbox", "delete", "alias", {"id": items}]
        for item in items:
            row = self.aliases.pop(intval(item), None)
            if row is None:
                out.push("danger", log, "access_denied")
                continue
            out.push("success", log, ["alias_removed", row.address])
        return out


# ---------------------------------------------------------------- relayhosts and transports (functions.transports)


class _Maps(_Mailboxes):
    def add_relayhost(self, attr: dict[str, Any]) -> Outcome:
        """``add/relayhost``: no duplicate check, no id in the answer, password echoed in ``log``."""
        out = Outcome()
        log: list[Any] = ["relayhost", "add", attr]
        hostname = php_str(attr.get("hostname")).strip()
        if not hostname:
            return out.fail(log, ["invalid_host", ""])
        row_id = self.new_id("relayhosts")
        username = escape_colon(php_str(attr.get("username")).strip())
        password = escape_colon(escape_colon(php_str(attr.get("password")).strip()))  # escaped twice on add
        self.relayhosts[row_id] = RelayhostRow(row_id, hostname, username, password, active=1)
        out.push("success", log, ["relayhost_added", ""])
        return out

    def relayhost_details(self, relayhost_id: str) -> dict[str, Any] | None:
        row = self.relayhosts.get(intval(relayhost_id))
        if row is None:
            return None
        domains = [d.domain for d in self.domains.values() if d.relayhost == str(row.id)]
        boxes = [m.username for m in self.mailboxes.values() if m.relayhost == str(row.id)]
        return {
            "id": row.id,
            "hostname": row.hostname,
            "username": row.username,
            "password": row.password,
            "active": row.active,
            "password_short": _short(row.password),
            "used_by_domains": ", ".join(domains),
            "used_by_mailboxes": ", ".join(boxes),
        }

    def relayhosts_all(self) -> list[dict[str, Any]]:
        return [d for i in sorted(self.relayhosts) if (d := self.relayhost_details(str(i))) is not None]

    def edit_relayhost(self, items: list[Any], attr: dict[str, Any]) -> Outcome:
        out = Outcome()
        log: list[Any] = ["relayhost", "edit", {"id": items, **attr}]
        for item in items:
            row = self.relayhosts.get(intval(item))
            if row is None:
                out.push("danger", log, ["relayhost_invalid", php_str(item)])
                continue
            if not php_empty(attr.get("hostname")):
                row.hostname = php_str(attr["hostname"]).strip()
            for name in ("username", "password"):
                if attr.get(name) is not None:
                    setattr(row, name, escape_colon(php_str(attr[name]).strip()))
            if attr.get("active") is not None:
                row.active = intval(attr["active"])
            out.push("success", log, ["object_modified", ""])
        return out

    def delete_relayhost(self, items: list[Any]) -> Outcome:
        """``delete/relayhost``: success even for unknown ids; domains bound to it fall back to "0"."""
        out = Outcome()
        log: list[Any] = ["relayhost", "delete", {"id": items}]
        for item in items:
            key = php_str(item)
            self.relayhosts.pop(intval(key), None)
            for row in self.domains.values():
                if row.relayhost == str(intval(key)):
                    row.relayhost = "0"
            out.push("success", log, ["relayhost_removed", key])
        return out

    def add_transport(self, attr: dict[str, Any]) -> Outcome:
        """``add/transport``: ``active`` defaults to 0; destination checks run only if transports exist."""
        out = Outcome()
        log: list[Any] = ["transport", "add", attr]
        nexthop = php_str(attr.get("nexthop")).strip()
        nexthop = f"[{nexthop}]" if is_ip(nexthop) else nexthop
        username = escape_colon(php_str(attr.get("username")).strip())
        if not nexthop:
            return out.fail(log, "invalid_nexthop")
        existing = [self.transports[i] for i in sorted(self.transports)]
        if any(t.nexthop == nexthop and t.username != username for t in existing):
            return out.fail(log, "invalid_nexthop_authenticated")
        is_mx = intval(attr.get("is_mx_based"))
        destinations = split_list(attr.get("destination"))
        for row in existing:  # the validation loop is nested in "if (!empty($transports))"
            destinations = [d for d in destinations if self._destination_ok(d, row, is_mx, out, log)]
        destinations = list(dict.fromkeys(destinations))
        if not destinations:
            out.failed = True
            return out
        interferes = _interference(nexthop, existing)
        if interferes is not None:
            return out.fail(log, interferes)
        self._insert_transports(destinations, nexthop, username, attr, is_mx)
        out.push("success", log, ["relayhost_added", ""])
        return out

    @staticmethod
    def _destination_ok(dest: str, row: TransportRow, is_mx: int, out: Outcome, log: list[Any]) -> bool:
        if row.destination == dest:
            out.push("danger", log, ["transport_dest_exists", dest])
            return False
        if is_mx == 1:
            try:
                re.compile(dest)
            except re.error:
                out.push("danger", log, ["invalid_destination", dest])
                return False
            return True
        bare = dest[1:] if dest.startswith(".") else dest
        if dest.startswith("..") or not (is_valid_domain_name(bare) or _EMAIL.match(dest) or dest == "*"):
            out.push("danger", log, ["invalid_destination", dest])
            return False
        return True

    def _insert_transports(self, dests: list[str], nexthop: str, username: str, attr: dict[str, Any], mx: int) -> None:
        password = escape_colon(php_str(attr.get("password")).strip())
        for dest in dests:
            row_id = self.new_id("transports")
            self.transports[row_id] = TransportRow(
                row_id, dest, nexthop, username, password, is_mx_based=mx, active=intval(attr.get("active"))
            )
        for row in self.transports.values():  # credentials are per nexthop
            if row.nexthop == nexthop:
                row.username, row.password = username, password

    def transport_details(self, transport_id: str) -> dict[str, Any] | None:
        row = self.transports.get(intval(transport_id))
        if row is None:
            return None
        return {
            "id": row.id,
            "is_mx_based": row.is_mx_based,
            "destination": row.destination,
            "nexthop": row.nexthop,
            "username": row.username,
            "password": row.password,
            "active": row.active,
            "password_short": _short(row.password),
        }

    def transports_all(self) -> list[dict[str, Any]]:
        return [d for i in sorted(self.transports) if (d := self.transport_details(str(i))) is not None]

    def edit_transport(self, items: list[Any], attr: dict[str, Any]) -> Outcome:
        """``edit/transport``: unknown id -> relayhost_invalid; a taken destination -> bare transport_dest_exists."""
        out = Outcome()
        log: list[Any] = ["transport", "edit", {"id": items, **attr}]
        for item in items:
            row = self.transports.get(intval(item))
            if row is None:
                out.push("danger", log, ["relayhost_invalid", php_str(item)])
                continue
            dest = php_str(attr["destination"]).strip() if not php_empty(attr.get("destination")) else row.destination
            if any(t.destination == dest and t.id != row.id for t in self.transports.values()):
                out.push("danger", log, "transport_dest_exists")
                continue
            if not php_empty(attr.get("nexthop")):
                hop = php_str(attr["nexthop"]).strip()
                row.nexthop = f"[{hop}]" if is_ip(hop) else hop
            row.destination = dest
            for name in ("active", "is_mx_based"):
                if attr.get(name) is not None:
                    setattr(row, name, intval(attr[name]))
            out.push("success", log, ["object_modified", ""])
        return out

    def delete_transport(self, items: list[Any]) -> Outcome:
        out = Outcome()
        log: list[Any] = ["transport", "delete", {"id": items}]
        for item in items:
            self.transports.pop(intval(item), None)
            out.push("success", log, ["relayhost_removed", php_str(item)])
        return out

    def add_mta_sts(self, attr: dict[str, Any]) -> Outcome:
        """``add/mta-sts`` pushes no message on success: the answer is the "Task completed" object."""
        domain = norm_domain(attr.get("domain"))
        if self.domain_row(domain) is None:
            return Outcome(failed=True)
        self.mta_sts[domain] = {k: attr.get(k) for k in ("version", "mode", "mx", "max_age", "active")}
        return Outcome()


def _short(password: str) -> str:
    """``CONCAT(LEFT(password, 3), '...')``: "..." for an empty password."""
    return password[:3] + "..."


def _interference(nexthop: str, existing: Iterable[TransportRow]) -> list[Any] | None:
    """``[host]:port`` next to a bare ``host`` (or the reverse) would make Postfix mix the two."""
    hops = [t.nexthop for t in existing]
    match = _BRACKETED.match(nexthop)
    if match is not None:
        return ["next_hop_interferes", match.group(1), nexthop] if match.group(1) in hops else None
    for hop in hops:
        other = _BRACKETED.match(hop)
        if other is not None and other.group(1) == nexthop:
            return ["next_hop_interferes_any", nexthop]
    return None


# ---------------------------------------------------------------- the model


class MailcowModel(_Maps):
    """The whole simulated Mailcow. Front-ends hold ``lock`` around every call.

    ``rw_key``/``ro_key``: API keys (None generates one in the UI format from the seeded RNG; pass ``ro_key=""``
    for no read-only key). ``clock`` gives timestamps, ``monotonic`` drives the fail2ban window. ``log_lines``:
    mailcow.conf LOG_LINES, the API log's length.
    """

    def __init__(
        self,
        *,
        rw_key: str | None = None,
        ro_key: str | None = None,
        seed: int = 0,
        hostname: str = "mail.sim.test",
        clock: Callable[[], dt.datetime] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        log_lines: int = LOG_LINES,
    ) -> None:
        super().__init__(hostname=hostname, clock=clock if clock is not None else lambda: dt.datetime.now(dt.UTC))
        self.api_log = collections.deque(maxlen=log_lines)
        self.lock = threading.RLock()
        self.listeners: list[Callable[[], None]] = []  # called after every change (mail.py re-renders moo's maps)
        self.seed = seed
        self.rng = random.Random(seed)
        self.monotonic = monotonic
        self.version = VERSION
        self.api_keys: dict[str, ApiKey] = {}
        self.rw_key = self._install_key(rw_key, "rw")
        self.ro_key = self._install_key(ro_key, "ro") if ro_key != "" else ""
        self.sessions: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.fail2ban = False
        self.f2b_max_attempts, self.f2b_window = 10, 600.0
        self.auth_failures: dict[str, list[float]] = {}
        self.faults = Faults()
        self.requests: collections.deque[RequestRecord] = collections.deque(maxlen=100_000)

    def _install_key(self, key: str | None, access: str) -> str:
        value = key if key is not None else "-".join(f"{self.rng.getrandbits(24):06X}" for _ in range(5))
        self.api_keys[value] = ApiKey(value, access)
        return value

    def reset(self) -> None:
        """Empty every table and hash, forget sessions, faults, requests and auth failures (keys stay)."""
        self.clear_tables()
        self.rng.seed(self.seed)
        self.sessions.clear()
        self.auth_failures.clear()
        self.faults = Faults()
        self.requests.clear()

    # -- authentication (prerequisites.inc.php) ------------------------------------------------

    def authenticate(self, header: str | None, client: str, cookie: str | None) -> Auth:
        """``X-API-Key`` (characters outside ``[a-zA-Z0-9-]`` stripped), else a PHP session cookie."""
        if self._banned(client):
            return Auth(banned=True)
        if header:
            row = self.api_keys.get(re.sub(r"[^a-zA-Z0-9-]", "", header))
            if row is None or not row.active:
                return self._auth_failed(client, "authentication failed")
            if not row.skip_ip_check and not _ip_allowed(client, row.allow_from):
                return self._auth_failed(client, f"api access denied for ip {client}")
            if cookie is not None and cookie in self.sessions:
                self.sessions[cookie] = row.access
                return Auth(row.access)
            return Auth(row.access, new_session=self._new_session(row.access))
        if cookie is not None and cookie in self.sessions:
            return Auth(self.sessions[cookie])
        return Auth(new_session=self._session_id())

    def _session_id(self) -> str:
        return "".join(self.rng.choice("abcdefghijklmnopqrstuv0123456789") for _ in range(26))

    def _new_session(self, access: str) -> str:
        sid = self._session_id()
        self.sessions[sid] = access
        while len(self.sessions) > 10_000:
            self.sessions.popitem(last=False)
        return sid

    def _auth_failed(self, client: str, message: str) -> Auth:
        """Both 401s publish to F2B_CHANNEL (loopback is exempt in real Mailcow; the counter is kept anyway)."""
        self.auth_failures.setdefault(client, []).append(self.monotonic())
        return Auth(error=message)

    def _banned(self, client: str) -> bool:
        if not self.fail2ban:
            return False
        since = self.monotonic() - self.f2b_window
        recent = [t for t in self.auth_failures.get(client, []) if t >= since]
        return len(recent) >= self.f2b_max_attempts

    # -- faults and the request log ------------------------------------------------------------

    def set_faults(self, data: Any) -> Faults:
        """Replace the faults from a ``POST /_sim/faults`` body.

        Raises:
            ValueError: the body is malformed.
        """
        faults, seed = parse_faults(data)
        if seed is not None:
            self.rng.seed(seed)
        self.faults = faults
        return faults

    def draw_fault(self, path: str) -> Fault | None:
        """The fault for this request: the first matching ``fail_next`` rule, else a seeded ``error_rate`` draw."""
        for rule in self.faults.fail_next:
            if path.startswith(rule.path_prefix):
                rule.count -= 1
                if rule.count <= 0:
                    self.faults.fail_next.remove(rule)
                return Fault(rule.status, rule.apply)
        if self.faults.error_rate > 0 and self.rng.random() < self.faults.error_rate:
            return Fault(self.rng.choice((500, 503, 0)))
        return None

    def record(self, method: str, path: str, *, write: bool, cookie: bool) -> RequestRecord:
        entry = RequestRecord(method, path, write, cookie)
        self.requests.append(entry)
        return entry

    # -- views for the control endpoints -------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Tables and DKIM selectors/public keys; private keys and passwords are left out."""
        secretless = [{k: v for k, v in asdict(r).items() if k != "password"} for r in self.relayhosts.values()]
        transports = [{k: v for k, v in asdict(r).items() if k != "password"} for r in self.transports.values()]
        return {
            "tables": {
                "domain": [asdict(r) for r in self.domains.values()],
                "alias_domain": [asdict(r) for r in self.alias_domains.values()],
                "mailbox": [asdict(r) for r in self.mailboxes.values()],
                "alias": [asdict(r) for r in self.aliases.values()],
                "relayhosts": secretless,
                "transports": transports,
            },
            "redis": {
                "DKIM_SELECTORS": dict(self.redis["DKIM_SELECTORS"]),
                "DKIM_PUB_KEYS": dict(self.redis["DKIM_PUB_KEYS"]),
                "DKIM_PRIV_KEYS": sorted(self.redis["DKIM_PRIV_KEYS"]),  # field names only
            },
            "auth_failures": {ip: len(times) for ip, times in self.auth_failures.items()},
            "sogo": {
                "domains": sorted(self.sogo_domains),
                "restarts": self.sogo_restarts,
                "restart_failures": self.sogo_restart_failures,
                "started": self.sogo_started,
            },
        }

    def request_log(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.requests]


def _ip_allowed(client: str, allow_from: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in allow_from)
