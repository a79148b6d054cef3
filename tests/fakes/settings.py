"""Settings for unit tests: the local stack's platform file with placeholder endpoints and secrets."""

from __future__ import annotations

import base64
import dataclasses

from functions._core.platform.config import Settings
from tests.stackenv import REPO

FAKE_ENV = {
    "MAILPLANE_PMG1_URL": "https://127.0.0.1:8006",
    "MAILPLANE_PMG2_URL": "https://127.0.0.1:8016",
    "MAILPLANE_PMG3_URL": "https://127.0.0.1:8026",
    "MAILPLANE_PMG1_SMTP": "127.0.0.1:2525",
    "MAILPLANE_PMG2_SMTP": "127.0.0.1:2526",
    "MAILPLANE_PMG3_SMTP": "127.0.0.1:2527",
    "MAILPLANE_PMG1_FINGERPRINT": "11" * 32,
    "MAILPLANE_PMG2_FINGERPRINT": "22" * 32,
    "MAILPLANE_PMG3_FINGERPRINT": "33" * 32,
    "MAILPLANE_MAILCOW_URL": "https://127.0.0.1:8443",
    "MAILPLANE_MAILCOW_API_KEY": "A1B2C3-D4E5F6-A7B8C9-D0E1F2-A3B4C5",
    "MAILPLANE_SIM_CA": "",
    "MAILPLANE_PMG_PASSWORD": "pmg-test-password",
    "MAILPLANE_TSIG_SECRET": base64.b64encode(b"t" * 32).decode(),
    "MAILPLANE_DKIM_KEK": base64.b64encode(b"k" * 32).decode(),
    "MAILPLANE_S3_ENDPOINT": "https://127.0.0.1:4566",
    "MAILPLANE_STACK_CA": "",
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "MAILPLANE_AMQP_WORKER_PASSWORD": "worker-test-password",
}


def make_settings(
    env: dict[str, str] | None = None, *, sogo_restart_interval: float = 0.0, dnssec: bool = False
) -> Settings:
    """The test platform file; SOGo restarts are not debounced (interval 0) unless asked, because unit tests run on a
    frozen clock that would never let an interval pass (tests/unit/model/test_webmail.py moves its clock); and no
    in-place propagation wait (a fake DNS serves at once, or never in the tests that expect NotPropagated); and no
    DNSSEC reporting unless asked (the fake DNS signs nothing: tests/unit/model/test_dnssec.py seeds keys)."""
    settings = Settings.load(REPO / "infra" / "local" / "platform.test.toml", {**FAKE_ENV, **(env or {})})
    mailcow = dataclasses.replace(settings.mailcow, sogo_restart_interval=sogo_restart_interval)
    dns = dataclasses.replace(settings.dns, propagation_wait=0.0, dnssec=dnssec)  # fakes propagate at once or never
    return dataclasses.replace(settings, mailcow=mailcow, dns=dns)
