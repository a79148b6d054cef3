"""PmgClient: the GatewayPort over the Proxmox Mail Gateway API (reference/pmg.md), through proxmoxer.

Why not ``ProxmoxAPI(host, user=..., password=..., service="PMG")``: proxmoxer logs in inside that constructor, and
renews the ticket, with the module-level ``requests.post`` (a fresh Session each time), so no adapter mounted on
its session reaches the login, and an expired ticket surfaces as a bare 401. This adapter therefore assembles
proxmoxer's own https pieces (``ProxmoxHttpSession`` + ``JsonSerializer`` + ``ProxmoxResource``, as
``proxmoxer.backends.https.Backend`` does) and posts ``/access/ticket`` through a session of its own, so
``session_adapter`` (the in-process simulator in tests), ``verify`` and ``timeout`` apply to every request.

- Nodes: the first node whose API answers; on a connection failure the next one (all /config calls reach the
  master anyway). Tickets are valid on every node.
- Tickets: renewed with ``password=<ticket>`` after 1 h; a 401 on a call triggers ONE fresh login and ONE repeat.
- Errors (ResourceException, requests exceptions) become PmgUnavailable (595-599, 502-504, timeouts, lock
  timeouts, "not the master node", "proxy loop detected") or PmgRejected (400, 401, 403, other 500s). Add treats
  "already exists", delete "does not exist" as success. Messages carry PMG's reason, never a secret.
- Reads are retried in place with the shared policy; a write is repeated only after a re-read shows it did not land.
- Per-event reads are per item (``GET /config/domains/{domain}``, ``/config/transport/{domain}``,
  ``/config/mynetworks/{cidr}``; PMG answers a missing item with ``500 ... does not exist``, read as None), so an
  event's cost does not grow with the fleet; the listings (``list_*``) are for fleet-wide commands (drift, adopt).
- Writes send 1/0 for booleans (proxmoxer would send "True"), lower-case new domains, refuse multi-line values and
  put the ownership marker ``managed-by mailplane`` into every comment they write.
- Writes to the relay-domain and transport maps go through ``MapWrites`` (pmg_maps.py) so that PMG's whole-second
  postmap rule loses none of them; ``settle()`` finishes that once an event's writes are done.
- TLS: a node with ``api_fingerprint`` is pinned by the SHA-256 fingerprint of its certificate (PMG's stock
  certificate is CN-only, so no CA chain verifies it); a different certificate is refused (PmgRejected, no
  failover). Other nodes verify with ``ca_file`` or the system CAs.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar

import requests
import requests.adapters
import requests.utils
from proxmoxer import ProxmoxResource, ResourceException
from proxmoxer.backends.https import JsonSerializer, ProxmoxHttpSession
from requests.auth import AuthBase
from requests.cookies import RequestsCookieJar

from functions._core.model.ports import GatewayNode, GatewayTransport, RelayDomain, TrustedNetwork
from functions._core.platform.config import MxHost, PmgSettings, Secret
from functions._core.platform.errors import ConfigError, PmgRejected, PmgUnavailable
from functions._core.platform.retry import retried
from functions.adapters.pmg_maps import MAPS, MapWrites

__all__ = ["MANAGED_COMMENT", "PmgClient", "effective_use_mx"]

log = logging.getLogger(__name__)

MANAGED_COMMENT = "managed-by mailplane"
RENEW_AFTER = 3600.0  # s; tickets live 2 h (proxmoxer's renew_age)
_UNAVAILABLE_STATUS = frozenset({502, 503, 504, 595, 596, 597, 598, 599})
_KNOWN_MAX = 8  # entries of ours remembered per map, as re-touch candidates
_TOUCH_TRIES = 3  # of which at most this many are read before the map is listed
_UNAVAILABLE_500 = ("can't lock file", "got timeout", "is not the master node", "proxy loop detected")

P = ParamSpec("P")
T = TypeVar("T")
Api = Any  # a proxmoxer ProxmoxResource (untyped library)


class RetryPolicy(Protocol):
    """A decorator like ``functions._core.platform.retry.retried`` (tests pass one without waits)."""

    def __call__(self, fn: Callable[P, T], /) -> Callable[P, T]: ...


def effective_use_mx(protocol: str, host: str, use_mx: bool) -> bool:
    """What PMG actually does: no MX lookup for lmtp or an IP host, whatever was asked (pmg.md §5)."""
    return protocol != "lmtp" and not _is_ip(host) and use_mx


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return "%" not in host


def _marked(comment: str) -> str:
    """The comment to write: stripped, one line, carrying the ownership marker.

    Raises:
        PmgRejected: the comment spans lines (it would corrupt PMG's config file).
    """
    text = _one_line("comment", comment).strip()
    if MANAGED_COMMENT in text:
        return text
    return f"{MANAGED_COMMENT}; {text}" if text else MANAGED_COMMENT


def _one_line(what: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise PmgRejected(f"PMG {what} must be a single line")
    return value


def _key(what: str, value: str) -> str:
    """A path key (domain, CIDR): non-empty, one line, no blanks.

    Raises:
        PmgRejected: empty or containing whitespace.
    """
    if not value or any(c.isspace() for c in value):
        raise PmgRejected(f"PMG {what} {value!r} is empty or contains whitespace")
    return value


class _TicketAuth(AuthBase):
    """Adds the PMGAuthCookie and, on non-GET, the CSRF header to every API request.

    ``verify_ssl``, ``timeout`` and ``get_cookies`` are what ProxmoxHttpSession reads from its auth.
    """

    def __init__(self, *, timeout: float, verify: bool | str) -> None:
        self.timeout = timeout
        self.verify_ssl = verify
        self.ticket = ""
        self.csrf = ""
        self.born = 0.0

    def get_cookies(self) -> RequestsCookieJar:
        return RequestsCookieJar()  # the cookie is set in __call__, after any renewal

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Cookie"] = f"PMGAuthCookie={self.ticket}"
        if r.method != "GET":
            r.headers["CSRFPreventionToken"] = self.csrf
        return r

    def __repr__(self) -> str:
        return "_TicketAuth(***)"


class _PinnedAdapter(requests.adapters.HTTPAdapter):
    """HTTPS to one node whose certificate must have this SHA-256 fingerprint (urllib3 ``assert_fingerprint``); the
    CA chain and host name are not checked (PMG's stock certificate has neither a CA nor a subjectAltName)."""

    def __init__(self, fingerprint: str) -> None:
        self._fingerprint = fingerprint.replace(":", "").lower()
        super().__init__(pool_maxsize=64)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_fingerprint"] = self._fingerprint
        super().init_poolmanager(*args, **kwargs)

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs["verify"] = False  # no chain: the fingerprint is the check
        if len(args) > 2:
            args = (*args[:2], False, *args[3:])
        return super().send(request, *args, **kwargs)


class PmgClient:
    """GatewayPort for a PMG cluster. Every method raises PmgUnavailable (transient) or PmgRejected (permanent)."""

    def __init__(
        self,
        settings: PmgSettings,
        nodes: Sequence[MxHost],
        *,
        session_adapter: requests.adapters.BaseAdapter | None = None,
        clock: Callable[[], float] | None = None,
        retry: RetryPolicy = retried,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        """Nothing is sent before the first call. ``clock`` (monotonic) and ``sleep`` drive tickets and MapWrites.

        Raises:
            ConfigError: no nodes.
        """
        if not nodes:
            raise ConfigError("pmg: no nodes (provider.mx_hosts) configured")
        self._user = settings.user
        self._password: Secret = settings.password
        self._timeout = settings.timeout
        self._verify: bool | str = settings.ca_file if settings.ca_file else settings.verify_tls
        if self._verify is True:  # what requests reads per request otherwise (see _environment_once)
            self._verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self._nodes = [(mx.name, _base_url(mx)) for mx in nodes]
        self._pins = {_base_url(mx): mx.api_fingerprint for mx in nodes if mx.api_fingerprint}
        self._current = 0
        self._clock = time.monotonic if clock is None else clock
        self._retry = retry
        self._auth = _TicketAuth(timeout=self._timeout, verify=self._verify)
        self._session = ProxmoxHttpSession()
        self._session.auth = self._auth
        self._session.headers["accept"] = JsonSerializer().get_accept_types()
        self._login_session = requests.Session()
        # kept-alive connections for every handler thread (requests keeps 10 per host, then reconnects with TLS)
        adapter = session_adapter if session_adapter is not None else requests.adapters.HTTPAdapter(pool_maxsize=64)
        for session in (self._session, self._login_session):
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            if session_adapter is None:
                for base, fingerprint in self._pins.items():
                    session.mount(_origin(base), _PinnedAdapter(fingerprint))
        _environment_once((self._session, self._login_session), [base for _, base in self._nodes])
        self._serializer = JsonSerializer()
        self._maps = MapWrites(settings.map_writes, self._clock, time.sleep if sleep is None else sleep)
        self._known: dict[str, list[str]] = {"domains": [], "transport": []}  # entries of ours seen (re-touch)
        self._known_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PmgClient(user={self._user!r}, nodes={[n for n, _ in self._nodes]!r})"

    # ------------------------------------------------------------ relay domains

    def list_relay_domains(self) -> list[RelayDomain]:
        return self._retry(self._relay_domains)()

    def get_relay_domain(self, domain: str) -> RelayDomain | None:
        """The entry whose key is exactly ``domain`` (PMG keys are case-sensitive), or None."""
        return self._retry(lambda: self._relay_domain(domain))()

    def add_relay_domain(self, item: RelayDomain) -> None:
        domain = _key("domain", item.domain.lower())
        body = {"domain": domain, "comment": _marked(item.comment)}
        self._map_write(
            "domains",
            domain,
            f"add relay domain {domain}",
            lambda api: _outcome(api.config.domains.post, body, "already exists"),
            lambda: self._relay_domain(domain) is not None,
        )
        self._remember("domains", domain, body["comment"])

    def update_relay_domain(self, item: RelayDomain) -> None:
        """Set the comment of the entry whose key is exactly ``item.domain`` (PMG keys are case-sensitive)."""
        domain, comment = _key("domain", item.domain), _marked(item.comment)
        self._map_write(
            "domains",
            domain,
            f"update relay domain {domain}",
            lambda api: api.config.domains(domain).put(comment=comment),
            lambda: self._relay_domain(domain) == RelayDomain(domain, comment),
        )

    def delete_relay_domain(self, domain: str) -> None:
        """Delete the entry whose key is exactly ``domain``; a missing entry is success."""
        key = _key("domain", domain)
        self._map_write(
            "domains",
            key,
            f"delete relay domain {key}",
            lambda api: _outcome(api.config.domains(key).delete, {}, "does not exist"),
            lambda: self._relay_domain(key) is None,
        )

    # ------------------------------------------------------------ transports

    def list_transports(self) -> list[GatewayTransport]:
        return self._retry(self._transports)()

    def get_transport(self, domain: str) -> GatewayTransport | None:
        """The transport whose key is exactly ``domain``, or None."""
        return self._retry(lambda: self._transport(domain))()

    def add_transport(self, item: GatewayTransport) -> None:
        domain = _key("transport domain", item.domain.lower())
        body = {"domain": domain, **self._transport_fields(item)}
        self._map_write(
            "transport",
            domain,
            f"add transport {domain}",
            lambda api: _outcome(api.config.transport.post, body, "already exists"),
            lambda: self._transport(domain) is not None,
        )
        self._remember("transport", domain, str(body["comment"]))

    def update_transport(self, item: GatewayTransport) -> None:
        """Set every field of the entry whose key is exactly ``item.domain``."""
        domain, fields = _key("transport domain", item.domain), self._transport_fields(item)
        want = self._normalised(item, fields["comment"])
        self._map_write(
            "transport",
            domain,
            f"update transport {domain}",
            lambda api: api.config.transport(domain).put(**fields),
            lambda: self._transport(domain) == want,
        )

    def delete_transport(self, domain: str) -> None:
        key = _key("transport domain", domain)
        self._map_write(
            "transport",
            key,
            f"delete transport {key}",
            lambda api: _outcome(api.config.transport(key).delete, {}, "does not exist"),
            lambda: self._transport(key) is None,
        )

    @staticmethod
    def _transport_fields(item: GatewayTransport) -> dict[str, Any]:
        if item.protocol not in ("smtp", "lmtp"):
            raise PmgRejected(f"PMG transport protocol {item.protocol!r} is not smtp or lmtp")
        return {
            "host": _key("transport host", item.host),
            "protocol": item.protocol,
            "port": int(item.port),
            "use_mx": 1 if item.use_mx else 0,  # never Python's True: PMG refuses "True"
            "comment": _marked(item.comment),
        }

    @staticmethod
    def _normalised(item: GatewayTransport, comment: str) -> GatewayTransport:
        use_mx = effective_use_mx(item.protocol, item.host, item.use_mx)
        return GatewayTransport(item.domain, item.host, int(item.port), item.protocol, use_mx, comment)

    # ------------------------------------------------------------ trusted networks

    def list_networks(self) -> list[TrustedNetwork]:
        return self._retry(self._networks)()

    def get_network(self, cidr: str) -> TrustedNetwork | None:
        """The trusted network whose key is exactly ``cidr`` (PMG does not normalise CIDRs), or None."""
        return self._retry(lambda: self._network(cidr))()

    def add_network(self, item: TrustedNetwork) -> None:
        cidr = _key("CIDR", item.cidr)
        body = {"cidr": cidr, "comment": _marked(item.comment)}
        self._write(
            f"add trusted network {cidr}",
            lambda api: _outcome(api.config.mynetworks.post, body, "already exists"),
            lambda: self._network(cidr) is not None,
        )

    def update_network(self, item: TrustedNetwork) -> None:
        """Set the comment of the network whose key is exactly ``item.cidr`` (not in GatewayPort yet)."""
        cidr, comment = _key("CIDR", item.cidr), _marked(item.comment)
        self._write(
            f"update trusted network {cidr}",
            lambda api: api.config.mynetworks(cidr).put(comment=comment),
            lambda: self._network(cidr) == TrustedNetwork(cidr, comment),
        )

    def delete_network(self, cidr: str) -> None:
        """Delete the network whose key is exactly ``cidr`` (as listed: PMG does not normalise CIDRs)."""
        key = _key("CIDR", cidr)
        self._write(
            f"delete trusted network {key}",
            lambda api: _outcome(api.config.mynetworks(key).delete, {}, "does not exist"),
            lambda: self._network(key) is None,
        )

    # ------------------------------------------------------------ cluster

    def upload_smtp_certificate(self, node: str, key_pem: str, chain_pem: str) -> None:
        """``POST /nodes/{node}/certificates/custom/smtp`` (force: replace a custom one, restart: postfix reloads).

        Raises:
            PmgUnavailable / PmgRejected: as every call (the key never appears in the message).
        """
        self._call(
            f"upload the smtp certificate of {node}",
            lambda api: api.nodes(node).certificates.custom.smtp.post(
                certificates=chain_pem, key=key_pem, force=1, restart=1
            ),
        )

    def reload_postfix(self, node: str) -> None:
        """``POST /nodes/{node}/services/postfix/reload`` (a task on that node; answers its UPID before it ran).

        PMG rebuilds the relay-domain and transport maps with postmap only; Postfix daemons that have the map open
        (an idle smtpd, trivial-rewrite, which answers reject_unauth_destination) keep answering from what they read
        until they restart, seconds to minutes later. A reload restarts them at once (docs/mail-plane.md).

        Raises:
            PmgUnavailable / PmgRejected: as every call.
        """
        self._call(f"reload postfix on {node}", lambda api: api.nodes(node).services.postfix.reload.post())

    def cluster_nodes(self) -> list[GatewayNode]:
        """The cluster's nodes sorted by cid, from /config/cluster/status (else /config/cluster/nodes + probes)."""
        return self._retry(self._cluster_nodes)()

    def _cluster_nodes(self) -> list[GatewayNode]:
        try:
            rows = self._rows("read cluster status", lambda api: api.config.cluster.status.get(list_single_node=1))
        except PmgRejected as exc:
            log.warning("pmg: cluster status failed (%s); probing nodes one by one", exc)
            rows = []
        if rows:
            return sorted((_status_node(r) for r in rows), key=lambda n: n.cid)
        rows = self._rows("read cluster nodes", lambda api: api.config.cluster.nodes.get())
        return sorted((self._probed_node(r) for r in rows), key=lambda n: n.cid)

    def _probed_node(self, row: Mapping[str, Any]) -> GatewayNode:
        name = str(row.get("name", ""))
        try:
            status = self._call(f"read status of {name}", lambda api: api.nodes(name).status.get())
        except (PmgUnavailable, PmgRejected):
            return _status_node({**row, "conn_error": "unreachable"})
        return _status_node({**row, **(status if isinstance(status, dict) else {})})

    # ------------------------------------------------------------ reads (no retry inside; callers retry)

    def _relay_domains(self) -> list[RelayDomain]:
        rows = self._rows("list relay domains", lambda api: api.config.domains.get())
        return [RelayDomain(_field(r, "domain"), _comment(r)) for r in rows]

    def _transports(self) -> list[GatewayTransport]:
        return [_transport_of(r) for r in self._rows("list transports", lambda api: api.config.transport.get())]

    def _networks(self) -> list[TrustedNetwork]:
        rows = self._rows("list trusted networks", lambda api: api.config.mynetworks.get())
        return [TrustedNetwork(_field(r, "cidr"), _comment(r)) for r in rows]

    def _relay_domain(self, domain: str) -> RelayDomain | None:
        key = _key("domain", domain)
        row = self._item(f"read relay domain {key}", lambda api: _get_item(api.config.domains(key)))
        if row is None:
            return None
        self._remember("domains", key, _comment(row))
        return RelayDomain(_field(row, "domain"), _comment(row))

    def _transport(self, domain: str) -> GatewayTransport | None:
        key = _key("transport domain", domain)
        row = self._item(f"read transport {key}", lambda api: _get_item(api.config.transport(key)))
        if row is None:
            return None
        self._remember("transport", key, _comment(row))
        return _transport_of(row)

    def _network(self, cidr: str) -> TrustedNetwork | None:
        key = _key("CIDR", cidr)
        row = self._item(f"read trusted network {key}", lambda api: _get_item(api.config.mynetworks(key)))
        return None if row is None else TrustedNetwork(_field(row, "cidr"), _comment(row))

    def _item(self, action: str, op: Callable[[Api], Any]) -> Mapping[str, Any] | None:
        data = self._call(action, op)
        if data is not None and not isinstance(data, dict):
            raise PmgUnavailable(f"pmg: {action}: unexpected answer (not an object)")
        return data

    def _rows(self, action: str, op: Callable[[Api], Any]) -> list[Mapping[str, Any]]:
        data = self._call(action, op)
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise PmgUnavailable(f"pmg: {action}: unexpected answer (not a list of objects)")
        return data

    # ------------------------------------------------------------ writes

    def settle(self) -> None:
        """Make this thread's relay-domain and transport writes effective on the master (pmg_maps.py)."""
        touched = self._maps.settle()
        if touched:
            log.info("pmg: re-touched %d map(s) so that postmap includes the last writes", touched)

    def retouch(self, domain: str) -> None:
        """Rewrite the relay-domain and transport maps unchanged through ``domain``'s entries (a PUT of the same
        comment each), recorded like any write so that ``settle()`` makes them effective: for a domain whose entries
        exist but whose earlier write a crash may have left inside one second with another (never settled)."""
        if self._maps.mode == "off":  # pmg.map_writes = "off": neither settle nor retouch (to show the loss)
            return
        for name in MAPS:
            touch = functools.partial(self._touch, name, domain)
            self._maps.write(name, touch, touch)

    def _map_write(
        self, name: str, key: str, action: str, op: Callable[[Api], Any], landed: Callable[[], bool]
    ) -> None:
        self._maps.write(name, lambda: self._write(action, op, landed), lambda: self._touch(name, key))

    def _touch(self, name: str, prefer: str) -> None:
        """Rewrite map ``name`` unchanged: PUT the comment of ``prefer`` (or of another entry of ours) again.

        Reads per item: ``prefer``, then the entries of ours this client saw last; the map is listed only when
        none of them exists any more (the first delete in a fresh process), and the entries of ours found there are
        remembered for the next re-touches."""
        ours = self._touchable(name, prefer)
        if ours is None:
            return  # an empty map: nothing of ours left to rewrite
        key, comment = ours
        resource = "domains" if name == "domains" else "transport"
        self._retry(
            lambda: self._call(f"re-touch {name} ({key})", lambda api: api.config(resource)(key).put(comment=comment))
        )()

    def _touchable(self, name: str, prefer: str) -> tuple[str, str] | None:
        read = self._relay_domain if name == "domains" else self._transport
        with self._known_lock:
            known = [k for k in reversed(self._known[name]) if k != prefer]
        for key in [prefer, *known[:_TOUCH_TRIES]]:
            entry = self._retry(functools.partial(read, key))()
            if entry is not None and (key == prefer or MANAGED_COMMENT in entry.comment):
                return key, entry.comment
        log.info("pmg: no known entry of ours left in %s; listing it once to find some to re-touch", name)
        if name == "domains":
            rows = [(d.domain, d.comment) for d in self._retry(self._relay_domains)()]
        else:
            rows = [(t.domain, t.comment) for t in self._retry(self._transports)()]
        ours = [r for r in rows if MANAGED_COMMENT in r[1]]
        for key, comment in ours[-_KNOWN_MAX:]:
            self._remember(name, key, comment)  # the next re-touches read these per item, not the map
        return ours[0] if ours else None

    def _remember(self, name: str, key: str, comment: str) -> None:
        """Note an entry of ours in map ``name`` (a candidate for a later re-touch); bounded."""
        if MANAGED_COMMENT not in comment:
            return
        with self._known_lock:
            keys = self._known[name]
            if key in keys:
                keys.remove(key)
            keys.append(key)
            del keys[:-_KNOWN_MAX]

    def _write(self, action: str, op: Callable[[Api], Any], landed: Callable[[], bool]) -> None:
        """Run ``op``; on a transient failure re-read, and repeat only if the write did not land."""
        attempts = 0

        def once() -> None:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and landed():
                log.info("pmg: %s landed despite the error", action)
                return
            self._call(action, op)

        self._retry(once)()
        log.info("pmg: %s", action)

    # ------------------------------------------------------------ transport: nodes, tickets, error mapping

    def _call(self, action: str, op: Callable[[Api], T]) -> T:
        """Run ``op`` on the current node, failing over to the next on connection errors; map every error.

        Raises:
            PmgUnavailable: no node answered, a timeout, or a transient PMG error.
            PmgRejected: PMG refused the request or the login.
        """
        failures: list[str] = []
        for step in range(len(self._nodes)):
            index = (self._current + step) % len(self._nodes)
            name, base = self._nodes[index]
            try:
                result = self._on_node(base, op)
            except requests.exceptions.SSLError as exc:
                if base in self._pins and "Fingerprints did not match" in str(exc):
                    raise PmgRejected(
                        f"pmg: {action}: {name}: its API certificate does not have the pinned SHA-256 fingerprint "
                        f"{self._pins[base]} (provider.mx_hosts api_fingerprint; `mailplane pmg fingerprint` shows "
                        "the one served); refused"
                    ) from None
                failures.append(f"{name}: SSLError")
                continue
            except requests.exceptions.ConnectionError as exc:  # includes ConnectTimeout
                failures.append(f"{name}: {type(exc).__name__}")
                continue
            except requests.exceptions.Timeout:
                raise PmgUnavailable(f"pmg: {action}: {name} gave no answer within {self._timeout:g} s") from None
            except requests.exceptions.RequestException as exc:
                raise PmgUnavailable(f"pmg: {action}: {name}: {type(exc).__name__}") from None
            except ResourceException as exc:
                self._current = index
                raise self._mapped(action, exc) from None
            self._current = index
            return result
        if all("SSLError" in f for f in failures):
            raise PmgRejected(f"pmg: {action}: TLS verification failed on every node ({', '.join(failures)})")
        raise PmgUnavailable(f"pmg: {action}: no node answered ({', '.join(failures)})")

    def _on_node(self, base: str, op: Callable[[Api], T]) -> T:
        fresh = self._ensure_ticket(base)
        api = ProxmoxResource(base_url=base, session=self._session, serializer=self._serializer)
        try:
            return op(api)
        except ResourceException as exc:
            if exc.status_code != 401 or fresh:
                raise
        log.info("pmg: ticket refused (expired?); logging in again as %s", self._user)
        self._login(base, renew=False)
        return op(api)

    def _ensure_ticket(self, base: str) -> bool:
        """Log in when there is no ticket, renew it after RENEW_AFTER; True when the password was just used."""
        if not self._auth.ticket:
            self._login(base, renew=False)
            return True
        if self._clock() - self._auth.born < RENEW_AFTER:
            return False
        try:
            self._login(base, renew=True)
            return False
        except PmgRejected:
            self._login(base, renew=False)  # the ticket had expired already
            return True

    def _login(self, base: str, *, renew: bool) -> None:
        """POST /access/ticket (with the password, or with the current ticket to renew it).

        Raises:
            PmgRejected: refused (wrong credentials, TFA required, unexpected answer).
            PmgUnavailable: 5xx/59x.
            requests.RequestException: connection failures, for _call to fail over.
        """
        secret = self._auth.ticket if renew else self._password.reveal()
        resp = self._login_session.post(
            f"{base}/access/ticket",
            data={"username": self._user, "password": secret},
            timeout=self._timeout,
            verify=self._verify,
        )
        what = f"pmg: login as {self._user}" + (" (ticket renewal)" if renew else "")
        if resp.status_code in _UNAVAILABLE_STATUS or resp.status_code >= 500:
            raise PmgUnavailable(f"{what}: {resp.status_code} {self._scrub(resp.reason or '')}")
        if resp.status_code != 200:
            raise PmgRejected(f"{what} refused: {resp.status_code} {self._scrub(resp.reason or '')}")
        try:
            data = resp.json().get("data")
        except ValueError:
            data = None
        if not isinstance(data, dict) or not data.get("ticket") or not data.get("CSRFPreventionToken"):
            raise PmgRejected(f"{what}: the answer holds no ticket")
        if data.get("NeedTFA"):
            raise PmgRejected(f"{what}: the user needs TFA; use an automation user without it")
        self._auth.ticket, self._auth.csrf = str(data["ticket"]), str(data["CSRFPreventionToken"])
        self._auth.born = self._clock()

    def _mapped(self, action: str, exc: ResourceException) -> PmgUnavailable | PmgRejected:
        status = int(exc.status_code)
        reason = self._scrub(str(exc.content or exc.status_message or "").strip())
        text = f"pmg: {action}: {status} {reason}"
        errors = exc.errors
        if isinstance(errors, dict) and errors and not isinstance(errors.get("errors"), bytes):
            text += " (" + "; ".join(f"{k}: {str(v).strip()}" for k, v in sorted(errors.items())) + ")"
        text = self._scrub(text)
        if status in _UNAVAILABLE_STATUS or (status == 500 and any(s in reason for s in _UNAVAILABLE_500)):
            return PmgUnavailable(text)
        return PmgRejected(text)

    def _scrub(self, text: str) -> str:
        for secret in (self._password.reveal(), self._auth.ticket, self._auth.csrf):
            if secret:
                text = text.replace(secret, "***")
        return text


# ---------------------------------------------------------------- helpers


def _base_url(mx: MxHost) -> str:
    url = mx.api_url.rstrip("/") if mx.api_url else f"https://{mx.name}:8006"
    return f"{url}/api2/json"


def _environment_once(sessions: Sequence[requests.Session], bases: Sequence[str]) -> None:
    """Read the proxy environment (``HTTPS_PROXY``, ``NO_PROXY``, ...) for the nodes' URLs once, here, instead of on
    every request: with ``trust_env`` requests scans the whole environment per call (~1 ms of CPU each, 10-13 calls
    per domain.created). A node a proxy applies to gets it per host; ``NO_PROXY`` is honoured as requests would. The
    CA bundle variables requests would read are taken by the caller (``verify``); ``.netrc`` is not read (tickets)."""
    proxies: dict[str, str] = {}
    for base in bases:
        url = urllib.parse.urlsplit(base)
        found = requests.utils.get_environ_proxies(base)
        proxy = found.get(url.scheme) or found.get("all")
        if proxy and url.hostname:
            proxies[f"{url.scheme}://{url.hostname}"] = proxy
    for session in sessions:
        session.trust_env = False
        session.proxies.update(proxies)


def _origin(base: str) -> str:
    """``https://host:port/`` of an API base URL (the prefix a pinned adapter is mounted on)."""
    scheme, _, rest = base.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}/"


def _outcome(method: Callable[..., Any], body: Mapping[str, Any], success: str) -> None:
    """Call ``method(**body)``; a 500 whose message says ``success`` ("already exists", "does not exist") is success."""
    try:
        method(**body)
    except ResourceException as exc:
        if exc.status_code != 500 or success not in str(exc.content):
            raise
        log.info("pmg: %s", exc.content)


def _get_item(resource: Any) -> Any:
    """GET one item; PMG's ``500 <Item> '<key>' does not exist`` (no 404 in PMG's API) becomes None."""
    try:
        return resource.get()
    except ResourceException as exc:
        if exc.status_code == 500 and "does not exist" in str(exc.content):
            return None
        raise


def _transport_of(r: Mapping[str, Any]) -> GatewayTransport:
    protocol, host = str(r.get("protocol") or "smtp"), _field(r, "host")
    try:
        port, use_mx = int(r.get("port", 25)), bool(int(r.get("use_mx", 1)))  # port comes back as "25"
    except (TypeError, ValueError):
        raise PmgUnavailable(f"pmg: malformed transport entry {r.get('domain')!r}") from None
    use_mx = effective_use_mx(protocol, host, use_mx)
    return GatewayTransport(_field(r, "domain"), host, port, protocol, use_mx, _comment(r))


def _field(row: Mapping[str, Any], name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value:
        raise PmgUnavailable(f"pmg: malformed answer: an entry without {name}")
    return value


def _comment(row: Mapping[str, Any]) -> str:
    return str(row.get("comment") or "").strip()


def _status_node(row: Mapping[str, Any]) -> GatewayNode:
    reachable = not row.get("conn_error")
    try:
        cid, insync = int(row["cid"]), reachable and bool(int(row.get("insync") or 0))
    except (KeyError, TypeError, ValueError):
        raise PmgUnavailable("pmg: malformed cluster status entry") from None
    return GatewayNode(
        cid, str(row.get("name", "")), str(row.get("ip", "")), str(row.get("type", "")), reachable, insync
    )
