"""HTTP front-end of the Mailcow simulator: json_api.php routing, auth and encoding over ``MailcowModel``.

``/api/v1/<action>/<category>[/<object>[/<extra>]]`` as nginx rewrites it (reference/mailcow.md §1-§3): 401 for a bad
key or IP, 400 for invalid JSON, 404 ``route not found``, then per action the access check (403 for ro keys; edit
and delete also without a key), "Cannot find attributes in post data" (200) and the method check (405). Mutations
answer 200 with the handler's message list, or the single-object "Cannot add item" / "Task completed"; GETs answer
``{}`` for nothing, and 200 with an empty body without a key. Every answer sets an ``MCSESSID`` cookie, and a known
cookie authenticates like its key did (so clients must not store cookies). Every request that gets past the key
check is pushed to the API log (Redis ``API_LOG``: only keys matching /pass/i masked), readable with any key at
``GET /api/v1/get/logs/api[/N | /FROM-TO]``.

``GET /inc/ajax/container_ctrl.php?service=<svc>-mailcow&action=restart`` is the admin UI's container control: any
admin session (an API key, rw or ro, makes one) may call it; a ``Sec-Fetch-Dest`` other than ``empty`` is 403; the
answer is HTML with ``OK`` or ``Error: <msg>``. Restarting ``sogo-mailcow`` is the only way, besides ``add/domain``
with ``restart_sogo``, that SOGo learns new domains (it reads the domain table when it starts). Only ``restart``
is simulated; other actions answer an empty 200.

Control plane, no API key, loopback clients only:
  GET  /_sim/state     tables, DKIM selectors and public keys (no private keys, no passwords), auth failures
  GET  /_sim/requests  [{method, path, write, cookie, status, bytes_in, bytes_out}] of /api/v1 requests (bytes_in:
                       URL + body received, bytes_out: body sent; headers not counted)
  POST /_sim/reset     empty the model, forget sessions, faults and the request log
  POST /_sim/sign      {"domain", "message"} -> {"signed"}: the message as Mailcow's signer (rspamd) sends it,
                       DKIM-signed with the domain's key from Redis (the data plane; the key is never returned)
  POST /_sim/seed      {"count": N[, "prefix", "pubkey", "selector"]}: N domains at once (tests, benchmarks)
  POST /_sim/faults    {"latency_ms", "error_rate", "hang_ms", "seed",
                        "fail_next": [{"path_prefix", "status", "count", "apply"}]}
                       status 0 = hang ``hang_ms`` then close without an answer; ``apply`` = run the request first
                       (the write happens, the answer is lost); error_rate draws 500, 503 or a hang (seeded RNG).
                       "sogo_restart_ms": how long a container_ctrl restart of SOGo takes (add/domain's restart is
                       instant); "sogo_restart_fail": N = the next N SOGo restarts fail.
  /_sim/state "sogo": {"domains" (what SOGo knows), "restarts", "restart_failures", "started"}
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.parse
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sim.common import LOOPBACK, Request, Response, serve
from sim.mailcow.model import Auth, Fault, MailcowModel, Outcome, PhpFatalError, RequestRecord, as_array, php_json

API = "/api/v1/"
CONTAINER_CTRL = "/inc/ajax/container_ctrl.php"
SESSION_NAME = "MCSESSID"  # vars.inc.php $SESSION_NAME
CTRL_OK = '<b><span class="pull-right text-success">OK</span></b>'
CTRL_ERROR = '<b><span class="pull-right text-danger">Error: {}</span></b>'
CONTAINERS = frozenset(
    f"{name}-mailcow"
    for name in ("sogo", "postfix", "dovecot", "rspamd", "nginx", "php-fpm", "unbound", "redis", "mysql", "memcached")
)
ACTIONS = ("add", "get", "edit", "delete", "search")
WRITES = ("add", "edit", "delete")
JSON_TYPE = "application/json"
NO_ATTRIBUTES = {"type": "error", "msg": "Cannot find attributes in post data"}
GENERIC_FAILURE = {"add": "Cannot add item", "edit": "Cannot edit item", "delete": "Cannot delete item"}
FAULT_PAGES = {500: b"500 Internal Server Error", 502: b"502 Bad Gateway", 503: b"503 Service Temporarily Unavailable"}

AddHandler = Callable[[MailcowModel, dict[str, Any]], Outcome]
EditHandler = Callable[[MailcowModel, list[Any], dict[str, Any]], Outcome]
DeleteHandler = Callable[[MailcowModel, list[Any]], Outcome]

ADD: dict[str, AddHandler] = {
    "domain": MailcowModel.add_domain,
    "alias-domain": MailcowModel.add_alias_domain,
    "mailbox": MailcowModel.add_mailbox,
    "alias": MailcowModel.add_alias,
    "dkim": lambda m, a: m.dkim_add(a),
    "dkim_import": MailcowModel.dkim_import,
    "dkim_duplicate": MailcowModel.dkim_duplicate,
    "relayhost": MailcowModel.add_relayhost,
    "transport": MailcowModel.add_transport,
    "mta-sts": MailcowModel.add_mta_sts,
}
EDIT: dict[str, EditHandler] = {
    "domain": MailcowModel.edit_domain,
    "alias-domain": MailcowModel.edit_alias_domain,
    "relayhost": MailcowModel.edit_relayhost,
    "transport": MailcowModel.edit_transport,
}
DELETE: dict[str, DeleteHandler] = {
    "domain": MailcowModel.delete_domain,
    "alias-domain": MailcowModel.delete_alias_domain,
    "mailbox": MailcowModel.delete_mailbox,
    "alias": MailcowModel.delete_alias,
    "dkim": lambda m, items: m.dkim_delete(items),
    "relayhost": MailcowModel.delete_relayhost,
    "transport": MailcowModel.delete_transport,
}


class HangupError(ConnectionResetError):
    """The simulator closes the connection without an answer (a hang fault, or a fail2ban-refused client)."""


class _HttpError(Exception):
    """A framework answer (single object) that ends request processing."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg


