"""Operator command `adopt`; ``register(app)`` adds it to the `mailplane` app."""

from __future__ import annotations

import datetime as dt
import os
from typing import Annotated, Any

import typer
from rich.console import Console

from functions._core.model import adoption
from functions._core.model.ports import Ports
from functions._core.platform.config import Secret, Settings
from functions._core.platform.errors import AutomationError, ConfigError
from functions._core.platform.names import normalize_domain
from functions.ops import adopt as adopt_mod
from functions.runtime import main

out = Console()
err = Console(stderr=True)
ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="settings file (default: $MAILPLANE_CONFIG)")]


def _publisher(settings: Settings, user: str) -> Any:
    from functions.runtime.amqp import Publisher, params

    var = f"MAILPLANE_AMQP_{user.upper()}_PASSWORD"
    if var not in os.environ:
        raise ConfigError(f"environment variable {var} is not set")
    return Publisher(params(settings.broker, user, Secret(os.environ[var])))


def _publish(settings: Settings, user: str, events: list[dict[str, Any]]) -> None:
    if not events:
        return
    pub = _publisher(settings, user)
    try:
        for event in events:
            pub.publish_event(settings.broker.exchange, event, user)
            out.print(f"published {event['type']} {event['id']} as {user}")
    finally:
        pub.close()


def _rotate(settings: Settings, ports: Ports, domains: list[str], user: str, wait: float) -> list[str]:
    """Publish the first key.rotate of each adopted domain (waiting up to ``wait`` s for the worker to adopt it);
    returns the domains that were not adopted in time."""
    now, events, late = dt.datetime.now(dt.UTC), [], []
    for domain in domains:
        selector = adopt_mod.wait_adopted(ports, domain, wait)
        if selector is None:
            late.append(domain)
        else:
            events.append(adopt_mod.rotate_event(domain, selector, now))
    _publish(settings, user, events)
    return late


def adopt(
    domains: Annotated[list[str] | None, typer.Argument(help="domains to adopt (or --all)")] = None,
    all_domains: Annotated[bool, typer.Option("--all", help="every Mailcow/PMG domain without a state")] = False,
    apply: Annotated[bool, typer.Option("--apply", help="publish domain.adopt for each adoptable domain")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="no confirmation for --all --apply")] = False,
    fix: Annotated[list[str] | None, typer.Option("--fix", help="replace this different record (NAME[/TYPE])")] = None,
    customer: Annotated[str | None, typer.Option("--customer", help="billing's customer id")] = None,
    rotate: Annotated[bool, typer.Option("--rotate", help="request the first DKIM rotation at once")] = False,
    as_user: Annotated[str, typer.Option("--as", help="publisher of domain.adopt")] = "operator",
    rotate_as: Annotated[str, typer.Option("--rotate-as", help="publisher of key.rotate")] = "scheduler",
    wait: Annotated[float, typer.Option("--wait", help="seconds --rotate waits for the worker's adoption")] = 120.0,
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    config: ConfigOpt = None,
) -> None:
    """Take over domains configured by hand: print the plan per system and record; --apply publishes domain.adopt.

    Exit 0 when every domain can be adopted (or is managed), 1 when one would be refused, 2 on a usage or
    settings error, 3 when --rotate timed out waiting for an adoption.
    """
    main.setup_logging("WARNING")
    if bool(domains) == all_domains:
        err.print("[red]error:[/red] give DOMAIN... or --all (not both)")
        raise typer.Exit(2)
    try:
        settings = main.load_settings(config)
        ports = main.build_ports(settings, probe=False)
        names = adoption.candidates(ports) if all_domains else [normalize_domain(d) for d in domains or ()]
        found = adopt_mod.plans(names, ports, tuple(fix or ()))
    except AutomationError as exc:
        err.print(f"[red]error:[/red] {exc.reason}")
        raise typer.Exit(2) from None
    if json_out:
        out.print_json(data=adopt_mod.as_json(found))
    else:
        for p in found:
            adopt_mod.render(p, out)
    code = 1 if any(p.refusals for p in found) else 0
    todo = [p for p in found if not p.managed and not p.refusals]
    try:
        if apply and todo:
            if all_domains and not yes and not typer.confirm(f"adopt {len(todo)} domain(s)?"):
                raise typer.Exit(code)
            events = [adopt_mod.adopt_event(p.domain, customer_id=customer, fix=tuple(fix or ())) for p in todo]
            _publish(settings, as_user, events)
        if rotate:
            targets = [p.domain for p in todo] if apply else [p.domain for p in found if p.managed]
            late = _rotate(settings, ports, targets, rotate_as, wait if apply else 0.0)
            for domain in late:
                err.print(f"[yellow]{domain}: not adopted (yet): no key.rotate published; run adopt --rotate again[/]")
            code = 3 if late and code == 0 else code
    except AutomationError as exc:
        err.print(f"[red]error:[/red] {exc.reason}")
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add `adopt` to the app."""
    app.command("adopt")(adopt)
