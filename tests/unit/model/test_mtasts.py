"""MTA-STS serving over fakes: the certificate per mta-sts.<domain> (issued, sealed, delivered, indexed for renewal,
renewed by renew-due's cert.renew, removed on domain.deleted), the RFC 8461 order in domain.created, and the
sender's view in `mailplane status`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest

from functions import cert_renew, domain_created, domain_deleted
from functions._core.model import mtasts, state
from functions._core.model.mailset import mta_sts_policy, policy_key
from functions._core.model.ports import DnsChange
from functions._core.model.records import RecordSet
from functions._core.platform.config import MtaStsSettings
from functions._core.platform.envelope import parse
from functions._core.platform.errors import ConfigError
from functions.ops import renew_due, status
from tests.conftest import load_event
from tests.fakes.settings import make_settings
from tests.fakes.tls import FakeCa
from tests.fakes.webhost import FakeWebHost
from tests.unit.test_node_down import World, build_world

D = "alpha.test"
NAME = f"mta-sts.{D}"
BASE = make_settings()
SERVING = dataclasses.replace(BASE, mta_sts=dataclasses.replace(BASE.mta_sts, serve=True, cert_dir="/nonexistent"))


@pytest.fixture
def world() -> World:
    w = build_world(SERVING)
    w.now[0] = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)
    ca = FakeCa(lambda: w.now[0])
    w.ports = dataclasses.replace(w.ports, certs=ca, web_host=FakeWebHost(w.ports.web))  # type: ignore[arg-type]
    return w


def ca(w: World) -> FakeCa:
    assert isinstance(w.ports.certs, FakeCa)
    return w.ports.certs


def host(w: World) -> FakeWebHost:
    assert isinstance(w.ports.web_host, FakeWebHost)
    return w.ports.web_host


def created(w: World, sample: str = "domain.created") -> Any:
    raw = load_event(sample)
    raw["subject"] = raw["data"]["domain"] = D
    return domain_created.handle(parse(json.dumps(raw).encode(), publisher="billing"), w.ports)


def test_domain_created_orders_delivers_and_only_then_publishes_the_txt(world: World) -> None:
    served_when_txt: list[bool] = []
    inner = world.ports.dns

    class Watch:
        def __getattr__(self, n: str) -> Any:
            return getattr(inner, n)

        def apply(self, zone: str, changes: list[Any]) -> int:
            if any(c.after is not None and c.after.name == f"_mta-sts.{D}" for c in changes):
                served_when_txt.append(not mtasts.served(world.ports, D, mta_sts_policy(SERVING).encode()))
            return int(inner.apply(zone, changes))

    world.ports = dataclasses.replace(world.ports, dns=Watch())
    out = created(world)
    assert out.status == "provisioned"
    assert served_when_txt == [True]  # one UPDATE carried the TXT, and the policy was fetchable before it
    assert ca(world).challenges == [("dns-01", NAME)]
    assert world.dns.read_rrset(f"_acme-challenge.{NAME}", "TXT") is None  # removed after the order
    stored = world.state.get(mtasts.cert_state_key(NAME))
    assert stored is not None and b"PRIVATE KEY" not in stored.body  # sealed
    assert host(world).installed(NAME) is not None
    again = created(world)
    assert ca(world).challenges == [("dns-01", NAME)] and not any(again.changes.values())


def test_without_the_order_the_txt_goes_out_before_the_policy_is_fetchable(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: with the TXT held back no more, the first UPDATE publishes it unserved."""
    monkeypatch.setattr(mtasts, "held", lambda want, have, domain: want)
    first: list[list[str]] = []
    inner = world.ports.dns

    class Watch:
        def __getattr__(self, n: str) -> Any:
            return getattr(inner, n)

        def apply(self, zone: str, changes: list[Any]) -> int:
            if any(c.after is not None and c.after.name == f"_mta-sts.{D}" for c in changes):
                first.append(mtasts.served(world.ports, D, mta_sts_policy(SERVING).encode()))
            return int(inner.apply(zone, changes))

    world.ports = dataclasses.replace(world.ports, dns=Watch())
    created(world)
    assert first and first[0], "the TXT went out while a sender could not fetch the policy"


