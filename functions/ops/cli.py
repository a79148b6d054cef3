"""The `mailplane` command: worker, publish, invoke, status, demo."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from functions._core.platform.errors import AutomationError, ConfigError
from functions._core.platform.names import normalize_domain
from functions.ops.event_file import load as load_event_file
from functions.ops.render import render_checks
from functions.ops.status import API_LOG_NOTE, as_json, domain_status, tls_reports
from functions.ops.tlsrpt import summary_lines
from functions.runtime import main

app = typer.Typer(help="mailplane: event-driven automation for Mailcow, PMG and DNS.", no_args_is_help=True)
out = Console() if sys.stdout.isatty() else Console(width=130)  # pipes and CI logs get full-width tables
err = Console(stderr=True)
ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="settings file (default: $MAILPLANE_CONFIG)")]


def _fail(exc: AutomationError) -> None:
    err.print(f"[red]error:[/red] {exc.reason}")
    raise typer.Exit(2)


@app.command()
def worker(
    config: ConfigOpt = None,
    until_idle: Annotated[bool, typer.Option("--until-idle", help="exit once the queues are drained")] = False,
    pool: Annotated[int, typer.Option(help="handler threads")] = 4,
    metrics_port: Annotated[
        int, typer.Option(envvar="MAILPLANE_METRICS_PORT", help="Prometheus metrics on BIND:PORT (0: off)")
    ] = 0,
    metrics_bind: Annotated[
        str, typer.Option(envvar="MAILPLANE_METRICS_BIND", help="metrics bind address (0.0.0.0 in a pod)")
    ] = "127.0.0.1",
) -> None:
    """Consume the work queues and run the functions."""
    from functions.runtime.consumer import Worker
    from functions.runtime.metrics import Metrics

    main.setup_logging()
    metrics = Metrics()
    try:
        w = Worker(main.build_ports(main.load_settings(config)), pool_size=pool, until_idle=until_idle, metrics=metrics)
    except AutomationError as exc:
        _fail(exc)
    if metrics_port:
        metrics.serve(metrics_port, metrics_bind)
    raise typer.Exit(w.run())


@app.command()
def publish(
    file: Path,
    as_user: Annotated[str, typer.Option("--as", help="publisher (RabbitMQ user): billing, scheduler, monitoring")],
    config: ConfigOpt = None,
) -> None:
    """Publish a CloudEvent file as a publisher: its client certificate from $MAILPLANE_AMQP_<USER>_CERT and _KEY,
    or its password from $MAILPLANE_AMQP_<USER>_PASSWORD.

    The file is validated as the worker will validate it (an invalid event is refused here, nothing is published)
    and its bytes are published unchanged.
    """
    from functions.runtime.amqp import Publisher, credential_from_env, event_properties, params

    try:
        loaded = load_event_file(file)
        settings = main.load_settings(config)
        credential = credential_from_env(as_user)
    except AutomationError as exc:
        _fail(exc)
    event = loaded.event
    pub = Publisher(params(settings.broker, as_user, credential))
    try:
        pub.publish(settings.broker.exchange, event.type, loaded.body, event_properties(event.raw, as_user))
    finally:
        pub.close()
    out.print(f"published {event.type} {event.id} as {as_user}")


@app.command()
def invoke(
    function: str,
    event_file: Annotated[Path, typer.Option("--event", "-e", help="CloudEvent JSON file")],
    as_user: Annotated[str | None, typer.Option("--as", help="publisher identity (default: allowed one)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan per system, apply nothing")] = False,
    config: ConfigOpt = None,
) -> None:
    """Run one function in-process against the configured systems (like `sam local invoke`)."""
    from functions import ROUTES
    from functions._core.platform.envelope import parse
    from functions.runtime import dispatch

    main.setup_logging("WARNING")
    try:
        loaded = load_event_file(event_file)
        settings = main.load_settings(config)
        body, event = loaded.body, loaded.event
        route = next((r for t, r in ROUTES.items() if function in (t, r.name)), None)
        if route is None:
            raise ConfigError(f"unknown function {function!r}; known: {', '.join(r.name for r in ROUTES.values())}")
        publisher = as_user or settings.broker.publishers.get(event.type, ("",))[0]
        ports = main.build_ports(settings)
        if dry_run:
            from functions.ops.plan import dry_run_for

            out.print_json(data=dry_run_for(event.type)(parse(body, publisher=publisher), ports))
            return
    except AutomationError as exc:
        _fail(exc)
    result = dispatch.run(body, publisher, ports)
    if result.outcome is not None:
        out.print_json(data=result.outcome.to_json())
    else:
        err.print(f"[red]{result.verdict}:[/red] {result.reason}")
        raise typer.Exit(1)


@app.command()
def status(
    domain: str,
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    config: ConfigOpt = None,
) -> None:
    """Desired vs actual for DOMAIN on each system and each authoritative server (exit 1 unless provisioned)."""
    main.setup_logging("WARNING")
    try:
        name = normalize_domain(domain)
        ports = main.build_ports(main.load_settings(config), probe=False)
        overall, checks = domain_status(name, ports)
        reports = tls_reports(name, ports)
    except AutomationError as exc:
        _fail(exc)
    if json_out:
        out.print_json(data=as_json(name, overall, checks, reports))
    else:
        out.print(render_checks(name, overall, checks))
        out.print("TLS reports (RFC 8460, senders' view; not a check):", highlight=False)
        for line in summary_lines(reports):
            out.print(line, markup=False, highlight=False)
        out.print(API_LOG_NOTE, style="dim")
    raise typer.Exit(0 if overall == "provisioned" else 1)


@app.command()
def demo(config: ConfigOpt = None) -> None:
    """On the local stack: provision sample domains through the real worker and show the result."""
    from functions.ops.demo import run_demo

    main.setup_logging("WARNING", outcomes=False)  # the demo shows its own progress and tables
    try:
        code = run_demo(main.load_settings(config), out)
    except AutomationError as exc:
        _fail(exc)
    raise typer.Exit(code)


def _register_subcommands() -> None:
    from functions.ops import (
        cli_adopt,
        cli_dane,
        cli_dlq,
        cli_health,
        cli_keypool,
        cli_nodes,
        cli_ops,
        cli_pmg,
        cli_rotate,
        cli_sweep,
        cli_tlsrpt,
        cli_web6,
    )

    for module in (
        cli_ops,
        cli_nodes,
        cli_rotate,
        cli_dane,
        cli_dlq,
        cli_health,
        cli_adopt,
        cli_pmg,
        cli_sweep,
        cli_keypool,
        cli_tlsrpt,
        cli_web6,
    ):  # cli_nodes extends cli_ops
        module.register(app)


_register_subcommands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
