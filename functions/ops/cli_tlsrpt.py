"""`mailplane tls-rpt ingest|summary` (functions/ops/tlsrpt.py) and `mailplane mta-sts enforce`
(functions/ops/enforce.py). Untrusted text (names from reports, file names) is printed without Rich markup."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer

from functions._core.platform.errors import AutomationError
from functions._core.platform.names import normalize_domain
from functions.ops import enforce, tlsrpt
from functions.runtime import main

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="settings file (default: $MAILPLANE_CONFIG)")]
DaysOpt = Annotated[int | None, typer.Option("--days", min=1, max=366, help="days (default: from the settings)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fail(exc: AutomationError) -> None:
    typer.echo(f"error: {exc.reason}", err=True)
    raise typer.Exit(2)


def _domains(raw: list[str]) -> list[str]:
    return [normalize_domain(d) for d in raw]


def ingest_cmd(
    paths: Annotated[list[str], typer.Argument(help="Maildir(s), directories or files of TLS reports")],
    config: ConfigOpt = None,
) -> None:
    """Ingest TLS reports (RFC 8460: mail, .json.gz or .json); one line per file; exit 1 if any was refused."""
    main.setup_logging("WARNING")
    try:
        settings = main.load_settings(config)
        store = main.build_store(settings.store, settings.store.state_bucket, probe=False)
    except AutomationError as exc:
        _fail(exc)
    results = tlsrpt.ingest(paths, store, settings, _now())
    for r in results:
        typer.echo(r.line(), err=r.verdict == "refused")
    count = {v: sum(1 for r in results if r.verdict == v) for v in ("accepted", "duplicate", "refused")}
    typer.echo(f"{len(results)} file(s): " + ", ".join(f"{n} {v}" for v, n in count.items()))
    raise typer.Exit(1 if count["refused"] else 0)


def summary_cmd(
    domains: Annotated[list[str] | None, typer.Argument(help="domains (default: every domain with reports)")] = None,
    days: DaysOpt = None,
    json_out: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Per domain, the last N days (default mta_sts.tlsrpt_summary_days): sessions, failure types, reporters."""
    main.setup_logging("WARNING")
    try:
        settings = main.load_settings(config)
        store = main.build_store(settings.store, settings.store.state_bucket, probe=False)
        n = settings.mta_sts.tlsrpt_summary_days if days is None else days
        found = tlsrpt.summaries(store, _domains(domains or []), _now().date(), n)
    except AutomationError as exc:
        _fail(exc)
    if json_out:
        typer.echo(json.dumps([s.as_json() for s in found], indent=1))
        return
    for s in found:
        typer.echo("\n".join(tlsrpt.summary_lines(s)))
    if not found:
        typer.echo("no TLS reports stored")


def enforce_cmd(
    domains: Annotated[list[str] | None, typer.Argument(help="domains to promote (or --all-clean)")] = None,
    all_clean: Annotated[bool, typer.Option("--all-clean", help="every domain whose reports are clean")] = False,
    days: DaysOpt = None,
    apply: Annotated[bool, typer.Option("--apply", help="promote (needs --yes); default: dry run")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="confirm --apply")] = False,
    force: Annotated[bool, typer.Option("--force", help="promote NAMED domains even if not clean")] = False,
    json_out: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Promote MTA-STS testing -> enforce for domains whose TLS reports are clean for N days (default
    mta_sts.enforce_after_days). Dry run unless --apply --yes; exit 1 if a named domain was not promotable."""
    main.setup_logging("WARNING")
    if bool(domains) == all_clean or (force and all_clean):
        typer.echo("error: name DOMAIN... or --all-clean (and --force only with named domains)", err=True)
        raise typer.Exit(2)
    if apply and not yes:
        typer.echo("error: this changes customer policies and zones: add --yes to confirm", err=True)
        raise typer.Exit(2)
    try:
        ports = main.build_ports(main.load_settings(config), probe=False)
        n = ports.settings.mta_sts.enforce_after_days if days is None else days
        verdicts = enforce.select(ports, _domains(domains or []), n)
        if all_clean:
            verdicts = [v for v in verdicts if v.mode != enforce.ENFORCE or not enforce.plan(ports, v.domain).empty]
        chosen = [v for v in verdicts if enforce.promotable(v, force=force) is None]
        plans = {v.domain: enforce.plan(ports, v.domain) for v in chosen}
    except AutomationError as exc:
        _fail(exc)
    applied = enforce.promote(ports, chosen, budget=ports.settings.nodes.retire_error_budget) if apply else []
    _report(verdicts, plans, applied, force=force, json_out=json_out, dry=not apply)
    refused = [v for v in verdicts if enforce.promotable(v, force=force) is not None]
    raise typer.Exit(1 if any(a.error for a in applied) or (refused and not all_clean) else 0)


def _report(
    verdicts: list[enforce.Verdict],
    plans: dict[str, enforce.Promotion],
    applied: list[enforce.Applied],
    *,
    force: bool,
    json_out: bool,
    dry: bool,
) -> None:
    done = {a.domain: a for a in applied}
    if json_out:
        rows = [
            {
                **v.as_json(),
                "promote": v.domain in plans,
                "plan": plans[v.domain].lines() if v.domain in plans else [],
                **({"done": list(done[v.domain].done), "error": done[v.domain].error} if v.domain in done else {}),
            }
            for v in verdicts
        ]
        typer.echo(json.dumps({"dry_run": dry, "domains": rows}, indent=1))
        return
    for v in verdicts:
        why = enforce.promotable(v, force=force)
        if why is not None:
            typer.echo(f"skip     {v.domain} ({v.mode}): {why}")
            continue
        p = plans[v.domain]
        a = done.get(v.domain)
        verb = "promote" if dry else ("FAILED " if a and a.error else "promoted")
        lines = p.lines() if dry or a is None else list(a.done)
        typer.echo(f"{verb:<8} {v.domain} ({v.mode} -> enforce): {v.reason}")
        for line in lines or ["(nothing left to write)"]:
            typer.echo(f"           {line}")
        if a and a.error:
            typer.echo(f"           error: {a.error}")
    if dry:
        typer.echo("dry run: nothing written (--apply --yes promotes)")


def register(app: typer.Typer) -> None:
    rpt = typer.Typer(help="TLS reports (RFC 8460): ingest and summarise.", no_args_is_help=True)
    rpt.command("ingest")(ingest_cmd)
    rpt.command("summary")(summary_cmd)
    app.add_typer(rpt, name="tls-rpt")
    sts = typer.Typer(help="MTA-STS per domain.", no_args_is_help=True)
    sts.command("enforce")(enforce_cmd)
    app.add_typer(sts, name="mta-sts")
