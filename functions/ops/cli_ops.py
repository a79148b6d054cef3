"""Operator commands `plan` and `drift`; ``register(app)`` adds them to the `mailplane` app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from functions._core.platform.errors import AutomationError, ConfigError, PermanentError
from functions._core.platform.names import normalize_domain
from functions.ops import drift as drift_mod
from functions.ops import drift_bulk
from functions.ops import plan as plan_mod
from functions.ops.event_file import load as load_event_file
from functions.runtime import main

out = Console()
err = Console(stderr=True)
ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="settings file (default: $MAILPLANE_CONFIG)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _fail(exc: AutomationError, code: int = 2) -> NoReturn:
    err.print(f"[red]error:[/red] {exc.reason}")
    raise typer.Exit(code)


def plan(
    event_file: Annotated[Path, typer.Argument(help="CloudEvent JSON file", exists=True, dir_okay=False)],
    json_out: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """The exact changes EVENT_FILE would make on each system; nothing is applied.

    Exit 0 with a plan (empty or not), 1 when the event would be refused (the reason is printed), 2 when the
    settings are wrong or a system cannot be read.
    """
    main.setup_logging("WARNING")
    try:
        body = load_event_file(event_file).body  # refused before any system is contacted
        ports = main.build_ports(main.load_settings(config), probe=False)
        result = plan_mod.plan_event(body, ports)
    except ConfigError as exc:
        _fail(exc)
    except PermanentError as exc:
        err.print(f"[red]the event would be refused (parked):[/red] {exc.reason}")
        raise typer.Exit(1) from None
    except AutomationError as exc:
        _fail(exc)
    if json_out:
        out.print_json(data=result.as_json())
    else:
        plan_mod.render(result, out)


def drift(
    domain: Annotated[str | None, typer.Argument(help="one domain (or --all)")] = None,
    all_domains: Annotated[bool, typer.Option("--all", help="every domain with a state object")] = False,
    json_out: JsonOpt = False,
    report: Annotated[
        bool, typer.Option("--report", help="with --all: store the summary for `mailplane health` (reports/drift.json)")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Desired vs actual for managed domains on each system and each authoritative server.

    Exit 0 without drift, 1 when a domain drifted (or its state is incomplete), 2 when a domain could not be checked.
    With --report (the daily timer / CronJob) drift exits 0: the stored report is the result, alerted on by
    `mailplane health` (MailplaneDriftDetected).
    """
    main.setup_logging("WARNING")
    if (domain is None) == (not all_domains) or (report and not all_domains):
        err.print("[red]error:[/red] give a DOMAIN or --all (not both); --report needs --all")
        raise typer.Exit(2)
    try:
        ports = main.build_ports(main.load_settings(config), probe=False)
        names = drift_mod.managed_domains(ports) if all_domains else [normalize_domain(domain)]
    except AutomationError as exc:
        _fail(exc)
    results = drift_mod.run(names, ports, err, runner=drift_bulk.drift_all if all_domains else None)
    if report:
        drift_mod.save_report(ports.state, results, ports.clock())
    if json_out:
        out.print_json(data=drift_mod.as_json(results, all_checks=not all_domains))
    else:
        drift_mod.render(results, out, all_checks=not all_domains)
    code = drift_mod.exit_code(results)
    raise typer.Exit(code if not report or code == 2 else 0)


def register(app: typer.Typer) -> None:
    """Add `plan` and `drift` to the app."""
    app.command("plan")(plan)
    app.command("drift")(drift)
