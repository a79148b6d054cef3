"""Run a simulator over HTTPS on 127.0.0.1 until SIGTERM (or SIGINT), then exit 0.

    python -m sim.serve mailcow --port 8443 --tls-dir DIR [--seed N]
    python -m sim.serve pmg --ports 8006,8016,8026 --tls-dir DIR [--smtp 127.0.1.1:25,...] [--sync-interval S]
        [--auth-failure-delay S] [--network-write-delay S] [--cert cn-only|ca-signed]

PMG: ``--cert cn-only`` (default) serves each node PMG's stock certificate (self-signed, CN=<node>, no SAN, in
DIR/pmg-tls; pin it by fingerprint); ``ca-signed`` serves the shared CA-signed certificate (clients verify with
DIR/ca.pem). ``--smtp`` serves each node's SMTP (postfix's answers from its effective maps) on host:port.

Logging: one line on stderr before anything else (pid, arguments without secrets), a line per listener, the reason
of any failure to start, every uncaught exception (any thread) and the signal that stopped it; faulthandler dumps
the stacks of a fatal crash.

Certificates: ``sim.common.ensure_certs(DIR)`` (clients verify with ``DIR/ca.pem``). Credentials come from the
environment only, never argv: SIM_MAILCOW_API_KEY (required), SIM_MAILCOW_API_KEY_RO (optional); SIM_PMG_USER and
SIM_PMG_PASSWORD (required). Port 0 picks a free port; the bound ports are printed as ``<system> <port>`` lines on
stdout (``pmg-smtp <port>`` for the SMTP listeners), then ``ready``.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

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
    mailcow.add_argument("--postfix-dir", type=Path, help="moo's real Postfix under DIR (sim.mailcow.mail)")
    mailcow.add_argument("--mail-address", default="127.0.2.1", help="moo's address (ports 25 and 587)")
    mailcow.add_argument("--mail-hostname", default="moo.faster.test")
    mailcow.add_argument("--milter", default="127.0.2.1:11332", help="rspamd's milter (DKIM signing)")
    mailcow.add_argument("--fallback-relayhost", default="", help="moo's main.cf relayhost (Mailcow's extra.cf)")
    mailcow.add_argument("--redis", type=_addresses, default=[("127.0.2.1", 6379)], help="rspamd's Redis")
    pmg = systems.add_parser("pmg", help="the PMG cluster simulator (one port per node, first = master)")
    pmg.add_argument("--ports", type=_ports, required=True)
    pmg.add_argument("--tls-dir", type=Path, required=True)
    pmg.add_argument("--smtp", type=_addresses, default=[], help="host:port per node for its SMTP service")
    pmg.add_argument("--sync-interval", type=float, default=3.0, help="seconds between cluster syncs (real: 120)")
    pmg.add_argument("--auth-failure-delay", type=float, default=3.0, help="seconds before a 401 (real: 3)")
    pmg.add_argument("--network-write-delay", type=float, default=2.0, help="trusted-network write (real: ~2)")
    pmg.add_argument("--cert", choices=("cn-only", "ca-signed"), default="cn-only")
    pmg.add_argument(
        "--postfix-dir",
        type=Path,
        help="each node's SMTP is a real Postfix under DIR/<node> on its --smtp address (sim.mta), not the front-end",
    )
    pmg.add_argument("--mail-domain", default="faster.test", help="the nodes' hostnames: <node>.<this>")
    return parser


def _addresses(text: str) -> list[tuple[str, int]]:
    out = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit():
            raise argparse.ArgumentTypeError(f"not host:port: {item!r}")
        out.append((host, int(port)))
    return out


def log(text: str) -> None:
    print(f"sim.serve[{os.getpid()}]: {text}", file=sys.stderr, flush=True)


def _env(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        raise UsageError(f"environment variable {name} is not set")
    return value


def start(args: argparse.Namespace, env: Mapping[str, str]) -> list[Any]:
    """Start the servers asked for by ``args`` (HTTP(S) servers, then SMTP servers).

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
        servers: list[Any] = [serve_mailcow(model, args.port, (cert, key))]
        if args.postfix_dir is not None:
            from sim.mailcow.mail import MooMail, Redis, moo_instance

            postfix = moo_instance(
                args.postfix_dir, args.mail_address, args.mail_hostname, args.milter, args.fallback_relayhost
            )
            servers.append(MooMail(model, postfix, Redis(*args.redis[0])))
            log(f"moo: smtp on {args.mail_address}:25 and :587: real postfix, {args.postfix_dir}")
        return servers
    return _start_pmg(args, env, (cert, key))


