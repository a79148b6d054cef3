"""MailPort over the Mailcow REST API with httpx (reference/mailcow.md §1-§7).

Every answer goes through one check (§3.2): transport faults, timeouts and 5xx -> ``MailcowUnavailable``; 401, other
4xx, ``danger``/``error`` entries, an empty or non-JSON body, or a missing success key (the "Task completed" false
positive) -> ``MailcowRejected``. A GET answering ``{}`` means "not found". Error messages carry the call, the HTTP
status and Mailcow's message keys only: never a response body (Mailcow echoes relayhost passwords in ``log``), never
the API key.

SOGo learns new domains only when its container starts; ``restart_sogo`` restarts it through the admin UI's
container control (``/inc/ajax/container_ctrl.php``, which any API key's session may call), the only API path that
can do it after the domains were added (``add/domain`` restarts only at add time).

Retries: GETs, edits and deletes are idempotent and retried in place (functions._core.platform.retry). Adds are
not: after a transient failure the add is re-read first and sent again only if nothing shows up. A 401 is never
retried (fail2ban bans the client after 10 bad keys). Cookies are never stored: a Mailcow session cookie
authenticates like its key.
"""

from __future__ import annotations

import base64
import http.cookiejar
import ipaddress
import json
import logging
import re
import ssl
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ParamSpec, Protocol, TypeVar

import httpx
from cryptography.hazmat.primitives import serialization

from functions._core.model.ports import DkimKey, MailDomain, MailTransport, Relayhost
from functions._core.platform.config import MailcowSettings
from functions._core.platform.errors import ConfigError, MailcowRejected, MailcowUnavailable
from functions._core.platform.retry import retried

__all__ = ["MANAGED_MARK", "MailcowClient"]

log = logging.getLogger(__name__)

MANAGED_MARK = "managed-by mailplane"  # written into the description of every domain mailplane creates
MIB = 1048576
CONTAINER_CTRL = "inc/ajax/container_ctrl.php"
CTRL_OK = '<span class="pull-right text-success">OK</span>'
_CTRL_ERROR = re.compile(r'text-danger">Error: (.*?)</span>', re.DOTALL)
# edit_domain field -> Mailcow attribute (the plan's Mailcow names, and MailDomain's names for the quotas)
_EDIT_FIELDS = {
    "description": "description",
    "mailboxes": "mailboxes",
    "aliases": "aliases",
    "quota": "quota",
    "maxquota": "maxquota",
    "defquota": "defquota",
    "quota_mib": "quota",
    "maxquota_mib": "maxquota",
    "defquota_mib": "defquota",
    "active": "active",
    "relayhost": "relayhost",
}
_KEEPS_ON_EMPTY = ("aliases", "quota", "maxquota", "description")  # edit/domain ignores 0 and "" for these (!empty())
P = ParamSpec("P")
T = TypeVar("T")


class RetryPolicy(Protocol):
    """A decorator like ``functions._core.platform.retry.retried`` (tests pass one without waits)."""

    def __call__(self, fn: Callable[P, T], /) -> Callable[P, T]: ...


@dataclass
class _Add:
    """A non-idempotent add: ``found`` tells whether an earlier attempt landed although its answer was lost."""

    path: str
    body: Any  # an object, or the list of items of a delete/*
    expect: str
    found: Callable[[], bool]
    sent: bool = False


