from __future__ import annotations

from pathlib import Path

import pytest

from functions._core.platform.config import Secret, Settings
from functions._core.platform.errors import ConfigError
from tests.stackenv import REPO

PROD = REPO / "infra" / "platform.toml"
LOCAL = REPO / "infra" / "local" / "platform.test.toml"


def _prod_with_secret_files(tmp_path: Path) -> Path:
    text = PROD.read_text().replace("/etc/mailplane", str(tmp_path))
    for name in ("mailcow-api-key", "pmg-password", "tsig-secret", "dkim-kek", "amqp-password"):
        (tmp_path / name).write_text(f"secret-{name}\n")
    path = tmp_path / "platform.toml"
    path.write_text(text)
    return path


def test_production_sample_reproduces_the_provider(tmp_path: Path) -> None:
    s = Settings.load(_prod_with_secret_files(tmp_path), {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    hosts = {h.name: (h.ipv4, h.ipv6) for h in s.provider.mx_hosts}
    assert hosts == {
        "pmg1.faster.cz": ("77.240.184.211", "2a02:e98:10:1410::6c"),
        "pmg2.faster.cz": ("176.74.155.62", "2a00:9c80:0:2006::6c"),
        "pmg3.faster.cz": ("77.240.188.67", "2a02:e98:10:1440::6c"),
    }
    assert (s.mailcow.host, s.mailcow.ipv4, s.mailcow.ipv6) == (
        "moo.faster.cz",
        "77.240.184.218",
        "2a02:e98:10:1410::6d",
    )
    assert s.policy.spf_include == "_pmg.faster.cz" and s.policy.mta_sts_host == "web6.faster.cz"
    assert s.mailcow.api_key.reveal() == "secret-mailcow-api-key"  # file secrets are stripped
    assert s.broker.publishers["key.rotate"] == ("scheduler",)


def test_secrets_print_as_stars(tmp_path: Path) -> None:
    s = Settings.load(_prod_with_secret_files(tmp_path), {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    text = repr(s) + str(s)
    assert "***" in text
    assert "secret-" not in text and "secret-pmg-password" not in str(s.pmg)


def test_unknown_setting_is_named(tmp_path: Path) -> None:
    path = _prod_with_secret_files(tmp_path)
    path.write_text(path.read_text().replace("[pmg]\n", '[pmg]\nusr = "x"\n'))
    with pytest.raises(ConfigError, match=r"unknown setting pmg\.usr"):
        Settings.load(path, {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})


def test_missing_setting_is_named(tmp_path: Path) -> None:
    path = _prod_with_secret_files(tmp_path)
    path.write_text(path.read_text().replace('spf_include = "_pmg.faster.cz"\n', ""))
    with pytest.raises(ConfigError, match=r"missing setting policy\.spf_include"):
        Settings.load(path, {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})


def test_missing_secret_env_is_named() -> None:
    with pytest.raises(ConfigError, match=r"provider\.mx_hosts\[0\]\.api_url: environment variable MAILPLANE_PMG1_URL"):
        Settings.load(LOCAL, {})


def test_wrong_type_and_inline_secret_refused(tmp_path: Path) -> None:
    path = _prod_with_secret_files(tmp_path)
    path.write_text(path.read_text().replace("key_size = 2048", 'key_size = "big"'))
    with pytest.raises(ConfigError, match=r"dkim\.key_size must be of type int"):
        Settings.load(path, {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    path.write_text(
        _prod_with_secret_files(tmp_path)
        .read_text()
        .replace(f'{{ file = "{tmp_path}/pmg-password" }}', '"plain-text-password"')
    )
    with pytest.raises(ConfigError, match=r"pmg\.password is a secret"):
        Settings.load(path, {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})


def test_secret_equality_without_disclosure() -> None:
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")
    assert f"{Secret('hunter2')}" == "***"


def test_key_pool_size_defaults_to_off_and_refuses_a_negative_size() -> None:
    from functions._core.platform.config import DkimSettings

    assert DkimSettings().key_pool_size == 0
    with pytest.raises(ConfigError, match="key_pool_size"):
        DkimSettings(key_pool_size=-1)
