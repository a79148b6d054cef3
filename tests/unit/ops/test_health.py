"""`mailplane health` over in-process fakes; the certificate check against a real STARTTLS listener on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pika.exceptions
import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from functions import domain_created, node_down
from functions._core.model import dnssec, rotation, state
from functions._core.model.state import KeyRecord
from functions._core.platform.config import MxHost
from functions._core.platform.envelope import parse
from functions.ops import cli_health, drift, health, health_probe
from functions.ops.status import CHAIN_WHERE, Check
from functions.runtime import main
from tests.unit.ops.test_plan_drift import created
from tests.unit.test_node_down import T0, World, build_world, down

STUCK = dt.timedelta(hours=6)


@pytest.fixture
def world() -> World:
    return build_world()


def samples(sink: health.Sink) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """name + sorted labels -> value, as Prometheus would scrape it."""
    collector = health.HealthCollector()
    collector.update(sink)
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def put_state(world: World, st: state.DomainState) -> None:
    state.save(world.ports.state, st, state.load(world.ports.state, st.domain))


def provision(world: World, domain: str) -> None:
    assert domain_created.handle(parse(created(domain)), world.ports).status == "provisioned"


def key(selector: str, status: str, created_at: dt.datetime, changed_at: dt.datetime | None = None) -> KeyRecord:
    return KeyRecord(selector, "AAAA", status, rotation.iso(created_at), rotation.iso(changed_at or created_at))


def test_domains_are_counted_by_the_status_their_state_holds(world: World) -> None:
    provision(world, "alpha.test")
    put_state(world, state.DomainState("beta.test", status="degraded"))  # what the acceptance gate writes
    put_state(world, state.DomainState("gamma.test", status="suspended"))
    world.ports.state.put("domains/broken.test.json", b"{not json")
    sink = health.Sink()
    health.domains(sink, world.ports, T0, stuck_after=STUCK)
    got = samples(sink)
    assert got[("mailplane_domains", (("status", "provisioned"),))] == 1
    assert got[("mailplane_domains", (("status", "degraded"),))] == 1
    assert got[("mailplane_domains", (("status", "suspended"),))] == 1
    assert got[("mailplane_domains_unreadable", ())] == 1
    assert got[("mailplane_dkim_key_age_days_count", ())] == 1  # only provisioned domains have a signing key


def test_key_age_buckets_and_a_rotation_stuck_beyond_its_deadline(world: World) -> None:
    s = world.ports.settings.dkim
    old = T0 - dt.timedelta(days=200)
    visible_since = T0 - dt.timedelta(seconds=s.propagation_seconds) - STUCK - dt.timedelta(hours=1)
    stuck = (key("a", "ACTIVE", old), key("b", "VISIBLE", visible_since))
    put_state(world, state.DomainState("stuck.test", status="provisioned", keys=stuck))
    fresh = T0 - dt.timedelta(seconds=s.propagation_seconds) - dt.timedelta(hours=1)  # overdue, within tolerance
    late = (key("c", "ACTIVE", old), key("d", "VISIBLE", fresh))
    put_state(world, state.DomainState("late.test", status="provisioned", keys=late))
    put_state(world, state.DomainState("young.test", status="provisioned", keys=(key("e", "ACTIVE", T0),)))
    sink = health.Sink()
    health.domains(sink, world.ports, T0, stuck_after=STUCK)
    got = samples(sink)
    assert got[("mailplane_dkim_rotations_stuck", (("state", "VISIBLE"),))] == 1
    assert got[("mailplane_dkim_rotations_stuck", (("state", "PUBLISHED"),))] == 0
    assert got[("mailplane_dkim_rotations_in_progress", ())] == 2
    assert got[("mailplane_dkim_rotation_keys", (("state", "VISIBLE"),))] == 2
    overdue = (STUCK + dt.timedelta(hours=1)).total_seconds()
    assert got[("mailplane_dkim_rotation_overdue_seconds_max", ())] == pytest.approx(overdue)
    assert got[("mailplane_dkim_key_age_days_bucket", (("le", "30.0"),))] == 1
    assert got[("mailplane_dkim_key_age_days_bucket", (("le", "180.0"),))] == 1
    assert got[("mailplane_dkim_key_age_days_bucket", (("le", "240.0"),))] == 3


def test_awaiting_dns_waits_for_the_customer_and_is_never_stuck(world: World) -> None:
    pending = (key("a", "PUBLISHED", T0 - dt.timedelta(days=30)),)
    put_state(world, state.DomainState("ext.test", status="awaiting_dns", keys=pending))
    sink = health.Sink()
    health.domains(sink, world.ports, T0, stuck_after=STUCK)
    got = samples(sink)
    assert sum(v for (n, _), v in got.items() if n == "mailplane_dkim_rotations_stuck") == 0
    assert got[("mailplane_domains", (("status", "awaiting_dns"),))] == 1


def test_a_withdrawn_node_leaves_rotation_in_the_figures(world: World) -> None:
    node_down.handle(down("pmg2", 10), world.ports)
    sink = health.Sink()
    health.mx_nodes(sink, world.ports)
    got = samples(sink)
    assert got[("mailplane_mx_nodes_configured", ())] == 3
    assert got[("mailplane_mx_nodes_in_rotation", ())] == 2
    assert got[("mailplane_mx_nodes_min_in_rotation", ())] == 2
    assert got[("mailplane_mx_node_in_rotation", (("node", "pmg2.faster.test"),))] == 0
    assert got[("mailplane_mx_node_in_rotation", (("node", "pmg1.faster.test"),))] == 1


def test_drift_findings_come_from_the_stored_report_not_from_probing(world: World) -> None:
    provision(world, "alpha.test")
    world.dns.zones["alpha.test"].pop(("alpha.test", "MX"))  # someone removed the MX by hand
    sink = health.Sink()
    health.drift_report(sink, world.ports)
    assert sink.samples == {}  # no report yet: nothing is probed
    drift.save_report(world.ports.state, drift.drift_all(["alpha.test"], world.ports), T0)
    world.reset()
    health.drift_report(sink, world.ports)
    got = samples(sink)
    assert got[("mailplane_drift_findings", (("system", "dns"),))] >= 1
    assert got[("mailplane_drift_domains", (("status", "drift"),))] == 1
    assert got[("mailplane_drift_report_timestamp_seconds", ())] == T0.timestamp()
    assert world.recorders["dns"].calls == [] and world.recorders["mail"].calls == []


def test_dnssec_chain_counts_come_from_the_stored_report_with_every_status(world: World) -> None:
    def chain(domain: str, status: str) -> drift.DomainDrift:
        check = Check("dns", CHAIN_WHERE, f"DNSSEC {domain}", "secure", f"{status}: DS to register: ...", False)
        return drift.DomainDrift(domain, "drift", (check,))

    results = [chain("a.test", "wrong_ds"), chain("b.test", "wrong_ds"), chain("c.test", "awaiting_ds")]
    results.append(drift.DomainDrift("d.test", "provisioned"))  # not signed: no chain to count
    drift.save_report(world.ports.state, results, T0)
    world.reset()
    sink = health.Sink()
    health.drift_report(sink, world.ports)
    got = {labels[0][1]: v for (n, labels), v in samples(sink).items() if n == "mailplane_dnssec_zones"}
    assert got == {s: {"wrong_ds": 2, "awaiting_ds": 1}.get(s, 0) for s in dnssec.STATUSES}
    assert world.recorders["dns"].calls == []  # from the report: no zone is asked
    old = {"time": T0.isoformat(), "summary": {}, "findings": {}}  # a report written before the counts existed
    world.ports.state.put(drift.REPORT_KEY, json.dumps(old).encode())
    sink = health.Sink()
    health.drift_report(sink, world.ports)
    assert "mailplane_dnssec_zones" not in sink.samples and "mailplane_drift_report_timestamp_seconds" in sink.samples


def test_a_failing_source_is_marked_down_and_leaves_no_partial_series(world: World) -> None:
    def half(sink: health.Sink) -> None:
        sink.set("mailplane_mx_nodes_configured", 3)
        raise OSError("unreachable")

    sources = {"mx_nodes": half, "store": lambda s: health.store_objects(s, world.ports)}
    sink = health.run(sources, health.HealthCollector())
    got = samples(sink)
    assert got[("mailplane_health_source_up", (("source", "mx_nodes"),))] == 0
    assert got[("mailplane_health_source_up", (("source", "store"),))] == 1
    assert ("mailplane_mx_nodes_configured", ()) not in got
    assert got[("mailplane_store_objects", (("kind", "ledger"),))] == 0


# ---------------------------------------------------------------- certificates (SMTP STARTTLS)


def self_signed(tmp: Path, name: str, not_after: dt.datetime) -> tuple[Path, Path]:
    priv = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(priv.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - dt.timedelta(days=90))
        .not_valid_after(not_after)
        .sign(priv, hashes.SHA256())
    )
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = priv.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_file.write_bytes(pem)
    return cert_file, key_file


def smtp_server(tls: ssl.SSLContext | None) -> Iterator[int]:
    """An ESMTP greeter on 127.0.0.1: EHLO (offering STARTTLS when ``tls``), STARTTLS, QUIT."""
    server = socket.create_server(("127.0.0.1", 0))
    sni: list[str | None] = []

    def serve() -> None:
        conn, _ = server.accept()
        f = conn.makefile("rwb")
        f.write(b"220 mx.test ESMTP\r\n")
        f.flush()
        while line := f.readline():
            verb = line.split(b" ")[0].strip().upper()
            if verb in (b"EHLO", b"HELO"):
                offer = tls is not None and not isinstance(conn, ssl.SSLSocket)
                f.write(b"250-mx.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n" if offer else b"250 mx.test\r\n")
            elif verb == b"STARTTLS" and tls is not None:
                f.write(b"220 go ahead\r\n")
                f.flush()
                tls.sni_callback = lambda _s, name, _c: sni.append(name)  # type: ignore[assignment,misc]
                conn = tls.wrap_socket(conn, server_side=True)
                f = conn.makefile("rwb")
                continue
            elif verb == b"QUIT":
                f.write(b"221 bye\r\n")
                f.flush()
                break
            else:
                f.write(b"250 ok\r\n")
            f.flush()
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    thread.join(5)
    server.close()
    assert not tls or sni == ["pmg1.faster.test"]  # the MX host's name went out as SNI


def check(world: World, port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    host = MxHost("pmg1.faster.test", "127.0.0.1", "::1", smtp=f"127.0.0.1:{port}")
    provider = dataclasses.replace(world.ports.settings.provider, mx_hosts=(host,))
    sink = health.Sink()
    health_probe.certificates(sink, dataclasses.replace(world.ports.settings, provider=provider), T0, timeout=5)
    return samples(sink)


def test_starttls_certificate_days_to_expiry(world: World, tmp_path: Path) -> None:
    not_after = (T0 + dt.timedelta(days=20)).replace(microsecond=0)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*self_signed(tmp_path, "pmg1.faster.test", not_after))
    for port in smtp_server(ctx):
        got = check(world, port)
    labels = (("host", "pmg1.faster.test"), ("kind", "smtp"))
    assert got[("mailplane_certificate_check", (*labels, ("result", "ok")))] == 1
    assert got[("mailplane_certificate_days_to_expiry", labels)] == 20
    assert got[("mailplane_certificate_expiry_timestamp_seconds", labels)] == not_after.timestamp()


def test_a_host_without_starttls_is_reported_without_an_expiry(world: World) -> None:
    for port in smtp_server(None):
        got = check(world, port)
    labels = (("host", "pmg1.faster.test"), ("kind", "smtp"))
    assert got[("mailplane_certificate_check", (*labels, ("result", "no_starttls")))] == 1
    assert ("mailplane_certificate_days_to_expiry", labels) not in got


def test_an_unreachable_host_is_reported(world: World) -> None:
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    got = check(world, port)
    labels = (("host", "pmg1.faster.test"), ("kind", "smtp"), ("result", "unreachable"))
    assert got[("mailplane_certificate_check", labels)] == 1


# ---------------------------------------------------------------- the command


def test_health_command_writes_the_textfile_and_exits_1_when_a_source_is_down(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broker_down(*_args: object) -> None:
        raise pika.exceptions.AMQPConnectionError("refused")

    monkeypatch.setattr(main, "load_settings", lambda path=None: world.ports.settings)
    monkeypatch.setattr(main, "build_ports", lambda settings, probe=True: world.ports)
    monkeypatch.setattr(health_probe, "broker", broker_down)
    monkeypatch.setattr(health_probe, "certificates", lambda *_a, **_k: None)  # no MX host to reach in a unit test
    monkeypatch.setenv("MAILPLANE_AMQP_OPERATOR_PASSWORD", "x")
    node_down.handle(down("pmg2", 10), world.ports)
    app = typer.Typer()
    cli_health.register(app)
    app.command("noop")(lambda: None)  # a group, as in the real app
    target = tmp_path / "mailplane.prom"
    done = CliRunner().invoke(app, ["health", "--textfile", str(target)])
    assert done.exit_code == 1, done.output
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(target.read_text())
        for s in fam.samples
    }
    assert got[("mailplane_health_source_up", (("source", "broker"),))] == 0
    assert got[("mailplane_health_source_up", (("source", "mx_nodes"),))] == 1
    assert got[("mailplane_mx_nodes_in_rotation", ())] == 2
    assert list(tmp_path.iterdir()) == [target]  # written beside and renamed: no temporary file left
