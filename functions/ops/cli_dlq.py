"""`mailplane dlq`: list, show and replay parked events (as the operator)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from functions._core.platform.errors import ConfigError
from functions.ops import dlq
from functions.runtime import main
from functions.runtime.amqp import Credential, credential_from_env

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="settings file (default: $MAILPLANE_CONFIG)")]
UserOpt = Annotated[str, typer.Option("--as", help="RabbitMQ user; $MAILPLANE_AMQP_<USER>_CERT/_KEY or _PASSWORD")]
FilterOpt = Annotated[str | None, typer.Option("--filter", help="substring of id, type, subject, reason or error")]


def _password(user: str) -> Credential:
    try:
        return credential_from_env(user)
    except ConfigError as exc:
        raise typer.BadParameter(exc.reason) from None


def register(app: typer.Typer) -> None:
    sub = typer.Typer(help="Inspect and replay parked events.", no_args_is_help=True)
    out = Console()

    @sub.command("list")
    def list_(as_user: UserOpt = "operator", text: FilterOpt = None, config: ConfigOpt = None) -> None:
        """List parked events (they stay parked)."""
        with dlq.parked_messages(main.load_settings(config), _password(as_user), as_user) as (_, items):
            rows = [p for p in items if p.matches(text)]
        table = Table(title=f"{len(rows)} parked event(s)")
        for col in ("id", "type", "subject", "attempt", "error", "reason", "parked at"):
            table.add_column(col, overflow="fold")
        for p in rows:
            table.add_row(p.message_id, p.type, p.subject, str(p.attempt), p.error, p.reason, p.parked_at)
        out.print(table)

    @sub.command()
    def show(event_id: str, as_user: UserOpt = "operator", config: ConfigOpt = None) -> None:
        """Show one parked event: the parking headers and the original event."""
        with dlq.parked_messages(main.load_settings(config), _password(as_user), as_user) as (_, items):
            found = [p for p in items if p.message_id == event_id]
        if not found:
            out.print(f"no parked event with id {event_id}")
            raise typer.Exit(1)
        out.print_json(data={**found[0].summary(), "event": found[0].body.decode("utf-8", "replace")})

    @sub.command()
    def replay(
        as_user: UserOpt = "operator",
        text: FilterOpt = None,
        event_id: Annotated[list[str] | None, typer.Option("--id", help="replay only these ids")] = None,
        config: ConfigOpt = None,
    ) -> None:
        """Re-inject matching parked events at attempt 0 (removes them from the parked queue)."""
        done = dlq.replay(main.load_settings(config), _password(as_user), as_user, text=text, ids=set(event_id or []))
        out.print(f"replayed {len(done)} event(s): {', '.join(p.message_id for p in done) or '-'}")

    app.add_typer(sub, name="dlq")