class MailcowApp:
    """``sim.common.App`` over one ``MailcowModel``; stateless apart from the model."""

    def __init__(self, model: MailcowModel) -> None:
        self.model = model

    def handle(self, request: Request) -> Response:
        """Answer one request.

        Raises:
            HangupError: a hang fault, or the client is banned: the connection closes without an answer.
        """
        try:
            return self._handle(request)
        finally:
            if request.method != "GET":
                for listener in self.model.listeners:
                    listener()

    def _handle(self, request: Request) -> Response:
        if request.path.startswith("/_sim/"):
            return self._control(request)
        ctrl = request.path == CONTAINER_CTRL
        if not ctrl and not request.path.startswith(API):
            return _json(404, {"type": "error", "msg": "route not found"})
        action = urllib.parse.unquote(request.path[len(API) :]).split("/")[0]
        with self.model.lock:
            entry = self.model.record(
                request.method, request.path, write=ctrl or action in WRITES, cookie=SESSION_NAME in request.cookies
            )
            fault = self.model.draw_fault(request.path)
            latency = self.model.faults.latency_ms / 1000
        if latency:
            time.sleep(latency)
        if fault is not None and not fault.apply:
            entry.status = fault.status
            return self._sized(entry, request, self._fault(fault))
        resp = self._container_ctrl(request) if ctrl else self._api(request)
        entry.status = resp.status if fault is None else fault.status
        return self._sized(entry, request, self._fault(fault) if fault is not None else resp)

    def _sized(self, entry: RequestRecord, request: Request, resp: Response) -> Response:
        with self.model.lock:
            entry.bytes_in = len(_uri(request)) + len(request.body)
            entry.bytes_out = len(resp.body)
        return resp

    def _fault(self, fault: Fault) -> Response:
        if fault.status == 0:
            time.sleep(self.model.faults.hang_ms / 1000)
            raise HangupError("simulated hang: connection closed without an answer")
        page = FAULT_PAGES.get(fault.status, b"") if fault.status >= 500 else b""
        return Response(fault.status, page, {"Content-Type": "text/html"} if page else {})

    # -- /api/v1 -----------------------------------------------------------------------------

    def _api(self, request: Request) -> Response:
        parts = urllib.parse.unquote(request.path[len(API) :]).split("/")
        action, category = parts[0], parts[1] if len(parts) > 1 else ""
        rest = parts[2:]
        with self.model.lock:
            auth = self.model.authenticate(
                request.headers.get("x-api-key"), request.client, request.cookies.get(SESSION_NAME)
            )
            if auth.banned:
                raise HangupError("client refused (fail2ban)")
            cookie = _session_cookie(auth)
            try:
                status, payload = self._route(request, auth, action, category, rest)
            except _HttpError as exc:
                status, payload = exc.status, {"type": "error", "msg": exc.msg}
            except PhpFatalError as exc:
                return Response(exc.status, b"", cookie)
        if payload is None:
            return Response(status, b"", cookie)
        return _json(status, payload, cookie)

    def _route(self, request: Request, auth: Auth, action: str, category: str, rest: list[str]) -> tuple[int, Any]:
        if auth.error is not None:
            return 401, {"type": "error", "msg": auth.error}
        if request.headers.get("sec-fetch-dest", "empty") != "empty":
            return 403, None  # json_api.php refuses browser navigation before it reads the body
        body = _decode_body(request, action)
        self.model.log_api(_uri(request), request.method, request.client, _post_fields(request, action))
        if action not in ACTIONS:
            return 404, {"type": "error", "msg": "route not found"}
        if action == "get":
            return self._get(request, auth, category, rest)
        if action == "search":
            raise _HttpError(404, "route not found")
        return self._write(request, auth, action, category, rest, body)

    def _get(self, request: Request, auth: Auth, category: str, rest: list[str]) -> tuple[int, Any]:
        if auth.access is None:
            return 200, None  # not logged in: empty body
        if request.method != "GET":
            raise _HttpError(405, "only GET method is allowed")
        obj = rest[0] if rest else ""
        tags = [t for t in request.query.get("tags", [""])[0].split(",") if t] or None
        data = self._get_data(category, obj, rest[1] if len(rest) > 1 else None, tags)
        return 200, data if data else {}

    def _get_data(self, category: str, obj: str, extra: str | None, tags: list[str] | None) -> Any:
        m = self.model
        if category == "status" and obj == "version":
            return {"version": m.version}
        if category == "logs":
            return m.api_logs(extra) if obj == "api" else None
        single: dict[str, Callable[[str], Any]] = {
            "domain": lambda o: m.domains_all(tags) if o == "all" else m.domain_details(o, tags),
            "alias-domain": lambda o: m.alias_domains_all() if o == "all" else m.alias_domain_details(o),
            "mailbox": lambda o: m.mailboxes_all(extra) if o == "all" else m.mailbox_details(o),
            "alias": lambda o: m.aliases_all() if o == "all" else m.alias_details(o),
            "dkim": m.dkim_details,  # "all" looks up a domain named "all"
            "relayhost": lambda o: m.relayhosts_all() if o == "all" else m.relayhost_details(o),
            "transport": lambda o: m.transports_all() if o == "all" else m.transport_details(o),
        }
        if category not in single:
            raise _HttpError(404, "route not found")
        return single[category](obj)

    def _write(
        self, request: Request, auth: Auth, action: str, category: str, rest: list[str], body: dict[str, Any]
    ) -> tuple[int, Any]:
        if auth.access == "ro" or (action != "add" and auth.access is None):
            raise _HttpError(403, "API read/write access denied")
        needed = {"add": ("attr",), "edit": ("attr", "items"), "delete": ("items",)}[action]
        if any(name not in body for name in needed):
            return 200, NO_ATTRIBUTES
        if request.method != "POST":
            raise _HttpError(405, "only POST method is allowed")
        outcome = self._dispatch(auth, action, category, rest, body)
        if outcome.entries:
            return 200, outcome.entries
        if outcome.failed:
            return 200, {"type": "error", "msg": GENERIC_FAILURE[action]}
        return 200, {"type": "success", "msg": "Task completed"}

    def _dispatch(self, auth: Auth, action: str, category: str, rest: list[str], body: dict[str, Any]) -> Outcome:
        m = self.model
        attr = _as_attr(body.get("attr"))
        if action == "add":
            handler = ADD.get(category)
            if handler is None:
                raise _HttpError(404, "route not found")
            if auth.access is None:  # no key: the handler's own role check refuses
                return Outcome().fail(["mailbox", "add", category, attr, None], "access_denied")
            return handler(m, attr)
        if action == "edit":
            edit = EDIT.get(category)
            if edit is None:
                raise _HttpError(404, "route not found")
            return edit(m, as_array(body.get("items")), attr)
        items = as_array(body.get("items"))
        if category == "domain" and rest[:1] == ["tag"] and len(rest) > 1:
            return m.delete_domain_tags(rest[1], items)
        delete = DELETE.get(category)
        if delete is None:
            raise _HttpError(404, "route not found")
        return delete(m, items)

    # -- container_ctrl.php ------------------------------------------------------------------

    def _container_ctrl(self, request: Request) -> Response:
        """The admin UI's container control; only ``action=restart`` is simulated.

        Raises:
            HangupError: the client is banned (fail2ban).
        """
        if request.headers.get("sec-fetch-dest", "empty") != "empty":
            return Response(403, b"")
        with self.model.lock:
            auth = self.model.authenticate(
                request.headers.get("x-api-key"), request.client, request.cookies.get(SESSION_NAME)
            )
            if auth.banned:
                raise HangupError("client refused (fail2ban)")
            delay = self.model.faults.sogo_restart_ms / 1000
        cookie = _session_cookie(auth)
        if auth.error is not None:
            return _json(401, {"type": "error", "msg": auth.error}, cookie)
        service = request.query.get("service", [""])[0]
        if auth.access is None or not re.match(r"[a-z\-]*-mailcow", service):
            return Response(200, b"", cookie)  # not an admin session, or not a service name: exit()
        if request.query.get("action", [""])[0] != "restart":
            return Response(200, b"", cookie)
        error: str | None = None if service in CONTAINERS else ""  # an unknown container: "Error: " (no message)
        if service == "sogo-mailcow":
            time.sleep(delay)  # the request waits for the restart; other requests go on meanwhile
            with self.model.lock:
                error = self.model.restart_sogo()
        html = CTRL_OK if error is None else CTRL_ERROR.format(error)
        return Response(200, html.encode(), {"Content-Type": "text/html; charset=utf-8", **cookie})

    # -- control plane -----------------------------------------------------------------------

    def _control(self, request: Request) -> Response:
        if request.client not in LOOPBACK and request.client != "::ffff:127.0.0.1":
            return Response(403, b"", reason="loopback only")
        route = (request.method.upper(), request.path)
        with self.model.lock:
            if route == ("GET", "/_sim/state"):
                return _json(200, self.model.snapshot())
            if route == ("GET", "/_sim/requests"):
                return _json(200, self.model.request_log())
            if route == ("POST", "/_sim/reset"):
                self.model.reset()
                return _json(200, {"ok": True})
            if route == ("POST", "/_sim/sign"):
                return self._sign(request)
            if route == ("POST", "/_sim/seed"):  # test-only: {"count": N[, "prefix", "pubkey", "selector"]}
                try:
                    spec = json.loads(request.body or b"{}")
                    return _json(200, {"added": self.model.seed_domains(**spec)})
                except (ValueError, TypeError) as exc:
                    return _json(400, {"error": str(exc)})
            if route == ("POST", "/_sim/faults"):
                try:
                    self.model.set_faults(json.loads(request.body or b"{}"))
                except ValueError as exc:  # json.JSONDecodeError is a ValueError
                    return _json(400, {"error": str(exc)})
                return _json(200, {"ok": True})
        return _json(404, {"error": f"no control endpoint {request.method} {request.path}"})

    def _sign(self, request: Request) -> Response:
        """``{"domain", "message"}`` -> ``{"signed"}``: what Mailcow's signer sends out (no key is exposed)."""
        try:
            body = json.loads(request.body or b"{}")
            signed = self.model.dkim_sign(str(body["domain"]), str(body["message"]).encode())
        except (ValueError, KeyError, TypeError) as exc:
            return _json(400, {"error": f"bad sign request: {type(exc).__name__}"})
        if signed is None:
            return _json(404, {"error": "no DKIM key for this domain"})
        return _json(200, {"signed": signed.decode()})


