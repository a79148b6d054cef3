"""Runtime proofs on the real broker, BIND, LocalStack and our own simulators (one isolated slice per test).

Each test prints the figure the issue asks for (run with ``-s``); docs/runtime.md records measured values.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pika
import pytest

from functions._core.model import state
from functions.adapters.dns import Rfc2136Dns
from functions.runtime import lambda_rmq
from functions.runtime.main import build_ports
from functions.runtime.poison import MAX_DEATHS, RECORD_AFTER, SOLO_AFTER
from functions.runtime.settle import Settler
from tests.chaos import audit
from tests.chaos.harness import PY, Slice, esm_batch, publish_raw, wait_for, zone_script
from tests.chaos.mix import Message
from tests.integration.stack import created_event, unique_domain
from tests.stackenv import REPO

pytestmark = pytest.mark.stack

DELIVERY_LIMIT = 10  # infra/rabbitmq/definitions.json, policies work-k


# ---------------------------------------------------------------------------------------------- helpers


@dataclass
class ParkedWatcher:
    """Consumes q.parked (as admin) in a thread and notes when each message id arrives."""

    sl: Slice
    seen: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = pika.BlockingConnection(self.sl.admin_params())
        ch = conn.channel()

        def on(ch: Any, method: Any, props: Any, body: bytes) -> None:
            self.seen[props.message_id or ""] = (time.monotonic(), dict(props.headers or {}))
            ch.basic_ack(method.delivery_tag)

        ch.basic_consume(self.sl.settings.broker.parked_queue, on)
        while not self.stop.is_set():
            conn.process_data_events(time_limit=0.02)
        conn.close()

    def __enter__(self) -> ParkedWatcher:
        self.thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def _publish(sl: Slice, events: list[dict[str, Any]], user: str = "billing") -> None:
    pub = sl.publisher(user)
    try:
        for ev in events:
            pub.publish_event(sl.settings.broker.exchange, ev, user)
    finally:
        pub.close()


def _domains(sl: Slice, n: int, prefix: str) -> list[str]:
    names = [unique_domain(prefix) for _ in range(n)]
    zone_script("zone-add", names, sl.stack_env)
    sl.zones += names
    return names


def _msg(kind: str, ev: dict[str, Any], user: str = "billing") -> Message:
    return Message(kind, ev["id"], ev["type"], user, user, ev["subject"], json.dumps(ev).encode(), ev)


def _completed(sl: Slice, events: list[dict[str, Any]]) -> set[str]:
    records = audit.ledger(build_ports(sl.settings, probe=False), [_msg("create", ev) for ev in events])
    return {mid for mid, rec in records.items() if rec["status"] == "COMPLETED"}


def _lines(sl: Slice, event_id: str) -> list[dict[str, Any]]:
    return [line for w in sl.workers for line in w.outcome_lines() if line.get("event_id") == event_id]


def _later(ev: dict[str, Any], seconds: int, **plan: int) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(ev))
    out["id"] = str(uuid.uuid4())
    t = dt.datetime.fromisoformat(ev["time"]) + dt.timedelta(seconds=seconds)
    out["time"] = t.isoformat().replace("+00:00", "Z")
    out["data"]["plan"].update(plan)
    return out


# ---------------------------------------------------------------------------------------------- poison, crash loop


def test_poison_message_is_parked_within_a_second_with_no_retry(chaos_slice: Slice) -> None:
    sl = chaos_slice
    w = sl.worker("w1")
    w.wait_ready()
    base = unique_domain("poison")
    bad_schema = created_event(base)
    bad_schema["data"]["plan"]["mailboxes"] = -1
    hostile = created_event(base)
    hostile["subject"] = hostile["data"]["domain"] = f"{base};rm -rf"
    poisons = [
        (str(uuid.uuid4()), b"\x00\xff not json at all"),
        (bad_schema["id"], json.dumps(bad_schema).encode()),
        (hostile["id"], json.dumps(hostile).encode()),
    ]
    pub = sl.publisher("billing")
    latencies: dict[str, float] = {}
    with ParkedWatcher(sl) as watcher:
        for mid, body in poisons:
            t0 = time.monotonic()
            publish_raw(pub, "events", "domain.created", body, user_id="billing", subject=base, mid=mid)
            wait_for(lambda mid=mid: mid in watcher.seen, 5, f"poison {mid} parked")
            latencies[mid] = watcher.seen[mid][0] - t0
        pub.close()
    print(f"\npoison parked after (s): {[round(v, 3) for v in latencies.values()]}")
    for mid, _ in poisons:
        assert latencies[mid] < 1.0
        headers = watcher.seen[mid][1]
        assert headers["x-mailplane-attempt"] == 0 and headers["x-mailplane-error"] == "EventInvalid"
    # one delivery each, parked at attempt 0: no retry rung was ever used
    assert [(line["outcome"], line["attempt"]) for line in w.outcome_lines()] == [("park", 0)] * len(poisons)
    assert sl.sims.mailcow_requests() == []  # nothing touched any system


def test_a_delivery_that_kills_its_worker_is_parked_alone_and_its_prefetch_window_completes(
    chaos_slice: Slice,
) -> None:
    """A crash loop among valid events of the same prefetch window: each death gives the whole window back to the
    queue (every delivery count goes up). The neighbours must all complete on rung 0 (none parked, none moved down
    the ladder); the killer is parked by the worker after MAX_DEATHS deaths while it ran alone."""
    sl = chaos_slice
    marker = f"crashloop{uuid.uuid4().hex[:8]}"
    after, *innocent_domains = _domains(sl, 9, "after")
    crasher = created_event(f"{marker}.test")
    neighbours = [created_event(d) for d in innocent_domains]
    with ParkedWatcher(sl) as watcher:
        _publish(sl, [*neighbours[:4], crasher, *neighbours[4:]])  # queued first: one prefetch window (32)
        w = sl.worker("w1", CHAOS_RESPAWN="1", CHAOS_CRASH_SUBJECT=marker)
        took = wait_for(lambda: crasher["id"] in watcher.seen, 120, "crash-looping event parked", 0.2)
        deaths = w.deaths()
        _, headers = watcher.seen[crasher["id"]]
        late = created_event(after)  # the worker is healthy again afterwards
        _publish(sl, [late])
        wait_for(lambda: late["id"] in _completed(sl, [late]), 60, "event after the crash loop completed", 0.5)
        sl.wait_settled(120, quiet=6)
        done = _completed(sl, neighbours)
        parked = {e["id"] for e in neighbours if e["id"] in watcher.seen}
    lines = {e["id"]: _lines(sl, e["id"]) for e in neighbours}
    attempts = {eid: {line["attempt"] for line in ls} for eid, ls in lines.items()}
    print(
        f"\npoison: {deaths} worker deaths, parked by the worker after {took:.1f} s"
        f" ({headers.get('x-mailplane-reason', '')[:90]}...);"
        f" {len(neighbours)} neighbours in its prefetch window: {len(done)} completed, {len(parked)} parked,"
        f" attempts {sorted({a for v in attempts.values() for a in v})}"
    )
    assert done == {e["id"] for e in neighbours} and parked == set()
    moved = [(line["outcome"], line["attempt"], line.get("reason")) for ls in lines.values() for line in ls]
    assert all(a == {0} for a in attempts.values()), moved  # none moved down the ladder
    assert headers["x-mailplane-error"] == "PoisonError" and headers["x-mailplane-attempt"] == 0
    assert f"{MAX_DEATHS} of them while it ran alone" in headers["x-mailplane-reason"]
    assert not any(d["reason"] == "delivery_limit" for d in headers.get("x-death") or [])  # never the broker's fuse
    assert deaths == RECORD_AFTER + SOLO_AFTER + MAX_DEATHS  # unrecorded, then recorded ones, the last ones alone
    assert headers["x-delivery-count"] == deaths <= DELIVERY_LIMIT


# ---------------------------------------------------------------------------------------------- publishers, Lambda


def _cases(sl: Slice, prefix: str) -> dict[str, Message]:
    """One of each: new, duplicate, newer quota, schema-invalid, spoofed publisher, no user_id, zone elsewhere."""
    a, b = _domains(sl, 2, prefix)
    base = created_event(a)
    invalid = created_event(b)
    invalid["data"]["plan"]["quotas"] = 1
    spoof = created_event(unique_domain(prefix))
    anon = created_event(unique_domain(prefix))
    external = created_event(unique_domain(prefix), dns={"hosted": False})
    return {
        "new": _msg("create", base),
        "duplicate": _msg("duplicate", base),
        "quota": _msg("quota", _later(base, 60, mailboxes=77, quota_mib=204800)),
        "invalid": _msg("invalid", invalid),
        "spoofed": Message(
            "publisher",
            spoof["id"],
            "node.down",
            "monitoring",
            "monitoring",
            spoof["subject"],
            json.dumps(spoof).encode(),
            spoof,
        ),
        "no user_id": Message(
            "publisher", anon["id"], "domain.created", "billing", None, anon["subject"], json.dumps(anon).encode(), anon
        ),
        "external": _msg("create", external),
    }


def _send(sl: Slice, cases: dict[str, Message]) -> None:
    pubs = {u: sl.publisher(u) for u in ("billing", "monitoring")}
    for m in cases.values():
        publish_raw(pubs[m.user], "events", m.routing_key, m.body, user_id=m.user_id, subject=m.subject, mid=m.mid)
    for p in pubs.values():
        p.close()


def _verdicts(sl: Slice, cases: dict[str, Message], parked: dict[str, list[audit.Parked]]) -> dict[str, Any]:
    records = audit.ledger(build_ports(sl.settings, probe=False), list(cases.values()))
    out: dict[str, Any] = {}
    for name, m in cases.items():
        rec = records.get(m.mid)
        status = rec["result"]["status"] if rec and rec["status"] == "COMPLETED" else None
        out[name] = (status, sorted(p.error for p in parked.get(m.mid, [])))
    return out


def _untouched(sl: Slice, cases: dict[str, Message], names: list[str]) -> None:
    rows = {d["domain"] for d in sl.sims.mailcow_state()["tables"]["domain"]}
    ports = build_ports(sl.settings, probe=False)
    for name in names:
        domain = cases[name].subject
        assert domain not in rows and ports.state.get(state.state_key(domain)) is None, name


def test_spoofed_publisher_and_missing_user_id_are_parked_and_lambda_matches_the_worker(
    chaos_slice: Slice, monkeypatch: pytest.MonkeyPatch
) -> None:
    sl = chaos_slice
    # the worker path
    by_worker = _cases(sl, "wk")
    _send(sl, {k: v for k, v in by_worker.items() if k != "quota"})
    w = sl.worker("w1")
    w.wait_ready()
    sl.wait_settled(120, quiet=6)
    _send(sl, {"quota": by_worker["quota"]})  # newer quota after the first one completed (as in the batch below)
    sl.wait_settled(120, quiet=6)
    w.terminate()
    worker = _verdicts(sl, by_worker, audit.parked_messages(sl))
    # the Lambda path: the same kinds of events, read from the same queue as the event source mapping would
    by_lambda = _cases(sl, "lb")
    _send(sl, by_lambda)
    for name, value in sl.env.items():  # the function's environment: MAILPLANE_CONFIG and the secrets it names
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(lambda_rmq, "_runtime", None)  # a cold container: ports are built on the first invocation
    invocations = 0
    with sl.channel() as ch:  # stands in for the event source mapping (it reads the queue, acks after success)
        while True:
            batch, tags = esm_batch(ch, "q.work.0", sl.vhost)
            if not tags:
                break
            invocations += 1
            try:
                lambda_rmq.handler(batch, SimpleNamespace(aws_request_id=f"chaos-{invocations}"))
            except lambda_rmq.BatchRetryError:
                for tag in tags:  # the mapping gives the whole batch back
                    ch.basic_nack(tag, requeue=True)
                time.sleep(1)
                continue
            for tag in tags:
                ch.basic_ack(tag)
    runtime = lambda_rmq._runtime
    assert runtime is not None
    cast(Settler, runtime.settler).publisher.close()
    lam = _verdicts(sl, by_lambda, audit.parked_messages(sl))
    print(f"\nworker: {worker}\nlambda ({invocations} invocation(s)): {lam}")
    assert lam == worker
    assert worker["new"] == ("provisioned", []) and worker["duplicate"] == ("provisioned", [])
    assert worker["quota"] == ("provisioned", []) and worker["external"] == ("awaiting_dns", [])
    assert worker["spoofed"] == (None, ["NotAuthorized"]) and worker["no user_id"] == (None, ["NotAuthorized"])
    assert worker["invalid"] == (None, ["EventInvalid"])
    _untouched(sl, by_worker, ["spoofed", "no user_id", "invalid"])
    _untouched(sl, by_lambda, ["spoofed", "no user_id", "invalid"])
    rows = {d["domain"]: d for d in sl.sims.mailcow_state()["tables"]["domain"]}
    for cases in (by_worker, by_lambda):
        assert rows[cases["new"].subject]["quota"] == 204800 and rows[cases["new"].subject]["mailboxes"] == 77


# ---------------------------------------------------------------------------------------------- connections, shutdown


def test_connection_loss_processing_again_within_seconds_and_stale_tags_dropped(chaos_slice: Slice) -> None:
    sl = chaos_slice
    w = sl.worker("w1", CHAOS_SLOW_SUBJECT="slow", CHAOS_SLOW_SECONDS="6")
    w.wait_ready()
    slow = [created_event(d) for d in _domains(sl, 2, "slow")]  # two of the four handler threads stay free
    (probe_domain,) = _domains(sl, 1, "probe")
    probe = created_event(probe_domain)
    # the management API lists connections with a statistics delay: wait for the consumer's
    wait_for(lambda: len(sl.mgmt.connections(sl.vhost, "worker")) >= 1, 15, "worker connection listed", 0.5)
    conns = sl.mgmt.connections(sl.vhost, "worker")
    _publish(sl, slow)
    time.sleep(1.5)  # the slow handlers are running now, their deliveries unacked
    lost_at = time.time()
    for c in conns:
        sl.mgmt.close_connection(c["name"])
    _publish(sl, [probe])
    again = wait_for(
        lambda: any(ln["outcome"] == "provisioned" for ln in _lines(sl, probe["id"])), 30, "probe processed"
    )
    sl.wait_settled(120, quiet=6)
    consuming = _log_times(sl.workdir / "w1" / "stderr", "INFO mailplane.worker consuming")
    reconnected = consuming[-1] - lost_at
    print(
        f"\nconnection closed by the broker: consuming again after {reconnected:.2f} s; an event published after"
        f" the loss done after {again:.1f} s (two handler threads were still busy with the lost deliveries)"
    )
    assert len(consuming) == 2 and reconnected < 10 and again < 10
    assert w.proc is not None and w.proc.poll() is None  # still running: no channel error from a stale tag
    err = (sl.workdir / "w1" / "stderr").read_text()
    assert "PRECONDITION_FAILED" not in err and "unknown delivery tag" not in err
    assert "broker connection lost" in err
    assert _completed(sl, [*slow, probe]) == {e["id"] for e in [*slow, probe]}
    for ev in slow:
        # the run that finished after the loss could not ack (stale tag, dropped); the redelivered copy waited for
        # the ledger claim (retry rungs) and then replayed the stored outcome
        outcomes = [ln["outcome"] for ln in _lines(sl, ev["id"])]
        assert outcomes.count("provisioned") == 2 and set(outcomes) <= {"provisioned", "retry"}, outcomes
    rows = [d["domain"] for d in sl.sims.mailcow_state()["tables"]["domain"]]
    assert sorted(rows) == sorted({e["subject"] for e in [*slow, probe]})  # each applied once
    assert all(r.get("messages_unacknowledged", 0) == 0 for r in sl.mgmt.queues(sl.vhost).values())


def _log_times(path: Any, text: str) -> list[float]:
    """Epoch times of the log lines of ``path`` containing ``text`` (``%(asctime)s`` is local time)."""
    out = []
    for line in path.read_text().splitlines():
        if text in line:
            stamp = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            out.append(stamp.timestamp())
    return out


def test_sigterm_drains_in_flight_work_exits_zero_and_leaves_nothing_unacked(chaos_slice: Slice) -> None:
    sl = chaos_slice
    grace, pause = 4.0, 2.0
    w = sl.worker(
        "w1", CHAOS_SLOW_SUBJECT="slow", CHAOS_SLOW_SECONDS=str(pause), CHAOS_GRACE=str(grace), CHAOS_POOL="2"
    )
    w.wait_ready()
    events = [created_event(d) for d in _domains(sl, 10, "slow")]
    _publish(sl, events)
    time.sleep(1.0)  # two handlers running, eight waiting in the worker
    t0 = time.monotonic()
    code = w.terminate(60)
    took = time.monotonic() - t0
    done_first = _completed(sl, events)
    ready = sl.depth()["q.work.0"]

    def unacked() -> dict[str, int]:
        return {n: r.get("messages_unacknowledged", 0) for n, r in sl.mgmt.queues(sl.vhost).items()}

    # the management statistics lag (5 s emission interval): poll until they show the worker's connection closed
    wait_for(lambda: not any(unacked().values()), 30, f"nothing unacked ({unacked()})", 1.0)
    print(
        f"\nSIGTERM: exit {code} after {took:.1f} s (grace {grace} s, handlers {pause}+ s); {len(done_first)} done,"
        f" {ready} given back"
    )
    assert code == 0
    assert took < grace + pause + 3  # the drain budget plus the handler still running, never the whole backlog
    assert len(done_first) + ready >= len(events) and ready > 0  # the rest went back to the queue, unprocessed
    w2 = sl.worker("w2")
    w2.wait_ready()
    sl.wait_settled(120, quiet=6)
    w2.terminate()
    assert _completed(sl, events) == {e["id"] for e in events}  # nothing lost
    rows = [d["domain"] for d in sl.sims.mailcow_state()["tables"]["domain"]]
    assert sorted(rows) == sorted(e["subject"] for e in events)  # nothing applied twice


# ---------------------------------------------------------------------------------------------- serialization


def _spans(path: Any) -> dict[str, list[tuple[float, float, int]]]:
    out: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        subject, pid, start, end = line.split()
        out[subject].append((float(start), float(end), int(pid)))
    return out


def test_one_domain_never_runs_twice_at_once_across_processes(chaos_slice: Slice) -> None:
    sl = chaos_slice
    spans = sl.workdir / "spans"
    hooks = {"CHAOS_SPANS": str(spans), "CHAOS_SLOW_SUBJECT": "hot", "CHAOS_SLOW_SECONDS": "0.2"}
    workers = [sl.worker(f"w{i}", **hooks) for i in (1, 2)]
    for w in workers:
        w.wait_ready()
    (hot,) = _domains(sl, 1, "hot")
    others = _domains(sl, 10, "par")
    first = created_event(hot)
    hot_events = [first] + [_later(first, 10 * i, mailboxes=i + 1) for i in range(1, 16)]
    other_events = [created_event(d) for d in others]
    events = hot_events + other_events
    t0 = time.monotonic()
    for i in range(8):  # in waves, so that both workers get some of the hot domain's events
        _publish(sl, [*hot_events[2 * i : 2 * i + 2], *other_events[i : i + 1]])
        time.sleep(1.5)
    _publish(sl, other_events[8:])
    sl.wait_settled(240, quiet=6)
    for w in workers:
        w.terminate()
    by_subject = _spans(spans)
    hot_spans = sorted(by_subject[hot])
    overlaps = [(a, b) for a, b in zip(hot_spans, hot_spans[1:], strict=False) if b[0] < a[1]]
    pids = {p for _, _, p in hot_spans}
    flat = sorted((s, e, p, subj) for subj, lst in by_subject.items() for s, e, p in lst)
    parallel = sum(1 for a, b in zip(flat, flat[1:], strict=False) if b[0] < a[1] and b[3] != a[3])
    cross = sum(1 for a, b in zip(flat, flat[1:], strict=False) if b[0] < a[1] and b[2] != a[2])
    done = _completed(sl, events)
    print(
        f"\nserialization: {len(hot_spans)} runs of {hot} by {len(pids)} process(es), overlapping {len(overlaps)};"
        f" {parallel} overlaps of different domains ({cross} across processes); {len(done)}/{len(events)} completed"
        f" in {time.monotonic() - t0:.1f} s"
    )
    assert overlaps == []
    assert len(pids) == 2 and parallel > 0 and cross > 0
    assert done == {e["id"] for e in events}
    row = next(d for d in sl.sims.mailcow_state()["tables"]["domain"] if d["domain"] == hot)
    assert row["mailboxes"] == hot_events[-1]["data"]["plan"]["mailboxes"]  # the newest event won


# ---------------------------------------------------------------------------------------------- dlq


def _cli(sl: Slice, *args: str) -> str:
    env = {**sl.env, "COLUMNS": "400", "PATH": f"{REPO / '.venv' / 'bin'}:/usr/bin:/bin"}
    done = subprocess.run(
        [PY, "-m", "functions.ops.cli", *args, "--config", str(sl.config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _snapshot(sl: Slice, domain: str) -> dict[str, Any]:
    ports = build_ports(sl.settings, probe=False)
    st = ports.state.get(state.state_key(domain))
    bind = f"{sl.stack_env['MAILPLANE_DNS_SERVER']}:{sl.stack_env['MAILPLANE_DNS_PORT']}"
    zone = Rfc2136Dns(sl.settings.dns).serial(domain, bind)
    return {
        "mailcow writes": sum(1 for q in sl.sims.mailcow_requests() if q.get("write")),
        "pmg writes": sum(1 for q in sl.sims.pmg_requests() if q.get("write")),
        "serial": zone,
        "state": st.etag if st else None,
    }


def test_dlq_list_show_replay_at_attempt_zero_and_replaying_a_completed_event_changes_nothing(
    chaos_slice: Slice,
) -> None:
    sl = chaos_slice
    w = sl.worker("w1")
    w.wait_ready()
    missing = unique_domain("dlq")  # its zone does not exist yet: parked (EventInvalid), fixable
    parked_ev = created_event(missing)
    other = created_event(unique_domain("dlqo"))
    other["data"]["plan"]["mailboxes"] = 0
    _publish(sl, [parked_ev, other])
    wait_for(lambda: _parked_count(sl) >= 2, 30, "two events parked")
    listed = _cli(sl, "dlq", "list", "--filter", missing)
    assert parked_ev["id"] in listed and other["id"] not in listed and "1 parked event(s)" in listed
    shown = json.loads(_cli(sl, "dlq", "show", parked_ev["id"]))
    assert shown["attempt"] == 0 and "not served" in shown["reason"] and shown["publisher"] == "billing"
    assert json.loads(shown["event"])["id"] == parked_ev["id"]

    zone_script("zone-add", [missing], sl.stack_env)
    sl.zones.append(missing)
    out = _cli(sl, "dlq", "replay", "--filter", missing)
    assert f"replayed 1 event(s): {parked_ev['id']}" in out
    wait_for(lambda: parked_ev["id"] in _completed(sl, [parked_ev]), 60, "replayed event completed", 0.5)
    replayed = [ln for ln in _lines(sl, parked_ev["id"]) if ln["outcome"] == "provisioned"]
    assert [(ln["attempt"], ln["publisher"]) for ln in replayed] == [(0, "billing")]  # attempt 0, original publisher
    assert parked_ev["id"] not in _cli(sl, "dlq", "list", "--filter", missing)

    # a completed event that ends up parked anyway (e.g. dead-lettered after a crash between complete and ack)
    sl.wait_settled(60, quiet=6)
    before = _snapshot(sl, missing)
    with sl.channel() as ch:
        ch.confirm_delivery()
        props = pika.BasicProperties(
            content_type="application/cloudevents+json",
            delivery_mode=2,
            message_id=parked_ev["id"],
            user_id="admin",
            headers={"ce-subject": missing, "x-mailplane-publisher": "billing", "x-mailplane-reason": "test copy"},
        )
        ch.basic_publish("parked", "parked", json.dumps(parked_ev).encode(), props, mandatory=True)
    runs = len(_lines(sl, parked_ev["id"]))
    assert f"replayed 1 event(s): {parked_ev['id']}" in _cli(sl, "dlq", "replay", "--id", parked_ev["id"])
    wait_for(lambda: len(_lines(sl, parked_ev["id"])) > runs, 30, "replayed completed event handled")
    assert "replayed 0 event(s)" in _cli(sl, "dlq", "replay", "--id", parked_ev["id"])  # already gone: harmless
    sl.wait_settled(60, quiet=6)
    assert _snapshot(sl, missing) == before  # nothing changed anywhere


def _parked_count(sl: Slice) -> int:
    with sl.channel() as ch:
        return int(ch.queue_declare(sl.settings.broker.parked_queue, passive=True).method.message_count)
