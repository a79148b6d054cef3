"""The worker subprocess of the chaos suite: the real ``Worker.run()`` plus test-only hooks, set by environment.

    python -m tests.chaos.worker_proc        (cwd = repo root; MAILPLANE_CONFIG and its env references set)

With ``CHAOS_RESPAWN=1`` the process is a tiny supervisor (like systemd's ``Restart=always``): it imports
everything once, then forks the worker; when the worker dies by a signal it forks a new one at once, so a crash
loop costs milliseconds per death, not an interpreter start. SIGTERM is forwarded to the worker and the supervisor
exits with the worker's status. The current worker's pid is kept in ``CHAOS_PIDFILE`` (the harness SIGKILLs it at
random moments).

Hooks (all optional; they live here, never in the runtime):

* ``CHAOS_KILL_RATE`` (float, per event) and ``CHAOS_SEED``: SIGKILL the worker at one of four points, drawn at
  random: ``received`` (nothing done yet), ``before`` (ledger claim and subject lease taken, nothing applied),
  ``after`` (the handler applied its effects; ledger not completed; nothing acked) or ``settled`` (ledger completed,
  outcome published with confirms, delivery not acked). Each kill is noted in ``CHAOS_KILL_LOG`` first.
* ``CHAOS_KILL_SCHEDULE=1`` (with ``CHAOS_RESPAWN``): the worker's lives die for sure at each point in turn, at a
  random pass (3rd to 12th) through it, so that every run hits every point; a life the harness kills from outside
  before its point is reached leaves that point to the next life.
* ``CHAOS_CRASH_SUBJECT``: die every time an event whose body contains this text is received (a crash loop).
* ``CHAOS_SLOW_SUBJECT`` / ``CHAOS_SLOW_SECONDS``: handlers for such subjects sleep that long first (in-flight work).
* ``CHAOS_SPANS``: append ``subject pid start end`` (wall clock) per handler run, to prove that one subject never
  runs twice at once across processes.
* ``CHAOS_POOL``, ``CHAOS_GRACE``: pool size and SIGTERM grace period of the Worker.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from functions import ROUTES, Route
from functions._core.model.ports import Ports
from functions._core.platform.envelope import Envelope
from functions._core.platform.outcome import Outcome
from functions.runtime import dispatch, main
from functions.runtime.consumer import Worker
from functions.runtime.settle import Settler

POINTS = ("received", "before", "after", "settled")
_rng = random.Random()
_lock = threading.Lock()


def _note(path_var: str, line: str) -> None:
    path = os.environ.get(path_var)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())  # one small O_APPEND write: lines of two processes never interleave
        finally:
            os.close(fd)


def _die(point: str, subject: str) -> None:
    shown = subject[:80].encode("unicode_escape").decode("ascii")  # hostile subjects carry newlines: one line each
    _note("CHAOS_KILL_LOG", f"{os.getpid()} {point} {shown}\n")
    os.kill(os.getpid(), signal.SIGKILL)


_passes: dict[str, int] = {}


def _draw(point: str) -> bool:
    """True when the worker should die at ``point``: its scheduled kill, or a draw (the rate is split over the
    four points)."""
    scheduled, _, nth = os.environ.get("CHAOS_KILL_AT", "").partition(":")
    rate = float(os.environ.get("CHAOS_KILL_RATE", "0"))
    with _lock:
        _passes[point] = _passes.get(point, 0) + 1
        if scheduled == point and _passes[point] == int(nth):
            return True
        return rate > 0 and _rng.random() < rate / len(POINTS)


def _wrap_handler(handle: Callable[[Envelope, Ports], Outcome]) -> Callable[[Envelope, Ports], Outcome]:
    slow = os.environ.get("CHAOS_SLOW_SUBJECT", "")
    pause = float(os.environ.get("CHAOS_SLOW_SECONDS", "0"))

    def hooked(event: Envelope, ports: Ports) -> Outcome:
        if _draw("before"):
            _die("before", event.subject)
        start = time.time()
        try:
            if slow and slow in event.subject:
                time.sleep(pause)
            outcome = handle(event, ports)
        finally:
            _note("CHAOS_SPANS", f"{event.subject} {os.getpid()} {start:.6f} {time.time():.6f}\n")
        if _draw("after"):
            _die("after", event.subject)
        return outcome

    return hooked


def install_hooks() -> None:
    for etype, route in list(ROUTES.items()):
        ROUTES[etype] = Route(route.name, _wrap_handler(route.handle))
    run, settle = dispatch.run, Settler.settle
    crash = os.environ.get("CHAOS_CRASH_SUBJECT", "").encode()

    def run_hooked(body: bytes, publisher: str | None, ports: Ports, **kw: Any) -> dispatch.Result:
        if crash and crash in body:
            _die("crash-loop", crash.decode())
        if _draw("received"):
            _die("received", str(dispatch.peek(body, "subject")))
        return run(body, publisher, ports, **kw)

    def settle_hooked(self: Settler, result: dispatch.Result, msg: Any) -> str:
        verdict = settle(self, result, msg)
        if result.verdict == "done" and _draw("settled"):
            _die("settled", result.event.subject if result.event else "-")
        return verdict

    dispatch.run = run_hooked
    Settler.settle = settle_hooked  # type: ignore[method-assign]


def work() -> int:
    """One worker: hooks, ports, Worker.run() (SIGTERM: drain and exit 0)."""
    _rng.seed(f"{os.environ.get('CHAOS_SEED', '0')}/{os.getpid()}")
    install_hooks()
    main.setup_logging(os.environ.get("CHAOS_LOG_LEVEL", "INFO"))
    ports = main.build_ports(main.load_settings())
    worker = Worker(
        ports,
        pool_size=int(os.environ.get("CHAOS_POOL", "4")),
        grace_seconds=float(os.environ.get("CHAOS_GRACE", "30")),
    )
    print(f"worker {os.getpid()} ready", file=sys.stderr, flush=True)
    return worker.run()


def supervise() -> int:
    """Fork workers until one exits by itself (not by a signal); forward SIGTERM/SIGINT to the current one."""
    stopping = False
    child = 0

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    plan = random.Random(os.environ.get("CHAOS_SEED", "0"))
    scheduled = 0  # the next point of the schedule; a life killed from outside first leaves it to the next life
    while True:
        os.environ.pop("CHAOS_KILL_AT", None)
        point = POINTS[scheduled] if os.environ.get("CHAOS_KILL_SCHEDULE") == "1" and scheduled < len(POINTS) else ""
        if point:
            os.environ["CHAOS_KILL_AT"] = f"{point}:{plan.randint(3, 12)}"
        child = os.fork()
        if child == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = work()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _note("CHAOS_PIDS", f"{child}\n")
        pidfile = os.environ.get("CHAOS_PIDFILE")
        if pidfile:
            with open(pidfile + ".tmp", "w", encoding="utf-8") as f:
                f.write(str(child))
            os.replace(pidfile + ".tmp", pidfile)
        status = _wait(child)
        if os.WIFSIGNALED(status) and not stopping:
            _note("CHAOS_DEATHS", f"{child} {os.WTERMSIG(status)}\n")
            if point and _died_at(child, point):
                scheduled += 1
            continue
        return os.waitstatus_to_exitcode(status) if not os.WIFSIGNALED(status) else 128 + os.WTERMSIG(status)


def _died_at(pid: int, point: str) -> bool:
    """Whether ``pid`` noted its own scheduled kill at ``point`` (True when there is no kill log to tell)."""
    path = os.environ.get("CHAOS_KILL_LOG")
    if not path:
        return True
    try:
        with open(path, encoding="utf-8") as f:
            return any(line.startswith(f"{pid} {point} ") for line in f)
    except FileNotFoundError:
        return False


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue


if __name__ == "__main__":
    sys.exit(supervise() if os.environ.get("CHAOS_RESPAWN") == "1" else work())
