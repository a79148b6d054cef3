"""Build Settings and Ports once, from the settings file named by MAILPLANE_CONFIG; no work at import."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from functions._core.model.due_index import IndexedStore
from functions._core.model.keypool import KeyPool
from functions._core.model.ports import Ports
from functions._core.platform.config import Settings, StoreSettings, Web6Settings
from functions._core.platform.errors import ConfigError
from functions._core.platform.idempotency import Ledger, default_owner
from functions._core.platform.locks import SubjectLocks
from functions._core.platform.store import ObjectStore


def load_settings(path: str | None = None) -> Settings:
    """Settings from ``path`` or $MAILPLANE_CONFIG.

    Raises:
        ConfigError: no settings file named, or an invalid one.
    """
    return Settings.load(_settings_file(path))


def load_web6_settings(path: str | None = None) -> Web6Settings:
    """The settings of `mailplane web6 sync` (the store and the unsealing key only) from ``path`` or
    $MAILPLANE_CONFIG.

    Raises:
        ConfigError: no settings file named, or an invalid one.
    """
    return Web6Settings.load(_settings_file(path))


def _settings_file(path: str | None) -> str:
    chosen = path if path is not None else os.environ.get("MAILPLANE_CONFIG")
    if not chosen:
        raise ConfigError("no settings file: pass --config or set MAILPLANE_CONFIG")
    return chosen


def load_secret_env(env: MutableMapping[str, str], client: Any = None) -> list[str]:
    """Resolve $MAILPLANE_SECRETS (JSON ``{"ENV_NAME": {"secret": arn, "key": optional}}``, set by the Terraform
    Lambda module) from Secrets Manager into ``env``, so the settings file can keep ``{ env = "ENV_NAME" }``
    references. Variables already set win. Returns the names it set (never the values).

    Raises:
        ConfigError: malformed $MAILPLANE_SECRETS, or a secret (or its key) that cannot be read.
    """
    raw = env.get("MAILPLANE_SECRETS")
    if not raw:
        return []
    try:
        refs = json.loads(raw)
        wanted = {name: (ref["secret"], ref.get("key")) for name, ref in refs.items() if name not in env}
    except (ValueError, AttributeError, KeyError, TypeError):
        raise ConfigError("MAILPLANE_SECRETS must be a JSON object of {ENV: {secret, key?}}") from None
    if client is None and wanted:
        import boto3

        client = boto3.client("secretsmanager")
    for name, (arn, key) in wanted.items():
        try:
            value = client.get_secret_value(SecretId=arn)["SecretString"]
            env[name] = str(json.loads(value)[key]) if key else value
        except Exception as exc:  # noqa: BLE001 - any failure here is a configuration problem; no secret in the text
            raise ConfigError(f"cannot read secret for {name}: {type(exc).__name__}") from None
    return sorted(wanted)


def build_store(settings: StoreSettings, bucket: str, *, probe: bool) -> ObjectStore:
    if settings.kind == "dir":
        from functions.adapters.dirstore import DirStore

        return DirStore(Path(settings.path) / bucket)
    if settings.kind == "s3":
        from functions.adapters.s3 import S3Store

        store = S3Store(settings, bucket)
        if probe:
            store.probe()
        return store
    raise ConfigError(f"setting store.kind must be 's3' or 'dir', not {settings.kind!r}")


def build_ports(settings: Settings, *, probe: bool = True) -> Ports:
    """The real adapters for every system; the state store is probed for conditional writes."""
    from functions.adapters.dns import Rfc2136Dns
    from functions.adapters.mailcow import MailcowClient
    from functions.adapters.pmg import PmgClient
    from functions.adapters.smtp import SmtpProbe

    state = build_store(settings.store, settings.store.state_bucket, probe=probe)
    ledger = Ledger(
        state,
        owner=default_owner(),
        lease=dt.timedelta(seconds=settings.broker.lease_seconds),
        keep=dt.timedelta(days=settings.retention.ledger_days),
    )
    from functions.adapters.nodetls import NodeTls

    gateway = PmgClient(settings.pmg, settings.provider.mx_hosts)
    return Ports(
        mail=MailcowClient(settings.mailcow),
        gateway=gateway,
        dns=Rfc2136Dns(settings.dns),
        state=IndexedStore(state, settings.dkim),  # keeps the due index of `rotate-due` on every state write
        web=build_store(settings.store, settings.store.web_bucket, probe=False),
        settings=settings,
        ledger=ledger,
        locks=SubjectLocks(state, lease=dt.timedelta(seconds=settings.broker.lease_seconds)),
        smtp=SmtpProbe(settings.smtp_probe),
        keypool=build_keypool(settings, state),
        certs=_certs(settings),
        web_host=_web_host(settings, state),
        node_tls=NodeTls(gateway, settings.provider.mx_hosts, timeout=settings.dane.smtp_timeout),
    )


def build_keypool(settings: Settings, state: ObjectStore) -> KeyPool | None:
    """The sealed key pool in the raw state bucket, or None when ``dkim.key_pool_size`` is 0."""
    d = settings.dkim
    return KeyPool(state, d.key_encryption_key, size=d.key_pool_size, bits=d.key_size) if d.key_pool_size else None


def _certs(settings: Settings) -> Any:
    if not settings.acme.directory:
        return None
    from functions.adapters.acme import AcmeClient

    return AcmeClient(settings.acme)


def _web_host(settings: Settings, state: ObjectStore) -> Any:
    """The MTA-STS web host of ``mta_sts.delivery``: "dir" writes into ``cert_dir`` (none without one), "store"
    leaves the sealed entries in ``state`` for web6 to pull (``mailplane web6 sync``)."""
    from functions.adapters.webhost import DirWebHost, SenderView, StoreWebHost

    if settings.mta_sts.delivery == "store":
        return StoreWebHost(state, SenderView(settings.mta_sts))
    return DirWebHost(settings.mta_sts) if settings.mta_sts.cert_dir else None


def setup_logging(level: str = "INFO", *, outcomes: bool = True) -> None:
    """Plain lines on stderr; outcome lines are JSON (see dispatch)."""
    logging.basicConfig(stream=sys.stderr, level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    outcome = logging.getLogger("mailplane.outcome")  # pure JSON lines on stdout, for Wazuh / log shippers
    if not outcome.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        outcome.addHandler(handler)
        outcome.propagate = False
    outcome.setLevel(logging.INFO if outcomes else logging.WARNING)
    for noisy in ("pika", "botocore", "urllib3", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
