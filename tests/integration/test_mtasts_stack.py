"""MTA-STS as a sender sees it, on the real stack: web6 (Debian nginx, certificate per SNI name from the cert dir,
policies proxied from the web bucket in LocalStack), Pebble (ACME: DNS-01 through our RFC 2136 channel for zones
we host, HTTP-01 through the customer's ``mta-sts`` CNAME for zones hosted elsewhere), BIND and the validating
resolver.

The verifiers are independent clients, run as a sender runs them (infra/local/with-resolver: /etc/resolv.conf
names the stack's resolver; the Pebble root as the only trust): ``mta-sts-query`` (postfix-mta-sts-resolver, the
policy daemon many Postfix sites use), the checkdmarc CLI (real HTTPS fetch, no mock) and curl.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from functions import cert_renew, domain_created, domain_deleted
from functions._core.model import mtasts
from functions._core.model.mailset import mta_sts_policy, policy_id
from functions._core.model.ports import DnsChange, Ports
from functions._core.model.records import RecordSet
from functions._core.platform.config import Settings
from functions._core.platform.envelope import parse
from functions._core.platform.errors import NotPropagated
from functions.ops import enforce, renew_due, status
from functions.ops.demo import with_mta_sts
from functions.runtime.main import build_ports
from tests.integration import stack

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[2]
WITH_RESOLVER = REPO / "infra" / "local" / "with-resolver"
BIN = REPO / ".venv" / "bin"


def serving(base: Settings, env: dict[str, str]) -> Settings:
    """``base`` with MTA-STS served by the stack's web6 (demo.with_mta_sts: Pebble, web6's cert dir, the resolver)."""
    served = with_mta_sts(base, env)
    assert served.mta_sts.serve, "the stack's env has no ACME CA or web6 (infra/local/up)"
    return served


@pytest.fixture(scope="module")
def settings(stack_env: dict[str, str]) -> Settings:
    base = stack.settings_for(stack_env)
    # new domains start in testing: `mailplane mta-sts enforce` is the policy change below
    return serving(replace(base, policy=replace(base.policy, mta_sts_mode="testing")), stack_env)


@pytest.fixture(scope="module")
def ports(settings: Settings) -> Ports:
    return build_ports(settings)


def event_for(domain: str, sample: str = "domain.created") -> Any:
    return parse(json.dumps(stack.created_event(domain, sample)).encode(), publisher="billing")


def handle(event: Any, ports: Ports, wait: float = 60.0) -> Any:
    """domain.created as the broker runs it: a NotPropagated (e.g. the debounced SOGo restart not due yet) is
    retried, here after 1 s instead of the retry ladder's delay."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return domain_created.handle(event, ports)
        except NotPropagated:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def flush(env: dict[str, str], domain: str) -> None:
    """A sender that asks now (the resolver's cache ages in real time; the test does not wait out the TTLs)."""
    conf = Path(env["MAILPLANE_STACK_DIR"]) / "unbound" / "resolver.conf"
    subprocess.run(["unbound-control", "-c", str(conf), "flush_zone", domain], capture_output=True, timeout=10)


def as_sender(env: dict[str, str], *cmd: str, **extra: str) -> subprocess.CompletedProcess[str]:
    run_env = {**os.environ, "SSL_CERT_FILE": env["MAILPLANE_ACME_ROOT"], **extra}
    return subprocess.run(
        [str(WITH_RESOLVER), *cmd], capture_output=True, text=True, timeout=60, env=run_env, check=False
    )


@dataclass(frozen=True)
class Query:
    result: str  # VALID, NOT_CHANGED, FETCH_ERROR, NONE, ...
    id: str | None = None
    policy: dict[str, Any] | None = None


def mta_sts_query(env: dict[str, str], domain: str, known: str | None = None) -> Query:
    """``mta-sts-query DOMAIN [KNOWN_ID]``; its answer is ``(<STSFetchResult.X: n>, (id, policy) | None)``."""
    done = as_sender(env, str(BIN / "mta-sts-query"), domain, *([known] if known else []))
    m = re.search(r"\(<STSFetchResult\.(\w+): \d+>, (.*)\)\s*$", done.stdout.strip(), re.S)
    assert m, (done.stdout, done.stderr)
    rest = ast.literal_eval(m.group(2))
    return Query(m.group(1), *(rest if rest else (None, None)))


def want_policy(settings: Settings, mode: str) -> dict[str, Any]:
    return {
        "version": "STSv1",
        "mode": mode,
        "mx": [h.name for h in settings.provider.mx_hosts],
        "max_age": settings.policy.mta_sts_max_age,
    }


