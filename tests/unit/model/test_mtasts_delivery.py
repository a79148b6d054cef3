"""`mta_sts.delivery = "store"`: the worker only stores the sealed certificate and web6 pulls it (`mailplane web6
sync`); the RFC 8461 order still holds: until web6 serves the certificate the policy is "not yet served", a
transient fault retried by the ladder (or within the attempt), never a failure, and the `_mta-sts` TXT waits."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from functions import domain_created, domain_deleted
from functions._core.model import mtasts
from functions._core.model.mailset import policy_key
from functions._core.platform.config import MtaStsSettings, Settings
from functions._core.platform.envelope import parse
from functions._core.platform.errors import ConfigError, NotPropagated, TransientError
from functions.adapters.webhost import CertDir, DirWebHost, StoreWebHost
from functions.ops import web6_sync
from functions.runtime import dispatch, main
from tests.conftest import load_event
from tests.fakes.settings import make_settings
from tests.fakes.store import MemoryStore
from tests.fakes.tls import FakeCa
from tests.fakes.webhost import FakeWebHost
from tests.unit.model.test_mtasts import BASE, NAME, D
from tests.unit.test_node_down import World, build_world


def pulled(wait: int) -> Settings:
    m = dataclasses.replace(BASE.mta_sts, serve=True, delivery="store", fetch_wait_seconds=wait)
    return dataclasses.replace(BASE, mta_sts=m)


def world_for(settings: Settings, certs: CertDir) -> tuple[World, FakeWebHost]:
    """The worker's ports with delivery "store"; nginx on web6 reads ``certs`` (what the sync writes)."""
    w = build_world(settings)
    w.now[0] = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)
    nginx = FakeWebHost(w.ports.web, cert_dir=certs)
    web_host = StoreWebHost(w.state, nginx)  # type: ignore[arg-type]
    w.ports = dataclasses.replace(w.ports, certs=FakeCa(lambda: w.now[0]), web_host=web_host)  # type: ignore[arg-type]
    return w, nginx


def event(kind: str = "domain.created", **data: Any) -> bytes:
    raw = load_event(kind)
    raw["subject"] = raw["data"]["domain"] = D
    raw["data"].update(data)
    return json.dumps(raw).encode()


def web6(w: World, certs: CertDir) -> web6_sync.Synced:
    """One pass of web6's timer."""
    return web6_sync.sync(w.state, w.ports.settings.dkim.key_encryption_key, certs, w.now[0])


def txt(w: World) -> Any:
    return w.dns.read_rrset(*mtasts.txt_key(D))


def test_the_delivery_setting_is_validated() -> None:
    assert MtaStsSettings().delivery == "dir"
    with pytest.raises(ConfigError, match="mta_sts.delivery must be one of dir, store"):
        MtaStsSettings(delivery="push")
    with pytest.raises(ConfigError, match="cert_dir is for delivery 'dir'"):
        MtaStsSettings(delivery="store", cert_dir="/var/lib/web6")


def test_the_runtime_builds_the_web_host_of_the_delivery() -> None:
    store = MemoryStore()
    dir_on = dataclasses.replace(BASE, mta_sts=dataclasses.replace(BASE.mta_sts, cert_dir="/srv/certs"))
    assert isinstance(main._web_host(dir_on, store), DirWebHost)
    assert main._web_host(BASE, store) is None  # "dir" without a directory: no web host (serving off)
    host = main._web_host(pulled(20), store)
    assert isinstance(host, StoreWebHost) and host.installed(NAME) is None


def test_not_yet_pulled_is_retried_and_the_txt_waits_for_web6(tmp_path: Path) -> None:
    certs = CertDir(tmp_path)
    w, nginx = world_for(pulled(0), certs)  # one look per attempt: the ladder does the waiting
    first = dispatch.run(event(), "billing", w.ports, last_attempt=False)
    assert first.verdict == "retry" and isinstance(first.error, NotPropagated)
    assert isinstance(first.error, TransientError) and "no certificate for the name" in first.reason
    assert w.state.get(mtasts.cert_state_key(NAME)) is not None  # stored sealed: that is the delivery
    assert list(tmp_path.iterdir()) == [] and txt(w) is None  # the worker wrote no file; no _mta-sts yet
    assert web6(w, certs).installed == (NAME,)
    again = domain_created.handle(parse(event(), publisher="billing"), w.ports)
    assert again.status == "provisioned" and txt(w) is not None
    policy = w.ports.web.get(policy_key(D))
    assert policy is not None and mtasts.served(w.ports, D, policy.body) == []  # what a sender fetches now
    assert not any("web host" in c for c in again.changes["store"])  # nothing delivered by the worker itself
    gone = domain_deleted.handle(parse(event("domain.deleted", grace_days=0), publisher="billing"), w.ports)
    assert f"- certificate {NAME}" in gone.changes["store"]
    assert web6(w, certs).removed == (NAME,) and list(tmp_path.iterdir()) == []
    assert nginx.fetch(mtasts.policy_url(D)).error  # a sender now fails closed


def test_a_sync_during_the_wait_is_seen_within_the_same_attempt(tmp_path: Path) -> None:
    certs = CertDir(tmp_path)
    w, nginx = world_for(pulled(10), certs)
    looks: list[str] = []

    def timer(url: str) -> None:  # web6's timer fires after the worker's first look
        looks.append(url)
        if len(looks) == 2:
            web6(w, certs)

    nginx.on_fetch = timer
    out = domain_created.handle(parse(event(), publisher="billing"), w.ports)
    assert out.status == "provisioned" and txt(w) is not None
    assert len(looks) >= 2  # the first look failed (not yet served) and was looked at again, not failed


def test_make_settings_is_unchanged_for_the_local_stack() -> None:
    """The local stack and the test platform keep delivery "dir" (infra/local/up writes into web6's directory)."""
    assert make_settings().mta_sts.delivery == "dir"
