from __future__ import annotations

import json
from typing import Any

import pytest

from functions._core.platform.errors import ConfigError
from functions.runtime.main import load_secret_env


class FakeSecrets:
    def __init__(self, values: dict[str, str]) -> None:
        self.values, self.calls = values, 0

    def get_secret_value(self, SecretId: str) -> dict[str, Any]:  # noqa: N803 - boto3's name
        self.calls += 1
        if SecretId not in self.values:
            raise KeyError("ResourceNotFoundException: arn:aws:secretsmanager:...:secret:hunter2")
        return {"SecretString": self.values[SecretId]}


def test_secrets_land_in_the_environment_and_existing_values_win() -> None:
    client = FakeSecrets({"arn:mailcow": "mc-key", "arn:pmg": json.dumps({"username": "u", "password": "p"})})
    env = {
        "MAILPLANE_SECRETS": json.dumps(
            {
                "MAILPLANE_MAILCOW_API_KEY": {"secret": "arn:mailcow"},
                "MAILPLANE_PMG_PASSWORD": {"secret": "arn:pmg", "key": "password"},
                "ALREADY_SET": {"secret": "arn:never-read"},
            }
        ),
        "ALREADY_SET": "keep",
    }
    assert load_secret_env(env, client) == ["MAILPLANE_MAILCOW_API_KEY", "MAILPLANE_PMG_PASSWORD"]
    assert env["MAILPLANE_MAILCOW_API_KEY"] == "mc-key" and env["MAILPLANE_PMG_PASSWORD"] == "p"
    assert env["ALREADY_SET"] == "keep" and client.calls == 2


def test_unreadable_secret_is_a_config_error_without_the_secret() -> None:
    env = {"MAILPLANE_SECRETS": json.dumps({"X": {"secret": "arn:missing"}})}
    with pytest.raises(ConfigError) as info:
        load_secret_env(env, FakeSecrets({}))
    assert "X" in str(info.value) and "hunter2" not in str(info.value)
    with pytest.raises(ConfigError):
        load_secret_env({"MAILPLANE_SECRETS": "not json"}, FakeSecrets({}))
    assert load_secret_env({}, FakeSecrets({})) == []