def curl_policy(env: dict[str, str], domain: str) -> str | None:
    """The policy body curl fetches as a sender (resolver, Pebble root, no redirects); None when it fails."""
    done = as_sender(env, "curl", "-sf", "-m", "5", "--cacert", env["MAILPLANE_ACME_ROOT"], mtasts.policy_url(domain))
    return done.stdout if done.returncode == 0 else None


def txt_guard(env: dict[str, str], ports: Ports) -> tuple[Ports, list[str], list[str]]:
    """``ports`` whose DNS records, before any UPDATE that adds or changes a ``_mta-sts`` TXT is sent, whether a
    sender (curl) fetches the policy that TXT's id announces: (ports, the TXTs checked, the violations found)."""
    checked: list[str] = []
    violations: list[str] = []
    inner = ports.dns

    class Guarded:
        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

        def apply(self, zone: str, changes: list[DnsChange]) -> int:
            for c in changes:
                a = c.after
                if a is None or not a.name.startswith("_mta-sts.") or a.rtype != "TXT" or c.before == a:
                    continue
                domain = a.name.removeprefix("_mta-sts.")
                checked.append(a.values[0])
                flush(env, domain)
                body = curl_policy(env, domain)
                announced = re.search(r"id=([^;\s]+)", a.values[0])
                if body is None or announced is None or policy_id(body) != announced.group(1):
                    violations.append(f"{a.name} {a.values[0]} published while the policy served is {body!r}")
                flush(env, domain)  # the probe's answers (a cached NXDOMAIN) must not change what others see
            return inner.apply(zone, changes)

    return replace(ports, dns=Guarded()), checked, violations


def cert_file(settings: Settings, domain: str) -> Path:
    return Path(settings.mta_sts.cert_dir) / f"{mtasts.cert_name(domain)}.pem"


@pytest.fixture(scope="module")
def hosted(stack_env: dict[str, str], ports: Ports) -> Iterator[tuple[str, list[str]]]:
    """A zone we host, provisioned with serving on, its UPDATEs guarded (see txt_guard)."""
    domain = stack.unique_domain("sts")
    stack.zone_add(domain)
    guarded, checked, violations = txt_guard(stack_env, ports)
    t0 = time.monotonic()
    out = handle(event_for(domain), guarded)
    print(f"domain.created with MTA-STS served: {time.monotonic() - t0:.1f} s")
    assert out.status == "provisioned", out
    assert len(checked) == 1  # the guard saw the one UPDATE that published the TXT
    yield domain, violations


def test_a_new_domain_is_valid_for_mta_sts_query(
    stack_env: dict[str, str], settings: Settings, hosted: tuple[str, list[str]]
) -> None:
    domain, violations = hosted
    assert violations == []  # the TXT appeared only once a sender could fetch the policy it announces
    flush(stack_env, domain)
    got = mta_sts_query(stack_env, domain)
    assert got.result == "VALID", got
    assert got.policy == want_policy(settings, "testing")
    assert got.id == policy_id(mta_sts_policy(settings, "testing"))
    assert mta_sts_query(stack_env, domain, got.id).result == "NOT_CHANGED"
    cert = mtasts.load_cert(build_ports(settings, probe=False), mtasts.cert_name(domain))
    assert cert is not None and cert.challenge == "dns-01"
    assert cert_file(settings, domain).read_text().startswith(cert.chain)  # what nginx reads: chain, then the key


