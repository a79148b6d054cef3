"""`mailplane keypool refill|status`: the sealed pool of pre-generated DKIM keys (functions/_core/model/keypool.py)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from functions._core.model.keypool import KeyPool
from functions._core.platform.errors import AutomationError
from functions.runtime import main

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="settings file (default: $MAILPLANE_CONFIG)")]


def register(app: typer.Typer) -> None:
    out, err = Console(), Console(stderr=True)
    pool_app = typer.Typer(help="The sealed pool of pre-generated DKIM keys (dkim.key_pool_size).")
    app.add_typer(pool_app, name="keypool")

    def _pool(config: str | None) -> KeyPool:
        settings = main.load_settings(config)
        store = main.build_store(settings.store, settings.store.state_bucket, probe=False)
        d = settings.dkim
        return KeyPool(store, d.key_encryption_key, size=d.key_pool_size, bits=d.key_size)

    @pool_app.command("refill")
    def refill_cmd(
        config: ConfigOpt = None,
        size: Annotated[int | None, typer.Option("--size", help="target (default: dkim.key_pool_size)")] = None,
    ) -> None:
        """Generate keys until the pool holds its target (the scheduler runs this hourly; idle workers too)."""
        main.setup_logging("WARNING")
        try:
            result = _pool(config).refill(target=size)
        except AutomationError as exc:
            err.print(f"[red]error:[/red] {exc.reason}")
            raise typer.Exit(2) from None
        out.print(f"key pool: {result.found} found, {result.added} added, {result.swept} tombstones deleted")

    @pool_app.command("status")
    def status_cmd(config: ConfigOpt = None) -> None:
        """How many entries the pool lists (taken entries not yet swept count too)."""
        main.setup_logging("WARNING")
        try:
            pool = _pool(config)
            out.print(f"key pool: {pool.count()} entries (target {pool.size})")
        except AutomationError as exc:
            err.print(f"[red]error:[/red] {exc.reason}")
            raise typer.Exit(2) from None
