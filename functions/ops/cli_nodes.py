"""`mailplane probe` (the health prober) and `mailplane plan node.retire NODE` (planned retirement of a node).

``register(app)`` adds both commands. ``plan`` also plans an event file (``mailplane plan EVENT_FILE``, delegated to
functions/ops/cli_ops.py), so it extends that command: an already registered ``plan`` is replaced.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from functions._core.model.ports import Ports
from functions._core.platform.config import Settings
from functions._core.platform.errors import AutomationError
from functions.ops import retire
from functions.ops.retire import RetirePlan
from functions.runtime import main

out = Console()
err = Console(stderr=True)
ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="settings file (default: $MAILPLANE_CONFIG)")]
RETIRE = "node.retire"
ADD = "node.add"


def _fail(exc: AutomationError) -> None:
    err.print(f"[red]error:[/red] {exc.reason}")
    raise typer.Exit(2)


def probe(
    config: ConfigOpt = None,
    once: Annotated[bool, typer.Option("--once", help="one round, then exit (counters persist across runs)")] = False,
    interval: Annotated[
        float | None, typer.Option(help="seconds between rounds (default: nodes.probe_interval)")
    ] = None,
    as_user: Annotated[str, typer.Option("--as", help="publisher; $MAILPLANE_AMQP_<USER>_CERT/_KEY or _PASSWORD")] = (
        "monitoring"
    ),
) -> None:
    """Check every PMG node (SMTP banner, API); publish node.down after N failed rounds, node.up after M good ones."""
    from functions.ops.probe import Prober
    from functions.runtime.amqp import Publisher, credential_from_env, params

    main.setup_logging()
    try:
        settings = main.load_settings(config)
        credential = credential_from_env(as_user)
        store = main.build_store(settings.store, settings.store.state_bucket, probe=False)
    except AutomationError as exc:
        _fail(exc)
    pub = Publisher(params(settings.broker, as_user, credential))
    prober = Prober(settings, store, lambda ev: pub.publish_event(settings.broker.exchange, ev, as_user))
    try:
        if once:
            for event in prober.round():
                out.print(f"published {event['type']} {event['subject']} sequence {event['data']['sequence']}")
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            prober.run(settings.nodes.probe_interval if interval is None else interval, stop)
        except KeyboardInterrupt:
            stop.set()
    finally:
        prober.close()
        pub.close()


def plan(
    target: Annotated[str, typer.Argument(help=f"{ADD}, {RETIRE}, or a CloudEvent JSON file to plan")],
    node: Annotated[str | None, typer.Argument(help=f"the node to add or retire (with {ADD} / {RETIRE})")] = None,
    apply: Annotated[bool, typer.Option("--apply", help="apply the plan in waves (needs --yes)")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="confirm --apply / --undo")] = False,
    approve: Annotated[str | None, typer.Option(help="refuse to apply unless the plan's hash is this one")] = None,
    undo: Annotated[
        str | None, typer.Option(help=f"{RETIRE}: restore the zones of a stored run (its undo key); {ADD}: the node")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace a hand-written _pmg / node A that differs")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    config: ConfigOpt = None,
) -> None:
    """The changes EVENT_FILE would make (nothing applied), or `node.add|node.retire NODE` (`--apply --yes`: waves)."""
    main.setup_logging("WARNING")
    if target not in (RETIRE, ADD):
        _plan_event(Path(target), json_out, config)
        return
    if node is None and undo is None:
        err.print(f"[red]error:[/red] {target} needs a NODE")
        raise typer.Exit(2)
    if (apply or undo) and not yes:
        err.print("[red]error:[/red] this changes customer zones: add --yes to confirm")
        raise typer.Exit(2)
    try:
        ports = main.build_ports(main.load_settings(config), probe=False)
        if target == ADD:
            from functions.ops import cli_grow

            code = cli_grow.add(
                ports,
                node or undo or "",
                apply=apply,
                approve=approve,
                undo=undo is not None,
                force=force,
                json_out=json_out,
            )
        else:
            code = _retire(ports, node or "", apply=apply, approve=approve, undo=undo, json_out=json_out, force=force)
    except AutomationError as exc:
        _fail(exc)
    raise typer.Exit(code)


def _retire(
    ports: Ports, node: str, *, apply: bool, approve: str | None, undo: str | None, json_out: bool, force: bool
) -> int:
    if undo is not None:
        restored, kept = retire.undo_retire(ports, undo)
        out.print(f"restored {len(restored)} zone(s); left alone: {len(kept)}")
        for line in kept:
            out.print(Text("    " + line, style="yellow"))
        return 0 if not kept else 1
    plan = retire.plan_retire(ports, node)
    if json_out and not apply:
        out.print_json(data={**plan.as_json(), "digest": plan.digest, "untouched": plan.untouched})
        return 0
    _render_retire(plan, ports.settings)
    if not apply:
        return 0
    report = retire.apply_retire(ports, plan, approved=approve, progress=_progress)
    out.print(f"applied {len(report.applied)} zone(s), failed {len(report.failed)}; undo: --undo {report.undo_key}")
    for line in report.failed:
        out.print(Text("    " + line, style="red"))
    if report.halted:
        err.print(f"[red]halted:[/red] {report.halted}")
        return 1
    from functions.ops import cli_grow

    return cli_grow.tail(ports, plan.node, force=force)


def _render_retire(plan: RetirePlan, settings: Settings) -> None:
    out.print(Text.assemble(("node.retire ", "bold"), (plan.node, "bold cyan"), f"  (plan {plan.digest})"))
    for change in plan.changes:
        out.print(Text("    " + change.line(), style="yellow"))
    for line in plan.skipped:
        out.print(Text("    = " + line, style="dim"))
    waves = ", ".join(str(n) for n in settings.nodes.retire_waves)
    out.print(
        f"Plan: {len(plan.changes)} zone(s) to update, {len(plan.skipped)} skipped, {plan.untouched} without the node. "
        f"Waves of {waves}, then the rest; error budget {settings.nodes.retire_error_budget}.",
        style="bold",
    )
    wait = settings.nodes.retire_policy_after_seconds
    wait = settings.policy.mta_sts_max_age if wait is None else wait
    out.print(
        f"Then (the same command, once no managed MX names the node and {wait} s have passed): every MTA-STS "
        "policy drops the node, then the _pmg SPF and the node's A/AAAA go."
    )
    if any(h.name == plan.node for h in settings.provider.mx_hosts):
        err.print(f"[yellow]note:[/yellow] {plan.node} is still in provider.mx_hosts: domain.created would add it back")


def _progress(number: int, ok: list[str], failed: list[str]) -> None:
    out.print(f"wave {number}: {len(ok)} applied and verified, {len(failed)} failed")


def _plan_event(path: Path, json_out: bool, config: str | None) -> None:
    """`mailplane plan EVENT_FILE`, exactly as functions/ops/cli_ops.py defines it (same output, exit codes)."""
    from functions.ops import cli_ops

    if not path.is_file():
        err.print(f"[red]error:[/red] {path} is not a readable file")
        raise typer.Exit(2)
    cli_ops.plan(path, json_out, config)


def register(app: typer.Typer) -> None:
    """Add `probe` and `plan` to the mailplane app (replacing an earlier `plan`, which this one covers)."""
    app.registered_commands[:] = [c for c in app.registered_commands if _name(c) != "plan"]
    app.command("probe")(probe)
    app.command("plan")(plan)


def _name(info: typer.models.CommandInfo) -> str:
    callback = info.callback
    return info.name or (callback.__name__.replace("_", "-") if callback is not None else "")