def test_an_external_zone_waits_for_the_cname_then_uses_http01(world: World) -> None:
    out = created(world, "domain.created.external")
    assert out.status == "awaiting_dns" and ca(world).challenges == []
    lines = out.emit[0]["data"]["instructions"]
    assert any(ln.startswith(f"{NAME}. ") and " CNAME " in ln for ln in lines)


def test_renewal_entry_follows_the_certificate_and_renew_due_publishes_cert_renew(world: World) -> None:
    assert mtasts.ensure_cert(world.ports, D, hosted=True)[0].startswith(f"+ certificate {NAME} (dns-01")
    cert = mtasts.load_cert(world.ports, NAME)
    assert cert is not None
    day = mtasts.renew_day(cert, world.ports)
    assert day == (cert.not_after - dt.timedelta(days=30)).date()
    assert list(world.state.list(mtasts.RENEW_PREFIX)) == [mtasts.renew_key(day, NAME)]
    store, now = world.state, world.now[0]
    assert renew_due.scan_certs(store, SERVING, now) == []  # 90-day certificate: not due for 60 days
    assert renew_due.scan_certs(store, BASE, now + dt.timedelta(days=61)) == []  # serving off: never
    later = now + dt.timedelta(days=61)
    due = renew_due.scan_certs(store, SERVING, later)
    assert [(d.node, d.reason) for d in due] == [(D, "mta-sts")]
    raw = renew_due.event_for(due[0], later)
    ev = parse(json.dumps(raw).encode(), publisher="scheduler")
    assert (ev.type, ev.subject, dict(ev.data)) == ("cert.renew", D, {"domain": D, "reason": "mta-sts"})
    assert raw["id"] == renew_due.event_for(due[0], later + dt.timedelta(hours=3))["id"]  # one per day
    state.save(
        world.state, state.DomainState(D, request={"dns": {"hosted": True}}, status="provisioned"), state.DomainState(D)
    )
    world.now[0] = later
    out = cert_renew.handle(ev, world.ports)
    assert out.status == "renewed" and len(ca(world).issued) == 2
    renewed = mtasts.load_cert(world.ports, NAME)
    assert renewed is not None and renewed.not_after > cert.not_after
    assert list(world.state.list(mtasts.RENEW_PREFIX)) == [
        mtasts.renew_key(mtasts.renew_day(renewed, world.ports), NAME)
    ]
    assert host(world).installed(NAME) == renewed.chain.rstrip("\n") + "\n"
    assert cert_renew.handle(ev, world.ports).status == "current" and len(ca(world).issued) == 2  # a duplicate


def test_a_ca_failure_is_transient_and_writes_nothing(world: World) -> None:
    from functions._core.platform.errors import CaUnavailable, TransientError

    def down(*_a: Any, **_k: Any) -> str:
        raise CaUnavailable("acme: 503")

    assert issubclass(CaUnavailable, TransientError)
    ca(world).issue = down  # type: ignore[method-assign]
    with pytest.raises(CaUnavailable):
        mtasts.ensure_cert(world.ports, D, hosted=True)
    assert world.state.get(mtasts.cert_state_key(NAME)) is None and host(world).installed(NAME) is None


def test_domain_deleted_removes_the_certificate_after_the_policy(world: World) -> None:
    assert created(world).status == "provisioned"
    raw = load_event("domain.deleted")
    raw["subject"] = raw["data"]["domain"] = D
    raw["data"]["grace_days"] = 0
    out = domain_deleted.handle(parse(json.dumps(raw).encode(), publisher="billing"), world.ports)
    assert f"- certificate {NAME}" in out.changes["store"]
    assert world.state.get(mtasts.cert_state_key(NAME)) is None and host(world).installed(NAME) is None
    assert list(world.state.list(mtasts.RENEW_PREFIX)) == []
    assert world.ports.web.get(policy_key(D)) is None


