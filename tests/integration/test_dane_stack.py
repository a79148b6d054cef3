"""cert.renew on the real stack: BIND (TLSA by CAS UPDATE), Pebble (ACME DNS-01 through our RFC 2136 channel), the
PMG simulator (custom/smtp upload, STARTTLS), LocalStack S3 (state, sealed keys), with a controllable clock.

Before, during and after a key rollover every node passes three independent DANE verifiers fed with what the
resolver serves: Postfix's own DANE client ``posttls-finger -c -l dane "[<mx host>]"`` (A and TLSA through the stack's
validating resolver, as a sending MTA looks them up; its output is read, its exit code is 0 even when untrusted),
``openssl s_client -starttls smtp -dane_tlsa_rrdata`` and ``ldns-dane -c <cert from openssl>``; a wrong TLSA makes
all three fail. On the signed stack (MAILPLANE_TRUST_ANCHOR set) openssl is fed only from an answer with the AD bit
and ldns-dane chases signatures itself (``-S -k``); on an unsigned one the TLSA comes from the resolver as served
and ldns-dane runs with ``-d``.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest

from functions._core.model import dane
from functions._core.model.ports import Ports
from functions._core.platform.config import AcmeSettings, Settings
from functions.runtime.main import build_ports
from tests.integration import stack

pytestmark = pytest.mark.stack
WITH_RESOLVER = Path(__file__).resolve().parents[2] / "infra" / "local" / "with-resolver"
NODES = ("pmg1", "pmg2", "pmg3")


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture(scope="module")
def settings(stack_env: dict[str, str]) -> Settings:
    base = stack.settings_for(stack_env)
    acme = AcmeSettings(
        directory=stack_env["MAILPLANE_ACME_DIRECTORY"],
        ca_file=stack_env["MAILPLANE_ACME_CA"],
        root_file=stack_env["MAILPLANE_ACME_ROOT"],
        timeout_seconds=60,
    )
    return replace(base, acme=acme, dane=replace(base.dane, enabled=True, tlsa_ttl=1))


@pytest.fixture(scope="module")
def ports(settings: Settings) -> Ports:
    return replace(build_ports(settings, probe=False), clock=Clock(dt.datetime.now(dt.UTC)), ledger=None)


def smtp_target(settings: Settings, node: str) -> str:
    return next(h.smtp for h in settings.provider.mx_hosts if h.name.startswith(node + "."))


def tlsa_via_resolver(env: dict[str, str], name: str) -> list[str]:
    """The TLSA rdata the validating resolver serves, only from an answer with the AD bit (when the stack signs)."""
    q = dns.message.make_query(name, dns.rdatatype.TLSA, want_dnssec=True)
    q.flags |= dns.flags.AD
    ans = dns.query.udp(q, env["MAILPLANE_RESOLVER"], timeout=5)
    if env.get("MAILPLANE_TRUST_ANCHOR") and not ans.flags & dns.flags.AD:
        return []
    return [rd.to_text() for rrset in ans.answer if rrset.rdtype == dns.rdatatype.TLSA for rd in rrset]


def posttls_finger(env: dict[str, str], host: str, tmp: Path) -> bool:
    """Postfix's DANE client against ``[host]``:25, resolving through the validating resolver (with-resolver)."""
    conf = tmp / "posttls-finger"  # Debian's postfix is installed with "No configuration": its own main.cf
    conf.mkdir(exist_ok=True)
    (conf / "main.cf").write_text("compatibility_level = 3.6\ninet_protocols = ipv4\n")
    out = subprocess.run(
        [str(WITH_RESOLVER), "env", f"MAIL_CONFIG={conf}", "posttls-finger", "-t20", "-c", "-l", "dane"]
        + [f"[{host}]"],
        env={**env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True,
        timeout=40,
        check=False,
    )
    text = out.stdout.decode() + out.stderr.decode()
    return f"Verified TLS connection established to {host}[" in text and "Untrusted" not in text


def openssl_dane(target: str, host: str, rrdata: list[str]) -> bool:
    args = ["openssl", "s_client", "-connect", target, "-starttls", "smtp", "-brief", "-verify_return_error"]
    args += ["-dane_tlsa_domain", host, "-dane_ee_no_namechecks"]
    for rd in rrdata:
        args += ["-dane_tlsa_rrdata", rd]
    out = subprocess.run(args, input=b"QUIT\r\n", capture_output=True, timeout=20, check=False)
    text = out.stdout.decode() + out.stderr.decode()
    return "Verification: OK" in text and "matched EE certificate" in text


def ldns_dane(env: dict[str, str], target: str, host: str, tmp: Path) -> bool:
    fetched = subprocess.run(
        ["openssl", "s_client", "-connect", target, "-starttls", "smtp", "-showcerts"],
        input=b"QUIT\r\n",
        capture_output=True,
        timeout=20,
        check=False,
    ).stdout.decode()
    pem = fetched[fetched.index("-----BEGIN CERTIFICATE-----") : fetched.index("-----END CERTIFICATE-----") + 25]
    cert = tmp / f"{host}.pem"
    cert.write_text(pem + "\n")
    anchor = env.get("MAILPLANE_TRUST_ANCHOR")  # signed stack: chase signatures to the local anchor (-S -k)
    trust = ["-S", "-k", anchor] if anchor else ["-d"]
    out = subprocess.run(
        ["ldns-dane", *trust, "-n", "-r", env["MAILPLANE_RESOLVER"], "-c", str(cert), "verify", host, "25"],
        capture_output=True,
        timeout=20,
        check=False,
    )
    text = out.stdout.decode() + out.stderr.decode()
    return out.returncode == 0 and "dane-validated successfully" in text


def all_pass(env: dict[str, str], settings: Settings, tmp: Path) -> dict[str, tuple[bool, bool, bool]]:
    out = {}
    for node in NODES:
        host = f"{node}.{settings.provider.zone}"
        target = smtp_target(settings, node)
        rr = tlsa_via_resolver(env, f"_25._tcp.{host}")
        out[node] = (
            posttls_finger(env, host, tmp),
            bool(rr) and openssl_dane(target, host, rr),
            ldns_dane(env, target, host, tmp),
        )
    return out


def advance(ports: Ports, node: str, event: str, reason: str) -> dane.Result:
    """dane.advance as the broker delivers it: a transient refusal (a secondary not serving yet) is retried."""
    for _ in range(100):
        try:
            return dane.advance(ports, node, dane.Request(event, reason))
        except dane.TransientError:
            time.sleep(0.2)
    raise AssertionError(f"{node}: {event} still transient after 20 s")


def test_rollover_keeps_every_node_dane_valid(
    stack_env: dict[str, str], settings: Settings, ports: Ports, tmp_path: Path
) -> None:
    clock = ports.clock
    assert isinstance(clock, Clock)
    for node in NODES:  # adopt (publish the TLSA of what each node presents), then roll pmg2 and pmg3 first
        advance(ports, node, f"adopt-{node}-{clock.now:%s}", "nudge")
    # a client that asked before the adoption has "no TLSA" cached for the zone's negative TTL (300 s) and does
    # opportunistic TLS meanwhile; the verifiers below are clients asking after it (an earlier test may have asked)
    _flush(stack_env, settings)
    ok = {n: (True, True, True) for n in NODES}
    assert all_pass(stack_env, settings, tmp_path) == ok

    # a wrong TLSA fails the verifiers (all three in test_a_wrong_tlsa_fails_every_verifier)
    host = f"pmg1.{settings.provider.zone}"
    assert not openssl_dane(smtp_target(settings, "pmg1"), host, ["3 1 1 " + "00" * 32])

    old_spki = {v.node: v.spki for v in dane.view(ports)}["pmg1"]
    run = f"roll-pmg1-{clock.now:%s}"
    res = advance(ports, "pmg1", run, "rollover")
    assert res.state.phase == "PUBLISHED"
    assert all_pass(stack_env, settings, tmp_path) == ok  # current + next served
    seen = []
    for i in range(10):
        if res.state.phase == "IDLE":
            break
        clock.now = max(clock.now, res.until or clock.now) + dt.timedelta(seconds=3)
        res = advance(ports, "pmg1", f"{run}-n{i}", "nudge")
        seen += res.steps
        assert all_pass(stack_env, settings, tmp_path) == ok, seen
    assert seen == ["PUBLISHED->ISSUED", "ISSUED->DEPLOYED", "DEPLOYED->VERIFIED", "VERIFIED->IDLE"]
    views = {v.node: v for v in dane.view(ports)}
    assert views["pmg1"].spki == res.state.current_spki and all(v.dane_ok for v in views.values())
    assert "Pebble" in views["pmg1"].subject or views["pmg1"].subject == f"CN={host}"
    _flush(stack_env, settings)  # the model waited 2 x TTL on its own clock; the resolver's cache ages in real time
    served = {dane.spki_of_value(v) for v in tlsa_via_resolver(stack_env, f"_25._tcp.{host}")}
    # the old TLSA withdrawn, the new one kept (values a reused stack's earlier runs left are not this run's to judge)
    assert res.state.current_spki in served and old_spki not in served and old_spki != res.state.current_spki


def test_a_wrong_tlsa_fails_every_verifier(
    stack_env: dict[str, str], settings: Settings, ports: Ports, tmp_path: Path
) -> None:
    node, host = "pmg3", f"pmg3.{settings.provider.zone}"
    dane.advance(ports, node, dane.Request(f"adopt-{node}", "nudge"))
    name = f"_25._tcp.{host}"
    have = ports.dns.read_rrset(name, "TLSA")
    assert have is not None
    wrong = dane.RecordSet.of(name, "TLSA", 1, ["3 1 1 " + "ab" * 32])
    ports.dns.apply(settings.provider.zone, [dane.DnsChange(before=have, after=wrong)])
    try:
        _flush(stack_env, settings)
        target = smtp_target(settings, node)
        assert not posttls_finger(stack_env, host, tmp_path)
        assert not openssl_dane(target, host, tlsa_via_resolver(stack_env, name))
        assert not ldns_dane(stack_env, target, host, tmp_path)
        assert {v.node: v.dane_ok for v in dane.view(ports)}[node] is False
    finally:
        ports.dns.apply(settings.provider.zone, [dane.DnsChange(before=wrong, after=have)])
        _flush(stack_env, settings)
    assert all_pass(stack_env, settings, tmp_path)[node] == (True, True, True)


def _flush(env: dict[str, str], settings: Settings) -> None:
    conf = Path(env["MAILPLANE_STACK_DIR"]) / "unbound" / "resolver.conf"
    subprocess.run(
        ["unbound-control", "-c", str(conf), "flush_zone", settings.provider.zone],
        capture_output=True,
        check=False,
        timeout=10,
    )


# ---------------------------------------------------------------- SIGKILL after any write


def child() -> None:
    """One cert.renew step run in this process as of DANE_NOW; SIGKILL right after DANE_KILL_AFTER writes."""
    import json
    import os
    import signal
    from typing import Any

    env = dict(os.environ)
    base = Settings.load(env["MAILPLANE_CONFIG"], env)
    acme = AcmeSettings(
        directory=env["MAILPLANE_ACME_DIRECTORY"],
        ca_file=env["MAILPLANE_ACME_CA"],
        root_file=env["MAILPLANE_ACME_ROOT"],
    )
    settings = replace(base, acme=acme, dane=replace(base.dane, enabled=True, tlsa_ttl=1))
    ports = replace(build_ports(settings, probe=False), clock=Clock(dt.datetime.fromisoformat(env["DANE_NOW"])))
    left = [int(env.get("DANE_KILL_AFTER", "0")) or 10**9]

    def killing(target: Any) -> Any:
        class Killing:
            def __getattr__(self, name: str) -> Any:
                attr = getattr(target, name)
                if name not in ("put", "delete", "apply", "upload"):
                    return attr

                def call(*args: Any, **kwargs: Any) -> Any:
                    result = attr(*args, **kwargs)
                    left[0] -= 1
                    if left[0] <= 0:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return result

                return call

        return Killing()

    ports = replace(ports, dns=killing(ports.dns), state=killing(ports.state), node_tls=killing(ports.node_tls))
    try:
        res = dane.advance(ports, env["DANE_NODE"], dane.Request(env["DANE_EVENT"], env["DANE_REASON"]))
    except dane.TransientError as exc:  # retried by the broker (e.g. a CA that validated too early)
        print(json.dumps({"phase": "?", "until": None, "retry": str(exc)}))
        return
    print(json.dumps({"phase": res.state.phase, "until": res.until.isoformat() if res.until else None}))


def test_sigkill_after_every_write_resumes_to_the_same_end_state(
    stack_env: dict[str, str], settings: Settings, ports: Ports, tmp_path: Path
) -> None:
    import json
    import os
    import signal
    import sys

    from tests.stackenv import REPO

    node, now = "pmg2", dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    dane.advance(ports, node, dane.Request(f"adopt-{node}", "nudge"))
    event = f"roll-{node}-kill-{now:%s}"
    env = {
        **os.environ,
        **stack_env,
        "DANE_NODE": node,
        "DANE_EVENT": event,
        "DANE_REASON": "rollover",
        "DANE_KILL_AFTER": "1",
        "PYTHONPATH": f"{REPO}:{REPO}/infra/local",
    }
    code = "from tests.integration.test_dane_stack import child; child()"
    kills, phase, last_phase, step_kill = 0, "", "", 1
    for _ in range(60):
        env["DANE_NOW"] = now.isoformat()
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, timeout=180)
        print(
            f"child: kill after {env['DANE_KILL_AFTER']} writes: rc {proc.returncode} in {time.monotonic() - t0:.1f} s"
            f" {proc.stdout.decode().strip()[-200:]}"
        )
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            now_phase = dane.load(ports, node)[0].phase  # a step with several writes: kill later in it next time
            step_kill = step_kill + 1 if now_phase == last_phase else 1
            last_phase = now_phase
            env["DANE_KILL_AFTER"] = str(step_kill)
            assert all_pass(stack_env, settings, tmp_path)[node] == (True, True, True)  # DANE holds after every kill
            continue
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        if out.get("retry"):  # a transient failure: the broker redelivers; the same kill point comes next
            continue
        phase = out["phase"]
        if phase == "IDLE":
            break
        now = max(now, dt.datetime.fromisoformat(out["until"])) if out["until"] else now
        now += dt.timedelta(seconds=3)
        env["DANE_REASON"], env["DANE_KILL_AFTER"], step_kill, last_phase = "nudge", "1", 1, ""
    assert phase == "IDLE" and kills >= 6
    st, _ = dane.load(ports, node)
    rr = tlsa_via_resolver(stack_env, f"_25._tcp.{node}.{settings.provider.zone}")
    assert [dane.spki_of_value(v) for v in rr] == [st.current_spki]
    assert {v.node: v.spki for v in dane.view(ports)}[node] == st.current_spki
    # the same event again writes nothing
    before = ports.dns.serial(settings.provider.zone, ports.dns.servers(settings.provider.zone)[0])
    assert dane.advance(ports, node, dane.Request(event, "rollover")).steps == ()
    assert ports.dns.serial(settings.provider.zone, ports.dns.servers(settings.provider.zone)[0]) == before
