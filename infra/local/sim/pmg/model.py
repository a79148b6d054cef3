"""The behavioural model of a Proxmox Mail Gateway cluster (reference/pmg.md); no HTTP here.

One ``PmgModel`` is a cluster: nodes with cid/name/ip, each with its own copy of ``/etc/pmg/{domains,transport,
mynetworks}`` (as text, exactly as PMG writes it) and its own view of ``cluster.conf`` (which node it believes is the
master). A front-end hands every API request to ``call(ApiCall)`` and renders the ``ApiResult``:

- auth: ticket login with realm defaulting, HMAC-signed tickets valid -5 min..+2 h, renewal with
  ``password=<ticket>``, the CSRF token on non-GET, ``PVEAPIToken`` refused, 401 with an empty body;
- parameters: the JSONSchema checks and 400 texts of pve-common (types, 1/0 booleans, ranges, enums, formats,
  additionalProperties, duplicate URI parameters);
- every ``/config`` call is proxied to the master named by the receiving node's cluster.conf: 595 + empty body (or a
  30 s hang) when it is down, "proxy loop detected" / "is not the master node" when views disagree;
- non-masters copy the master's files every ``sync_interval`` seconds (pmgmirror, 120 s; per node with
  ``node_sync_interval_s``): their applied config lags;
- every node has a data plane (postfix.py): the maps its postfix USES, rebuilt by postmap only when the file is newer
  than the .db in whole seconds, so two writes to one map within a second leave the second ineffective on the master
  (until a later write in a later second); ``rcpt`` answers RCPT TO from them (the SMTP front-end, smtp.py);
- a trusted-network add/delete holds the config lock ~2 s (``network_write_delay``); a 401 waits 3 s;
- writes are wrapped as "<action> failed: <err>" (500), reads are not; lists are ASCII-sorted; keys are not normalised;
  transports read back ``use_mx`` from the brackets and ``port`` as a string.

Admin hooks (PMG has no API for them): ``promote``, ``set_down``, ``set_view``, ``sync_now``, ``advance``, ``reset``,
``configure`` (faults). The model never sleeps: delays (3 s after a 401, proxy hang, latency) travel in
``ApiResult.delay`` and the front-end waits.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import ipaddress
import random
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sim.pmg import certs
from sim.pmg.certs import NodeCert
from sim.pmg.postfix import MAPS, NodePostfix, SmtpPolicy

if TYPE_CHECKING:
    from sim.mta import Postfix

TICKET_LIFETIME = 7200  # s, PMG::Ticket
CLOCK_DRIFT = 300  # s a ticket may be from the future
INSYNC_MAX_AGE = 180  # s since a node's last sync before insync turns 0
LOCK_FILE = "/var/lock/pmgconfig.lck"
LOG_MAX = 50_000  # request log entries kept (/_sim/requests shows the newest)
FILES = MAPS  # ("domains", "transport", "mynetworks")
DEFAULT_NODES = (("pmg1", "192.0.2.11"), ("pmg2", "192.0.2.12"), ("pmg3", "192.0.2.13"))

_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9\-]*[a-zA-Z0-9])?"
# Perl's "$" also matches before a trailing newline; Python's does the same, which is the point.
TRANSPORT_DOMAIN_RE = re.compile(rf"^\.?(?:{_LABEL}\.)*{_LABEL}$")
TRANSPORT_EMAIL_RE = re.compile(rf"^[^\s/@]+@(?:{_LABEL}\.)*{_LABEL}$")
DNS_NAME_RE = re.compile(rf"^(?:{_LABEL}\.)*{_LABEL}$")
NODE_NAME_RE = re.compile(rf"^{_LABEL}$")
_IPV4_RE = re.compile(r"^(?:(?:25[0-5]|(?:2[0-4]|1[0-9]|[1-9])?[0-9])\.){3}(?:25[0-5]|(?:2[0-4]|1[0-9]|[1-9])?[0-9])$")
_TICKET_RE = re.compile(r"^(PMG:([^:\s]+):([0-9A-F]{8}))::(\S+)$")
_REALM_RE = re.compile(r"@(pam|pmg|quarantine)$")

READ, WRITE, CLUSTER = ("admin", "audit"), ("admin",), ("admin", "qmanager", "audit")


class ApiError(Exception):
    """A PMG failure on its way to the front-end (status, message with trailing newline, field errors)."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: Mapping[str, str] | None = None,
        *,
        empty_body: bool = False,
        delay: float = 0.0,
    ) -> None:
        super().__init__(message)
        self.result = ApiResult(status, None, message, dict(errors) if errors else None, empty_body, delay)


@dataclass(frozen=True)
class ApiCall:
    """One request as a front-end received it."""

    node: str  # the node whose front-end received it
    method: str
    path: str  # below /api2/json, percent-decoded (PMG uri_unescapes the whole path)
    params: Mapping[str, Any] = field(default_factory=dict)  # query + body; form values are str, JSON values native
    ticket: str | None = None  # PMGAuthCookie
    csrf: str | None = None  # CSRFPreventionToken header
    authorization: str | None = None  # Authorization header
    has_body: bool = False


@dataclass(frozen=True)
class ApiResult:
    status: int
    data: Any = None
    message: str = ""  # PMG's text (usually ending in "\n"); the status line carries its first line
    errors: dict[str, str] | None = None
    empty_body: bool = False  # 401s and proxy failures carry no body at all
    delay: float = 0.0  # seconds the front-end waits before answering

    @property
    def reason(self) -> str | None:
        """The status-line phrase: the first line of the message (None = the standard phrase)."""
        line = self.message.split("\n", 1)[0].strip()
        return line or None


def _die(text: str) -> ApiError:
    """A plain Perl ``die "text\\n"``: status 500."""
    return ApiError(500, text + "\n")


# ---------------------------------------------------------------- formats and parameter schema


def is_ip(host: str) -> bool:
    """PMG's IPV4RE/IPV6RE test (an IP host is always bracketed in the transport map)."""
    if _IPV4_RE.match(host):
        return True
    if ":" not in host or "%" in host:
        return False
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _fmt_transport_domain(v: str) -> str | None:
    return None if TRANSPORT_DOMAIN_RE.match(v) else "value does not look like a valid transport domain"


def _fmt_transport_domain_or_email(v: str) -> str | None:
    if TRANSPORT_DOMAIN_RE.match(v) or TRANSPORT_EMAIL_RE.match(v):
        return None
    return "value does not look like a valid transport domain or email address"


def _fmt_transport_address(v: str) -> str | None:
    if v[:5].lower() == "ipv6:" and is_ip(v[5:]) and ":" in v[5:]:
        return None
    if is_ip(v) or DNS_NAME_RE.match(v):
        return None
    return "value does not look like a valid address"