def test_checkdmarc_mta_sts_check_passes_with_a_real_fetch(
    stack_env: dict[str, str], settings: Settings, hosted: tuple[str, list[str]]
) -> None:
    domain, _ = hosted
    flush(stack_env, domain)
    done = as_sender(
        stack_env,
        str(BIN / "checkdmarc"),
        "-t",
        "3",
        "-f",
        "json",
        domain,
        REQUESTS_CA_BUNDLE=stack_env["MAILPLANE_ACME_ROOT"],
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["mta_sts"]["valid"], report["mta_sts"]
    assert report["mta_sts"]["policy"]["mode"] == "testing"
    assert sorted(report["mta_sts"]["policy"]["mx"]) == sorted(h.name for h in settings.provider.mx_hosts)
    assert report["smtp_tls_reporting"]["valid"], report["smtp_tls_reporting"]


def test_a_policy_change_gives_a_new_id_that_mta_sts_query_sees(
    stack_env: dict[str, str], ports: Ports, settings: Settings, hosted: tuple[str, list[str]]
) -> None:
    domain, _ = hosted
    flush(stack_env, domain)
    before = mta_sts_query(stack_env, domain)
    assert before.result == "VALID" and before.policy is not None and before.policy["mode"] == "testing"
    guarded, checked, violations = txt_guard(stack_env, ports)
    done = enforce.apply(guarded, enforce.plan(guarded, domain), "stack test")
    assert any(line.startswith("~ TXT _mta-sts.") for line in done), done
    assert len(checked) == 1 and violations == []
    flush(stack_env, domain)
    after = mta_sts_query(stack_env, domain, before.id)
    assert after.result == "VALID", after
    assert after.id != before.id and after.id == policy_id(mta_sts_policy(settings, "enforce"))
    assert after.policy == want_policy(settings, "enforce")


def test_a_missing_certificate_is_a_fetch_error_until_it_is_delivered_again(
    stack_env: dict[str, str], ports: Ports, settings: Settings, hosted: tuple[str, list[str]]
) -> None:
    domain, _ = hosted
    path = cert_file(settings, domain)
    path.unlink()
    try:
        flush(stack_env, domain)
        assert mta_sts_query(stack_env, domain).result == "FETCH_ERROR"
        assert curl_policy(stack_env, domain) is None
        assert mtasts.served(ports, domain, mta_sts_policy(settings, "enforce").encode()), "the product's own view"
    finally:
        changes = mtasts.ensure_cert(ports, domain, hosted=True)  # re-delivered from the sealed store, no new order
    assert changes == [f"+ web host certificate {mtasts.cert_name(domain)}"]
    assert mta_sts_query(stack_env, domain).result == "VALID"  # nginx reads it per handshake: no reload


def test_status_shows_the_policy_as_a_sender_fetches_it(
    stack_env: dict[str, str], ports: Ports, settings: Settings, hosted: tuple[str, list[str]]
) -> None:
    domain, _ = hosted
    flush(stack_env, domain)
    (web,) = [c for c in status.domain_status(domain, ports)[1] if c.system == "web"]
    assert web.ok, web
    assert web.where == f"sender (resolver {stack_env['MAILPLANE_RESOLVER']}, trust {stack_env['MAILPLANE_ACME_ROOT']})"
    assert web.have.startswith("HTTP 200 text/plain") and "certificate until" in web.have
    path = cert_file(settings, domain)
    saved = path.read_bytes()
    path.unlink()
    try:
        (gone,) = [c for c in status.domain_status(domain, ports)[1] if c.system == "web"]
        assert not gone.ok and "SSLError" in gone.have, gone
        assert status.domain_status(domain, ports)[0] == "drift"
    finally:
        path.write_bytes(saved)
        path.chmod(0o600)


def test_cert_renew_renews_a_due_certificate_and_senders_get_it_without_a_reload(
    stack_env: dict[str, str], ports: Ports, settings: Settings, hosted: tuple[str, list[str]]
) -> None:
    domain, _ = hosted
    name = mtasts.cert_name(domain)
    old = mtasts.load_cert(ports, name)
    assert old is not None
    now = dt.datetime.now(dt.UTC)
    skew = old.not_after - now - dt.timedelta(days=settings.mta_sts.renew_before_days - 1)
    later = replace(ports, clock=lambda: dt.datetime.now(dt.UTC) + skew)  # one day into the renewal window
    (due,) = [d for d in renew_due.scan_certs(later.state, settings, later.clock()) if d.node == domain]
    ev = parse(json.dumps(renew_due.event_for(due, later.clock())).encode(), publisher="scheduler")
    out = cert_renew.handle(ev, later)
    assert out.status == "renewed", out
    new = mtasts.load_cert(ports, name)
    assert new is not None and new.chain != old.chain
    assert cert_file(settings, domain).read_text().startswith(new.chain)
    entries = [k for k in ports.state.list(mtasts.RENEW_PREFIX) if k.endswith("/" + name)]
    assert entries == [mtasts.renew_key(mtasts.renew_day(new, ports), name)]  # one entry, the new certificate's
    flush(stack_env, domain)
    assert mta_sts_query(stack_env, domain).result == "VALID"
    served = as_sender(
        stack_env,
        "sh",
        "-c",
        f"openssl s_client -connect {stack_env['MAILPLANE_WEB6_IP']}:443 -servername {name} </dev/null 2>/dev/null"
        " | openssl x509 -noout -serial",
    )
    leaf = new.chain.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    want = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=leaf, capture_output=True, text=True)
    assert served.stdout.strip() == want.stdout.strip() != ""  # the renewed leaf, read per handshake
    # a duplicate delivery writes nothing (on the real clock: Pebble's certificates follow it, the skewed one keeps
    # every certificate due)
    assert cert_renew.handle(ev, ports).status == "current"
    assert mtasts.load_cert(ports, name) == new


