"""`mailplane demo`: on the local stack, publish sample domain.created events through RabbitMQ as billing, run the
real worker until the queues are drained, then show every domain's status, one real message to and one from the
first provisioned domain (where each went, the receiver's Authentication-Results) and where the invalid event went.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pika
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from functions._core.model import state
from functions._core.model.mailset import customer_lines, delegated, desired_records
from functions._core.platform.config import Settings
from functions._core.platform.errors import ConfigError
from functions._core.platform.names import normalize_domain
from functions.ops import mailcheck
from functions.ops.render import render_summary
from functions.ops.status import domain_status
from functions.runtime import main
from functions.runtime.amqp import Credential, Publisher, credential_from_env, params
from functions.runtime.consumer import Worker

REPO = Path(__file__).resolve().parents[2]
SAMPLES = [
    "domain.created.json",
    "domain.created.idn.json",
    "domain.created.external.json",
    "domain.created.delegate.json",  # hosted elsewhere, DKIM delegated to us by CNAME
]
INVALID = "domain-semicolon.json"
STATUS_SETTLE_SECONDS = 20  # the cluster sync (2 s on the stack) and idle smtpd re-opening a rebuilt map (~10 s)


def _login(user: str) -> Credential:
    try:
        return credential_from_env(user)
    except ConfigError as exc:
        raise SystemExit(f"demo: {exc.reason}; source the local stack's env file (infra/local/up prints it)") from None


def _events() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    good = [json.loads((REPO / "events" / name).read_text()) for name in SAMPLES]
    bad = json.loads((REPO / "events" / "invalid" / INVALID).read_text())
    return good, bad


def _parked(settings: Settings) -> list[tuple[str, str]]:
    """Peek at the parked queue as the operator: (event id, reason); messages stay parked."""
    conn = pika.BlockingConnection(params(settings.broker, "operator", _login("operator")))
    ch, seen = conn.channel(), []
    while True:
        method, props, _ = ch.basic_get(settings.broker.parked_queue, auto_ack=False)
        if method is None:
            break
        seen.append((props.message_id or "?", str((props.headers or {}).get("x-mailplane-reason", ""))))
    conn.close()  # unacked messages return to the queue
    return seen


def with_mta_sts(settings: Settings, env: Mapping[str, str]) -> Settings:
    """``settings`` with MTA-STS served when the local stack has its ACME CA and web6 (infra/local/up's env.sh):
    Pebble, web6's certificate directory, the stack's resolver and the Pebble root as the sender's trust."""
    need = ("MAILPLANE_ACME_DIRECTORY", "MAILPLANE_ACME_CA", "MAILPLANE_ACME_ROOT", "MAILPLANE_WEB6_CERT_DIR")
    if settings.mta_sts.serve or not all(env.get(k) for k in (*need, "MAILPLANE_RESOLVER")):
        return settings
    acme = replace(
        settings.acme,
        directory=env["MAILPLANE_ACME_DIRECTORY"],
        ca_file=env["MAILPLANE_ACME_CA"],
        root_file=env["MAILPLANE_ACME_ROOT"],
    )
    m = replace(
        settings.mta_sts,
        serve=True,
        cert_dir=env["MAILPLANE_WEB6_CERT_DIR"],
        resolver=env["MAILPLANE_RESOLVER"],
        trust_file=env["MAILPLANE_ACME_ROOT"],
    )
    return replace(settings, acme=acme, mta_sts=m)


def run_demo(settings: Settings, out: Console) -> int:
    """Returns 0 when every hosted sample is provisioned, the external one awaits DNS and the invalid one is parked.
    On the local stack the samples' MTA-STS policies are served by web6 (``with_mta_sts``)."""
    settings = with_mta_sts(settings, os.environ)
    good, bad = _events()
    hosted = [normalize_domain(e["subject"]) for e in good if e["data"]["dns"]["hosted"]]
    external = [normalize_domain(e["subject"]) for e in good if not e["data"]["dns"]["hosted"]]
    subprocess.run([str(REPO / "infra/local/zone-add"), *hosted], check=True, capture_output=True)
    out.print(f"[bold]1.[/bold] customer zones on the local BIND: {', '.join(hosted)}")

    publisher = Publisher(params(settings.broker, "billing", _login("billing")))
    for event in [*good, bad["event"]]:
        publisher.publish_event(settings.broker.exchange, event, "billing")
    publisher.close()
    out.print(f"[bold]2.[/bold] published {len(good) + 1} domain.created events as billing (one of them invalid)")

    worker = Worker(main.build_ports(settings), until_idle=True)
    with Progress(console=out, transient=True) as progress:
        task = progress.add_task("worker", total=len(good) + 1)
        worker.on_result = lambda r: progress.update(
            task, advance=1, description=f"{r.event.subject if r.event else 'invalid event'}: {r.verdict}"
        )
        worker.run()
    out.print(f"[bold]3.[/bold] worker drained the queues: {worker.counts}")

    ports = main.build_ports(settings, probe=False)
    expected = {d: "provisioned" if d in hosted else "awaiting_dns" for d in hosted + external}
    # a domain hosted elsewhere passes no acceptance gate: its relay domain reaches the other nodes at the next
    # cluster sync (and their idle smtpd re-open the map), so a status read at once can see a node refuse it
    deadline = time.monotonic() + STATUS_SETTLE_SECONDS
    while True:
        rows = [(d, *domain_status(d, ports)) for d in expected]
        ok = all(overall == expected[d] for d, overall, _ in rows)
        if ok or time.monotonic() >= deadline:
            break
        time.sleep(1)
    out.print(render_summary(rows))
    for domain in external:
        st = state.load(ports.state, domain)
        cur, deleg = st.current, delegated(st.request)
        want = desired_records(domain, settings, cur.selector, cur.public_b64, delegated=deleg) if cur else {}
        lines = customer_lines(want)
        out.print(f"[yellow]{domain}[/yellow] is hosted elsewhere (awaiting_dns); the customer must publish:")
        out.print("\n".join(lines), soft_wrap=True, highlight=False)
    nodes = tuple(h.name for h in settings.provider.mx_hosts)
    try:
        lines = mailcheck.roundtrip(os.environ, hosted[0], nodes)
        out.print(f"[bold]4.[/bold] real mail for {hosted[0]} (Postfix on the PMG nodes and moo, rspamd):")
        out.print("\n".join(lines), soft_wrap=True, highlight=False)
    except (RuntimeError, OSError, KeyError) as exc:
        out.print(f"[red]4. real mail for {hosted[0]}: {exc}[/red]")
        ok = False
    parked = _parked(settings)
    table = Table(title=f"parked queue {settings.broker.parked_queue}")
    table.add_column("event id")
    table.add_column("reason")
    for row in dict.fromkeys(parked):  # the same sample parked by earlier demo runs is shown once
        table.add_row(*row)
    out.print(table)
    ok &= any(mid == bad["event"]["id"] for mid, _ in parked)
    out.print("[green]demo OK[/green]" if ok else "[red]demo: something is not as expected (see above)[/red]")
    return 0 if ok else 1