def _fmt_cidr(v: str) -> str | None:
    addr, sep, plen = v.partition("/")
    bad = "value does not look like a valid CIDR network"
    if not sep or not plen.isdigit() or not is_ip(addr):
        return bad
    top = 128 if ":" in addr else 32
    return None if 8 <= int(plen) <= top else bad


def _fmt_node(v: str) -> str | None:
    return None if NODE_NAME_RE.match(v) else "value does not look like a valid node name"


@dataclass(frozen=True)
class Prop:
    """One JSONSchema property as pve-common checks it."""

    type: str = "string"  # string | integer | boolean
    optional: bool = False
    fmt: Callable[[str], str | None] | None = None
    enum: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    max_length: int | None = None

    def check(self, value: Any) -> Any:
        """Return the checked value (int for integer/boolean) or raise ValueError with PMG's text."""
        if self.type == "boolean":
            if isinstance(value, bool):
                return int(value)  # a JSON true/false
            if isinstance(value, int) and value in (0, 1):
                return value
            if isinstance(value, str) and value in ("0", "1"):
                return int(value)
            raise ValueError(f"type check ('boolean') failed - got '{value}'")
        if self.type == "integer":
            if isinstance(value, bool) or not (
                isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value))
            ):
                raise ValueError(f"type check ('integer') failed - got '{value}'")
            number = int(value)
            if self.minimum is not None and number < self.minimum:
                raise ValueError(f"value must have a minimum value of {self.minimum}")
            if self.maximum is not None and number > self.maximum:
                raise ValueError(f"value must have a maximum value of {self.maximum}")
            return number
        if isinstance(value, dict | list):
            raise ValueError(f"type check ('string') failed - got '{value}'")
        text = ("1" if value else "0") if isinstance(value, bool) else str(value)
        if self.max_length is not None and len(text) > self.max_length:
            raise ValueError(f"value may only be {self.max_length} characters long")
        if self.enum and text not in self.enum:
            raise ValueError(f"value '{text}' does not have a value in the enumeration '{', '.join(self.enum)}'")
        if self.fmt is not None:
            err = self.fmt(text)
            if err is not None:
                raise ValueError(f"invalid format - {err}\n")
        return text


