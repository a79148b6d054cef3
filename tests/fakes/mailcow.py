"""The in-process Mailcow: the real MailcowClient over the simulator app and its model, without sockets.

One model, two front-ends: the same ``MailcowModel`` the HTTPS simulator serves (``python -m sim.serve mailcow``),
reached here through ``httpx_transport(MailcowApp(model))``. Tests inspect and steer the model directly:
``model.snapshot()``, ``model.request_log()``, ``model.set_faults({...})``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sim.mailcow import MailcowApp, MailcowModel
from sim.transports import httpx_transport
from tenacity import wait_none

from functions._core.platform.config import MailcowSettings, Secret
from functions._core.platform.retry import retried
from functions.adapters.mailcow import MailcowClient

T = TypeVar("T")

FAKE_URL = "https://mailcow.sim.invalid"  # never resolved: the transport hands requests to the app


def no_wait(fn: Callable[..., T]) -> Callable[..., T]:
    """The shared retry policy (same attempts and stop) without the waits between attempts."""
    wrapped = retried(fn)
    fast: Callable[..., T] = wrapped.retry_with(wait=wait_none())  # type: ignore[attr-defined]
    return fast


def fake_settings(api_key: str, *, url: str = FAKE_URL, ca_file: str = "", timeout: float = 5.0) -> MailcowSettings:
    """MailcowSettings for a simulator (the host/IP fields are placeholders)."""
    return MailcowSettings(
        host="mail.sim.test",
        ipv4="127.0.0.1",
        ipv6="::1",
        url=url,
        api_key=Secret(api_key),
        ca_file=ca_file,
        timeout=timeout,
    )


def fake_mailcow(
    model: MailcowModel | None = None, *, api_key: str | None = None
) -> tuple[MailcowClient, MailcowModel]:
    """A MailcowClient talking in-process to ``model`` (default: a fresh, empty Mailcow), retries without waits.

    ``api_key`` defaults to the model's read-write key; pass another to test 401 (unknown) or 403 (``model.ro_key``).
    """
    model = MailcowModel() if model is None else model
    key = model.rw_key if api_key is None else api_key
    client = MailcowClient(fake_settings(key), transport=httpx_transport(MailcowApp(model)), retry=no_wait)
    return client, model
