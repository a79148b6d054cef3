"""In-process transports over a simulator app: the unit-test fakes use the same model without sockets."""

from __future__ import annotations

import http.client
import urllib.parse
from typing import Any

import httpx
import requests
import requests.adapters
from requests.structures import CaseInsensitiveDict

from sim.common import App, Request


def httpx_transport(app: App) -> httpx.MockTransport:
    """An httpx transport that hands every request to ``app``."""

    def handler(request: httpx.Request) -> httpx.Response:
        raw_path = request.url.raw_path.decode("ascii")
        path, _, qs = raw_path.partition("?")
        resp = app.handle(
            Request(
                method=request.method,
                path=path,
                query=urllib.parse.parse_qs(qs, keep_blank_values=True),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=request.read(),
            )
        )
        return httpx.Response(resp.status, headers=resp.headers, content=resp.body)

    return httpx.MockTransport(handler)


class RequestsAdapter(requests.adapters.BaseAdapter):
    """A requests adapter that hands every request to ``app`` (mount it on a Session)."""

    def __init__(self, app: App) -> None:
        super().__init__()
        self.app = app

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        url = urllib.parse.urlsplit(request.url or "")
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        resp = self.app.handle(
            Request(
                method=request.method or "GET",
                path=url.path,
                query=urllib.parse.parse_qs(url.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=bytes(body) if not isinstance(body, bytes) else body,
            )
        )
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