def check_params(props: Mapping[str, Prop], params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate like PVE::JSONSchema::validate with ``additionalProperties => 0``.

    Raises:
        ApiError: 400 "Parameter verification failed." with one text per bad field.
    """
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    for name in params:
        if name not in props:
            errors[name] = "property is not defined in schema and the schema does not allow additional properties"
    for name, prop in props.items():
        value = params.get(name)
        if value is None:
            if not prop.optional:
                errors[name] = "property is missing and it is not optional"
            continue
        try:
            out[name] = prop.check(value)
        except ValueError as exc:
            errors[name] = str(exc)
    if errors:
        raise ApiError(400, "Parameter verification failed.\n", errors)
    return out


_OPT = Prop(optional=True)
_COMMENT = Prop(optional=True)
_DOMAIN = Prop(fmt=_fmt_transport_domain)
_TDOMAIN = Prop(fmt=_fmt_transport_domain_or_email)
_CIDR = Prop(fmt=_fmt_cidr)
_HOST = Prop(fmt=_fmt_transport_address)
_PORT = Prop("integer", optional=True, minimum=1, maximum=65535)
_PROTOCOL = Prop(optional=True, enum=("smtp", "lmtp"))
_USE_MX = Prop("boolean", optional=True)


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # {name} = one path segment, {name*} = the rest of the path
    handler: str
    props: Mapping[str, Prop] = field(default_factory=dict)
    perms: tuple[str, ...] | None = READ  # None = anyone (no ticket needed)
    proxy: str | None = "master"  # "master" | "node" | None

    @property
    def pattern(self) -> re.Pattern[str]:
        regex = re.sub(r"\{(\w+)\*\}", r"(?P<\1>.+)", self.template)
        return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex) + "$")


SERVICES = (  # the service enum of /nodes/{node}/services/{service}/* (pmg-apidoc)
    "clamav-daemon", "clamav-freshclam", "fetchmail", "pmgproxy", "pmgdaemon", "pmgpolicy", "pmg-smtp-filter",
    "pmgtunnel", "pmgmirror", "ssh", "rsyslog", "postfix", "postgres", "systemd-timesyncd", "pmg-hourly", "pmg-daily",
    "pmgreport", "pmgspamreport",
)  # fmt: skip

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/access/ticket",
        "ticket",
        {
            "username": Prop(max_length=64),
            "password": Prop(),
            "realm": Prop(optional=True, enum=("pam", "pmg", "quarantine"), max_length=32),
            "otp": _OPT,
            "path": Prop(optional=True, max_length=64),
            "tfa-challenge": _OPT,
        },
        None,
        None,
    ),
    Route("GET", "/access/ticket", "null", {}, None, None),
    Route("GET", "/version", "version", {}, ("admin", "qmanager", "audit", "helpdesk", "quser"), None),
    Route("GET", "/nodes", "nodes", {}, CLUSTER, None),
    Route("GET", "/nodes/{node}/status", "node_status", {"node": Prop(fmt=_fmt_node)}, CLUSTER, "node"),
    Route("GET", "/config/cluster/nodes", "cluster_nodes", {}, CLUSTER, None),
    Route("GET", "/nodes/{node}/certificates/info", "cert_info", {"node": Prop(fmt=_fmt_node)}, READ, "node"),
    Route(
        "POST",
        "/nodes/{node}/certificates/custom/{type}",
        "cert_upload",
        {
            "node": Prop(fmt=_fmt_node),
            "type": Prop(enum=("api", "smtp")),
            "certificates": Prop(),
            "key": Prop(optional=True),
            "force": Prop("boolean", optional=True),
            "restart": Prop("boolean", optional=True),
        },
        WRITE,
        "node",
    ),
    Route(
        "POST",
        "/nodes/{node}/services/{service}/reload",
        "service_reload",
        {"node": Prop(fmt=_fmt_node), "service": Prop(enum=SERVICES)},
        WRITE,
        "node",
    ),
    Route("GET", "/config/cluster/status", "cluster_status", {"list_single_node": _USE_MX}, CLUSTER, None),
    Route("GET", "/config/domains", "domains_list"),
    Route("POST", "/config/domains", "domain_create", {"domain": _DOMAIN, "comment": _COMMENT}, WRITE),
    Route("GET", "/config/domains/{domain}", "domain_read", {"domain": _DOMAIN}),
    Route("PUT", "/config/domains/{domain}", "domain_update", {"domain": _DOMAIN, "comment": Prop()}, WRITE),
    Route("DELETE", "/config/domains/{domain}", "domain_delete", {"domain": _DOMAIN}, WRITE),
    Route("GET", "/config/transport", "transport_list"),
    Route(
        "POST",
        "/config/transport",
        "transport_create",
        {
            "domain": _TDOMAIN,
            "host": _HOST,
            "protocol": _PROTOCOL,
            "port": _PORT,
            "use_mx": _USE_MX,
            "comment": _COMMENT,
        },
        WRITE,
    ),
    Route("GET", "/config/transport/{domain}", "transport_read", {"domain": _TDOMAIN}),
    Route(
        "PUT",
        "/config/transport/{domain}",
        "transport_update",
        {
            "domain": _TDOMAIN,
            "host": Prop(optional=True, fmt=_fmt_transport_address),
            "protocol": _PROTOCOL,
            "port": _PORT,
            "use_mx": _USE_MX,
            "comment": _COMMENT,
        },
        WRITE,
    ),
    Route("DELETE", "/config/transport/{domain}", "transport_delete", {"domain": _TDOMAIN}, WRITE),
    Route("GET", "/config/mynetworks", "networks_list"),
    Route("POST", "/config/mynetworks", "network_create", {"cidr": _CIDR, "comment": _COMMENT}, WRITE),
    Route("GET", "/config/mynetworks/{cidr*}", "network_read", {"cidr": _CIDR}),
    # PUT has the CIDR format check commented out upstream
    Route("PUT", "/config/mynetworks/{cidr*}", "network_update", {"cidr": Prop(), "comment": Prop()}, WRITE),
    Route("DELETE", "/config/mynetworks/{cidr*}", "network_delete", {"cidr": _CIDR}, WRITE),
)
_COMPILED = tuple((r, r.pattern) for r in ROUTES)


def find_route(method: str, path: str) -> tuple[Route, dict[str, str]]:
    """The route for ``method path`` and its path parameters.

    Raises:
        ApiError: 501 "Method '<M> <path>' not implemented".
    """
    for route, pattern in _COMPILED:
        m = pattern.match(path)
        if m and route.method == method:
            return route, m.groupdict()
    raise ApiError(501, f"Method '{method} {path}' not implemented\n")


# ---------------------------------------------------------------- the config files, as text


def parse_domains(text: str) -> dict[str, str]:
    """``/etc/pmg/domains``: optional ``#comment`` line, then ``domain 1`` (PMG::Config read_pmg_domains)."""
    out: dict[str, str] = {}
    comment = ""
    for line in text.split("\n"):
        if not line.strip():
            continue
        if line.startswith("#"):
            comment = line[1:]
            continue
        m = re.match(r"^(\S+)\s.*$", line)
        if m:  # anything else is a parse error PMG warns about and skips
            out[m.group(1)] = comment
        comment = ""
    return out


def render_domains(entries: Mapping[str, str]) -> str:
    return "".join(f"{_comment_line(entries[d])}{d} 1\n" for d in sorted(entries))


def _comment_line(comment: str) -> str:
    return f"#{comment}\n" if comment.strip() else ""


def parse_transport(text: str) -> dict[str, dict[str, Any]]:
    """``/etc/pmg/transport``: ``domain smtp:[host]:port`` / ``domain lmtp:inet:host:port``; brackets = no MX."""
    out: dict[str, dict[str, Any]] = {}
    comment = ""
    for line in text.split("\n"):
        if not line.strip():
            continue
        if line.startswith("#"):
            comment = line[1:]
            continue
        smtp = re.match(r"^(\S+)\s+smtp:(\S+):(\d+)\s*$", line)
        lmtp = re.match(r"^(\S+)\s+lmtp:inet:(\S+):(\d+)\s*$", line)
        m = smtp or lmtp
        if m:
            domain, host, port = m.groups()
            use_mx = 1
            if host.startswith("[") and host.endswith("]"):
                host, use_mx = host[1:-1], 0
            if lmtp:
                use_mx = 0
            protocol = "smtp" if smtp else "lmtp"
            entry = {"domain": domain, "protocol": protocol, "host": host, "port": port, "use_mx": use_mx}
            out[domain] = {**entry, "comment": comment}
        comment = ""
    return out


def render_transport(entries: Mapping[str, Mapping[str, Any]]) -> str:
    lines = []
    for domain in sorted(entries):
        e = entries[domain]
        host = str(e["host"])
        if e["protocol"] == "lmtp":
            target = f"lmtp:inet:{f'[{host}]' if is_ip(host) else host}:{e['port']}"
        else:
            bracket = is_ip(host) or not int(e["use_mx"])
            target = f"smtp:{f'[{host}]' if bracket else host}:{e['port']}"
        lines.append(f"{_comment_line(str(e.get('comment', '')))}{domain} {target}\n")
    return "".join(lines)


def parse_mynetworks(text: str) -> dict[str, str]:
    """``/etc/pmg/mynetworks``: one ``cidr #comment`` line per network, IPv6 too (PMG::Config read_pmg_mynetworks).

    ``#`` starts the comment, which may be empty (``cidr #``) and may itself contain ``#``.
    """
    out: dict[str, str] = {}
    for line in text.split("\n"):
        m = re.match(r"^\s*([0-9A-Fa-f:.]+/\d+)\s*(?:#(.*))?$", line)
        if m:
            out[m.group(1)] = (m.group(2) or "").strip()
    return out


def render_mynetworks(entries: Mapping[str, str]) -> str:
    """PMG writes ``$cidr #$comment`` for every network, with the ``#`` even when the comment is empty."""
    return "".join(f"{cidr} #{entries[cidr]}\n" for cidr in sorted(entries))


# ---------------------------------------------------------------- cluster state


@dataclass
class Node:
    cid: int
    name: str
    ip: str
    view: str  # the master this node's cluster.conf names
    files: dict[str, str] = field(default_factory=lambda: dict.fromkeys(FILES, ""))
    up: bool = True
    last_sync: float = 0.0
    booted: float = 0.0
    postfix: NodePostfix = field(default_factory=NodePostfix)  # what this node's postfix uses (postfix.py)
    sync_interval: float | None = None  # this node's pmgmirror interval; None = the cluster's
    smtp_cert: NodeCert | None = None  # /etc/pmg/pmg-tls.pem (certs.py); None = the stock one, made on first use


@dataclass
class FailRule:
    """Answer the next ``count`` requests under ``path_prefix`` with ``status``/``message``.

    ``after``: execute the request first and lose the answer (a proxied write whose response never came back).
    """

    path_prefix: str
    status: int
    count: int = 1
    message: str = ""
    after: bool = False

    def result(self) -> ApiResult:
        empty = self.status >= 595 or self.status == 401
        return ApiResult(self.status, None, self.message and self.message.rstrip("\n") + "\n", None, empty)


@dataclass
class Faults:
    latency_ms: float = 0.0
    error_rate: float = 0.0
    fail_next: list[FailRule] = field(default_factory=list)
    config_locked: bool = False


@dataclass(frozen=True)
class User:
    password: str
    role: str  # root | admin | audit | helpdesk | qmanager | quser


class PmgModel:
    """A PMG cluster: master + nodes, per-node config files and cluster views, users, tickets, faults.

    Thread-safe (one lock); ``call`` is the only entry for API requests.
    """

    def __init__(
        self,
        *,
        nodes: Sequence[tuple[str, str]] = DEFAULT_NODES,
        user: str = "automation@pmg",
        password: str = "sim-pmg-password",
        role: str = "admin",
        sync_interval: float = 120.0,
        auth_failure_delay: float = 3.0,
        network_write_delay: float = 2.0,
        proxy_timeout: float = 30.0,
        lock_timeout: float = 10.0,
        body_style: str = "new",
        master_down_mode: str = "refused",
        seed: int = 0,
        clock: Callable[[], float] | None = None,
        dataplanes: Mapping[str, Postfix] | None = None,
    ) -> None:
        """``clock``: the cluster's wall clock (default ``time.time``); file mtimes come from it. ``dataplanes``: a
        real Postfix per node (``postfix.node_instance``) that the node's maps and certificate are written to and
        that is started and stopped with the node."""
        self.dataplanes = dict(dataplanes or {})
        self._clock = time.time if clock is None else clock
        self._lock = threading.RLock()
        self._node_spec = tuple(nodes)
        self.credentials = (user, password)
        self._defaults: dict[str, Any] = {
            "sync_interval": sync_interval,
            "auth_failure_delay": auth_failure_delay,
            "network_write_delay": network_write_delay,
            "proxy_timeout": proxy_timeout,
            "lock_timeout": lock_timeout,
            "body_style": body_style,
            "master_down_mode": master_down_mode,
        }
        self._seed = seed
        self._auth_key = secrets.token_bytes(32)  # pmg-authkey.key, shared by all nodes
        self._csrf_key = secrets.token_bytes(32)  # pmg-csrf.key
        self.users: dict[str, User] = {"root@pam": User(secrets.token_urlsafe(16), "root")}
        self.add_user(user, password, role)
        self.reset()

    # ------------------------------------------------------------ admin hooks

    def reset(self) -> None:
        """Back to the initial state: empty config, first node master, all up, no faults, empty request log."""
        with self._lock:
            self._offset = 0.0
            now = self.now()
            first = self._node_spec[0][0]
            self.nodes: dict[str, Node] = {
                name: Node(cid, name, ip, first, last_sync=now, booted=now - 3600)
                for cid, (name, ip) in enumerate(self._node_spec, start=1)
            }
            for node in self.nodes.values():
                node.postfix.own_networks = (f"{node.ip}/32",)
                if node.name in self.dataplanes:
                    node.postfix.attach(self.dataplanes[node.name])
                    self._install_cert(node)
            self.power()
            self.master = first
            self.faults = Faults()
            # bounded: a long benchmark must not grow the simulator until the OOM killer ends it without a log line
            self.log: collections.deque[dict[str, Any]] = collections.deque(maxlen=LOG_MAX)
            self._current = threading.local()  # .entry: the log entry of this thread's request in flight
            self._seq = 0
            self._writes = 0
            self._rng = random.Random(self._seed)
            self.sync_interval = float(self._defaults["sync_interval"])
            self.auth_failure_delay = float(self._defaults["auth_failure_delay"])
            self.network_write_delay = float(self._defaults["network_write_delay"])
            self.smtp_policy = SmtpPolicy()
            self._lock_free_at = 0.0  # /var/lock/pmgconfig.lck is held by a write until then
            self._pending_delay = 0.0  # the time the current write waited for and held the config lock
            self.proxy_timeout = float(self._defaults["proxy_timeout"])
            self.lock_timeout = float(self._defaults["lock_timeout"])
            self.body_style = str(self._defaults["body_style"])
            self.master_down_mode = str(self._defaults["master_down_mode"])

    @property
    def node_names(self) -> list[str]:
        return [name for name, _ in self._node_spec]

    def add_user(self, user: str, password: str, role: str) -> None:
        """Create or replace a user (``name@pmg``; ``root@pam`` is the only PAM user PMG accepts)."""
        with self._lock:
            self.users[user] = User(password, "root" if user == "root@pam" else role)

    def now(self) -> float:
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the cluster's clock forward (ticket expiry, sync lag) without waiting."""
        with self._lock:
            self._offset += seconds
            self._tick()

    def set_down(self, node: str, down: bool = True) -> None:
        """Power a node off (its front-end refuses connections) or on."""
        with self._lock:
            self.nodes[node].up = not down
            self.power()
            self._tick()

    def power(self) -> None:
        """Each node's real Postfix runs exactly when the node is up (a powered-off node refuses connections)."""
        with self._lock:
            for node in self.nodes.values():
                instance = node.postfix.instance
                if instance is not None:
                    instance.start() if node.up else instance.stop()

    def tick(self) -> None:
        """pmgmirror's timer: nodes whose sync is due copy the master's files (the real data planes follow)."""
        with self._lock:
            self._tick()

    def _install_cert(self, node: Node) -> None:
        """/etc/pmg/pmg-tls.pem of the node's real Postfix, which reads it when its daemons start (reload)."""
        instance = node.postfix.instance
        if instance is not None:
            nc = self.smtp_certificate(node.name)
            path = instance.etc / "pmg-tls.pem"
            path.touch(mode=0o600)
            path.write_text(nc.key + nc.chain)
            instance.reload()

    def promote(self, node: str) -> None:
        """``pmgcm promote`` on ``node``: its own cluster.conf names it master; the others learn it on sync_now()."""
        with self._lock:
            self.nodes[node].view = node
            self.master = node

    def seed_domains(
        self, count: int, *, prefix: str = "seed", host: str = "mail.seed.test", comment: str = "seeded"
    ) -> int:
        """Test-only fast path (``POST /_sim/seed``): ``count`` relay domains ``<prefix><i>.test`` with a transport
        each, written straight into the master's files (as a restore of /etc/pmg would) and synced to every node
        that is up, with postfix's maps rebuilt. No API calls, no request log entries; returns the entries added.

        Raises:
            ValueError: a negative count or a prefix that is not a DNS label.
        """
        if count < 0 or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", prefix):
            raise ValueError(f"seed: bad count or prefix: {count!r}, {prefix!r}")
        with self._lock:
            self._tick()
            master = self.nodes[self.master]
            doms = parse_domains(master.files["domains"])
            tmap = parse_transport(master.files["transport"])
            for i in range(count):
                d = f"{prefix}{i}.test"
                doms[d] = comment
                tmap[d] = {"host": host, "protocol": "smtp", "port": 25, "use_mx": 0, "comment": comment}
            self._store(master, "domains", render_domains(doms))
            self._store(master, "transport", render_transport(tmap))
            for node in self.nodes.values():
                if node.up and node is not master:
                    node.view = self.master
                    self._copy(master, node)
            return count

    def set_view(self, node: str, master: str) -> None:
        """Overwrite the master named by one node's cluster.conf (a stale or hand-edited file)."""
        with self._lock:
            self.nodes[node].view = master

    def sync_now(self) -> None:
        """``pmgcm sync --master_ip <master>`` on every other node that is up (needs the master up)."""
        with self._lock:
            master = self.nodes[self.master]
            if not master.up:
                return
            for node in self.nodes.values():
                if node.up and node is not master:
                    node.view = self.master
                    self._copy(master, node)

    def configure(self, **settings: Any) -> None:
        """Faults and knobs, as posted to ``/_sim/faults``.

        Keys: latency_ms, error_rate, network_write_delay_s (a trusted-network add/delete holds the config lock
        this long), node_sync_interval_s ({node: seconds or null}: one node's own sync interval), smtp_greylist,
        smtp_verify_recipients, fail_next [{path_prefix, status, count, message, after}], config_locked,
        master_down (bool), down [node names], promote (node), advance_s, sync_now, sync_interval_s,
        auth_failure_delay_s, proxy_timeout_s, lock_timeout_s, body_style ("new"|"old"),
        master_down_mode ("refused"|"hang").

        Raises:
            ValueError: an unknown key or a bad value.
        """
        with self._lock:
            for key, value in settings.items():
                self._configure_one(key, value)

    def _configure_one(self, key: str, value: Any) -> None:
        knobs = {
            "sync_interval_s": "sync_interval",
            "auth_failure_delay_s": "auth_failure_delay",
            "network_write_delay_s": "network_write_delay",
            "proxy_timeout_s": "proxy_timeout",
            "lock_timeout_s": "lock_timeout",
        }
        if key in ("latency_ms", "error_rate"):
            setattr(self.faults, key, float(value))
        elif key == "config_locked":
            self.faults.config_locked = bool(value)
        elif key == "fail_next":
            self.faults.fail_next = [FailRule(**rule) for rule in value]
        elif key == "master_down":
            self.set_down(self.master, bool(value))
        elif key == "down":
            for name in value:
                if name not in self.nodes:
                    raise ValueError(f"unknown node {name!r}")
            for node in self.nodes.values():
                node.up = node.name not in value
            self.power()
        elif key == "promote":
            self.promote(str(value))
        elif key == "advance_s":
            self.advance(float(value))
        elif key == "sync_now":
            if value:
                self.sync_now()
        elif key in knobs:
            setattr(self, knobs[key], float(value))
        elif key == "node_sync_interval_s":
            self._node_intervals(value)
        elif key in ("smtp_greylist", "smtp_verify_recipients"):
            self.smtp_policy = replace(self.smtp_policy, **{key.removeprefix("smtp_"): bool(value)})
        elif key == "body_style" and value in ("new", "old"):
            self.body_style = value
        elif key == "master_down_mode" and value in ("refused", "hang"):
            self.master_down_mode = value
        else:
            raise ValueError(f"unknown fault or bad value: {key}={value!r}")

    def state(self) -> dict[str, Any]:
        """Everything a test may want to see, config parsed from each node's files."""
        with self._lock:
            self._tick()
            return {
                "master": self.master,
                "time": self.now(),
                "writes": self._writes,
                "body_style": self.body_style,
                "sync_interval": self.sync_interval,
                "nodes": [
                    {
                        "cid": n.cid,
                        "name": n.name,
                        "ip": n.ip,
                        "up": n.up,
                        "view": n.view,
                        "last_sync": n.last_sync,
                        "sync_interval": self.sync_interval if n.sync_interval is None else n.sync_interval,
                        "config": self.config(n.name),
                        "effective": self.effective(n.name),
                    }
                    for n in self.nodes.values()
                ],
            }

    def config(self, node: str | None = None) -> dict[str, Any]:
        """The config ``node`` applies (default: the master's), parsed as the API would list it."""
        with self._lock:
            self._tick()
            n = self.nodes[self.master if node is None else node]
            return {
                "domains": self._domain_rows(n),
                "transport": self._transport_rows(n),
                "mynetworks": self._network_rows(n),
            }

    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self.log]

    def note_bytes(self, received: int, sent: int) -> None:
        """The sizes of the request this thread's last ``call`` logged: URL + body received, body sent."""
        entry = getattr(self._current, "entry", None)
        if entry is not None:
            with self._lock:
                entry.update(bytes_in=received, bytes_out=sent)
            self._current.entry = None

    def writes(self) -> int:
        """Config writes (non-GET ``/config`` requests) received so far, on any node."""
        with self._lock:
            return self._writes

    # ------------------------------------------------------------ sync (pmgmirror)

    def _node_intervals(self, value: Any) -> None:
        if not isinstance(value, dict) or any(name not in self.nodes for name in value):
            raise ValueError(f"node_sync_interval_s must map node names to seconds or null: {value!r}")
        for name, seconds in value.items():
            self.nodes[name].sync_interval = None if seconds is None else float(seconds)

    def _tick(self) -> None:
        now = self.now()
        for node in self.nodes.values():
            interval = self.sync_interval if node.sync_interval is None else node.sync_interval
            if node.up and node.view != node.name and now - node.last_sync >= interval:
                source = self.nodes.get(node.view)
                if source is not None and source.up:
                    node.view = source.view
                    self._copy(source, node)

    def _copy(self, source: Node, target: Node) -> None:
        """pmgmirror: rsync the master's files, then rewrite_config (postmap under the whole-second rule, reload).

        rsync runs with ``-lpgoq`` (no ``-t``), so the copies never keep the master's mtimes and every sync writes
        every file anew (mtime now): a node rebuilds its maps at each sync that falls in a later second than its
        last rebuild.
        """
        now = self.now()
        for name in FILES:
            target.files[name] = source.files[name]
            target.postfix.write(name, source.files[name], now)
        target.postfix.rewrite(now)
        target.last_sync = now

    def _store(self, node: Node, name: str, text: str) -> None:
        """A config write on ``node``: the file, then PMG's postmap (relay domains, transport) or reload."""
        now = self.now()
        node.files[name] = text
        node.postfix.write(name, text, now)
        node.postfix.rewrite(now, (name,))

    # ------------------------------------------------------------ the data plane (SMTP front-end)

    def rcpt(self, node: str, client: str, address: str) -> tuple[int, str]:
        """What ``node``'s postfix answers to ``RCPT TO:<address>`` from ``client`` (postfix.py).

        Raises:
            ConnectionRefusedError: the node is down.
        """
        with self._lock:
            self._tick()
            if not self.nodes[node].up:
                raise ConnectionRefusedError(f"{node} is down (simulated)")
            return self.nodes[node].postfix.rcpt(client, address, self.smtp_policy)

    def effective(self, node: str) -> dict[str, Any]:
        """What ``node``'s postfix uses: relay domains, transport keys, trusted networks, and the stale maps."""
        with self._lock:
            self._tick()
            pf = self.nodes[node].postfix
            return {
                "domains": sorted(parse_domains(pf.effective("domains"))),
                "transport": sorted(parse_transport(pf.effective("transport"))),
                "mynetworks": sorted(parse_mynetworks(pf.effective("mynetworks"))),
                "stale": pf.stale(),
                "postmaps": {name: m.postmaps for name, m in pf.maps.items() if m.postmaps},
            }

    # ------------------------------------------------------------ the API

    def call(self, call: ApiCall) -> ApiResult:
        """Handle one API request on ``call.node``.

        Raises:
            ConnectionRefusedError: the node is down (the front-end drops the connection).
        """
        with self._lock:
            self._tick()
            write = call.method != "GET" and call.path.startswith("/config/")
            self._seq += 1
            self._writes += write
            entry: dict[str, Any] = {"seq": self._seq, "method": call.method, "path": call.path}
            entry.update(node=call.node, write=write, status=0, bytes_in=0, bytes_out=0)
            self._current.entry = entry  # the front-end adds the sizes it sent and received (note_bytes)
            if call.path.startswith("/config/"):
                entry["params"] = {k: v if isinstance(v, str | int | bool) else str(v) for k, v in call.params.items()}
            if call.path == "/access/ticket" and call.method == "POST":
                entry["renewal"] = str(call.params.get("password", "")).startswith("PMG:")  # never the secret
            self.log.append(entry)
            if not self.nodes[call.node].up:
                raise ConnectionRefusedError(f"{call.node} is down (simulated)")
            latency = self.faults.latency_ms / 1000.0
            rule = self._take_rule(call)
            result = rule.result() if rule is not None and not rule.after else self._random_fault()
            if result is None:
                try:
                    result = self._dispatch(call)
                except ApiError as exc:
                    result = exc.result
                if rule is not None:  # executed, but the answer is lost
                    result = rule.result()
            entry["status"] = result.status
        return replace(result, delay=result.delay + latency) if latency else result

    def _take_rule(self, call: ApiCall) -> FailRule | None:
        for rule in self.faults.fail_next:
            if rule.count > 0 and call.path.startswith(rule.path_prefix):
                rule.count -= 1
                return rule
        return None

    def _random_fault(self) -> ApiResult | None:
        if self.faults.error_rate and self._rng.random() < self.faults.error_rate:
            return ApiResult(595, None, "Connection timed out (simulated)\n", None, True)
        return None

    def _dispatch(self, call: ApiCall) -> ApiResult:
        route, path_params = find_route(call.method, call.path)
        if call.method == "DELETE" and call.has_body:
            raise ApiError(501, "Unexpected content for method 'DELETE'\n")
        origin = self.nodes[call.node]
        user = None if route.perms is None else self._authenticate(call)
        target = self._proxy(route, origin, path_params)
        if user is not None and route.perms is not None and not self._allowed(self.users[user].role, route.perms):
            raise ApiError(403, "Permission check failed\n")
        params = dict(call.params)
        dup = {k: "duplicate parameter (already defined in URI)" for k in path_params if k in params}
        if dup:
            raise ApiError(400, "Parameter verification failed.\n", dup)
        params.update(path_params)
        checked = check_params(route.props, params)
        self._pending_delay = 0.0
        data = getattr(self, f"_h_{route.handler}")(target, origin, checked)
        return ApiResult(200, data, delay=self._pending_delay)

    # ------------------------------------------------------------ auth

    def _authenticate(self, call: ApiCall) -> str:
        delay = self.auth_failure_delay

        def fail(reason: str) -> ApiError:
            return ApiError(401, reason + "\n", empty_body=True, delay=delay)

        ticket = call.ticket
        auth = (call.authorization or "").strip()
        if auth.startswith("PVEAPIToken="):
            raise fail("API tokens not implemented")
        if ticket is None and auth.startswith("PMGAuthCookie="):
            ticket = urllib.parse.unquote(auth[len("PMGAuthCookie=") :])
        if not ticket:
            raise fail("No ticket")
        user = self.verify_ticket(ticket)
        if user is None or user not in self.users:
            raise fail("permission denied - invalid PMG ticket")
        if call.method != "GET" and not self._verify_csrf(call.csrf or "", user):
            raise fail("Permission denied - invalid csrf token")
        return user

    @staticmethod
    def _allowed(role: str, check: tuple[str, ...]) -> bool:
        if role == "root" or role in check:
            return True
        return role == "helpdesk" and bool({"qmanager", "audit"} & set(check))

    def _sign(self, key: bytes, data: str) -> str:
        return base64.b64encode(hmac.new(key, data.encode(), hashlib.sha256).digest()).decode()

    def issue_ticket(self, user: str) -> str:
        data = f"PMG:{user}:{int(self.now()):08X}"
        return f"{data}::{self._sign(self._auth_key, data)}"

    def verify_ticket(self, ticket: str) -> str | None:
        """The user a ticket was issued to, or None (bad signature, expired, or from the future)."""
        m = _TICKET_RE.match(ticket)
        if not m or not hmac.compare_digest(m.group(4), self._sign(self._auth_key, m.group(1))):
            return None
        age = self.now() - int(m.group(3), 16)
        return urllib.parse.unquote(m.group(2)) if -CLOCK_DRIFT <= age <= TICKET_LIFETIME else None

    def _csrf_token(self, user: str) -> str:
        stamp = f"{int(self.now()):08X}"
        return f"{stamp}:{self._sign(self._csrf_key, f'{stamp}:{user}')}"

    def _verify_csrf(self, token: str, user: str) -> bool:
        stamp, _, sig = token.partition(":")
        if not re.fullmatch(r"[0-9A-F]{8}", stamp) or not hmac.compare_digest(
            sig, self._sign(self._csrf_key, f"{stamp}:{user}")
        ):
            return False
        return -CLOCK_DRIFT <= self.now() - int(stamp, 16) <= TICKET_LIFETIME

    def _h_ticket(self, target: Node, origin: Node, p: dict[str, Any]) -> dict[str, Any]:
        username = p["username"]
        if not _REALM_RE.search(username):
            username = f"{username}@{p.get('realm') or 'quarantine'}"
        if username == "root@pmg":
            username = "root@pam"
        password = p["password"]
        account = self.users.get(username)
        if password.startswith("PMG:"):
            ok = self.verify_ticket(password) == username and account is not None
        else:
            ok = account is not None and hmac.compare_digest(account.password, password)
        if not ok or account is None or (username.endswith("@pam") and username != "root@pam"):
            raise ApiError(401, "authentication failure\n", delay=self.auth_failure_delay)
        return {
            "username": username,
            "ticket": self.issue_ticket(username),
            "CSRFPreventionToken": self._csrf_token(username),
            "role": account.role,
        }

    # ------------------------------------------------------------ proxying (proxyto => master | node)

    def _proxy(self, route: Route, origin: Node, path_params: Mapping[str, str]) -> Node:
        if route.proxy == "node":
            name = path_params.get("node", "localhost")
            if name in ("localhost", origin.name):
                return origin
            target = self.nodes.get(name)
            if target is None:
                raise _die(f"unable to get remote IP address for node '{name}'")
            return target if target.up else self._unreachable()
        if route.proxy != "master" or origin.view == origin.name:
            return origin
        target = self.nodes.get(origin.view)
        if target is None:
            raise _die(f"unable to get remote IP address for node '{origin.view}'")
        if not target.up:
            return self._unreachable()
        if target.view == target.name:
            return target
        if target.view == origin.name:
            raise _die("proxy loop detected")
        raise _die(f"this node ('{target.name}') is not the master node")

    def _unreachable(self) -> Node:
        if self.master_down_mode == "hang":
            raise ApiError(595, "Connection timed out\n", empty_body=True, delay=self.proxy_timeout)
        raise ApiError(595, "Connection refused\n", empty_body=True)

    # ------------------------------------------------------------ cluster and nodes (not proxied)

    def _h_null(self, target: Node, origin: Node, p: dict[str, Any]) -> None:
        return None

    def _h_version(self, target: Node, origin: Node, p: dict[str, Any]) -> dict[str, str]:
        return {"version": "8.2", "release": "8.2", "repoid": "sim"}

    def _h_nodes(self, target: Node, origin: Node, p: dict[str, Any]) -> list[dict[str, str]]:
        return [{"node": origin.name}] + [{"node": n} for n in self.nodes if n != origin.name]

    def _node_status(self, node: Node) -> dict[str, Any]:
        now = self.now()
        insync = all(n.view == n.name or now - n.last_sync <= INSYNC_MAX_AGE for n in self.nodes.values())
        return {
            "time": int(now),
            "uptime": int(now - node.booted),
            "insync": int(insync),
            "loadavg": ["0.02", "0.03", "0.00"],
            "kversion": "Linux 6.8.12-4-pmg #1 SMP PREEMPT_DYNAMIC",
            "cpuinfo": {"cpus": 2, "model": "simulated", "sockets": 1},
            "cpu": 0.01,
            "wait": 0.0,
            "memory": {"free": 2 << 30, "total": 4 << 30, "used": 2 << 30},
            "swap": {"free": 1 << 30, "total": 1 << 30, "used": 0},
            "rootfs": {"avail": 20 << 30, "free": 20 << 30, "total": 32 << 30, "used": 12 << 30},
            "pmgversion": "pmg-api/8.2.0/sim",
            "level": "",
        }

    def smtp_certificate(self, node: str) -> NodeCert:
        """What ``node``'s postfix presents on STARTTLS (the stock self-signed one until a custom upload)."""
        with self._lock:
            n = self.nodes[node]
            if n.smtp_cert is None:
                n.smtp_cert = certs.stock(n.name)
            return n.smtp_cert

    def _h_cert_info(self, target: Node, origin: Node, p: dict[str, Any]) -> list[dict[str, Any]]:
        return certs.info(self.smtp_certificate(target.name))

    def _h_cert_upload(self, target: Node, origin: Node, p: dict[str, Any]) -> list[dict[str, Any]]:
        if p["type"] != "smtp":
            raise _die("simulator: only the smtp certificate is modelled")
        if not p.get("key"):
            raise _die("no key specified")  # a key is required unless one already exists next to the certificate
        have = self.smtp_certificate(target.name)
        if have.custom and not p.get("force"):
            raise _die("Custom certificate exists but 'force' is not set.")
        try:
            new = certs.checked(p["certificates"], p["key"])
        except certs.CertError as exc:
            raise _die(str(exc)) from None
        target.smtp_cert = new
        self._install_cert(target)
        return certs.info(new)

    def _h_service_reload(self, target: Node, origin: Node, p: dict[str, Any]) -> str:
        """``systemctl reload <service>`` on the node, as a task (its UPID is the answer). Postfix: the node's real
        instance reloads (every daemon re-reads its maps: the only way an idle smtpd/trivial-rewrite forgets a
        relay domain it saw before the last postmap); the other services are not modelled."""
        if p["service"] == "postfix" and target.postfix.instance is not None:
            target.postfix.instance.reload()
        return f"UPID:{target.name}:{secrets.token_hex(4).upper()}:srvreload:{p['service']}:{self.credentials[0]}:"

    def _h_node_status(self, target: Node, origin: Node, p: dict[str, Any]) -> dict[str, Any]:
        return self._node_status(target)

    def _cluster_rows(self, origin: Node) -> list[dict[str, Any]]:
        rows = []
        for n in self.nodes.values():
            row: dict[str, Any] = {
                "cid": n.cid,
                "type": "master" if n.name == origin.view else "node",
                "name": n.name,
                "ip": n.ip,
                "hostrsapubkey": f"AAAAB3NzaC1yc2E-sim-{n.name}",
                "rootrsapubkey": f"AAAAB3NzaC1yc2E-sim-root-{n.name}",
                "fingerprint": ":".join(f"{(n.cid * 7 + i) % 256:02X}" for i in range(32)),
            }
            if row["type"] == "master":
                row["maxcid"] = len(self.nodes)
            rows.append(row)
        self._rng.shuffle(rows)  # PMG returns Perl hash order: clients must sort
        return rows

    def _h_cluster_nodes(self, target: Node, origin: Node, p: dict[str, Any]) -> list[dict[str, Any]]:
        return self._cluster_rows(origin)

    def _h_cluster_status(self, target: Node, origin: Node, p: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for row in self._cluster_rows(origin):
            node = self.nodes[row["name"]]
            row["cid"] = str(row["cid"])  # merged through a Perl hash: the cid renders as a string
            if node.up:
                row.update(self._node_status(node))
            else:
                row["conn_error"] = f"500 Can't connect to {node.ip}:8006 (Connection refused)\n"
            out.append(row)
        return out

    # ------------------------------------------------------------ config writes (lock_config)

    def _locked(self, action: str, change: Callable[[], None], *, hold: float = 0.0) -> None:
        """lock_config: wait for the config lock (10 s timeout), change, hold the lock ``hold`` s (the rewrite and
        postfix reload of a trusted-network write). The waiting and holding travel in the answer's delay."""
        wait = max(0.0, self._lock_free_at - self.now())
        if self.faults.config_locked or wait > self.lock_timeout:
            raise ApiError(
                500, f"{action} failed: can't lock file '{LOCK_FILE}' - got timeout\n", delay=self.lock_timeout
            )
        try:
            change()
        except ApiError as exc:
            raise _die(f"{action} failed: {exc.result.message.rstrip(chr(10))}") from None
        if wait or hold:
            self._lock_free_at = self.now() + wait + hold
        self._pending_delay = wait + hold

    # ------------------------------------------------------------ /config/domains

    @staticmethod
    def _domain_rows(node: Node) -> list[dict[str, str]]:
        doms = parse_domains(node.files["domains"])
        return [_with_comment({"domain": d}, doms[d]) for d in sorted(doms)]

    def _h_domains_list(self, target: Node, origin: Node, p: dict[str, Any]) -> list[dict[str, str]]:
        return self._domain_rows(target)

    def _h_domain_read(self, target: Node, origin: Node, p: dict[str, Any]) -> dict[str, str]:
        doms = parse_domains(target.files["domains"])
        if p["domain"] not in doms:
            raise _die(f"Domain '{p['domain']}' does not exist")
        return _with_comment({"domain": p["domain"]}, doms[p["domain"]])

    def _h_domain_create(self, target: Node, origin: Node, p: dict[str, Any]) -> None:
        self._edit_domains(target, "add relay domain", p["domain"], p.get("comment", ""), exists=False)

    def _h_domain_update(self, target: Node, origin: Node, p: dict[str, Any]) -> None:
        self._edit_domains(target, "update relay domain", p["domain"], p["comment"], exists=True)

    def _h_domain_delete(self, target: Node, origin: Node, p: dict[str, Any]) -> None:
        self._edit_domains(target, "delete relay domain", p["domain"], None, exists=True)

    def _edit_domains(self, node: Node, action: str, domain: str, comment: str | None, *, exists: bool) -> None:
        def change() -> None:
            doms = parse_domains(node.files["domains"])
            if exists and domain not in doms:
                raise _die(f"Domain '{domain}' does not exist")
            if not exists and domain in doms:
                raise _die(f"Domain '{domain}' already exists")
            if comment is None:
                del doms[domain]
            else:
                doms[domain] = comment
            self._store(node, "domains", render_domains(doms))

        self._locked(action, change)

    # ------------------------------------------------------------ /config/transport

    @staticmethod
    def _transport_rows(node: Node) -> list[dict[str, Any]]:
        tmap = parse_transport(node.files["transport"])
        return [
            _with_comment({k: v for k, v in tmap[d].items() if k != "comment"}, tmap[d]["comment"])
            for d in sorted(tmap)
        ]

    def _h_transport_list(self, target: Node, origin: Node, p: dict[str, Any]) -> list[dict[str, Any]]:
        return self._transport_rows(target)

    def _h_transport_read(self, target: Node, origin: Node, p: dict[str, Any]) -> dict[str, Any]:
        rows = {r["domain"]: r for r in self._transport_rows(target)}
        if p["domain"] not in rows:
            raise _die(f"Transport map entry '{p['domain']}' does not exist")
        return rows[p["domain"]]

    def _h_transport_create(self, target: Node, origin: Node, p: dict[str, Any]) -> None:
        def change() -> None:
            tmap = parse_transport(target.files["transport"])
            if p["domain"] in tmap:
                raise _die(f"Transport map entry '{p['domain']}' already exists")
            tmap[p["domain"]] = {
                "host": p["host"],
                "protocol": p.get("protocol", "smtp"),
                "port": p.get("port", 25),
                "use_mx": p.get("use_mx", 1),
                "comment": p.get("comment", ""),
            }
            self._store(target, "transport", render_transport(tmap))

        self._locked("add transport map entry", change)

    def _h_transport_update(self, target: Node, origin: Node, p: dict[str, Any]) -> None:
        domain = p.pop("domain")  # extract_param: the error below then names $param->{domain}, i.e. ''

        def change() -> None:
            tmap = parse_transport(target.files["transport"])
            if domain not in tmap:
                raise _die(f"Transport map entry '{p.get('domain', '')}' does not exist")
            if not p:
                raise _die("no options specified")
            entry = tmap[domain]
            for key in ("host", "protocol", "port"):
                if p.get(key):
                    entry[key] = p[key]
            for key in ("comment", "use_mx"):
                if key in p:
                    entry[key] = p[key]
            self._store(target, "transport", render_transport(tmap))

        self._locked("update transport map entry", change)

    def _h_transport_delete(self, target: Node, origin: Node, p: dict[str, Any]) -> None:
        def change() -> None:
            tmap = parse_transport(target.files["transport"])
            if p["domain"] not in tmap:
                raise _die(f"Transport map entry '{p['domain']}' does not exist")
            del tmap[p["domain"]]
            self._store(target, "transport", render_transport(tmap))

        self._locked("delete transport map entry", change)

    # ------------------------------------------------------------ /config/mynetworks

    @staticmethod
    def _network_rows(node: Node) -> list[dict[str, str]]:
        nets = parse_mynetworks(node.files["mynetworks"])
        return [_with_comment({"cidr": c}, nets[c]) for c in sorted(nets)]

    def _h_networks_list(self, target: Node, origin: Node, p: dict[str, Any]) -> list[dict[str, str]]:
        return self._network_rows(target)

    def _h_network_read(self, target: Node, origin: Node, p: dict[str, Any]) -> dict[str, str]:
        nets = parse_mynetworks(target.files["mynetworks"])
        if p["cidr"] not in nets:
            raise _die(f"trusted network '{p['cidr']}' does not exist")
        return _with_comment({"cidr": p["cidr"]}, nets[p["cidr"]])

    def _h_network_create(self, target: Node, origin: Node, p: dict[str, Any]) -> None:
        self._edit_networks(target, "add trusted network", p["cidr"], p.get("comment", ""), exists=False)

    def _h_network_update(self, target: Node, origin: Node, p: dict[str, Any]) -> None:
        self._edit_networks(target, "update trusted network", p["cidr"], p["comment"], exists=True)

    def _h_network_delete(self, target: Node, origin: Node, p: dict[str, Any]) -> None:
        self._edit_networks(target, "delete trusted network", p["cidr"], None, exists=True)

    def _edit_networks(self, node: Node, action: str, cidr: str, comment: str | None, *, exists: bool) -> None:
        def change() -> None:
            nets = parse_mynetworks(node.files["mynetworks"])
            if exists and cidr not in nets:
                raise _die(f"trusted network '{cidr}' does not exist")
            if not exists and cidr in nets:
                raise _die(f"trusted network '{cidr}' already exists")
            if comment is None:
                del nets[cidr]
            else:
                nets[cidr] = comment
            self._store(node, "mynetworks", render_mynetworks(nets))

        self._locked(action, change, hold=self.network_write_delay)


def _with_comment(row: dict[str, Any], comment: str) -> dict[str, Any]:
    """PMG leaves ``comment`` out when there is none."""
    return {**row, "comment": comment} if comment else row
