"""`mailplane sweep`: delete what is past its retention (functions/_core/model/retention.py) on a store without S3
lifecycle rules: expired ledger records, old audit records, retired DKIM keys' sealed private keys, old TLS report
day objects."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.console import Console

from functions._core.model import retention
from functions._core.platform.errors import AutomationError
from functions.runtime import main

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="settings file (default: $MAILPLANE_CONFIG)")]


def register(app: typer.Typer) -> None:
    out, err = Console(), Console(stderr=True)

    @app.command("sweep")
    def sweep_cmd(
        config: ConfigOpt = None,
        apply: Annotated[bool, typer.Option("--apply", help="delete them (default: count only)")] = False,
        only: Annotated[str, typer.Option("--only", help="one class: ledger, audit, keys or tlsrpt")] = "",
    ) -> None:
        """Objects past their retention ([retention] and dkim.keep_days; infra/terraform's lifecycle rules do the
        ledger and audit classes on S3): counted per class, or deleted with --apply. Domain states, policies, the
        due index, a signing key and the previous key within its retire window are never touched."""
        main.setup_logging("WARNING")
        try:
            settings = main.load_settings(config)
            store = main.build_store(settings.store, settings.store.state_bucket, probe=False)
            result = retention.sweep(store, settings, dt.datetime.now(dt.UTC), apply=apply, only=only)
        except ValueError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        except AutomationError as exc:
            err.print(f"[red]error:[/red] {exc.reason}")
            raise typer.Exit(2) from None
        verb = "deleted" if apply else "expired (dry run; --apply deletes them)"
        for name, r in result.items():
            out.print(f"{name}: {r.expired} {verb}, {r.kept} kept, {r.unreadable} unreadable left alone")
