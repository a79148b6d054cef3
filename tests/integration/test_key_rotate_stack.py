"""key.rotate and rotate-due on the real stack: BIND (CAS UPDATEs, TXT served), the Mailcow simulator (dkim_import),
LocalStack S3 (state, sealed keys, audit, ledger) and RabbitMQ, with a controllable clock.

At every step: a message signed with the key Mailcow reports verifies with dkimpy against BIND; replaying the step
(the same event through the ledger, the same event without it, a fresh nudge) changes nothing; and a process killed
with SIGKILL after any single write resumes to the right end state when the event is delivered again.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import replace
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest
import typer
from typer.testing import CliRunner

from functions import key_rotate
from functions._core.model import rotation, state
from functions._core.model.ports import Ports
from functions._core.model.rotation import REVOKED_TXT
from functions._core.model.state import DomainState, KeyRecord
from functions._core.platform.config import Settings
from functions._core.platform.envelope import parse
from functions._core.platform.outcome import Outcome
from functions.adapters.s3 import S3Store, make_client
from functions.ops import cli_rotate, rotate_due
from functions.runtime import dispatch
from functions.runtime.main import build_ports
from tests.conftest import load_event
from tests.fakes.recorder import Recorder
from tests.integration import stack
from tests.stackenv import REPO

pytestmark = pytest.mark.stack

ROTATION: dict[str, Any] = {  # the production periods, except propagation (1 h) and the emergency wait (5 min)
    "propagation_seconds": 3600,
    "emergency_propagation_seconds": 300,
    "retire_days": 7,
    "revoke_hours": 0,
    "emergency_revoke_hours": 48,
    "keep_days": 30,
}
HOUR, DAY, SECOND = dt.timedelta(hours=1), dt.timedelta(days=1), dt.timedelta(seconds=1)
START = (dt.datetime.now(dt.UTC) + 200 * DAY).replace(microsecond=0)  # the rotation is due by then


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture(scope="module")
def base(stack_env: dict[str, str]) -> Settings:
    return stack.settings_for(stack_env)


@pytest.fixture(scope="module")
def settings(base: Settings) -> Settings:
    return replace(base, dkim=replace(base.dkim, **ROTATION))


@pytest.fixture(scope="module")
def domains(stack_env: dict[str, str], base: Settings) -> dict[str, str]:
    """Domains provisioned by domain.created through RabbitMQ and the worker (one worker run for all)."""
    names = {k: stack.unique_domain(f"rot{k}") for k in ("full", "emerg", "killa", "killb", "due")}
    stack.zone_add(*names.values())
    for domain in names.values():
        stack.publish(stack_env, base, stack.created_event(domain))
    stack.run_worker(base)
    for domain in names.values():
        (outcome,) = [stack.body_json(b) for _, b in stack.take(stack_env, base, "q.outcomes", domain)]
        assert outcome["data"]["status"] == "provisioned", outcome
    return names


# ---------------------------------------------------------------- helpers


def rotate_body(domain: str, event_id: str, reason: str, **data: Any) -> bytes:
    raw = load_event("key.rotate")
    raw["id"], raw["subject"], raw["source"] = event_id, domain, "urn:mailplane:scheduler"
    raw["data"] = {"domain": domain, "reason": reason, **data}
    return json.dumps(raw).encode()


def ports_at(settings: Settings, clock: Clock) -> Ports:
    return replace(build_ports(settings, probe=False), clock=clock)


def nudge(domain: str) -> bytes:
    """A fresh nudge (event ids are unique across test runs: the S3 ledger remembers them)."""
    return rotate_body(domain, f"n-{uuid.uuid4().hex}", "nudge")


def step(ports: Ports, body: bytes) -> Outcome:
    """One key.rotate through dispatch (authorisation as the scheduler, the S3 idempotency ledger)."""
    result = dispatch.run(body, "scheduler", ports)
    assert result.verdict == "done" and result.outcome is not None, result.reason
    return result.outcome


def bind_txt(env: dict[str, str], name: str) -> bytes | None:
    """The TXT at ``name`` straight from BIND (TCP, RD=0), strings joined; independent of our adapter."""
    query = dns.message.make_query(name, "TXT")
    query.flags &= ~dns.flags.RD
    answer = dns.query.tcp(query, env["MAILPLANE_DNS_SERVER"], port=int(env["MAILPLANE_DNS_PORT"]), timeout=3)
    rrsets = [r for r in answer.answer if r.rdtype == dns.rdatatype.TXT]
    return b"".join(rrsets[0][0].strings) if rrsets else None


def mailcow_signature_verifies(env: dict[str, str], settings: Settings, domain: str) -> str:
    """The key Mailcow reports signs a message that dkimpy verifies against BIND; returns the selector."""
    return stack.mailcow_signature_verifies(settings, domain, lambda name: bind_txt(env, name))


def statuses(settings: Settings, domain: str) -> dict[str, str]:
    return {k.selector: k.status for k in state.load(build_ports(settings, probe=False).state, domain).keys}


def snapshot(env: dict[str, str], settings: Settings, domain: str) -> dict[str, Any]:
    ports = build_ports(settings, probe=False)
    st = ports.state.get(state.state_key(domain))
    dkim_key = ports.mail.get_dkim(domain)
    objects = sorted([*ports.state.list(f"keys/{domain}/"), *ports.state.list(f"audit/{domain}/")])
    return {"serial": stack.soa_serial(env, domain), "state": st.etag if st else None, "dkim": dkim_key, "s3": objects}


def replay_changes_nothing(env: dict[str, str], settings: Settings, ports: Ports, domain: str, event: bytes) -> None:
    """The same event through the ledger, the same event run again without it, and a fresh nudge: no writes."""
    before = snapshot(env, settings, domain)
    result = dispatch.run(event, "scheduler", ports)
    assert result.verdict == "done"
    rec: dict[str, Any] = {n: Recorder(getattr(ports, n)) for n in ("mail", "dns", "state")}
    bare = replace(ports, ledger=None, **rec)
    key_rotate.handle(parse(event, publisher="scheduler"), bare)
    key_rotate.handle(parse(rotate_body(domain, f"replay-{uuid.uuid4().hex}", "nudge"), publisher="scheduler"), bare)
    assert {n: r.writes for n, r in rec.items()} == {"mail": [], "dns": [], "state": []}
    assert snapshot(env, settings, domain) == before


# ---------------------------------------------------------------- full and emergency rotation


def test_full_rotation(stack_env: dict[str, str], settings: Settings, domains: dict[str, str]) -> None:
    domain, clock = domains["full"], Clock(START)
    ports = ports_at(settings, clock)
    old = mailcow_signature_verifies(stack_env, settings, domain)

    first = rotate_body(domain, f"rot-{uuid.uuid4().hex}", "scheduled", key_id=f"{domain}:{old}")
    out = step(ports, first)
    assert out.status == "pending"
    new = next(s for s in statuses(settings, domain) if s != old)
    assert statuses(settings, domain) == {old: "ACTIVE", new: "VISIBLE"}
    assert [e["data"]["transition"] for e in out.emit][-1] == "PUBLISHED->VISIBLE"
    assert bind_txt(stack_env, f"{new}._domainkey.{domain}") is not None  # published, 2 strings joined
    assert mailcow_signature_verifies(stack_env, settings, domain) == old  # both published, old still signs
    replay_changes_nothing(stack_env, settings, ports, domain, first)

    clock.now = START + HOUR - SECOND  # propagation wait not over
    assert step(ports, nudge(domain)).status == "pending" and statuses(settings, domain)[new] == "VISIBLE"

    clock.now = START + HOUR
    out = step(ports, body := nudge(domain))
    assert statuses(settings, domain) == {old: "RETIRING", new: "ACTIVE"}, out.detail
    assert mailcow_signature_verifies(stack_env, settings, domain) == new
    assert bind_txt(stack_env, f"{old}._domainkey.{domain}") is not None  # retired, still published
    replay_changes_nothing(stack_env, settings, ports, domain, body)

    clock.now = START + HOUR + 7 * DAY - SECOND
    step(ports, nudge(domain))
    assert bind_txt(stack_env, f"{old}._domainkey.{domain}") is not None  # not before the grace period

    clock.now = START + HOUR + 7 * DAY
    step(ports, body := nudge(domain))
    assert statuses(settings, domain) == {old: "WITHDRAWN", new: "ACTIVE"}
    assert bind_txt(stack_env, f"{old}._domainkey.{domain}") is None
    assert mailcow_signature_verifies(stack_env, settings, domain) == new
    replay_changes_nothing(stack_env, settings, ports, domain, body)

    clock.now = START + HOUR + 37 * DAY
    out = step(ports, body := nudge(domain))
    assert out.status == "idle" and statuses(settings, domain) == {old: "DESTROYED", new: "ACTIVE"}
    assert ports.state.get(state.key_blob_key(domain, old)) is None
    assert mailcow_signature_verifies(stack_env, settings, domain) == new
    replay_changes_nothing(stack_env, settings, ports, domain, body)


def test_emergency_rotation(stack_env: dict[str, str], settings: Settings, domains: dict[str, str]) -> None:
    domain, clock = domains["emerg"], Clock(START)
    ports = ports_at(settings, clock)
    old = mailcow_signature_verifies(stack_env, settings, domain)

    event = rotate_body(domain, f"sec-{uuid.uuid4().hex}", "compromised", key_id=f"{domain}:{old}")
    out = step(ports, event)
    assert "propagation wait until" in out.detail["reason"]
    new = next(s for s in statuses(settings, domain) if s != old)
    assert mailcow_signature_verifies(stack_env, settings, domain) == old  # never switched before visible
    replay_changes_nothing(stack_env, settings, ports, domain, event)

    clock.now = START + 5 * 60 * SECOND  # the emergency propagation wait (5 min, not 1 h)
    step(ports, body := nudge(domain))
    assert statuses(settings, domain) == {old: "REVOKED", new: "ACTIVE"}
    assert bind_txt(stack_env, f"{old}._domainkey.{domain}") == REVOKED_TXT.encode()  # revoked: empty p=
    assert mailcow_signature_verifies(stack_env, settings, domain) == new
    replay_changes_nothing(stack_env, settings, ports, domain, body)

    clock.now = START + 5 * 60 * SECOND + 48 * HOUR - SECOND
    step(ports, nudge(domain))
    assert statuses(settings, domain)[old] == "REVOKED"
    clock.now += SECOND
    step(ports, body := nudge(domain))
    assert statuses(settings, domain)[old] == "WITHDRAWN"
    assert bind_txt(stack_env, f"{old}._domainkey.{domain}") is None
    assert mailcow_signature_verifies(stack_env, settings, domain) == new
    audit = sorted(ports.state.list(f"audit/{domain}/"))
    assert audit == [f"audit/{domain}/{old}/{a}.json" for a in ("compromised", "revoked", "withdrawn")]
    record = ports.state.get(audit[0])
    assert record is not None and json.loads(record.body)["publisher"] == "scheduler"
    replay_changes_nothing(stack_env, settings, ports, domain, body)


# ---------------------------------------------------------------- SIGKILL between any two steps


def child() -> None:
    """Run one key.rotate in this process with the stack settings and ROT_NOW as the clock; when ROT_KILL_AFTER is
    set, SIGKILL this process right after that many writes (test-only wrappers; production code has no hook)."""
    env = dict(os.environ)
    base = Settings.load(env["MAILPLANE_CONFIG"], env)
    settings = replace(base, dkim=replace(base.dkim, **json.loads(env["ROT_DKIM"])))
    clock = Clock(dt.datetime.fromisoformat(env["ROT_NOW"]))
    ports = replace(build_ports(settings, probe=False), clock=clock, ledger=None)
    left = [int(env.get("ROT_KILL_AFTER", "0")) or 10**9]

    def killing(target: Any) -> Any:
        class Killing:
            def __getattr__(self, name: str) -> Any:
                attr = getattr(target, name)
                if name not in ("put", "delete", "apply", "import_dkim"):
                    return attr

                def call(*args: Any, **kwargs: Any) -> Any:
                    result = attr(*args, **kwargs)
                    left[0] -= 1
                    if left[0] <= 0:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return result

                return call

        return Killing()

    ports = replace(ports, mail=killing(ports.mail), dns=killing(ports.dns), state=killing(ports.state))
    out = key_rotate.handle(parse(env["ROT_BODY"].encode(), publisher="scheduler"), ports)
    print(json.dumps({"status": out.status, "keys": out.detail["keys"]}))


def kill_chain(env: dict[str, str], settings: Settings, domain: str, now: dt.datetime, body: bytes) -> int:
    """Deliver ``body`` to processes that are each SIGKILLed right after their first write, until one finishes;
    check after every kill that mail signed by Mailcow's active key still verifies. Returns the number of kills."""
    kills = 0
    child_env = {**os.environ, **env, "ROT_NOW": now.isoformat(), "ROT_DKIM": json.dumps(ROTATION)}
    child_env.update(ROT_BODY=body.decode(), ROT_KILL_AFTER="1", PYTHONPATH=f"{REPO}:{REPO}/infra/local")
    code = "from tests.integration.test_key_rotate_stack import child; child()"
    while True:
        proc = subprocess.run([sys.executable, "-c", code], env=child_env, cwd=REPO, capture_output=True, timeout=180)
        if proc.returncode == 0:
            return kills
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
        kills += 1
        assert kills < 40, "no progress"
        mailcow_signature_verifies(env, settings, domain)


