"""`mailplane sweep`: delete expired idempotency-ledger records on a store without an S3 lifecycle rule."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.console import Console

from functions._core.platform import idempotency
from functions._core.platform.errors import AutomationError
from functions.runtime import main

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="settings file (default: $MAILPLANE_CONFIG)")]


def register(app: typer.Typer) -> None:
    out, err = Console(), Console(stderr=True)

    @app.command("sweep")
    def sweep_cmd(
        config: ConfigOpt = None,
        apply: Annotated[bool, typer.Option("--apply", help="delete them (default: count only)")] = False,
    ) -> None:
        """Ledger records past their expiry (infra/terraform's lifecycle rule does this on S3): counted, or deleted
        with --apply. Domain states, sealed keys and index entries are never touched."""
        main.setup_logging("WARNING")
        try:
            settings = main.load_settings(config)
            store = main.build_store(settings.store, settings.store.state_bucket, probe=False)
            result = idempotency.sweep(store, dt.datetime.now(dt.UTC), apply=apply)
        except AutomationError as exc:
            err.print(f"[red]error:[/red] {exc.reason}")
            raise typer.Exit(2) from None
        verb = "deleted" if apply else "expired (dry run; --apply deletes them)"
        out.print(f"ledger: {result.expired} {verb}, {result.kept} kept, {result.unreadable} unreadable left alone")