def _decode_body(request: Request, action: str) -> dict[str, Any]:
    """What json_api.php puts into ``$_POST`` for ``action``: ``attr`` and/or ``items``; a missing key = not sent.

    JSON (non-GET, JSON Content-Type): add gets the raw body as ``attr``; edit gets ``items`` and ``attr`` of the
    object (always "set": ``json_encode(null)``); delete gets the raw body as ``items``. Otherwise the legacy form
    fields ``attr=<json>`` / ``items=<json>``.

    Raises:
        _HttpError: 400 when a JSON body does not parse.
    """
    content_type = request.headers.get("content-type", "")
    if request.method != "GET" and "application/json" in content_type:
        decoded = _loads(request.body.decode("utf-8", "replace"))
        if decoded is None:
            raise _HttpError(400, "Request body doesn't contain valid json!")
        if action == "add":
            return {"attr": decoded}
        if action == "edit":
            obj = decoded if isinstance(decoded, dict) else {}
            return {"attr": obj.get("attr"), "items": obj.get("items")}
        return {"items": decoded} if action == "delete" else {}
    if request.method != "GET" and "application/x-www-form-urlencoded" in content_type:
        form = urllib.parse.parse_qs(request.body.decode("utf-8", "replace"))
        return {k: _loads(v[0]) for k, v in form.items() if k in ("attr", "items")}
    return {}


