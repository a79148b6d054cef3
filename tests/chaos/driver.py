"""One chaos run: publish the mix in waves to two respawning workers while killing them and injecting faults.

Faults (all on this run's own simulators, proxy and vhost):
* SIGKILL of a worker: by its own hooks at four points (``CHAOS_KILL_RATE``) and by the driver at random moments;
* the simulators answer 10 % of requests with 5xx/timeouts, and have 2 s latency spikes;
* the DNS proxy answers SERVFAIL in bursts;
* optionally (``restart_broker``) RabbitMQ is stopped and started again mid-run (affects everyone: see
  test_broker_restart.py).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

from tests.chaos.audit import Report, audit
from tests.chaos.harness import Slice, Ticker, WorkerProc, publish_raw, zone_script
from tests.chaos.mix import Mix, build_mix, waves
from tests.chaos.secrets_scan import scan_run
from tests.stackenv import REPO

MAILCOW_FAULTS = {"error_rate": 0.1, "hang_ms": 1500}
PMG_FAULTS = {"error_rate": 0.1}


@dataclass
class Knobs:
    events: int
    seed: int = 7
    kill_rate: float = 0.01  # per event, in the worker (split over four points)
    kill_every: tuple[float, float] = (6.0, 14.0)  # seconds between external SIGKILLs
    waves: int = 8
    wave_pause: float = 4.0
    servfail_every: float = 9.0
    servfail_for: float = 1.5
    spike_every: float = 11.0
    spike_for: float = 2.0
    pool: int = 4
    settle_timeout: float = 600.0
    restart_broker: Callable[[], float] | None = None  # stops + starts RabbitMQ; returns the outage in seconds


@dataclass
class Run:
    mix: Mix
    report: Report
    figures: dict[str, Any] = field(default_factory=dict)


def run_chaos(sl: Slice, knobs: Knobs) -> Run:
    t0 = time.monotonic()
    mix = build_mix(knobs.events, sl.run_id, sl.settings, knobs.seed)
    zone_script("zone-add", mix.hosted, sl.stack_env)
    sl.zones += mix.hosted
    t_zones = time.monotonic() - t0
    hooks = {
        "CHAOS_RESPAWN": "1",
        "CHAOS_KILL_SCHEDULE": "1",
        "CHAOS_KILL_RATE": str(knobs.kill_rate),
        "CHAOS_POOL": str(knobs.pool),
    }
    workers = [sl.worker(f"w{i}", CHAOS_SEED=f"{knobs.seed}{i}", **hooks) for i in (1, 2)]
    for w in workers:
        w.wait_ready(60)
    rng = random.Random(knobs.seed)
    external = Counter[str]()
    sl.sims.faults(mailcow=MAILCOW_FAULTS, pmg=PMG_FAULTS)
    t_start = time.monotonic()
    cpu_before = cpu_table(sl, workers)
    restart: dict[str, float] = {}
    with (
        Ticker(0.5, _killer(workers, rng, knobs, external)),
        Ticker(knobs.servfail_every, lambda: _burst(sl, knobs.servfail_for)),
        Ticker(knobs.spike_every, lambda: _spike(sl, knobs.spike_for)) as spikes,
    ):
        _publish(sl, mix, knobs, restart)
        published_at = time.monotonic() - t_start
        # the chaos goes on while the first rung still holds work; then the system settles without it
        deadline = time.monotonic() + knobs.settle_timeout
        while sl.depth()["q.work.0"] > 0 and time.monotonic() < deadline:
            for w in workers:
                w.check()
            time.sleep(1.0)
    sl.proxy.servfail = False
    sl.sims.faults(mailcow={}, pmg={"error_rate": 0, "latency_ms": 0})
    settle = sl.wait_settled(knobs.settle_timeout)
    t_done = time.monotonic() - t_start
    cpu = cpu_delta(cpu_before, cpu_table(sl, workers))
    codes = [w.terminate(90) for w in workers]
    report = audit(sl, mix)
    hits, scanned = scan_run(sl, report.raw)
    report.problems += [f"secret {h.secret} appears in {h.where}" for h in hits[:20]]
    figures = _figures(sl, mix, report, workers, external, codes, spikes)
    figures.update(scanned)
    figures.update(
        {
            "zones added (s)": round(t_zones, 1),
            "published after (s)": round(published_at, 1),
            "processing + settle (s)": round(t_done, 1),
            "settle detection (s)": round(settle, 1),
            "total (s)": round(time.monotonic() - t0, 1),
            "throughput (events/s)": round(len(mix.messages) / t_done, 1),
            "CPU seconds during the run, by process": cpu,
            **restart,
        }
    )
    return Run(mix, report, figures)


def _publish(sl: Slice, mix: Mix, knobs: Knobs, restart: dict[str, float]) -> None:
    pubs = {u: sl.publisher(u) for u in ("billing", "monitoring", "scheduler")}
    chunks = list(waves(mix.messages, knobs.waves))
    try:
        for i, chunk in enumerate(chunks):
            if knobs.restart_broker is not None and i == len(chunks) // 2:
                for p in pubs.values():
                    p.close()
                restart.update(_restart(sl, knobs.restart_broker))
            for m in chunk:
                publish_raw(
                    pubs[m.user],
                    sl.settings.broker.exchange,
                    m.routing_key,
                    m.body,
                    user_id=m.user_id,
                    subject=m.subject,
                    mid=m.mid,
                )
            time.sleep(knobs.wave_pause)
    finally:
        for p in pubs.values():
            p.close()


def _restart(sl: Slice, restart: Callable[[], float]) -> dict[str, float]:
    """Restart the broker; measure when it accepted connections again and when the workers next completed an event."""
    back: list[float] = []
    down = threading.Event()
    done = threading.Event()

    def probe() -> None:  # wall-clock time of the first successful connection after the first failed one
        while not done.is_set():
            try:
                pika.BlockingConnection(sl.admin_params()).close()
                if down.is_set():
                    back.append(time.time())
                    return
            except pika.exceptions.AMQPError:
                down.set()
            time.sleep(0.1)

    watcher = threading.Thread(target=probe, daemon=True)
    watcher.start()
    outage = restart()
    watcher.join(60)
    done.set()
    if not back:
        raise AssertionError("the broker restart was not observed")
    first = _first_done_after(sl, back[0], timeout=60)
    return {
        "broker restart (stop + infra/local/up, s)": round(outage, 1),
        "processing again after the broker's return (s)": round(first - back[0], 2),
    }


def _first_done_after(sl: Slice, t: float, timeout: float) -> float:
    """Wall-clock time of the first event completed after ``t`` (from the workers' outcome lines)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        times = [
            dt.datetime.fromisoformat(line["time"]).timestamp()
            for w in sl.workers
            for line in w.outcome_lines()
            if line.get("outcome") not in ("retry", "requeue", "park")
        ]
        later = [x for x in times if x > t]
        if later:
            return min(later)
        time.sleep(0.2)
    raise AssertionError(f"no event completed within {timeout} s of the broker's return")