class MailcowClient:
    """MailPort for one Mailcow instance. Build once at start (runtime/main.py); ``close()`` at shutdown.

    Raises:
        ConfigError: ``settings.ca_file`` cannot be read.
    """

    def __init__(
        self,
        settings: MailcowSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy = retried,
    ) -> None:
        self._url = settings.url.rstrip("/")
        self._retry = retry
        self._restart_timeout = httpx.Timeout(settings.sogo_restart_timeout, connect=settings.timeout)
        self._http = httpx.Client(
            base_url=f"{self._url}/api/v1/",
            headers={"X-API-Key": settings.api_key.reveal(), "Accept": "application/json"},
            timeout=httpx.Timeout(settings.timeout),
            verify=_tls(settings),
            cookies=_no_cookies(),
            follow_redirects=False,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"MailcowClient(url={self._url!r})"

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- domains ---------------------------------------------------------------------------

    def get_domain(self, domain: str) -> MailDomain | None:
        """The domain, or None if Mailcow has no domain of that name (an alias domain's name also gives None).

        Raises:
            MailcowUnavailable: Mailcow did not answer (after retries).
            MailcowRejected: Mailcow refused the request or answered something unexpected.
        """
        name = _domain(domain)
        data = self._get_object(f"get/domain/{_seg(name)}")
        if data is None or str(data.get("domain_name", "")).lower() != name:
            return None  # get/domain/<alias domain> answers with the target's object
        return _to_domain(data)

    def list_domains(self) -> list[MailDomain]:
        """Every Mailcow domain (``get/domain/all``), names lowercased.

        Raises:
            MailcowUnavailable: Mailcow did not answer (after retries).
            MailcowRejected: Mailcow refused the request or answered something unexpected.
        """
        return [_to_domain(row) for row in self._get_list("get/domain/all")]

    def add_domain(self, want: MailDomain) -> None:
        """Create the domain without a DKIM key (key_size 0), marked as managed; then bind its relayhost.

        Raises:
            MailcowUnavailable: Mailcow did not answer (after retries).
            MailcowRejected: refused (e.g. ``domain_exists``), or the domain exists with other settings.
        """
        name = _domain(want.domain)
        expected = replace(want, domain=name, description=_marked(want.description), relayhost=0)
        body = {
            "domain": name,
            "description": expected.description,
            "aliases": want.aliases,
            "mailboxes": want.mailboxes,
            "defquota": want.defquota_mib,
            "maxquota": want.maxquota_mib,
            "quota": want.quota_mib,
            "active": int(want.active),
            "key_size": 0,
            "dkim_selector": "",
            "restart_sogo": 0,
        }
        self._add(_Add("add/domain", body, "domain_added", lambda: self._domain_is(expected)))
        if want.relayhost:
            self.edit_domain(name, {"relayhost": want.relayhost})

    def _domain_is(self, expected: MailDomain) -> bool:
        """After a lost answer: did our add land? Raises MailcowRejected if the domain exists with other data."""
        have = self.get_domain(expected.domain)
        if have is not None and have != expected:
            raise MailcowRejected(f"add/domain {expected.domain}: domain_exists with other settings")
        return have is not None

    def edit_domain(self, domain: str, changes: Mapping[str, int | str]) -> None:
        """Change some fields (Mailcow names as in the plan: description, mailboxes, aliases, quota, maxquota,
        defquota, active, relayhost; MailDomain's ``*_mib`` names are accepted too).

        Raises:
            MailcowUnavailable: Mailcow did not answer (after retries).
            MailcowRejected: refused; an unknown field; a value Mailcow would silently ignore (0 or "" for aliases,
                quota, maxquota, description); a relayhost id that does not exist (Mailcow does not check).
        """
        name = _domain(domain)
        attr = _edit_attr(name, changes)
        if not attr:
            return
        relayhost = attr.get("relayhost")
        if isinstance(relayhost, int) and relayhost and relayhost not in {r.id for r in self.list_relayhosts()}:
            raise MailcowRejected(f"edit/domain {name}: relayhost_invalid {relayhost}")
        self._write_again("edit/domain", {"items": [name], "attr": attr}, "domain_modified")

    def delete_domain(self, domain: str) -> None:
        """Delete the domain (success if absent). Its DKIM key stays in Mailcow (reused if the domain comes back).

        Raises:
            MailcowUnavailable: Mailcow did not answer (after retries).
            MailcowRejected: refused, e.g. ``domain_not_empty`` (mailboxes exist).
        """
        self._write_again("delete/domain", [_domain(domain)], "domain_removed")

    # -- DKIM ------------------------------------------------------------------------------

    def get_dkim(self, domain: str) -> DkimKey | None:
        """The key Mailcow signs with for the domain, or None.

        Raises:
            MailcowUnavailable: Mailcow did not answer (after retries).
            MailcowRejected: Mailcow refused the request or answered something unexpected.
        """
        data = self._get_object(f"get/dkim/{_seg(_domain(domain))}")
        if data is None:
            return None
        selector, pubkey = data.get("dkim_selector"), data.get("pubkey")
        if not isinstance(selector, str) or not isinstance(pubkey, str) or not pubkey:
            raise MailcowRejected(f"get/dkim {domain}: unexpected answer (no selector or pubkey)")
        return DkimKey(selector=selector, public_key_b64=pubkey)

    def import_dkim(self, domain: str, selector: str, private_pem: str, *, overwrite: bool) -> None:
        """Make Mailcow sign with this key (``add/dkim_import``); with ``overwrite`` one request swaps the key.

        Raises:
            MailcowUnavailable: Mailcow did not answer (after retries).
            MailcowRejected: refused: ``dkim_domain_or_sel_exists`` (a key exists, no overwrite),
                ``private_key_error``, ``dkim_domain_or_sel_invalid``.
        """
        name = _domain(domain)
        body: dict[str, Any] = {"domain": name, "dkim_selector": selector, "private_key_file": private_pem}
        body["overwrite_existing"] = int(overwrite)
        if overwrite:
            self._write_again("add/dkim_import", body, "dkim_added")
            return
        self._add(_Add("add/dkim_import", body, "dkim_added", lambda: self._signs_with(name, selector, private_pem)))

    def _signs_with(self, domain: str, selector: str, private_pem: str) -> bool:
        have = self.get_dkim(domain)
        return have is not None and have == DkimKey(selector, _public_b64(private_pem))

    def delete_dkim(self, domain: str) -> None:
        """Delete the domain's DKIM key (``delete/dkim``; ``dkim_removed`` even if none existed).

        Raises:
            MailcowUnavailable: Mailcow did not answer (after retries).
            MailcowRejected: refused (``dkim_domain_or_sel_invalid``: a bad name).
        """
        self._write_again("delete/dkim", [_domain(domain)], "dkim_removed")

    # -- mailboxes -------------------------------------------------------------------------

    def list_mailboxes(self, domain: str) -> list[str]:
        """The usernames of the domain's mailboxes (``get/mailbox/all/<domain>``).

        Raises:
            MailcowUnavailable: Mailcow did not answer (after retries).
            MailcowRejected: Mailcow refused the request or answered something unexpected.
        """
        rows = self._get_list(f"get/mailbox/all/{_seg(_domain(domain))}")
        return sorted(_str(r, "username").lower() for r in rows)

    def delete_mailbox(self, username: str) -> None:
        """Delete a mailbox and its mail; an absent mailbox is success (Mailcow itself answers ``access_denied``).

        Raises:
            MailcowUnavailable: Mailcow did not answer (after retries).
            MailcowRejected: refused.
        """
        user = username.strip().lower()
        path = f"get/mailbox/{_seg(user)}"
        if self._get_object(path) is None:
            return
        # not idempotent: after a lost answer, re-read before sending again
        self._add(_Add("delete/mailbox", [user], "mailbox_removed", lambda: self._get_object(path) is None))

    # -- relayhosts ------------------------------------------------------------------------

    def list_relayhosts(self) -> list[Relayhost]:
        """Every relayhost (passwords are dropped).

        Raises:
            MailcowUnavailable: Mailcow did not answer (after retries).
            MailcowRejected: Mailcow refused the request or answered something unexpected.
        """
        rows = self._get_list("get/relayhost/all")
        return [Relayhost(_int(r, "id"), _str(r, "hostname"), _int(r, "active") == 1) for r in rows]

    def add_relayhost(self, hostname: str) -> int:
        """Create a relayhost (Mailcow allows duplicates and returns no id) and return its id, found by re-reading.

        Raises:
            MailcowUnavailable: Mailcow did not answer (after retries).
            MailcowRejected: refused (``invalid_host``), or the new relayhost does not show up.
        """
        host = hostname.strip()
        before = {r.id for r in self.list_relayhosts() if r.hostname == host}

        def new_ids() -> list[int]:
            return [r.id for r in self.list_relayhosts() if r.hostname == host and r.id not in before]

        body = {"hostname": host, "username": "", "password": ""}
        self._add(_Add("add/relayhost", body, "relayhost_added", lambda: bool(new_ids())))
        found = new_ids()
        if not found:
            raise MailcowRejected(f"add/relayhost {host}: relayhost_added, but no new relayhost on re-read")
        return max(found)

    def edit_relayhost(self, relayhost_id: int, *, hostname: str | None = None, active: bool | None = None) -> None:
        """Change a relayhost's hostname and/or active flag.

        Raises:
            MailcowUnavailable: Mailcow did not answer (after retries).
            MailcowRejected: refused (``relayhost_invalid``: unknown id), or an empty hostname.
        """
        attr: dict[str, Any] = {}
        if hostname is not None:
            if not hostname.strip():
                raise MailcowRejected(f"edit/relayhost {relayhost_id}: empty hostname would be ignored")
            attr["hostname"] = hostname.strip()
        if active is not None:
            attr["active"] = int(active)
        if attr:
            self._write_again("edit/relayhost", {"items": [str(relayhost_id)], "attr": attr}, "object_modified")

    def delete_relayhost(self, relayhost_id: int) -> None:
        """Delete a relayhost (success if absent); domains bound to it fall back to none.

        Raises:
            MailcowUnavailable: Mailcow did not answer (after retries).
            MailcowRejected: Mailcow refused the request.
        """
        self._write_again("delete/relayhost", [str(relayhost_id)], "relayhost_removed")

    # -- transports ------------------------------------------------------------------------

    def list_transports(self) -> list[MailTransport]:
        """Every transport map entry (passwords are dropped).

        Raises:
            MailcowUnavailable: Mailcow did not answer (after retries).
            MailcowRejected: Mailcow refused the request or answered something unexpected.
        """
        rows = self._get_list("get/transport/all")
        return [
            MailTransport(_int(r, "id"), _str(r, "destination"), _str(r, "nexthop"), _int(r, "active") == 1)
            for r in rows
        ]

    def add_transport(self, destination: str, nexthop: str) -> int:
        """Create an active transport (Mailcow's default is inactive) and return its id, found by re-reading.

        Raises:
            MailcowUnavailable: Mailcow did not answer (after retries).
            MailcowRejected: refused (``transport_dest_exists``, ``invalid_nexthop`` ...).
        """
        dest, hop = destination.strip().lower(), _nexthop(nexthop)
        body = {"destination": dest, "nexthop": hop, "username": "", "password": "", "is_mx_based": 0, "active": 1}
        self._add(_Add("add/transport", body, "relayhost_added", lambda: self._transport_id(dest, hop) is not None))
        found = self._transport_id(dest, hop)
        if found is None:
            raise MailcowRejected(f"add/transport {dest}: relayhost_added, but no such transport on re-read")
        return found

    def _transport_id(self, destination: str, nexthop: str) -> int | None:
        return next(
            (t.id for t in self.list_transports() if (t.destination, t.nexthop) == (destination, nexthop)), None
        )

    def edit_transport(self, transport_id: int, *, nexthop: str | None = None, active: bool | None = None) -> None:
        """Change a transport's nexthop and/or active flag.

        Raises:
            MailcowUnavailable: Mailcow did not answer (after retries).
            MailcowRejected: refused (``relayhost_invalid``: unknown id), or an empty nexthop.
        """
        attr: dict[str, Any] = {}
        if nexthop is not None:
            if not nexthop.strip():
                raise MailcowRejected(f"edit/transport {transport_id}: empty nexthop would be ignored")
            attr["nexthop"] = _nexthop(nexthop)
        if active is not None:
            attr["active"] = int(active)
        if attr:
            self._write_again("edit/transport", {"items": [str(transport_id)], "attr": attr}, "object_modified")

    def delete_transport(self, transport_id: int) -> None:
        """Delete a transport (success if absent).

        Raises:
            MailcowUnavailable: Mailcow did not answer (after retries).
            MailcowRejected: Mailcow refused the request.
        """
        self._write_again("delete/transport", [str(transport_id)], "relayhost_removed")

    # -- SOGo ------------------------------------------------------------------------------

    def restart_sogo(self) -> None:
        """Restart SOGo so that it reads the domain list again; success only on Mailcow's ``OK`` marker. Sent once:
        a restart takes seconds, and the caller (the debounced webmail step) decides when to try again.

        Raises:
            MailcowUnavailable: no answer, 5xx, or ``Error: <msg>`` (Docker could not restart the container).
            MailcowRejected: 401/403 (the key, its allow_from), an empty answer (the session is not an admin one,
                or the path is not served), or an answer without the marker.
        """
        what = "GET container_ctrl.php restart sogo-mailcow"
        log.info("mailcow restart sogo-mailcow")
        resp = _exchange(
            what,
            lambda: self._http.get(
                f"{self._url}/{CONTAINER_CTRL}",
                params={"service": "sogo-mailcow", "action": "restart"},
                headers={"Accept": "text/html", "Sec-Fetch-Dest": "empty"},
                timeout=self._restart_timeout,
            ),
        )
        text = resp.text
        if CTRL_OK in text:
            return
        error = _CTRL_ERROR.search(text)
        if error is not None:
            msg = re.sub(r"<[^>]*>", "", error.group(1)).strip()[:120]
            raise MailcowUnavailable(f"{what}: Mailcow answered Error: {msg or '(no message)'}")
        if not text.strip():
            raise MailcowRejected(f"{what}: empty answer (not an admin session, or the path is not served)")
        raise MailcowRejected(f"{what}: unexpected answer (no OK marker)")

    # -- retried steps ---------------------------------------------------------------------

    def _get_object(self, path: str) -> dict[str, Any] | None:
        """A single object, or None for ``{}`` (not found). Retried.

        Raises:
            MailcowUnavailable: no answer after the retries.
            MailcowRejected: refused, or not an object.
        """
        body = self._retry(self._read)(path)
        if body == {} or body == []:
            return None
        if not isinstance(body, dict):
            raise MailcowRejected(f"GET {path}: expected an object")
        return body

    def _get_list(self, path: str) -> list[dict[str, Any]]:
        """An ``.../all`` answer: a list, ``{}`` when empty, a single object wrapped. Retried.

        Raises:
            MailcowUnavailable: no answer after the retries.
            MailcowRejected: refused, or not a list of objects.
        """
        body = self._retry(self._read)(path)
        rows = [] if body == {} else body if isinstance(body, list) else [body]
        if not all(isinstance(r, dict) for r in rows):
            raise MailcowRejected(f"GET {path}: expected a list of objects")
        return rows

    def _write_again(self, path: str, body: Any, expect: str) -> None:
        """An idempotent write (edit, delete, import with overwrite), retried in place.

        Raises:
            MailcowUnavailable: no answer after the retries.
            MailcowRejected: refused.
        """
        self._retry(self._write)(path, body, expect)

    def _add(self, add: _Add) -> None:
        """A non-idempotent add: sent once; after a transient failure re-read, and send again only if absent.

        Raises:
            MailcowUnavailable: no answer after the retries.
            MailcowRejected: refused.
        """

        def attempt() -> None:
            if add.sent and add.found():
                return
            add.sent = True
            self._write(add.path, add.body, add.expect)

        self._retry(attempt)()

    # -- one exchange ----------------------------------------------------------------------

    def _send(self, path: str, body: Any = None) -> httpx.Response:
        """One HTTP exchange: GET without ``body``, else POST it as JSON.

        Raises:
            MailcowUnavailable: timeout, connection error, 5xx.
            MailcowRejected: any other non-200 status (401 included: never retried), or a client-side HTTP error.
        """
        what = f"{'POST' if body is not None else 'GET'} {path}"
        if body is None:
            return _exchange(what, lambda: self._http.get(path))
        content = json.dumps(body).encode()
        return _exchange(
            what, lambda: self._http.post(path, content=content, headers={"Content-Type": "application/json"})
        )

    def _write(self, path: str, body: Any, expect: str) -> list[dict[str, Any]]:
        """POST once and require success: no danger/error entry and ``expect`` among the success keys.

        Raises:
            MailcowUnavailable: timeout, connection error, 5xx.
            MailcowRejected: refused, danger/error entries, empty or non-JSON body, or ``expect`` missing.
        """
        log.info("mailcow %s", path)
        resp = self._send(path, body)
        entries = _entries(path, resp)
        bad = [e for e in entries if e.get("type") in ("danger", "error")]
        if bad:
            raise MailcowRejected(f"POST {path}: {_summary(bad)}")
        keys = {_key(e) for e in entries if e.get("type") == "success"}
        if expect not in keys:
            raise MailcowRejected(f"POST {path}: no {expect} in the answer (got {_summary(entries)})")
        for warning in (e for e in entries if e.get("type") == "warning"):
            log.warning("mailcow %s: %s", path, _describe(warning))
        return entries

    def _read(self, path: str) -> Any:
        """GET once; the decoded body (``{}`` = nothing).

        Raises:
            MailcowUnavailable: timeout, connection error, 5xx.
            MailcowRejected: refused, an error object, or an empty or non-JSON body.
        """
        resp = self._send(path)
        body = _json_body(resp)
        if body is None:
            raise MailcowRejected(f"GET {path}: empty or non-JSON answer")
        if isinstance(body, dict) and body.get("type") in ("danger", "error"):
            raise MailcowRejected(f"GET {path}: {_describe(body)}")
        return body


# ---------------------------------------------------------------- pure helpers


def _exchange(what: str, send: Callable[[], httpx.Response]) -> httpx.Response:
    """Run one HTTP exchange and map its failures; only a 200 passes.

    Raises:
        MailcowUnavailable: timeout, connection error, 5xx.
        MailcowRejected: any other non-200 status (401 included: never retried), or a client-side HTTP error.
    """
    try:
        resp = send()
    except httpx.TimeoutException as exc:
        raise MailcowUnavailable(f"{what}: timeout ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise MailcowUnavailable(f"{what}: {type(exc).__name__}") from exc
    except httpx.HTTPError as exc:
        raise MailcowRejected(f"{what}: {type(exc).__name__}") from exc
    if resp.status_code >= 500:
        raise MailcowUnavailable(f"{what}: HTTP {resp.status_code}")
    if resp.status_code != 200:
        raise MailcowRejected(f"{what}: HTTP {resp.status_code} {_framework_msg(resp)}".rstrip())
    return resp


def _tls(settings: MailcowSettings) -> ssl.SSLContext | bool:
    if not settings.ca_file:
        return settings.verify_tls
    try:
        return ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mailcow.ca_file {settings.ca_file}: cannot load ({type(exc).__name__})") from None


def _no_cookies() -> http.cookiejar.CookieJar:
    """A jar that refuses every cookie: Mailcow's session cookie (MCSESSID) would keep us logged in without the key."""
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


def _domain(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _nexthop(value: str) -> str:
    """Mailcow brackets a bare IP nexthop; do it first so the re-read compares equal."""
    hop = value.strip()
    try:
        ipaddress.ip_address(hop)
    except ValueError:
        return hop
    return f"[{hop}]"


def _marked(description: str) -> str:
    if MANAGED_MARK in description:
        return description
    return f"{description} ({MANAGED_MARK})" if description else MANAGED_MARK


def _edit_attr(domain: str, changes: Mapping[str, int | str]) -> dict[str, Any]:
    attr: dict[str, Any] = {}
    for name, value in changes.items():
        field = _EDIT_FIELDS.get(name)
        if field is None:
            raise MailcowRejected(f"edit/domain {domain}: unknown field {name!r}")
        if field == "description":
            if not str(value):
                raise MailcowRejected(f"edit/domain {domain}: Mailcow ignores an empty description")
            attr[field] = _marked(str(value))
            continue
        try:
            attr[field] = int(value)
        except ValueError:
            raise MailcowRejected(f"edit/domain {domain}: {field} must be an integer") from None
        if field in _KEEPS_ON_EMPTY and attr[field] == 0:
            raise MailcowRejected(f"edit/domain {domain}: Mailcow ignores {field}=0")
    return attr


def _public_b64(private_pem: str) -> str:
    try:
        key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    except (ValueError, TypeError):
        return ""
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode("ascii")


def _json_body(resp: httpx.Response) -> Any:
    """The decoded body, or None if empty or not JSON (PHP fatals answer 200 with an empty body)."""
    if not resp.content.strip():
        return None
    try:
        return json.loads(resp.content)
    except ValueError:
        return None


def _entries(path: str, resp: httpx.Response) -> list[dict[str, Any]]:
    body = _json_body(resp)
    if body is None:
        raise MailcowRejected(f"POST {path}: empty or non-JSON answer")
    entries = body if isinstance(body, list) else [body]
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise MailcowRejected(f"POST {path}: unexpected answer shape")
    return entries


def _framework_msg(resp: httpx.Response) -> str:
    """The ``msg`` of a framework error object (``authentication failed``, ``route not found`` ...), bounded."""
    body = _json_body(resp)
    msg = body.get("msg") if isinstance(body, dict) else None
    return msg[:120] if isinstance(msg, str) else ""


def _key(entry: dict[str, Any]) -> str:
    msg = entry.get("msg")
    if isinstance(msg, list) and msg:
        msg = msg[0]
    return msg if isinstance(msg, str) else "?"


def _describe(entry: dict[str, Any]) -> str:
    """Message key and its arguments (names, ids), never ``log`` (it echoes request data, passwords included)."""
    msg = entry.get("msg")
    args = msg[1:] if isinstance(msg, list) else []
    return " ".join([_key(entry), *(str(a)[:80] for a in args if isinstance(a, str | int))])


def _summary(entries: list[dict[str, Any]]) -> str:
    return "; ".join(_describe(e) for e in entries[:5])


def _int(row: dict[str, Any], name: str) -> int:
    value = row.get(name)
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise MailcowRejected(f"unexpected answer: {name} is not an integer")


def _str(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        raise MailcowRejected(f"unexpected answer: {name} is not a string")
    return value


def _to_domain(data: dict[str, Any]) -> MailDomain:
    """Map ``get/domain``: quota fields come in bytes, counts as ints, ``relayhost`` as a string id."""
    active = "active_int" if "active_int" in data else "active"
    return MailDomain(
        domain=_str(data, "domain_name").lower(),
        description=_str(data, "description"),
        mailboxes=_int(data, "max_num_mboxes_for_domain"),
        aliases=_int(data, "max_num_aliases_for_domain"),
        quota_mib=_int(data, "max_quota_for_domain") // MIB,
        maxquota_mib=_int(data, "max_quota_for_mbox") // MIB,
        defquota_mib=_int(data, "def_quota_for_mbox") // MIB,
        active=_int(data, active) == 1,
        relayhost=_int(data, "relayhost"),
        mailboxes_in_use=_int(data, "mboxes_in_domain") if "mboxes_in_domain" in data else 0,
    )