@pytest.mark.parametrize("reason", ["scheduled", "compromised"])
def test_sigkill_after_any_write_resumes(
    stack_env: dict[str, str], settings: Settings, domains: dict[str, str], reason: str
) -> None:
    domain = domains["killa" if reason == "scheduled" else "killb"]
    old = mailcow_signature_verifies(stack_env, settings, domain)
    first = rotate_body(domain, f"kill-{uuid.uuid4().hex}", reason, key_id=f"{domain}:{old}")
    retire = HOUR + (49 * HOUR if reason == "compromised" else 7 * DAY)
    phases = [(START, first), (START + HOUR, None), (START + retire, None), (START + retire + 30 * DAY, None)]
    kills = 0
    for i, (now, body) in enumerate(phases):
        event = body or nudge(domain)
        kills += kill_chain(stack_env, settings, domain, now, event)
        got = statuses(settings, domain)
        new = next(s for s in got if s != old)
        want_old = ["ACTIVE", "REVOKED" if reason == "compromised" else "RETIRING", "WITHDRAWN", "DESTROYED"][i]
        assert got == {old: want_old, new: "VISIBLE" if i == 0 else "ACTIVE"}, (i, got)
        assert mailcow_signature_verifies(stack_env, settings, domain) == (old if i == 0 else new)
        assert (bind_txt(stack_env, f"{old}._domainkey.{domain}") is None) == (i >= 2)
    assert kills >= (18 if reason == "compromised" else 12)  # a kill after every single write
    ports = build_ports(settings, probe=False)
    assert ports.state.get(state.key_blob_key(domain, old)) is None
    assert bind_txt(stack_env, f"{new}._domainkey.{domain}") is not None