def _killer(workers: list[WorkerProc], rng: random.Random, knobs: Knobs, counts: Counter[str]) -> Callable[[], None]:
    state = {"next": time.monotonic() + rng.uniform(*knobs.kill_every)}

    def tick() -> None:
        if time.monotonic() < state["next"]:
            return
        state["next"] = time.monotonic() + rng.uniform(*knobs.kill_every)
        if rng.choice(workers).sigkill():
            counts["external"] += 1

    return tick


def _burst(sl: Slice, seconds: float) -> None:
    sl.proxy.servfail = True
    time.sleep(seconds)
    sl.proxy.servfail = False


def _spike(sl: Slice, seconds: float) -> None:
    sl.sims.faults(mailcow={**MAILCOW_FAULTS, "latency_ms": 2000}, pmg={"latency_ms": 2000})
    time.sleep(seconds)
    sl.sims.faults(mailcow=MAILCOW_FAULTS, pmg={"latency_ms": 0})


def _figures(
    sl: Slice,
    mix: Mix,
    report: Report,
    workers: list[WorkerProc],
    external: Counter[str],
    codes: list[int],
    spikes: Ticker,
) -> dict[str, Any]:
    kills = Counter(line.split()[1] for line in _lines(sl.workdir / "kills"))
    lines = [line for w in workers for line in w.outcome_lines()]
    verdicts = Counter(str(line.get("outcome")) for line in lines)
    mc = sl.sims.mailcow_requests()
    pmg = sl.sims.pmg_requests()
    return {
        "events published": len(mix.messages),
        "by kind": mix.counts(),
        **report.figures,
        "kills in the worker, by point": dict(kills),
        "kills from outside (random moment)": external["external"],
        "worker deaths (respawned)": sum(w.deaths() for w in workers),
        "worker exit codes after SIGTERM": codes,
        "deliveries handled (outcome lines)": len(lines),
        "verdicts": dict(verdicts),
        "highest attempt": max((int(line.get("attempt", 0)) for line in lines), default=0),
        "dns proxy": dict(sl.proxy.counts),
        "mailcow requests / faulted": f"{len(mc)}/{sum(1 for q in mc if q.get('status', 200) in (0, 500, 502, 503))}",
        "pmg requests / faulted": f"{len(pmg)}/{sum(1 for q in pmg if q.get('status') == 595)}",
        "fault ticker errors": [repr(e) for e in spikes.errors][:3],
    }


