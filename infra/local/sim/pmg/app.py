"""HTTP front-end of one PMG node (pmgproxy) over the shared model, and the cluster server.

``PmgNodeApp(model, node)`` speaks ``/api2/json/...`` (form, query or JSON parameters; cookie ``PMGAuthCookie`` or
``Authorization: PMGAuthCookie=``; header ``CSRFPreventionToken``) and renders the model's answers: ``{"data": ...}``,
errors with the reason in the status line and a body in the "new" (``message``) or "old" style, or no body at all.
A node that is down raises ``ConnectionRefusedError``: the server drops the connection, in-process transports raise
their connection error.

Control plane, no auth, loopback clients only:
  GET  /_sim/state     nodes, views, sync times, each node's parsed config and what its postfix uses ("effective")
  GET  /_sim/requests  [{seq, method, path, node, write, status, bytes_in, bytes_out[, params]}] (params only for
                       /config paths; bytes_in: URL + body received, bytes_out: body sent, headers not counted)
  POST /_sim/reset     back to the initial state
  POST /_sim/seed      JSON {"count": N[, "prefix", "host", "comment"]}: N relay domains + transports at once (tests,
                       benchmarks; PmgModel.seed_domains)
  POST /_sim/faults    JSON, see PmgModel.configure (latency_ms, error_rate, fail_next, master_down, down, promote, ...)
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sim.common import LOOPBACK, Request, Response, serve
from sim.pmg.model import ApiCall, ApiResult, PmgModel

API = "/api2/json"
JSON_TYPE = "application/json;charset=UTF-8"


class PmgNodeApp:
    """The API of node ``node`` of ``model`` (implements sim.common.App)."""

    def __init__(self, model: PmgModel, node: str) -> None:
        if node not in model.nodes:
            raise ValueError(f"unknown PMG node {node!r}")
        self.model = model
        self.node = node

    def handle(self, request: Request) -> Response:
        """Answer one request.

        Raises:
            ConnectionRefusedError: this node is down.
        """
        if request.path.startswith("/_sim/"):
            return self._control(request)
        if not request.path.startswith(API + "/"):
            return Response(404, b"", reason="Not Found")
        try:
            call = self._call(request)
        except ValueError:
            return self._render(ApiResult(400, None, "unable to parse request body\n"))
        resp = self._render(self.model.call(call))
        self.model.note_bytes(len(request.path) + len(_query(request)) + len(request.body), len(resp.body))
        return resp

    def _call(self, request: Request) -> ApiCall:
        params: dict[str, Any] = {k: v[0] for k, v in request.query.items() if v}
        if request.body:
            if request.headers.get("content-type", "").startswith("application/json"):
                body = json.loads(request.body)
                if not isinstance(body, dict):
                    raise ValueError("JSON body must be an object")
                params.update(body)
            else:
                form = urllib.parse.parse_qs(request.body.decode("utf-8"), keep_blank_values=True)
                params.update({k: v[0] for k, v in form.items() if v})
        return ApiCall(
            node=self.node,
            method=request.method.upper(),
            path=urllib.parse.unquote(request.path[len(API) :]),
            params=params,
            ticket=request.cookies.get("PMGAuthCookie"),
            csrf=request.headers.get("csrfpreventiontoken"),
            authorization=request.headers.get("authorization"),
            has_body=bool(request.body),
        )

    def _render(self, result: ApiResult) -> Response:
        if result.delay > 0:
            time.sleep(result.delay)
        reason = result.reason
        if reason is not None:
            reason = reason.encode("latin-1", "replace").decode("latin-1")
        if result.status == 200:
            return _json(200, {"data": result.data})
        if result.empty_body:
            return Response(result.status, b"", reason=reason)
        body: dict[str, Any] = {"data": None}
        if result.errors:
            body["errors"] = result.errors
        if self.model.body_style == "new" and result.message:
            body["message"] = result.message
        resp = _json(result.status, body)
        resp.reason = reason
        return resp

    def _control(self, request: Request) -> Response:
        if request.client not in LOOPBACK:
            return Response(403, b"", reason="loopback only")
        route = (request.method.upper(), request.path)
        try:
            if route == ("GET", "/_sim/state"):
                return _json(200, self.model.state())
            if route == ("GET", "/_sim/requests"):
                return _json(200, self.model.requests())
            if route == ("POST", "/_sim/reset"):
                self.model.reset()
                return _json(200, {"ok": True})
            if route == ("POST", "/_sim/seed"):  # test-only: {"count": N[, "prefix", "host", "comment"]}
                spec = json.loads(request.body or b"{}")
                if not isinstance(spec, dict):
                    raise ValueError("seed must be a JSON object")
                return _json(200, {"added": self.model.seed_domains(**spec)})
            if route == ("POST", "/_sim/faults"):
                settings = json.loads(request.body or b"{}")
                if not isinstance(settings, dict):
                    raise ValueError("faults must be a JSON object")
                self.model.configure(**settings)
                return _json(200, {"ok": True})
        except (ValueError, TypeError, KeyError) as exc:
            return _json(400, {"error": str(exc)})
        return _json(404, {"error": f"no control endpoint {request.method} {request.path}"})


def _query(request: Request) -> str:
    return urllib.parse.urlencode(request.query, doseq=True)


def _json(status: int, payload: Any) -> Response:
    return Response(status, json.dumps(payload).encode(), {"Content-Type": JSON_TYPE})


def serve_cluster(
    ports: list[int],
    tls: tuple[Path, Path] | Mapping[str, tuple[Path, Path]],
    user: str,
    password: str,
    *,
    model: PmgModel | None = None,
    host: str = "127.0.0.1",
) -> list[ThreadingHTTPServer]:
    """Start one HTTPS front-end per node (pmg1, pmg2, pmg3 ... in port order; the first is master), one model.

    ``tls``: one (cert, key) for every node, or ``{node: (cert, key)}`` (PMG's CN-only certificates, sim/pmg/tls.py).

    ``user``/``password`` become an admin account (``root@pam`` becomes root). Port 0 picks a free port; read it
    from ``server.server_address``. Pass ``model`` to keep a handle on it (tests), or use the /_sim endpoints.

    Raises:
        ValueError: the number of ports differs from the model's nodes, or host is not loopback.
    """
    if model is None:
        model = PmgModel(
            nodes=[(f"pmg{i}", "127.0.0.1") for i in range(1, len(ports) + 1)], user=user, password=password
        )
    else:
        model.add_user(user, password, "admin")
    if len(ports) != len(model.node_names):
        raise ValueError(f"{len(ports)} ports for {len(model.node_names)} PMG nodes")
    servers = []
    for name, port in zip(model.node_names, ports, strict=True):
        pair = tls if isinstance(tls, tuple) else tls[name]
        server = serve(PmgNodeApp(model, name), port, host=host, tls=pair)
        server.handle_error = _quiet_when_down(server.handle_error)  # type: ignore[method-assign,assignment]
        servers.append(server)
    return servers


def _quiet_when_down(original: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """A node that is down drops the connection; that is not an error worth a traceback on stderr."""

    def handle_error(request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionRefusedError):
            return
        original(request, client_address)

    return handle_error