# ---------------------------------------------------------------- rotate-due


@pytest.fixture
def private_store(base: Settings) -> Any:
    """A throw-away bucket in LocalStack, so 1,000 domain states do not mix with the shared state bucket."""
    client = make_client(base.store)
    bucket = f"mailplane-rotdue-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    yield S3Store(base.store, bucket)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys: list[Any] = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    client.delete_bucket(Bucket=bucket)


def test_rotate_due_over_1000_domains_spreads_them(base: Settings, private_store: S3Store) -> None:
    s = base.dkim  # as configured in infra/local/platform.test.toml
    created = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.UTC)  # all activated in the same second
    domains = [f"bulk{i:04d}-{uuid.uuid4().hex[:6]}.test" for i in range(1000)]

    def put(domain: str) -> None:
        key = KeyRecord("fc20261127", "MIIB", "ACTIVE", created.isoformat())
        state.save(
            private_store, DomainState(domain, {"dns": {"hosted": True}}, (key,), "provisioned"), DomainState(domain)
        )

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, domains))
    dues, errors, scanned = rotate_due.scan(private_store, base, threads=16)
    assert scanned == 1000 and not errors
    first = created + s.rotate_after_days * DAY
    assert all(first <= d.at < first + s.rotate_jitter_days * DAY for d in dues)
    started: dict[str, dt.datetime] = {}
    per_hour: Counter[dt.datetime] = Counter()
    now = first.replace(minute=0)
    while len(started) < 1000:  # the hourly runs (the state does not change between them here)
        chosen, _ = rotate_due.select((d for d in dues if d.domain not in started), now, s.rotate_max_per_run)
        started.update((d.domain, now) for d in chosen)
        per_hour[now] += len(chosen)
        now += HOUR
    busiest = max(per_hour.values())
    assert busiest <= min(s.rotate_max_per_run, 15), busiest  # ~1.4 an hour on average over 30 days
    assert max(started.values()) - first <= s.rotate_jitter_days * DAY + HOUR
    by_day = Counter((t - first).days for t in started.values())
    assert s.rotate_jitter_days <= len(by_day) <= s.rotate_jitter_days + 1 and max(by_day.values()) <= 60, by_day

    burst = rotate_due.run(private_store, base, first + s.rotate_jitter_days * DAY, None, max_start=100)
    assert len(burst.due) == 100 and burst.deferred == 900  # all overdue at once: the cap holds


