"""`mailplane health`: collect the platform health (functions/ops/health.py) once, or every N seconds and serve it.

Why a collector and not scrape-time work: one collection reads every domain's state object (like the hourly
`rotate-due`), so it must run on its own schedule, never once per scrape and per Prometheus replica. On a systemd
host a timer runs it every few minutes and it writes node_exporter's textfile directory (``--textfile``); in
Kubernetes, where a CronJob cannot be scraped, the same command runs as a small Deployment with ``--every`` and
serves the last run on ``--metrics-bind``:``--metrics-port``.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from prometheus_client import CollectorRegistry, generate_latest, start_http_server, write_to_textfile

from functions._core.model.ports import Ports
from functions._core.platform.config import Secret
from functions._core.platform.errors import AutomationError
from functions.ops import health, health_probe
from functions.runtime import main

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="settings file (default: $MAILPLANE_CONFIG)")]
BIND_ENV = "MAILPLANE_METRICS_BIND"


def sources(ports: Ports, user: str, password: Secret, stuck_after: dt.timedelta) -> dict[str, health.Source]:
    """Every source of one run, by the name in ``mailplane_health_source_up``."""
    settings, now = ports.settings, ports.clock
    return {
        "domains": lambda s: health.domains(s, ports, now(), stuck_after=stuck_after),
        "mx_nodes": lambda s: health.mx_nodes(s, ports),
        "drift": lambda s: health.drift_report(s, ports),
        "store": lambda s: health.store_objects(s, ports),
        "broker": lambda s: health_probe.broker(s, settings, user, password, now()),
        "certificates": lambda s: health_probe.certificates(s, settings, now()),
        **({"dane": lambda s: health.dane_nodes(s, ports)} if settings.dane.enabled else {}),
    }


def _password(user: str) -> Secret:
    var = f"MAILPLANE_AMQP_{user.upper()}_PASSWORD"
    if var not in os.environ:
        raise typer.BadParameter(f"environment variable {var} is not set")
    return Secret(os.environ[var])


def register(app: typer.Typer) -> None:
    @app.command("health")
    def health_cmd(
        config: ConfigOpt = None,
        textfile: Annotated[
            Path | None, typer.Option(help="write the metrics to this .prom file (node_exporter textfile collector)")
        ] = None,
        every: Annotated[int, typer.Option(help="collect every N seconds and serve the metrics (0: once)")] = 0,
        metrics_port: Annotated[int, typer.Option(help="with --every: serve /metrics on this port")] = 9465,
        metrics_bind: Annotated[str, typer.Option(envvar=BIND_ENV, help="with --every: bind address")] = "127.0.0.1",
        stuck_after_hours: Annotated[
            float, typer.Option(help="a rotation step past due for longer than this counts as stuck")
        ] = 6.0,
        as_user: Annotated[
            str, typer.Option("--as", help="RabbitMQ user; password from $MAILPLANE_AMQP_<USER>_PASSWORD")
        ] = "operator",
    ) -> None:
        """Platform health as Prometheus metrics: domains, DKIM rotations, MX nodes, certificates, drift, queues."""
        main.setup_logging("WARNING")
        try:
            ports = main.build_ports(main.load_settings(config), probe=False)
        except AutomationError as exc:
            typer.echo(f"error: {exc.reason}", err=True)
            raise typer.Exit(2) from None
        run_sources = sources(ports, as_user, _password(as_user), dt.timedelta(hours=stuck_after_hours))
        collector = health.HealthCollector()
        registry = CollectorRegistry()
        registry.register(collector)
        if every <= 0:
            sink = health.run(run_sources, collector)
            if textfile is not None:
                write_to_textfile(str(textfile), registry)  # written beside, then renamed: never half a file
            else:
                typer.echo(generate_latest(registry).decode(), nl=False)
            down = [labels[0] for labels, v in sink.samples["mailplane_health_source_up"] if not v]
            raise typer.Exit(1 if down else 0)
        _serve(run_sources, collector, registry, every, metrics_bind, metrics_port)


def _serve(
    run_sources: dict[str, health.Source],
    collector: health.HealthCollector,
    registry: CollectorRegistry,
    every: int,
    bind: str,
    port: int,
) -> None:
    """Collect now and every ``every`` seconds until SIGTERM/SIGINT; scrapes read the last run."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    start_http_server(port, addr=bind, registry=registry)
    while not stop.is_set():
        health.run(run_sources, collector)
        stop.wait(every)
