"""`mailplane rotate-due`: publish key.rotate for every domain whose DKIM rotation (or its next step) is due."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any

import pika.exceptions
import typer
from rich.console import Console
from rich.table import Table

from functions._core.model import due_index
from functions._core.platform.config import Settings
from functions._core.platform.errors import AutomationError, ConfigError
from functions.ops import rotate_due
from functions.runtime import main
from functions.runtime.amqp import Credential

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="settings file (default: $MAILPLANE_CONFIG)")]


def _now(text: str | None) -> dt.datetime:
    if text is None:
        return dt.datetime.now(dt.UTC)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"--now {text!r} is not an ISO 8601 time") from None
    if when.utcoffset() is None:
        raise typer.BadParameter("--now needs a UTC offset, e.g. 2027-05-26T03:00:00+00:00")
    return when


class _Publishing:
    """A confirming publisher as ``user`` (the scheduler by default)."""

    def __init__(self, settings: Settings, user: str, credential: Credential) -> None:
        from functions.runtime.amqp import Publisher, params

        self._pub = Publisher(params(settings.broker, user, credential))

    def bind(self, exchange: str, user: str) -> Callable[[dict[str, Any]], None]:
        return lambda event: self._pub.publish_event(exchange, event, user)

    def close(self) -> None:
        self._pub.close()


def _publisher(settings: Settings, user: str) -> _Publishing:
    from functions.runtime.amqp import credential_from_env

    try:
        return _Publishing(settings, user, credential_from_env(user))
    except ConfigError as exc:
        raise typer.BadParameter(exc.reason) from None


def register(app: typer.Typer) -> None:
    out, err = Console(), Console(stderr=True)

    @app.command("rotate-due")
    def rotate_due_cmd(
        config: ConfigOpt = None,
        max_start: Annotated[
            int | None, typer.Option("--max", help="rotations to start in this run (default: dkim.rotate_max_per_run)")
        ] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="list what is due; publish nothing")] = False,
        as_user: Annotated[
            str, typer.Option("--as", help="publisher; $MAILPLANE_AMQP_<USER>_CERT/_KEY or _PASSWORD")
        ] = "scheduler",
        now: Annotated[str | None, typer.Option("--now", help="evaluate as of this ISO time (what-if)")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
        rebuild_index: Annotated[
            bool, typer.Option("--rebuild-index", help="recreate the due index from every state first")
        ] = False,
        full_scan: Annotated[
            bool, typer.Option("--full-scan", help="read every state instead of the due index (slow at scale)")
        ] = False,
    ) -> None:
        """Publish key.rotate for each domain that is due: nudges for rotations in progress, new rotations capped."""
        main.setup_logging("WARNING")
        when = _now(now)
        try:
            settings = main.load_settings(config)
            store = main.build_store(settings.store, settings.store.state_bucket, probe=False)
            publisher = None if dry_run else _publisher(settings, as_user)
            publish = None if publisher is None else publisher.bind(settings.broker.exchange, as_user)
            try:
                if rebuild_index:
                    indexed, removed = due_index.rebuild(store, settings.dkim, when)
                    err.print(f"due index rebuilt: {indexed} domains indexed, {removed} stale entries removed")
                report = rotate_due.run(store, settings, when, publish, max_start=max_start, full_scan=full_scan)
            finally:
                if publisher is not None:
                    publisher.close()
        except AutomationError as exc:
            err.print(f"[red]error:[/red] {exc.reason}")
            raise typer.Exit(2) from None
        except pika.exceptions.AMQPError as exc:  # the next run publishes what this one could not
            err.print(f"[red]error:[/red] broker: {type(exc).__name__}")
            raise typer.Exit(3) from None
        if as_json:
            out.print_json(rotate_due.as_json(report))
        else:
            _table(out, report, dry_run)
        raise typer.Exit(1 if report.errors else 0)


def _table(out: Console, report: rotate_due.Report, dry_run: bool) -> None:
    verb = "due (dry run, nothing published)" if dry_run else "published"
    table = Table(
        title=f"{len(report.due)} key.rotate {verb}; {report.scanned} domains read, {report.deferred} deferred"
    )
    for col in ("domain", "kind", "due since"):
        table.add_column(col)
    for d in report.due:
        table.add_row(d.domain, d.kind, d.at.isoformat(timespec="seconds"))
    out.print(table)
    for line in report.errors:
        out.print(f"[red]unreadable state:[/red] {line}")
