"""node.add / node.retire of a fourth gateway node on the real stack (BIND, LocalStack S3, a PMG simulator).

The fixture starts a second PMG simulator with FOUR nodes (ports picked by the kernel, inside the test's network
namespace), so the stack's `up` stays as it is; the settings point pmg1-4 at it, pmg4 marked ``joining``. A few
domains are seeded as domain.created leaves them (records, policy object, state): node.add's reads and writes are
the same. What a resolver sees is asked of BIND with dig (an independent client) between the phases.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from functions._core.model import fleet, state
from functions._core.model.mailset import desired_records, mta_sts_policy, policy_key
from functions._core.model.ports import DnsChange, Ports
from functions._core.platform.config import MxHost, Settings
from functions.ops import grow, retire
from functions.runtime.main import build_ports
from tests.integration import stack
from tests.stackenv import REPO

pytestmark = pytest.mark.stack

ADDRS = {1: ("127.0.1.1", "2001:db8:10:1410::6c"), 2: ("127.0.1.2", "2001:db8:0:2006::6c")}
ADDRS |= {3: ("127.0.1.3", "2001:db8:10:1440::6c"), 4: ("127.0.1.4", "2001:db8:10:1450::6c")}
MX4 = "10 pmg4.faster.test."


@pytest.fixture(scope="module")
def four_node_sim(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tls = tmp_path_factory.mktemp("pmg4")
    env = {**os.environ, "SIM_PMG_USER": "automation@pmg", "SIM_PMG_PASSWORD": stack_env["MAILPLANE_PMG_PASSWORD"]}
    env["PYTHONPATH"] = str(REPO / "infra" / "local")
    cmd = [sys.executable, "-m", "sim.serve", "pmg", "--ports", "0,0,0,0", "--tls-dir", str(tls)]
    cmd += [
        "--smtp",
        ",".join(["127.0.0.1:0"] * 4),
        "--cert",
        "ca-signed",
        "--sync-interval",
        "0.5",
        "--auth-failure-delay",
        "0",
    ]
    log = (tls / "sim.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    api: list[int] = []
    smtp: list[int] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        kind, _, port = line.strip().partition(" ")
        if kind == "ready":
            break
        (api if kind == "pmg" else smtp if kind == "pmg-smtp" else []).append(int(port))
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
    try:
        assert len(api) == 4 and len(smtp) == 4, (api, smtp)
        yield {"api": api, "smtp": smtp, "ca": str(Path(tls) / "ca.pem")}
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def ports(stack_env: dict[str, str], four_node_sim: dict[str, object]) -> Ports:
    base = stack.settings_for(stack_env)
    api, smtp = four_node_sim["api"], four_node_sim["smtp"]
    assert isinstance(api, list) and isinstance(smtp, list)
    hosts = tuple(
        MxHost(
            f"pmg{i}.faster.test",
            *ADDRS[i],
            api_url=f"https://127.0.0.1:{api[i - 1]}",
            smtp=f"127.0.0.1:{smtp[i - 1]}",
            joining=i == 4,
        )
        for i in (1, 2, 3, 4)
    )
    s: Settings = dataclasses.replace(
        base,
        provider=dataclasses.replace(base.provider, mx_hosts=hosts),
        pmg=dataclasses.replace(base.pmg, ca_file=str(four_node_sim["ca"])),
        nodes=dataclasses.replace(base.nodes, retire_policy_after_seconds=0, retire_waves=(1, 2), probe_timeout=5.0),
    )
    return build_ports(s, probe=False)


def dig(name: str, rtype: str) -> set[str]:
    got = subprocess.run(
        ["dig", "+short", "+norecurse", "-p", "5399", "@127.0.0.1", name, rtype],
        capture_output=True,
        text=True,
        check=True,
    )
    return {ln.strip().strip('"') for ln in got.stdout.splitlines() if ln.strip()}


def seed(ports: Ports, n: int) -> list[str]:
    """n zones as domain.created leaves them with three nodes (pmg4 is joining, so the settings give three)."""
    s = ports.settings
    zones = [stack.unique_domain("grow") for _ in range(n)]
    stack.zone_add(*zones)
    for zone in zones:
        want = desired_records(zone, s, "fc20261202", "QUJD")
        ports.dns.apply(zone, [DnsChange(None, rs) for rs in want.values()])
        ports.web.put(policy_key(zone), mta_sts_policy(s).encode(), content_type="text/plain")
        st = state.DomainState(zone, request={"dns": {"hosted": True}}, status="provisioned")
        state.save(ports.state, st, state.DomainState(zone))
    return zones


def test_node_add_then_retire_in_resolver_visible_order(ports: Ports, stack_env: dict[str, str]) -> None:
    zones = seed(ports, 4)
    grow.undo_add(ports, "pmg4", zones)  # a clean provider zone after an interrupted earlier run
    spf_before = dig("_pmg.faster.test", "TXT")
    assert len(spf_before) == 1 and "127.0.1.4" not in next(iter(spf_before))
    plan = grow.plan_add(ports, "pmg4", zones=zones)
    assert plan.health == (), plan.health  # the prober's checks and the cluster's view of the 4th node
    assert plan.provider.adopted  # the hand-written _pmg of infra/local/up equals what we compute: adopted
    seen: dict[str, dict[str, object]] = {}

    def observe(phase: str, report: grow.AddReport) -> None:
        seen[phase] = {
            "a": dig("pmg4.faster.test", "A"),
            "spf": dig("_pmg.faster.test", "TXT"),
            "mx": {z: dig(z, "MX") for z in zones},
            "sts": {z: dig(f"_mta-sts.{z}", "TXT") for z in zones},
        }

    report = grow.apply_add(ports, plan, approved=plan.digest, progress=observe)
    assert not report.halted, report.failed
    after_provider, after_policies, after_mx = seen["provider"], seen["policies"], seen["mx"]
    assert after_provider["a"] == {"127.0.1.4"} and "ip4:127.0.1.4" in next(iter(after_provider["spf"]))  # type: ignore[call-overload]
    assert all(MX4 not in v for v in after_provider["mx"].values())  # type: ignore[attr-defined]
    assert all(MX4 not in v for v in after_policies["mx"].values())  # type: ignore[attr-defined]
    _, txt = fleet.policy_body_and_txt(fleet.with_host(ports.settings, ports.settings.provider.mx_hosts[3]))
    assert all(v == {txt} for v in after_policies["sts"].values())  # type: ignore[attr-defined]
    assert all(MX4 in v and len(v) == 4 for v in after_mx["mx"].values())  # type: ignore[attr-defined]
    got = ports.web.get(policy_key(zones[0]))
    assert got is not None and b"mx: pmg4.faster.test\n" in got.body
    # a replay writes nothing
    serials = {z: stack.soa_serial(stack_env, z) for z in [*zones, "faster.test"]}
    again = grow.plan_add(ports, "pmg4", zones=zones)
    assert again.empty
    grow.apply_add(ports, again)
    assert {z: stack.soa_serial(stack_env, z) for z in serials} == serials
    # node.retire reverses it: MX first, then the policies, then _pmg and the A/AAAA
    rp = retire.plan_retire(ports, "pmg4", zones)
    assert not retire.apply_retire(ports, rp).failed
    assert all(MX4 not in dig(z, "MX") for z in zones) and dig("pmg4.faster.test", "A") == {"127.0.1.4"}
    tail = grow.retire_tail(ports, "pmg4", zones=zones)
    assert not tail.waiting and not tail.report.halted, tail
    assert dig("pmg4.faster.test", "A") == set() and dig("pmg4.faster.test", "AAAA") == set()
    assert fleet.same_spf(next(iter(dig("_pmg.faster.test", "TXT"))), next(iter(spf_before)))
    got = ports.web.get(policy_key(zones[0]))
    assert got is not None and b"pmg4" not in got.body


SERVERS = ("127.0.0.1", "127.0.5.1", "127.0.5.2")  # the hidden primary and both public secondaries (port 5399)


def dig_at(server: str, name: str, rtype: str) -> set[str]:
    got = subprocess.run(
        ["dig", "+short", "+norecurse", "-p", "5399", f"@{server}", name, rtype],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [ln.split() for ln in got.stdout.lower().splitlines() if ln.strip()]
    if rtype == "TLSA":  # dig splits the hex of the association data in groups
        return {" ".join(p[:3] + ["".join(p[3:])]) for p in lines}
    return {" ".join(p) for p in lines}


def presented_spki_sha256(target: str) -> str:
    """SHA-256 of the SubjectPublicKeyInfo the node presents over STARTTLS, computed by openssl alone."""
    cert = subprocess.run(
        ["openssl", "s_client", "-connect", target, "-starttls", "smtp"],
        input=b"QUIT\r\n",
        capture_output=True,
        timeout=20,
        check=False,
    ).stdout
    pub = subprocess.run(["openssl", "x509", "-noout", "-pubkey"], input=cert, capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub, capture_output=True, check=True)
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-r"], input=der.stdout, capture_output=True, check=True)
    return digest.stdout.decode().split()[0].lower()


def test_node_add_with_dane_serves_the_nodes_tlsa_everywhere_before_any_mx(
    ports: Ports, stack_env: dict[str, str]
) -> None:
    s = ports.settings
    dane_ports = dataclasses.replace(
        ports, settings=dataclasses.replace(s, dane=dataclasses.replace(s.dane, enabled=True, tlsa_ttl=1))
    )
    zones = seed(dane_ports, 2)
    grow.undo_add(dane_ports, "pmg4", zones)  # a clean provider zone (and DANE state) after an earlier run
    name = "_25._tcp.pmg4.faster.test"
    assert all(dig_at(srv, name, "TLSA") == set() for srv in SERVERS)
    want = "3 1 1 " + presented_spki_sha256(s.provider.mx_hosts[3].smtp)
    plan = grow.plan_add(dane_ports, "pmg4", zones=zones)
    assert plan.health == () and plan.dane == "adopt", (plan.health, plan.dane)
    seen: dict[str, dict[str, object]] = {}

    def observe(phase: str, report: grow.AddReport) -> None:
        seen[phase] = {
            "tlsa": {srv: dig_at(srv, name, "TLSA") for srv in SERVERS},
            "mx": {z: dig(z, "MX") for z in zones},
        }

    report = grow.apply_add(dane_ports, plan, approved=plan.digest, progress=observe)
    assert not report.halted, report.failed
    # after the provider phase every authoritative server serves the TLSA of what pmg4 presents, and no MX names it
    assert seen["provider"]["tlsa"] == {srv: {want} for srv in SERVERS}
    assert all(MX4 not in v for v in seen["provider"]["mx"].values())  # type: ignore[attr-defined]
    assert all(MX4 in v for v in seen["mx"]["mx"].values())  # type: ignore[attr-defined]
    # retire: MX first, then the policies, then the A/AAAA and the TLSA, last, on every server
    assert not retire.apply_retire(dane_ports, retire.plan_retire(dane_ports, "pmg4", zones)).failed
    assert all(dig_at(srv, name, "TLSA") == {want} for srv in SERVERS)  # still there while only the MX went
    tail = grow.retire_tail(dane_ports, "pmg4", zones=zones)
    assert not tail.waiting and not tail.report.halted, tail
    for srv in SERVERS:  # the tail's UPDATE reaches the secondaries by NOTIFY + IXFR
        for _ in range(50):
            if dig_at(srv, name, "TLSA") == set() and dig_at(srv, "pmg4.faster.test", "A") == set():
                break
            time.sleep(0.1)
        assert dig_at(srv, name, "TLSA") == set() and dig_at(srv, "pmg4.faster.test", "A") == set(), srv