def checks(world: World) -> list[status.Check]:
    return [c for c in status.domain_status(D, world.ports)[1] if c.system == "web"]


def test_status_shows_the_policy_as_a_sender_fetches_it(world: World) -> None:
    assert created(world).status == "provisioned"
    (ok,) = checks(world)
    assert ok.ok and ok.have.startswith("HTTP 200 text/plain, certificate until ") and ok.where.startswith("sender")
    assert status.domain_status(D, world.ports)[0] == "provisioned"
    host(world).remove(NAME)
    (gone,) = checks(world)
    assert not gone.ok and "no certificate" in gone.have
    assert status.domain_status(D, world.ports)[0] == "drift"
    mtasts.ensure_cert(world.ports, D, hosted=True)  # re-delivered from the store
    world.now[0] += dt.timedelta(days=80)  # 10 days left: below expiry_warn_days (14)
    (near,) = checks(world)
    assert not near.ok and "certificate expires" in near.have


def test_status_flags_a_stale_body_and_a_txt_id_that_does_not_announce_the_policy_served(world: World) -> None:
    assert created(world).status == "provisioned"
    body = world.ports.web.get(policy_key(D))
    assert body is not None
    world.ports.web.put(policy_key(D), b"version: STSv1\nmode: none\nmax_age: 1\n", content_type="text/plain")
    (c,) = checks(world)
    assert not c.ok and "body differs" in c.have
    world.ports.web.put(policy_key(D), body.body, content_type="text/plain")
    key = mtasts.txt_key(D)
    have = world.dns.read_rrset(*key)
    assert have is not None
    world.dns.apply(D, [DnsChange(have, RecordSet.of(key[0], "TXT", have.ttl, ["v=STSv1; id=0000;"]))])
    (c,) = checks(world)
    assert not c.ok and "_mta-sts id=0000 does not announce the policy served" in c.have


def test_status_has_no_sender_check_when_serving_is_off(world: World) -> None:
    assert created(world).status == "provisioned"
    world.ports = dataclasses.replace(world.ports, settings=BASE)
    assert checks(world) == []


def test_expiry_warning_must_come_after_renewal() -> None:
    with pytest.raises(ConfigError, match="expiry_warn_days"):
        MtaStsSettings(renew_before_days=10, expiry_warn_days=10)


def test_the_demo_serves_mta_sts_only_with_the_stacks_ca_and_web6() -> None:
    from functions.ops.demo import with_mta_sts

    env = {
        "MAILPLANE_ACME_DIRECTORY": "https://127.0.0.14:14000/dir",
        "MAILPLANE_ACME_CA": "/s/tls/ca.pem",
        "MAILPLANE_ACME_ROOT": "/s/acme/root.pem",
        "MAILPLANE_WEB6_CERT_DIR": "/s/web6/certs",
        "MAILPLANE_RESOLVER": "127.0.0.153",
    }
    on = with_mta_sts(BASE, env)
    assert on.mta_sts.serve and on.mta_sts.cert_dir == "/s/web6/certs" and on.acme.root_file == "/s/acme/root.pem"
    assert on.mta_sts.trust_file == "/s/acme/root.pem" and on.mta_sts.resolver == "127.0.0.153"
    for k in env:
        assert with_mta_sts(BASE, {n: v for n, v in env.items() if n != k}) is BASE


def test_the_summary_has_a_web_column_only_when_a_web_check_was_made(world: World) -> None:
    from rich.console import Console

    from functions.ops.render import render_summary

    assert created(world).status == "provisioned"
    overall, cs = status.domain_status(D, world.ports)
    console = Console(width=200, record=True)
    console.print(render_summary([(D, overall, cs)]))
    assert "web" in console.export_text()
    console = Console(width=200, record=True)
    console.print(render_summary([(D, overall, [c for c in cs if c.system != "web"])]))
    assert "web" not in console.export_text().split("\n", 2)[2]  # the title mentions no column named web
