"""The session-wide secret scan (tests/logscan.py, installed by tests/conftest.py) catches what it must."""

from __future__ import annotations

import logging

from tests import conftest
from tests.logscan import SecretScan, secret_values

PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"


def _isolated(scan: SecretScan) -> logging.Logger:
    """A logger that reaches only ``scan`` (never the session's scan, which would fail the run)."""
    logger = logging.getLogger("tests.logscan.planted")
    logger.handlers = [scan]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger


def test_a_planted_secret_pem_and_exception_are_caught_by_name_only() -> None:
    secrets = secret_values({"MAILPLANE_PMG_PASSWORD": "pmg-hunter2-pw", "AWS_ACCESS_KEY_ID": "test", "URL": "x" * 9})
    assert secrets == {"MAILPLANE_PMG_PASSWORD": "pmg-hunter2-pw"}  # short placeholders and non-secrets are skipped
    scan = SecretScan(secrets)
    log = _isolated(scan)
    log.info("login as automation@pmg with %s", "pmg-hunter2-pw")
    log.warning("importing %s", PEM)
    try:
        raise ValueError("pmg-hunter2-pw")
    except ValueError:
        log.exception("failed")
    log.info("clean line: domain alpha.test provisioned")
    assert scan.checked == 4
    assert scan.found == [
        "tests.logscan.planted (INFO): the value of MAILPLANE_PMG_PASSWORD",
        "tests.logscan.planted (WARNING): a PEM private key",
        "tests.logscan.planted (ERROR): the value of MAILPLANE_PMG_PASSWORD",
    ]
    assert all("hunter2" not in f for f in scan.found)


def test_the_session_scan_is_installed_and_sees_info_lines() -> None:
    scan = conftest._scan
    assert scan is not None and scan in logging.getLogger().handlers
    assert "MAILPLANE_MAILCOW_API_KEY" in scan.secrets and "MAILPLANE_DKIM_KEK" in scan.secrets
    before = scan.checked
    logging.getLogger("mailplane.test").info("an ordinary line")
    assert scan.checked == before + 1
