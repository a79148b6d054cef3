"""In-process transports over a simulator app: the unit-test fakes use the same model without sockets.

An app signals "this host refuses connections" by raising the builtin ``ConnectionError`` (e.g.
``ConnectionRefusedError``); the transports turn that into the client library's connection error, as a socket would.
"""

from __future__ import annotations

import http.client
import time
import urllib.parse
from collections.abc import Mapping

import httpx
import requests
import requests.adapters
from requests.structures import CaseInsensitiveDict

from sim.common import App, Request, Response


def httpx_transport(app: App) -> httpx.MockTransport:
    """An httpx transport that hands every request to ``app``."""

    def handler(request: httpx.Request) -> httpx.Response:
        raw_path = request.url.raw_path.decode("ascii")
        path, _, qs = raw_path.partition("?")
        try:
            resp = app.handle(
                Request(
                    method=request.method,
                    path=path,
                    query=urllib.parse.parse_qs(qs, keep_blank_values=True),
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=request.read(),
                )
            )
        except ConnectionError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        return httpx.Response(resp.status, headers=resp.headers, content=resp.body)

    return httpx.MockTransport(handler)


class HostRouter:
    """An app that hands each request to the app registered for its ``Host`` header (``host:port``).

    Unknown hosts refuse the connection, like a port nobody listens on.
    """

    def __init__(self, apps: Mapping[str, App]) -> None:
        self.apps = dict(apps)

    def handle(self, request: Request) -> Response:
        app = self.apps.get(request.headers.get("host", ""))
        if app is None:
            raise ConnectionRefusedError(f"nothing listens on {request.headers.get('host', '?')}")
        return app.handle(request)


class RequestsAdapter(requests.adapters.BaseAdapter):
    """A requests adapter that hands every request to ``app`` (mount it on a Session).

    The ``Host`` header is filled from the URL when absent (as on the wire), a builtin ``ConnectionError`` from the
    app becomes ``requests.ConnectionError``, and an answer slower than the read timeout becomes ``ReadTimeout``.
    """

    def __init__(self, app: App) -> None:
        super().__init__()
        self.app = app

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        url = urllib.parse.urlsplit(request.url or "")
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        headers = {k.lower(): v for k, v in request.headers.items()}
        headers.setdefault("host", url.netloc)
        started = time.monotonic()
        try:
            resp = self.app.handle(
                Request(
                    method=request.method or "GET",
                    path=url.path,
                    query=urllib.parse.parse_qs(url.query, keep_blank_values=True),
                    headers=headers,
                    body=bytes(body) if not isinstance(body, bytes) else body,
                )
            )
        except ConnectionError as exc:
            raise requests.exceptions.ConnectionError(str(exc), request=request) from exc
        read_timeout = timeout[1] if isinstance(timeout, tuple) else timeout
        if read_timeout is not None and time.monotonic() - started > read_timeout:
            raise requests.exceptions.ReadTimeout(f"no answer within {read_timeout} s (in-process)", request=request)
        out = requests.Response()
        out.status_code = resp.status
        out.reason = resp.reason or http.client.responses.get(resp.status, "")
        out.headers = CaseInsensitiveDict(resp.headers)
        out._content = resp.body
        out.url = request.url or ""
        out.request = request
        out.encoding = "utf-8"
        return out

    def close(self) -> None:
        pass