def _start_pmg(args: argparse.Namespace, env: Mapping[str, str], shared: tuple[Path, Path]) -> list[Any]:
    from sim.pmg.app import serve_cluster
    from sim.pmg.model import PmgModel
    from sim.pmg.smtp import serve_smtp
    from sim.pmg.tls import fingerprint, node_certs

    user, password = _env(env, "SIM_PMG_USER"), _env(env, "SIM_PMG_PASSWORD")
    if args.smtp and len(args.smtp) != len(args.ports):
        raise UsageError(f"{len(args.smtp)} SMTP addresses for {len(args.ports)} PMG nodes")
    names = [f"pmg{i}" for i in range(1, len(args.ports) + 1)]
    planes: dict[str, Any] = {}
    if args.postfix_dir is not None:
        from sim.pmg.postfix import node_instance

        for name, (host, port) in zip(names, args.smtp, strict=True):
            planes[name] = node_instance(args.postfix_dir / name, host, f"{name}.{args.mail_domain}", port)
            planes[name].setup()
    model = PmgModel(
        nodes=[(name, "127.0.0.1") for name in names],
        user=user,
        password=password,
        sync_interval=args.sync_interval,
        auth_failure_delay=args.auth_failure_delay,
        network_write_delay=args.network_write_delay,
        dataplanes=planes,
    )
    tls: Any = shared
    if args.cert == "cn-only":
        tls = node_certs(args.tls_dir / "pmg-tls", names)
        for name, (cert, _) in tls.items():
            log(f"{name}: certificate CN={name}, no subjectAltName, sha256 {fingerprint(cert)}")
    servers: list[Any] = serve_cluster(args.ports, tls, user, password, model=model)
    if planes:
        servers.append(_Dataplanes(model))
        for name, (host, port) in zip(names, args.smtp, strict=True):
            log(f"{name}: smtp on {host}:{port}: real postfix, {planes[name].root}")
        return servers
    for name, (host, port) in zip(names, args.smtp, strict=False):
        servers.append(serve_smtp(model, name, host, port))
        log(f"{name}: smtp on {host}:{port}")
    return servers


class _Dataplanes:
    """The nodes' real Postfix instances as one "server": pmgmirror's timer ticks the cluster so that the nodes'
    maps follow the master's without an API request; stopping it stops every instance."""

    def __init__(self, model: Any) -> None:
        self.model, self.node = model, "dataplanes"
        self.server_address = ("postfix", 0)
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="pmgmirror", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.model.tick()

    def shutdown(self) -> None:
        self._stop.set()
        for instance in self.model.dataplanes.values():
            instance.stop()

    def server_close(self) -> None:
        pass


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Parse, start, announce the ports, wait for SIGTERM/SIGINT, stop. Returns the exit status."""
    log(f"starting: {' '.join(sys.argv[1:] if argv is None else argv)}")
    faulthandler.enable()
    threading.excepthook = _thread_crash
    args = _parser().parse_args(argv)
    stop = threading.Event()
    stopped_by: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopped_by.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        servers = start(args, os.environ if env is None else env)
    except (UsageError, OSError, ValueError) as exc:
        log(f"cannot start: {exc}")
        return 2
    for server in servers:  # "<system> <port>" per HTTP(S) server, then "pmg-smtp <port>" per SMTP listener
        kind = f"{args.system}-smtp" if hasattr(server, "node") else args.system
        print(f"{kind} {server.server_address[1]}")
    print("ready", flush=True)
    log(f"ready: {args.system} on {', '.join(str(s.server_address[1]) for s in servers)}")
    while not stop.wait(0.5):
        pass
    log(f"stopping on signal {stopped_by[0] if stopped_by else '?'}")
    for server in servers:
        server.shutdown()
        server.server_close()
    return 0


def _thread_crash(args: threading.ExceptHookArgs) -> None:
    name = args.thread.name if args.thread is not None else "?"
    log(f"uncaught {args.exc_type.__name__} in thread {name}: {args.exc_value}")


if __name__ == "__main__":
    sys.exit(main())
