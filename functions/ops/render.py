"""Rich tables for the operator commands: one domain's checks, and the one-line-per-domain summary."""

from __future__ import annotations

from rich.table import Table

from functions.ops.status import Check


def render_checks(domain: str, overall: str, checks: list[Check]) -> Table:
    colour = {"provisioned": "green", "awaiting_dns": "yellow"}.get(overall, "red")
    table = Table(title=f"{domain}: [{colour}]{overall}[/{colour}]")
    for col, width in (("system", 7), ("where", 15), ("item", 34), ("want", 28), ("have", 28)):
        table.add_column(col, no_wrap=True, overflow="ellipsis", max_width=width)
    table.add_column("ok", no_wrap=True)
    for c in checks:
        table.add_row(c.system, c.where, c.item, c.want, c.have, "[green]✓[/green]" if c.ok else "[red]✗[/red]")
    return table


def render_summary(rows: list[tuple[str, str, list[Check]]]) -> Table:
    """One line per domain: per system, checks passed / checks made."""
    table = Table(title="status per domain and system (details: mailplane status DOMAIN)")
    systems = ["mailcow", "pmg", "dns", "store"]
    systems += ["web"] if any(c.system == "web" for _, _, checks in rows for c in checks) else []  # MTA-STS served
    for col in ("domain", *systems, "status"):
        table.add_column(col, no_wrap=True)
    for domain, overall, checks in rows:
        cells = []
        for system in systems:
            mine = [c for c in checks if c.system == system]
            ok = sum(c.ok for c in mine)
            mark = "[green]✓[/green]" if ok == len(mine) else "[red]✗[/red]"
            servers = len({c.where for c in mine}) if system == "dns" else 0
            where = f" on {servers} server(s)" if servers and mine[0].where != "public" else ""
            cells.append(f"{ok}/{len(mine)}{where} {mark}")
        colour = {"provisioned": "green", "awaiting_dns": "yellow"}.get(overall, "red")
        table.add_row(domain, *cells, f"[{colour}]{overall}[/{colour}]")
    return table
