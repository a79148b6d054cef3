"""The stack's DNS as production runs it: a hidden primary, two public secondaries fed by NOTIFY + IXFR through the
catalog zone, DNSSEC-signed zones under a signed local parent (test.), and the validating resolver."""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
import time
import uuid

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from functions.ops.status import Check, domain_status
from functions.runtime.main import build_ports
from tests.integration import stack
from tests.stackenv import REPO

pytestmark = pytest.mark.stack

PORT = 5399
PRIMARY = "127.0.0.1"


def _servers(env: dict[str, str]) -> list[str]:
    return [s.rsplit(":", 1)[0] for s in env["MAILPLANE_DNS_SECONDARIES"].split()]


def _ask(server: str, name: str, rtype: str, port: int = PORT, cd: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, rtype, want_dnssec=True)
    if port != PORT:
        q.flags |= dns.flags.RD
    if cd:
        q.flags |= dns.flags.CD
    return dns.query.tcp(q, server, port=port, timeout=5)


def _soa_serial(server: str, zone: str) -> int | None:
    r = _ask(server, zone, "SOA")
    for rrset in r.answer:
        if rrset.rdtype == dns.rdatatype.SOA:
            return int(rrset[0].serial)
    return None


def _eventually(check: object, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(check())  # type: ignore[operator]


def _script(*args: str, env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(REPO / "infra" / "local" / args[0]), *args[1:]],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MAILPLANE_STACK_DIR": env["MAILPLANE_STACK_DIR"]},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def _ds_of(zone: str) -> str:
    """The SHA-256 DS of the zone's DNSKEY as the primary serves it (dnssec-dsfromkey, BIND's own tool)."""
    keys = subprocess.run(
        ["dig", "+norec", "-p", str(PORT), f"@{PRIMARY}", zone, "DNSKEY"], capture_output=True, text=True, check=True
    ).stdout
    ds = subprocess.run(
        ["dnssec-dsfromkey", "-a", "SHA-256", "-f", "-", zone], input=keys, capture_output=True, text=True, check=True
    ).stdout.split()
    return " ".join(ds[3:7])


def _parent_ds(env: dict[str, str], zone: str, ds: str) -> None:
    script = f"server {PRIMARY} {PORT}\nzone test\nupdate delete {zone}. DS\nupdate add {zone}. 60 DS {ds}\nsend\n"
    subprocess.run(["nsupdate", "-k", env["MAILPLANE_PARENT_KEYFILE"]], input=script, text=True, check=True)


def _flush(env: dict[str, str], zone: str) -> None:
    conf = f"{env['MAILPLANE_STACK_DIR']}/unbound/resolver.conf"
    subprocess.run(["unbound-control", "-c", conf, "flush_zone", zone], capture_output=True, check=True)
    subprocess.run(["unbound-control", "-c", conf, "flush_bogus"], capture_output=True, check=True)


def test_provider_zone_is_served_signed_by_every_ns_and_validates(stack_env: dict[str, str]) -> None:
    ns = _ask(PRIMARY, "faster.test", "NS")
    names = sorted(rd.target.to_text() for rrset in ns.answer if rrset.rdtype == dns.rdatatype.NS for rd in rrset)
    assert names == ["ns2.faster.test.", "ns3.faster.test."]  # the primary is hidden
    primary = _soa_serial(PRIMARY, "faster.test")
    for server in _servers(stack_env):
        assert _eventually(lambda s=server: _soa_serial(s, "faster.test") == primary), server
        got = _ask(server, "faster.test", "DNSKEY")
        assert any(rrset.rdtype == dns.rdatatype.RRSIG for rrset in got.answer), server
    answer = _ask(stack_env["MAILPLANE_RESOLVER"], "moo.faster.test", "A", port=53)
    assert answer.rcode() == dns.rcode.NOERROR
    assert answer.flags & dns.flags.AD


def test_new_zone_reaches_the_secondaries_through_the_catalog_and_validates_once_its_ds_is_in_the_parent(
    stack_env: dict[str, str],
) -> None:
    zone = f"d{uuid.uuid4().hex[:10]}.test"
    resolver = stack_env["MAILPLANE_RESOLVER"]
    _script("zone-add", zone, env=stack_env)
    try:
        for server in _servers(stack_env):
            assert _eventually(lambda s=server: _soa_serial(s, zone) is not None), f"{server} never served {zone}"
        # signed, but no DS in the parent yet: insecure (answers, without AD)
        r = _ask(resolver, zone, "SOA", port=53)
        assert r.rcode() == dns.rcode.NOERROR and not r.flags & dns.flags.AD
        _parent_ds(stack_env, zone, _ds_of(zone))
        _flush(stack_env, zone)
        r = _ask(resolver, zone, "SOA", port=53)
        assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AD
        # a wrong DS: the chain breaks, the resolver refuses the data (SERVFAIL); with CD the data is still there
        _parent_ds(stack_env, zone, "12345 13 2 " + "cd" * 32)
        _flush(stack_env, zone)
        assert _ask(resolver, zone, "SOA", port=53).rcode() == dns.rcode.SERVFAIL
        assert _ask(resolver, zone, "SOA", port=53, cd=True).rcode() == dns.rcode.NOERROR
    finally:
        _script("zone-del", zone, env=stack_env)
    for server in _servers(stack_env):
        assert _eventually(lambda s=server: _ask(s, zone, "SOA").rcode() == dns.rcode.REFUSED), server


def test_an_update_reaches_every_secondary_signed(stack_env: dict[str, str]) -> None:
    zone = f"u{uuid.uuid4().hex[:10]}.test"
    _script("zone-add", zone, env=stack_env)
    try:
        for server in _servers(stack_env):
            assert _eventually(lambda s=server: _soa_serial(s, zone) is not None), server
        before = _soa_serial(PRIMARY, zone)
        # compare-and-set as mailplane writes: the prerequisite is checked on the (unsigned) zone, then re-signed
        script = (
            f"server {PRIMARY} {PORT}\nzone {zone}\nprereq nxrrset www.{zone}. A\n"
            f"update add www.{zone}. 300 A 127.0.0.9\nsend\n"
        )
        subprocess.run(["nsupdate", "-k", stack_env["MAILPLANE_TSIG_KEYFILE"]], input=script, text=True, check=True)
        for server in [PRIMARY, *_servers(stack_env)]:

            def served(s: str = server) -> bool:
                r = _ask(s, f"www.{zone}", "A")
                return any(rrset.rdtype == dns.rdatatype.RRSIG for rrset in r.answer) and any(
                    rrset.rdtype == dns.rdatatype.A for rrset in r.answer
                )

            assert _eventually(served), f"{server} does not serve the signed update"
            serial = _soa_serial(server, zone)
            assert serial is not None and before is not None and serial != before
    finally:
        _script("zone-del", zone, env=stack_env)


def test_a_paused_secondary_lags_until_resumed(stack_env: dict[str, str]) -> None:
    """Test knob infra/local/dns-lag: ns3 keeps the old zone while ns2 follows the primary; resumed, it catches up."""
    zone = f"l{uuid.uuid4().hex[:10]}.test"
    ns2, ns3 = _servers(stack_env)
    _script("zone-add", zone, env=stack_env)
    try:
        for server in (ns2, ns3):
            assert _eventually(lambda s=server: _soa_serial(s, zone) is not None), server
        old = _soa_serial(ns3, zone)
        _script("dns-lag", "pause", "ns3", env=stack_env)
        try:
            script = f"server {PRIMARY} {PORT}\nzone {zone}\nupdate add www.{zone}. 300 A 127.0.0.9\nsend\n"
            subprocess.run(["nsupdate", "-k", stack_env["MAILPLANE_TSIG_KEYFILE"]], input=script, text=True, check=True)
            assert _eventually(lambda: _soa_serial(ns2, zone) == _soa_serial(PRIMARY, zone) != old)
            time.sleep(1)  # ns2 got the NOTIFY and the IXFR; ns3 got the NOTIFY too, and was refused the transfer
            assert _soa_serial(ns3, zone) == old
        finally:
            _script("dns-lag", "resume", "ns3", env=stack_env)
        assert _eventually(lambda: _soa_serial(ns3, zone) == _soa_serial(PRIMARY, zone))
    finally:
        _script("zone-del", zone, env=stack_env)


def test_a_lagging_secondary_holds_the_event_until_it_catches_up(stack_env: dict[str, str]) -> None:
    """The gate asks every NS: with ns3's transfers held back the event stays NotPropagated (asked again in place for
    dns.propagation_wait, then retried by the broker) and is provisioned only after ns3 caught up."""
    settings = stack.settings_for(stack_env)
    domain = stack.unique_domain("lag")
    ns2, ns3 = _servers(stack_env)
    _script("zone-add", domain, env=stack_env)
    seen: dict[str, object] = {}

    def resume_later() -> None:
        # wait until the primary and ns2 serve the plan while ns3 still serves the empty zone: real lag
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            primary = _soa_serial(PRIMARY, domain) or 0
            if primary != seen["paused_at"] and _soa_serial(ns2, domain) == primary:
                break
            time.sleep(0.2)
        time.sleep(3.0)  # the gate keeps failing on ns3 meanwhile
        seen["ns3_while_paused"] = _soa_serial(ns3, domain)
        seen["primary_while_paused"] = _soa_serial(PRIMARY, domain)
        seen["resumed"] = dt.datetime.now(dt.UTC)
        _script("dns-lag", "resume", "ns3", env=stack_env)

    helper = threading.Thread(target=resume_later)
    try:
        assert _eventually(lambda: _soa_serial(ns3, domain) is not None)
        _script("dns-lag", "pause", "ns3", env=stack_env)
        seen["paused_at"] = _soa_serial(ns3, domain)
        stack.publish(stack_env, settings, stack.created_event(domain))
        helper.start()
        stack.run_worker(settings)
        helper.join(70)
    finally:
        _script("dns-lag", "resume", "ns3", env=stack_env)
    assert "resumed" in seen, "the primary and ns2 never served the plan"
    assert seen["ns3_while_paused"] == seen["paused_at"] != seen["primary_while_paused"], "ns3 did not lag"
    outcomes = [stack.body_json(b) for _, b in stack.take(stack_env, settings, "q.outcomes", domain)]
    (outcome,) = [o for o in outcomes if o["type"] == "domain.provisioned"]
    # a gate that asked only the primary (or ns2) would have provisioned the domain before ns3 caught up
    assert dt.datetime.fromisoformat(outcome["time"]) > seen["resumed"]  # type: ignore[operator]
    assert outcome["data"]["status"] == "provisioned"
    assert {f"{ns2}:{PORT}", f"{ns3}:{PORT}"} <= set(outcome["data"]["verified_servers"])
    assert _soa_serial(ns3, domain) == _soa_serial(PRIMARY, domain)


def test_domain_provisioned_reports_the_ds_and_status_follows_the_chain_of_trust(stack_env: dict[str, str]) -> None:
    """dns.dnssec (on for the stack): domain.provisioned names the DS to register (= dnssec-dsfromkey of the DNSKEY
    the primary serves) and awaiting_ds, without holding mail back; once the parent serves it the validating
    resolver sets AD and `status` says secure; a wrong DS at the parent is drift, as the resolver's SERVFAIL shows."""
    settings = stack.settings_for(stack_env)
    assert settings.dns.dnssec and settings.dns.validating_resolver == stack_env["MAILPLANE_RESOLVER"]
    domain = stack.unique_domain("sec")
    resolver = stack_env["MAILPLANE_RESOLVER"]
    _script("zone-add", domain, env=stack_env)
    try:
        stack.publish(stack_env, settings, stack.created_event(domain))
        stack.run_worker(settings)
        outcomes = [stack.body_json(b) for _, b in stack.take(stack_env, settings, "q.outcomes", domain)]
        (outcome,) = [o for o in outcomes if o["type"] == "domain.provisioned"]
        ds = _ds_of(domain)
        assert outcome["data"]["status"] == "provisioned"
        assert outcome["data"]["dnssec"] == {"status": "awaiting_ds", "ds": [ds], "parent_ds": []}
        ports = build_ports(settings, probe=False)

        def chain() -> tuple[str, Check]:
            overall, checks = domain_status(domain, ports)
            (found,) = [c for c in checks if c.where == "chain of trust"]
            return overall, found

        overall, check = chain()
        assert overall == "provisioned" and check.ok and check.have.startswith("awaiting_ds")
        _parent_ds(stack_env, domain, ds)
        _flush(stack_env, domain)
        assert _ask(resolver, domain, "SOA", port=53).flags & dns.flags.AD  # the resolver itself, not our code
        overall, check = chain()
        assert overall == "provisioned" and check.ok and check.have.startswith("secure:"), check.have
        _parent_ds(stack_env, domain, "12345 13 2 " + "cd" * 32)
        _flush(stack_env, domain)
        assert _ask(resolver, domain, "SOA", port=53).rcode() == dns.rcode.SERVFAIL
        overall, check = chain()
        assert overall == "drift" and not check.ok and check.have.startswith("wrong_ds:"), check.have
        assert "12345 13 2 " + "CD" * 32 in check.have and ds in check.have  # what is there, and what belongs there
    finally:
        _script("zone-del", domain, env=stack_env)