def test_without_the_order_the_txt_is_published_before_the_policy_is_fetchable(
    stack_env: dict[str, str], ports: Ports, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard of the tests above can fail: with RFC 8461's order removed (the TXT in the first UPDATE, no wait
    for the policy to be served) it catches the ``_mta-sts`` TXT published before a sender can fetch the policy."""
    identity: Callable[..., Any] = lambda want, have, domain: want  # noqa: E731
    monkeypatch.setattr(mtasts, "held", identity)
    domain = stack.unique_domain("noord")
    stack.zone_add(domain)
    guarded, _checked, violations = txt_guard(stack_env, ports)
    handle(event_for(domain), guarded)
    assert violations and violations[0].startswith(f"_mta-sts.{domain} v=STSv1; id="), violations


def test_an_external_domain_awaits_its_cname_then_gets_a_certificate_by_http01(
    stack_env: dict[str, str], ports: Ports, settings: Settings
) -> None:
    domain = stack.unique_domain("ext")
    stack.zone_add(domain)  # the customer's zone (hosted elsewhere; the local BIND plays its DNS provider)
    event = event_for(domain, "domain.created.external")
    first = handle(event, ports)
    assert first.status == "awaiting_dns"
    lines = first.emit[0]["data"]["instructions"]
    cname = [ln for ln in lines if ln.startswith(f"mta-sts.{domain}.") and " CNAME " in ln]
    assert cname and cname[0].endswith(f"{settings.policy.mta_sts_host}."), lines
    assert any(ln.startswith(f"_mta-sts.{domain}.") for ln in lines), lines
    assert mtasts.load_cert(ports, mtasts.cert_name(domain)) is None  # no order before the CNAME exists

    publish_as_customer(ports, domain, [ln for ln in lines if ln not in cname])  # all but the CNAME
    assert handle(event, ports).status == "awaiting_dns"
    assert mtasts.load_cert(ports, mtasts.cert_name(domain)) is None
    publish_as_customer(ports, domain, cname)  # the CNAME: HTTP-01 reaches web6 through it
    t0 = time.monotonic()
    second = handle(event, ports)
    print(f"external domain, HTTP-01 + policy served: {time.monotonic() - t0:.1f} s")
    assert second.status == "provisioned", second
    cert = mtasts.load_cert(ports, mtasts.cert_name(domain))
    assert cert is not None and cert.challenge == "http-01"
    assert list(ports.web.list(f"{mtasts.cert_name(domain)}/{mtasts.CHALLENGE_PREFIX}")) == []  # token removed
    flush(stack_env, domain)
    got = mta_sts_query(stack_env, domain)
    assert got.result == "VALID", got
    assert got.policy == want_policy(settings, "testing")


def publish_as_customer(ports: Ports, domain: str, lines: list[str]) -> None:
    """The customer's DNS provider publishes ``lines`` (zone-file lines) in their zone (here: the local BIND)."""
    grouped: dict[tuple[str, str], tuple[int, list[str]]] = {}
    for ln in lines:
        name, ttl, _cls, rtype, value = ln.split(None, 4)
        if rtype == "TXT":  # the presentation form (quoted, split) back to the value
            rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, value)
            value = b"".join(rd.strings).decode()  # type: ignore[attr-defined]
        grouped.setdefault((name.rstrip("."), rtype), (int(ttl), []))[1].append(value)
    changes = [
        DnsChange(before=ports.dns.read_rrset(n, t), after=RecordSet.of(n, t, ttl, values))
        for (n, t), (ttl, values) in grouped.items()
    ]
    ports.dns.apply(domain, changes)


def test_domain_deleted_removes_the_certificate_and_senders_find_no_policy(
    stack_env: dict[str, str], ports: Ports, settings: Settings
) -> None:
    """domain.deleted with serving on: the sealed certificate, web6's file and the policy go, the ``_mta-sts`` TXT
    with the rest of our records; a sender then finds no policy (NONE), never a TXT without a fetchable policy."""
    domain = stack.unique_domain("stsdel")
    stack.zone_add(domain)
    assert handle(event_for(domain), ports).status == "provisioned"
    name = mtasts.cert_name(domain)
    assert mtasts.load_cert(ports, name) is not None and cert_file(settings, domain).exists()
    raw = stack.created_event(domain, "domain.deleted", customer_id="C-10042", grace_days=0)
    deleted = parse(json.dumps(raw).encode(), publisher="billing")
    deadline = time.monotonic() + 60
    while True:
        try:
            domain_deleted.handle(deleted, ports)
            break
        except NotPropagated:
            assert time.monotonic() < deadline, "domain.deleted did not settle within 60 s"
            time.sleep(1)
    assert mtasts.load_cert(ports, name) is None
    assert not cert_file(settings, domain).exists()
    flush(stack_env, domain)
    assert curl_policy(stack_env, domain) is None
    assert mta_sts_query(stack_env, domain).result == "NONE"  # no _mta-sts TXT left: the sender sees no MTA-STS
    assert domain_deleted.handle(deleted, ports).writes == 0  # the replay changes nothing
