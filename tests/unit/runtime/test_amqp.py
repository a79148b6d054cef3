"""functions.runtime.amqp.params: TLS by default (CA, host name), client certificates (EXTERNAL), plaintext only when
a setting says so, and no secret in any message. The broker's side of each is in tests/integration/test_tls_stack.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ssl
from pathlib import Path

import pika
import pika.credentials
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from functions._core.platform.config import BrokerSettings, Secret, Settings
from functions._core.platform.errors import ConfigError
from functions.runtime.amqp import ClientCert, credential_from_env, params
from tests.fakes.settings import FAKE_ENV, make_settings
from tests.stackenv import REPO

PASSWORD = "worker-test-password"  # tests/fakes/settings.py


@pytest.fixture
def broker() -> BrokerSettings:
    return make_settings().broker


@pytest.fixture
def cert(tmp_path: Path) -> ClientCert:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "worker")])
    now = dt.datetime.now(dt.UTC)
    crt = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(crt.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "c.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ClientCert(str(tmp_path / "c.pem"), str(tmp_path / "c.key"))


def test_tls_is_the_default_and_checks_the_certificate_and_the_host_name(broker: BrokerSettings) -> None:
    p = params(broker)
    assert broker.tls and p.port == 5671
    assert p.ssl_options is not None and p.ssl_options.server_hostname == broker.host
    ctx = p.ssl_options.context
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert isinstance(p.credentials, pika.PlainCredentials) and p.credentials.username == "worker"


def test_a_settings_file_without_tls_lines_gets_tls(tmp_path: Path) -> None:
    text = (REPO / "infra/local/platform.test.toml").read_text()
    text = text.replace("tls = true\n", "").replace('ca_file = { env = "MAILPLANE_STACK_CA" }\n', "")
    path = tmp_path / "p.toml"
    path.write_text(text)
    s = Settings.load(path, FAKE_ENV)
    assert s.broker.tls and s.broker.ca_file == "" and s.store.ca_file == ""


def test_plaintext_only_when_set_and_then_warned(broker: BrokerSettings, caplog: pytest.LogCaptureFixture) -> None:
    p = params(dataclasses.replace(broker, tls=False, ca_file="", port=5672))
    assert p.ssl_options is None
    (record,) = [r for r in caplog.records if r.name == "functions.runtime.amqp"]
    assert record.levelname == "WARNING" and "plaintext AMQP to 127.0.0.1:5672" in record.getMessage()
    assert PASSWORD not in caplog.text


def test_a_client_certificate_logs_in_by_external(broker: BrokerSettings, cert: ClientCert) -> None:
    on_cert = dataclasses.replace(broker, password=None, cert_file=cert.cert_file, key_file=cert.key_file)
    p = params(on_cert)
    assert isinstance(p.credentials, pika.credentials.ExternalCredentials)
    assert p.ssl_options is not None  # the certificate goes with TLS
    publisher = params(broker, "billing", cert)  # a publisher's certificate, the same way
    assert isinstance(publisher.credentials, pika.credentials.ExternalCredentials)


def test_unreadable_tls_files_name_the_path_never_the_contents(
    broker: BrokerSettings, cert: ClientCert, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="/nonexistent/ca.pem"):
        params(dataclasses.replace(broker, ca_file="/nonexistent/ca.pem"))
    wrong_key = tmp_path / "other.key"
    other = ec.generate_private_key(ec.SECP256R1())
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    wrong_key.write_bytes(pem)
    with pytest.raises(ConfigError) as exc:
        params(broker, "worker", ClientCert(cert.cert_file, str(wrong_key)))  # key of another certificate
    assert cert.cert_file in exc.value.reason and "PRIVATE KEY" not in exc.value.reason
    assert pem.decode().splitlines()[1] not in exc.value.reason


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tls": False}, "need broker.tls = true"),  # a ca_file without TLS is a contradiction
        ({"cert_file": "/c.pem"}, "set together"),
        ({"cert_file": "/c.pem", "key_file": "/c.key"}, "not both"),
        ({"password": None}, "missing setting broker.password"),
    ],
)
def test_contradictory_broker_settings_are_refused(
    broker: BrokerSettings, change: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(dataclasses.replace(broker, ca_file="/ca.pem"), **change)


def test_store_ca_file_needs_https() -> None:
    store = make_settings().store
    assert store.endpoint_url.startswith("https://")
    with pytest.raises(ConfigError, match="https"):
        dataclasses.replace(store, endpoint_url="http://127.0.0.1:4566", ca_file="/ca.pem")


def test_credential_from_env() -> None:
    assert credential_from_env("billing", {"MAILPLANE_AMQP_BILLING_PASSWORD": "pw"}) == Secret("pw")
    both = {"MAILPLANE_AMQP_BILLING_CERT": "/b.pem", "MAILPLANE_AMQP_BILLING_KEY": "/b.key"}
    assert credential_from_env("billing", {**both, "MAILPLANE_AMQP_BILLING_PASSWORD": "pw"}) == ClientCert(
        "/b.pem", "/b.key"
    )
    with pytest.raises(ConfigError, match="set together"):
        credential_from_env("billing", {"MAILPLANE_AMQP_BILLING_CERT": "/b.pem"})
    with pytest.raises(ConfigError, match="MAILPLANE_AMQP_BILLING_PASSWORD"):
        credential_from_env("billing", {})


def test_production_sample_is_amqps_with_a_ca(tmp_path: Path) -> None:
    text = (REPO / "infra/platform.toml").read_text().replace("/etc/mailplane", str(tmp_path))
    for name in ("mailcow-api-key", "pmg-password", "tsig-secret", "dkim-kek", "amqp-password"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "p.toml").write_text(text)
    s = Settings.load(tmp_path / "p.toml", {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    assert (s.broker.host, s.broker.port, s.broker.tls) == ("rabbitmq.faster.cz", 5671, True)
    assert s.broker.ca_file == f"{tmp_path}/rabbitmq-ca.pem"
    assert s.store.endpoint_url.startswith("https://") and s.store.ca_file == f"{tmp_path}/store-ca.pem"