def test_rotate_due_cli_publishes_as_scheduler_and_the_worker_rotates(
    stack_env: dict[str, str], base: Settings, domains: dict[str, str]
) -> None:
    domain = domains["due"]
    ports = build_ports(base, probe=False)
    st = state.load(ports.state, domain)
    (key,) = st.keys
    aged = (dt.datetime.now(dt.UTC) - 220 * DAY).isoformat(timespec="seconds")  # past 180 days + any jitter
    state.save(ports.state, replace(st, keys=(replace(key, created_at=aged),)), st)

    app = typer.Typer()
    app.callback()(lambda: None)
    cli_rotate.register(app)
    runner = CliRunner()
    dry = runner.invoke(app, ["rotate-due", "--dry-run", "--json"], env=stack_env)
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.output)
    assert {"domain": domain, "kind": "start"}.items() <= next(
        d for d in report["due"] if d["domain"] == domain
    ).items()
    real = runner.invoke(app, ["rotate-due"], env=stack_env)
    assert real.exit_code == 0, real.output

    stack.run_worker(base)  # the real worker, the real clock: authorises the scheduler, runs key.rotate
    events = [stack.body_json(b) for _, b in stack.take(stack_env, base, "q.outcomes", domain)]
    transitions = [e["data"]["transition"] for e in events if e["type"] == "key.rotated"]
    assert transitions == [
        "NONE->GENERATED",
        "GENERATED->PUBLISHED",
        "PUBLISHED->VISIBLE",
        "VISIBLE->READY",
        "READY->ACTIVE",
        "ACTIVE->RETIRING",
    ], (transitions, stack.take(stack_env, base, "q.parked", domain))
    new = mailcow_signature_verifies(stack_env, base, domain)
    assert new != key.selector and statuses(base, domain) == {key.selector: "RETIRING", new: "ACTIVE"}
    assert rotation.due(state.load(ports.state, domain), base.dkim) is not None
