"""`mailplane renew-due` (publish cert.renew for the node that is due) and `mailplane dane-status` (per node: the
certificate presented over STARTTLS, the TLSA each authoritative server serves, whether a DANE client accepts it)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import pika.exceptions
import typer
from rich.console import Console
from rich.table import Table

from functions._core.model import dane
from functions._core.platform.errors import AutomationError
from functions.ops import renew_due
from functions.ops.cli_rotate import _now, _publisher
from functions.runtime import main

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="settings file (default: $MAILPLANE_CONFIG)")]


def register(app: typer.Typer) -> None:
    out, err = Console(), Console(stderr=True)

    @app.command("renew-due")
    def renew_due_cmd(
        config: ConfigOpt = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="list what is due; publish nothing")] = False,
        as_user: Annotated[str, typer.Option("--as", help="publisher")] = "scheduler",
        now: Annotated[str | None, typer.Option("--now", help="evaluate as of this ISO time (what-if)")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print the selection as JSON")] = False,
    ) -> None:
        """Publish cert.renew: nudges for a run in progress, else one new renewal/rollover (one node at a time)."""
        main.setup_logging("WARNING")
        when = _now(now)
        try:
            settings = main.load_settings(config)
            store = main.build_store(settings.store, settings.store.state_bucket, probe=False)
            publisher = None if dry_run else _publisher(settings, as_user)
            publish = None if publisher is None else publisher.bind(settings.broker.exchange, as_user)
            try:
                chosen = renew_due.run(store, settings, when, publish)
            finally:
                if publisher is not None:
                    publisher.close()
        except AutomationError as exc:
            err.print(f"[red]error:[/red] {exc.reason}")
            raise typer.Exit(2) from None
        except pika.exceptions.AMQPError as exc:
            err.print(f"[red]error:[/red] broker: {type(exc).__name__}")
            raise typer.Exit(3) from None
        if as_json:
            out.print_json(renew_due.as_json(chosen))
        else:
            table = Table(title=f"{len(chosen)} cert.renew {'due (dry run)' if dry_run else 'published'}")
            for col in ("node", "reason", "phase"):
                table.add_column(col)
            for d in chosen:
                table.add_row(d.node, d.reason, d.phase)
            out.print(table)

    @app.command("dane-status")
    def dane_status_cmd(
        config: ConfigOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    ) -> None:
        """Per PMG node: STARTTLS certificate (subject, expiry, SPKI SHA-256), TLSA per authoritative server, DANE
        verdict. Exit 1 when a DANE client would refuse any node."""
        main.setup_logging("WARNING")
        try:
            views = dane.view(main.build_ports(main.load_settings(config), probe=False))
        except AutomationError as exc:
            err.print(f"[red]error:[/red] {exc.reason}")
            raise typer.Exit(2) from None
        if as_json:
            out.print_json(json.dumps([_row(v) for v in views]))
        else:
            table = Table(title="DANE (TLSA 3 1 1) per MX host")
            for col in (
                "node",
                "presented (subject, until, SPKI sha256)",
                "TLSA per authoritative server",
                "DANE",
                "phase",
            ):
                table.add_column(col)
            for v in views:
                until = v.not_after.strftime("%Y-%m-%d") if v.not_after else "-"
                served = "\n".join(
                    f"{s}: {', '.join(h[:16] + ('*' if h == v.spki else '') for h in hs) or '(none)'}"
                    for s, hs in v.tlsa.items()
                )
                ok = "[green]accepted[/green]" if v.dane_ok else "[red]refused[/red]"
                ok += f"\nresolver: {v.validation}" if v.validation else ""
                table.add_row(v.host, f"{v.subject or '(no STARTTLS)'}\n{until}\n{v.spki}", served, ok, v.phase)
            out.print(table)
        raise typer.Exit(0 if all(v.dane_ok for v in views) else 1)


def _row(v: dane.NodeView) -> dict[str, object]:
    until = v.not_after.astimezone(dt.UTC).isoformat() if v.not_after else None
    return {
        "node": v.node,
        "host": v.host,
        "subject": v.subject,
        "not_after": until,
        "spki_sha256": v.spki,
        "tlsa": v.tlsa,
        "dane_ok": v.dane_ok,
        "validation": v.validation,
        "phase": v.phase,
    }