def _lines(path: Any) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return []


def restart_rabbitmq(env: dict[str, str]) -> Callable[[], float]:
    """Stop RabbitMQ by the pid in .stack/rabbitmq (SIGTERM: a clean shutdown) and start it with infra/local/up."""

    def restart() -> float:
        rmq = Path(env["MAILPLANE_STACK_DIR"]) / "rabbitmq"
        wrapper = int((rmq / "server.pid").read_text())
        beam = int((rmq / "rabbit.pid").read_text())  # the node's own pid (as infra/local/down does it)
        start = time.monotonic()
        os.kill(beam, signal.SIGTERM)  # a clean shutdown: the node closes every connection (320 CONNECTION_FORCED)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (_alive(beam) or _alive(wrapper)):
            time.sleep(0.1)
        run_env = {**os.environ, "MAILPLANE_STACK_DIR": env["MAILPLANE_STACK_DIR"]}
        up = subprocess.run(
            [str(REPO / "infra" / "local" / "up")], capture_output=True, text=True, timeout=300, env=run_env
        )
        assert up.returncode == 0, f"infra/local/up exited {up.returncode}:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
        return time.monotonic() - start

    return restart


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _cpu(pid: int, children: bool = False) -> float:
    """utime + stime of ``pid`` in seconds (plus reaped children's); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def cpu_table(sl: Slice, workers: list[WorkerProc]) -> dict[str, float]:
    """Cumulative CPU seconds of everything the run uses (the shared services are shared with others!)."""
    stack = Path(sl.stack_env["MAILPLANE_STACK_DIR"])
    pids = {
        "rabbitmq (shared)": _pid(stack / "rabbitmq" / "rabbit.pid"),
        "bind (shared)": _pid(stack / "bind" / "named.pid"),
        "localstack s3 (shared)": _pid(stack / "localstack" / "ls.pid"),
        "mailcow sim": sl.sims.procs[0].pid,
        "pmg sim": sl.sims.procs[1].pid,
        "test process (publisher, dns proxy)": os.getpid(),
    }
    out = {name: _cpu(pid) for name, pid in pids.items() if pid}
    for w in workers:  # the supervisor reaps dead workers: their CPU is in its children's times
        live = w.pid
        sup = w.proc.pid if w.proc else 0
        out[f"worker {w.name}"] = _cpu(sup, children=True) + (_cpu(live) if live and live != sup else 0.0)
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds used in between (a process that was restarted meanwhile counts from its start)."""
    return {k: round(after[k] - before.get(k, 0.0) if after[k] >= before.get(k, 0.0) else after[k], 1) for k in after}


def print_figures(title: str, figures: dict[str, Any]) -> None:
    print(f"\n=== {title} ===")
    for k, v in figures.items():
        print(f"{k:>52}: {v}")
