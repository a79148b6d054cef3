"""Output of `mailplane plan node.add NODE` and of node.retire's last phases (called by functions/ops/cli_nodes.py)."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from functions._core.model.ports import Ports
from functions.ops import grow
from functions.ops.grow import AddPlan, AddReport

out = Console()
err = Console(stderr=True)


def add(ports: Ports, node: str, *, apply: bool, approve: str | None, undo: bool, force: bool, json_out: bool) -> int:
    """Plan (and with ``apply``, apply) node.add; ``undo`` takes it back. Returns the exit code."""
    if undo:
        mx, tail = grow.undo_add(ports, node)
        out.print(f"undo: MX removed in {len(mx.applied)} zone(s), failed {len(mx.failed)}")
        return _tail_result(tail) if not (mx.halted or mx.failed) else 1
    plan = grow.plan_add(ports, node, force=force)
    if json_out and not apply:
        out.print_json(data={**plan.as_json(), "digest": plan.digest, "health": list(plan.health)})
        return 0
    render(plan, ports)
    if not apply:
        return 0 if not (plan.health or plan.provider.refused) else 1
    report = grow.apply_add(ports, plan, approved=approve, progress=_progress)
    return _result(report)


def render(plan: AddPlan, ports: Ports) -> None:
    out.print(Text.assemble(("node.add ", "bold"), (plan.node, "bold cyan"), f"  (plan {plan.digest})"))
    for line in plan.health:
        out.print(Text("    ! " + line, style="red"))
    for line in plan.provider.refused:
        out.print(Text("    ! " + line, style="red"))
    out.print("  1. provider zone (one compare-and-set UPDATE):")
    for line in plan.provider.lines():
        out.print(Text("    " + line, style="yellow"))
    for line in plan.provider.adopted:
        out.print(Text("    = " + line, style="dim"))
    if plan.dane == "adopt":
        out.print(Text(f"    + DANE: cert.renew adopts {plan.node} (its TLSA as it presents it; dane/<node>.json)"))
    elif plan.dane == "owned":
        out.print(Text(f"    = DANE: cert.renew already owns the TLSA of {plan.node}", style="dim"))
    out.print(f"  2. MTA-STS policies with mx: {plan.node} and a new id: {len(plan.policies)} domain(s)")
    gate = " (once every server serves a TLSA matching what the node presents)" if plan.dane else ""
    out.print(f"  3. MX +{plan.node}: {len(plan.mx)} zone(s){gate}")
    for c in plan.mx[:20]:
        out.print(Text(f"    ~ MX {c.zone} +{c.after.values[-1]}", style="yellow"))
    if len(plan.mx) > 20:
        out.print(Text(f"    ... and {len(plan.mx) - 20} more", style="dim"))
    for line in plan.skipped:
        out.print(Text("    = " + line, style="dim"))
    s = ports.settings.nodes
    waves = ", ".join(str(n) for n in s.retire_waves)
    out.print(
        f"Plan: {len(plan.provider.changes)} provider change(s), {len(plan.policies)} policies, {len(plan.mx)} MX "
        f"zone(s), {len(plan.skipped)} skipped. Waves of {waves}, then the rest; error budget {s.retire_error_budget}.",
        style="bold",
    )
    if plan.empty:
        out.print("nothing to do: the node is in service everywhere mailplane manages")


def _progress(phase: str, report: AddReport) -> None:
    out.print(f"{phase}: {report.phases.get(phase, 0)} written and verified, {len(report.failed)} failed so far")


def _result(report: AddReport) -> int:
    for line in report.failed:
        out.print(Text("    " + line, style="red"))
    if report.halted:
        err.print(f"[red]halted:[/red] {report.halted}")
        return 1
    written = ", ".join(f"{k} {v}" for k, v in report.phases.items())
    out.print(f"done: {written}")
    return 0


def tail(ports: Ports, node: str, *, force: bool) -> int:
    """node.retire after its MX phase: policies (after the wait), then `_pmg` and the node's A/AAAA."""
    return _tail_result(grow.retire_tail(ports, node, force=force))


def _tail_result(t: grow.TailReport) -> int:
    if t.waiting:
        out.print(f"next: {t.waiting}; run the same command again then")
        return 0
    return _result(t.report)
