"""Run a simulator over HTTPS on 127.0.0.1 until SIGTERM (or SIGINT), then exit 0.

    python -m sim.serve mailcow --port 8443 --tls-dir DIR [--seed N]
    python -m sim.serve pmg --ports 8006,8016,8026 --tls-dir DIR

Certificates: ``sim.common.ensure_certs(DIR)`` (clients verify with ``DIR/ca.pem``). Credentials come from the
environment only, never argv: SIM_MAILCOW_API_KEY (required), SIM_MAILCOW_API_KEY_RO (optional); SIM_PMG_USER and
SIM_PMG_PASSWORD (required). Port 0 picks a free port; the bound ports are printed as ``<system> <port>`` lines on
stdout, then ``ready``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import FrameType

from sim.common import ensure_certs


class UsageError(Exception):
    """A missing environment variable or a bad argument: exit status 2."""


def _ports(text: str) -> list[int]:
    try:
        ports = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of ports: {text!r}") from None
    if not ports or any(not 0 <= p <= 65535 for p in ports):
        raise argparse.ArgumentTypeError(f"ports must be in 0..65535: {text!r}")
    return ports


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sim.serve", description="Run a simulator on 127.0.0.1.")
    systems = parser.add_subparsers(dest="system", required=True)
    mailcow = systems.add_parser("mailcow", help="the Mailcow API simulator")
    mailcow.add_argument("--port", type=int, required=True)
    mailcow.add_argument("--tls-dir", type=Path, required=True)
    mailcow.add_argument("--seed", type=int, default=0, help="seed of the fault RNG")
    pmg = systems.add_parser("pmg", help="the PMG cluster simulator (one port per node, first = master)")
    pmg.add_argument("--ports", type=_ports, required=True)
    pmg.add_argument("--tls-dir", type=Path, required=True)
    return parser


def _env(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        raise UsageError(f"environment variable {name} is not set")
    return value


def start(args: argparse.Namespace, env: Mapping[str, str]) -> list[ThreadingHTTPServer]:
    """Start the servers asked for by ``args``.

    Raises:
        UsageError: a required environment variable is missing.
        OSError: a port cannot be bound.
        ValueError: the PMG simulator refuses the ports (count) or the host.
    """
    _, cert, key = ensure_certs(args.tls_dir)
    if args.system == "mailcow":
        from sim.mailcow.app import serve_mailcow
        from sim.mailcow.model import MailcowModel

        model = MailcowModel(
            rw_key=_env(env, "SIM_MAILCOW_API_KEY"), ro_key=env.get("SIM_MAILCOW_API_KEY_RO", ""), seed=args.seed
        )
        return [serve_mailcow(model, args.port, (cert, key))]
    from sim.pmg.app import serve_cluster

    user, password = _env(env, "SIM_PMG_USER"), _env(env, "SIM_PMG_PASSWORD")
    return serve_cluster(args.ports, (cert, key), user, password)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Parse, start, announce the ports, wait for SIGTERM/SIGINT, stop. Returns the exit status."""
    args = _parser().parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        servers = start(args, os.environ if env is None else env)
    except (UsageError, OSError, ValueError) as exc:
        print(f"sim.serve: {exc}", file=sys.stderr)
        return 2
    for server in servers:
        print(f"{args.system} {server.server_address[1]}")
    print("ready", flush=True)
    while not stop.wait(0.5):
        pass
    for server in servers:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