def _post_fields(request: Request, action: str) -> dict[str, str]:
    """``$_POST`` as json_api.php hands it to ``api_log()``: a JSON body raw as ``attr`` (add) or ``items``
    (delete), ``attr`` and ``items`` re-encoded (edit); otherwise the form fields."""
    content_type = request.headers.get("content-type", "")
    if request.method == "GET":
        return {}
    if "application/json" in content_type:
        raw = request.body.decode("utf-8", "replace")
        if action == "edit":
            decoded = _loads(raw)
            obj = decoded if isinstance(decoded, dict) else {}
            return {"attr": php_json(obj.get("attr")), "items": php_json(obj.get("items"))}
        return {"attr": raw} if action == "add" else {"items": raw} if action == "delete" else {}
    if "application/x-www-form-urlencoded" in content_type:
        return {k: v[0] for k, v in urllib.parse.parse_qs(request.body.decode("utf-8", "replace")).items()}
    return {}


def _uri(request: Request) -> str:
    """``$_SERVER['REQUEST_URI']``: the path and query as the client sent them."""
    query = urllib.parse.urlencode(request.query, doseq=True)
    return f"{request.path}?{query}" if query else request.path


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _as_attr(value: Any) -> dict[str, Any]:
    """``(array)json_decode($_POST['attr'], true)``: lists and scalars lose their named keys."""
    if isinstance(value, dict):
        return value
    return {str(i): v for i, v in enumerate(as_array(value))}


def _session_cookie(auth: Auth) -> dict[str, str]:
    if auth.new_session is None:
        return {}
    return {"Set-Cookie": f"{SESSION_NAME}={auth.new_session}; path=/; secure; HttpOnly; SameSite=Lax"}


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(payload).encode(), {"Content-Type": JSON_TYPE, **(headers or {})})


def serve_mailcow(
    model: MailcowModel, port: int, tls: tuple[Path, Path], *, host: str = "127.0.0.1"
) -> ThreadingHTTPServer:
    """Start the simulator on host:port (loopback only) over HTTPS; port 0 picks a free port.

    Raises:
        ValueError: host is not loopback.
    """
    server = serve(MailcowApp(model), port, host=host, tls=tls)
    server.handle_error = _quiet_hangups(server.handle_error)  # type: ignore[method-assign,assignment]
    return server


def _quiet_hangups(original: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """A simulated hang closes the connection on purpose: no traceback on stderr for it."""

    def handle_error(request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], HangupError):
            return
        original(request, client_address)

    return handle_error
