"""`mailplane pmg fingerprint NODE`; ``register(app)`` adds the `pmg` group to the `mailplane` app."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from functions._core.platform.errors import AutomationError
from functions.ops.fingerprint import api_hostport, find_node, served_fingerprint
from functions.runtime import main

out = Console()
err = Console(stderr=True)
ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="settings file (default: $MAILPLANE_CONFIG)")]
pmg = typer.Typer(help="PMG nodes.", no_args_is_help=True)


@pmg.command()
def fingerprint(
    node: Annotated[str, typer.Argument(help="a node of provider.mx_hosts (pmg1 or pmg1.faster.cz)")],
    config: ConfigOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds for the TLS handshake")] = 10.0,
) -> None:
    """Print the SHA-256 fingerprint of NODE's API certificate, to pin as its api_fingerprint.

    Exit 0 with the fingerprint on stdout, 2 when the node is unknown or gives no TLS answer.
    """
    try:
        host = find_node(main.load_settings(config), node)
    except AutomationError as exc:
        err.print(f"[red]error:[/red] {exc.reason}")
        raise typer.Exit(2) from None
    address = api_hostport(host)
    try:
        served = served_fingerprint(address, timeout)
    except OSError as exc:
        err.print(f"[red]error:[/red] {host.name}: no TLS answer from {address[0]}:{address[1]}: {exc}")
        raise typer.Exit(2) from None
    typer.echo(served)
    pinned = host.api_fingerprint
    if pinned and pinned != served:
        err.print(f"[yellow]warning:[/yellow] {host.name} is pinned to another fingerprint: {pinned}")


def register(app: typer.Typer) -> None:
    app.add_typer(pmg, name="pmg")
