"""`mailplane web6 sync`: pull the MTA-STS certificates from the state store into web6's certificate directory
(functions/ops/web6_sync.py; infra/web6/README.md)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Annotated

import typer

from functions._core.platform.config import Web6Settings
from functions._core.platform.errors import AutomationError, ConfigError
from functions._core.platform.store import ObjectStore
from functions.adapters.webhost import CertDir
from functions.ops import web6_sync
from functions.runtime import main

ConfigOpt = Annotated[
    str | None, typer.Option("--config", "-c", help="web6's settings file (infra/web6/sync.toml; $MAILPLANE_CONFIG)")
]


def register(app: typer.Typer) -> None:
    web6_app = typer.Typer(help='web6, the MTA-STS policy host (mta_sts.delivery = "store").')
    app.add_typer(web6_app, name="web6")

    @web6_app.command("sync")
    def sync_cmd(
        cert_dir: Annotated[Path, typer.Option("--cert-dir", help="the directory nginx reads (@CERT_DIR@)")],
        config: ConfigOpt = None,
        once: Annotated[bool, typer.Option("--once", help="one pass, then exit (the systemd timer)")] = False,
        every: Annotated[float, typer.Option("--every", help="seconds between passes without --once")] = 60.0,
        group_read: Annotated[
            bool, typer.Option("--group-read", help="files 0640: nginx reads them through the directory's group")
        ] = False,
        max_removals: Annotated[
            int, typer.Option("--max-removals", help="more files without an entry than this: remove none")
        ] = web6_sync.MAX_REMOVALS,
    ) -> None:
        """Make CERT_DIR exactly the certificates of mta-sts names in the state store: install new and changed ones
        (atomically), remove those whose entry is gone, refuse bad entries (the file there stays). Reports on
        stderr; exit 1 when an entry was refused or removals were held back, 2 for a settings or store error."""
        main.setup_logging("WARNING")
        try:
            if not cert_dir.is_dir():
                raise ConfigError(f"--cert-dir {cert_dir} is not a directory (create it: infra/web6/README.md)")
            settings = main.load_web6_settings(config)
            target = CertDir(cert_dir, mode=0o640 if group_read else 0o600)
            store = main.build_store(settings.store, settings.store.state_bucket, probe=False)
        except AutomationError as exc:
            typer.echo(f"error: {exc.reason}", err=True)
            raise typer.Exit(2) from None
        while True:
            code = _pass(store, settings, target, max_removals)
            if once:
                raise typer.Exit(code)
            time.sleep(every)


def _pass(store: ObjectStore, settings: Web6Settings, target: CertDir, max_removals: int) -> int:
    """One sync, reported on stderr; the exit code it stands for."""
    now = dt.datetime.now(dt.UTC)
    try:
        result = web6_sync.sync(store, settings.dkim.key_encryption_key, target, now, max_removals=max_removals)
    except AutomationError as exc:
        typer.echo(f"error: {exc.reason}; nothing removed", err=True)
        return 2
    except OSError as exc:
        typer.echo(f"error: {target.path}: {exc.strerror}", err=True)
        return 2
    for line in result.lines():
        typer.echo(line, err=True)
    return 0 if result.ok else 1
