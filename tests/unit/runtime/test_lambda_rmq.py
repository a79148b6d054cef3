"""The aws:rmq Lambda adapter: decoding, the shared dispatch and Settler, and whole-batch retry semantics.

No broker: the real ``Settler`` publishes into a recording publisher; the dispatch function is the real
``dispatch.run`` (parse, authorise, route) except for records a test scripts to be done or to retry.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pika
import pika.exceptions
import pytest

from functions._core.model.ports import Ports
from functions._core.platform.envelope import parse
from functions._core.platform.errors import AutomationError, ConfigError, DnsServfail, EventInvalid, NotAuthorized
from functions._core.platform.idempotency import Ledger
from functions._core.platform.outcome import Outcome
from functions.runtime import dispatch, lambda_rmq, main
from functions.runtime.amqp import Publisher
from functions.runtime.lambda_rmq import BatchRetryError, Runtime, decode, process, rung_of
from functions.runtime.settle import Settler
from tests.conftest import load_event
from tests.fakes.settings import make_settings
from tests.fakes.store import MemoryStore
from tests.stackenv import REPO

BATCHES = REPO / "events" / "aws-rmq"
VALID_ID = "b1f0c6de-3a43-4d0e-9a55-1f0b7c8e2a01"
LEASE, KEEP = dt.timedelta(minutes=5), dt.timedelta(hours=24)


class RecordingPublisher:
    """Stands in for amqp.Publisher: records every confirmed publish; ``fail`` raises instead (no confirm)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes, Any]] = []
        self.fail: Exception | None = None

    def publish(self, exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append((exchange, routing_key, body, properties))

    def publish_event(self, exchange: str, event: dict[str, Any], user_id: str) -> None:
        self.publish(exchange, str(event["type"]), json.dumps(event).encode(), None)

    def parked(self) -> list[tuple[bytes, dict[str, Any]]]:
        return [(body, props.headers) for ex, _, body, props in self.sent if ex == "parked"]

    def events(self) -> list[str]:
        return [rk for ex, rk, _, _ in self.sent if ex == "events"]


class Script:
    """A dispatch function: the real ``dispatch.run``, except that a valid, authorised event whose id is scripted
    gets the scripted verdict instead of running its handler."""

    def __init__(self, **verdicts: str) -> None:
        self.verdicts = verdicts
        self.calls: list[tuple[str | None, str | None, int, bool]] = []

    def __call__(
        self, body: bytes, publisher: str | None, ports: Ports, *, attempt: int = 0, last_attempt: bool = True
    ) -> dispatch.Result:
        event_id = dispatch.peek(body, "id")
        self.calls.append((event_id, publisher, attempt, last_attempt))
        try:
            dispatch.authorize(parse(body, publisher=publisher), dict(ports.settings.broker.publishers))
        except AutomationError:
            return dispatch.run(body, publisher, ports, attempt=attempt, last_attempt=last_attempt)
        verdict = self.verdicts.get(event_id or "")
        if verdict == "done":
            emit = ({"type": "domain.provisioned", "id": f"domain_created:{event_id}"},)
            return dispatch.Result(
                "done", Outcome("domain_created", event_id or "", "x.test", "provisioned", emit=emit)
            )
        if verdict == "retry":
            return dispatch.Result("retry", error=DnsServfail("timeout"))
        return dispatch.run(body, publisher, ports, attempt=attempt, last_attempt=last_attempt)


def runtime(run: Callable[..., dispatch.Result]) -> tuple[Runtime, RecordingPublisher]:
    settings = make_settings()
    none = cast(Any, None)  # parse, authorise and park never touch a system
    ports = Ports(mail=none, gateway=none, dns=none, state=none, web=none, settings=settings)
    publisher = RecordingPublisher()
    return Runtime(ports, Settler(cast(Publisher, publisher), settings.broker), cast(Any, run)), publisher


def batch_file(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((BATCHES / f"{name}.json").read_text(encoding="utf-8"))
    return data


def rmq_record(sample: str, user: str | None = "billing", **event: Any) -> dict[str, Any]:
    raw = load_event(sample)
    raw.update(event)
    body = json.dumps(raw).encode()
    props = {"headers": {"ce-subject": {"bytes": list(str(raw.get("subject")).encode())}}, "messageId": raw.get("id")}
    return {
        "basicProperties": {**props, "userId": user, "type": raw.get("type")},
        "data": base64.b64encode(body).decode(),
    }


def rmq_batch(*records: dict[str, Any], queue: str = "q.work.0") -> dict[str, Any]:
    return {"eventSource": "aws:rmq", "rmqMessagesByQueue": {f"{queue}::mailplane": list(records)}}


INVALID = {"id": "bad-1", "subject": "alpha.test;reboot"}  # a hostile subject: EventInvalid


# --- decoding -------------------------------------------------------------------------------------------------------


def test_decode_the_sample_batch() -> None:
    first, second = decode(batch_file("domain.created"))
    assert (first.queue, first.vhost, first.msg.rung, first.redelivered) == ("q.work.0", "mailplane", 0, False)
    assert second.redelivered and first.error is None
    assert first.msg.headers == {"ce-subject": "alpha.test"}
    assert second.msg.headers == {"ce-subject": "bücher-shop.test"}  # UTF-8 byte array -> str
    assert first.msg.user_id == "billing" and first.msg.message_id == VALID_ID
    assert first.msg.content_type == "application/cloudevents+json" and first.msg.type == "domain.created"
    sample = load_event("domain.created")
    assert first.msg.body == json.dumps(sample, ensure_ascii=False, separators=(",", ":")).encode()


def test_decode_headers() -> None:
    rec = rmq_record("domain.created")
    rec["basicProperties"]["headers"] = {
        "text": {"bytes": list(b"abc")},
        "binary": {"bytes": [255, 0]},
        "number": 10,
        "table": {"inner": {"bytes": list(b"x")}, "n": 1},
        "array": [{"bytes": list(b"y")}, 2],
    }
    (got,) = decode(rmq_batch(rec))
    assert got.msg.headers == {
        "text": "abc",
        "binary": b"\xff\x00",
        "number": 10,
        "table": {"inner": "x", "n": 1},
        "array": ["y", 2],
    }


def test_decode_missing_properties() -> None:
    rec = rmq_record("domain.created", user=None)
    del rec["basicProperties"]["headers"]
    (got,) = decode({"eventSource": "aws:rmq", "rmqMessagesByQueue": {"q.work.1": [rec]}})
    assert (
        got.msg.user_id is None
        and got.msg.headers == {}
        and (got.queue, got.vhost, got.msg.rung) == ("q.work.1", "", 1)
    )


@pytest.mark.parametrize(
    ("queue", "rung"),
    [("q.work.0", 0), ("q.work.2", 2), ("q.work.10", 10), ("q.work", 0), ("q.work.parked", 0), ("", 0), ("q.w.²", 0)],
)
def test_rung_of_queue(queue: str, rung: int) -> None:
    assert rung_of(queue) == rung


@pytest.mark.parametrize(
    "event",
    [{}, {"eventSource": "aws:sqs", "Records": []}, {"eventSource": "aws:rmq"}, rmq_batch("nope")],  # type: ignore[arg-type]
)
def test_not_an_rmq_batch(event: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        list(decode(event))


def test_invalid_sample_batches_are_current() -> None:
    """events/aws-rmq/invalid/ (outside tests/test_samples.py's glob) matches what make.py renders."""
    spec = importlib.util.spec_from_file_location("aws_rmq_make", BATCHES / "make.py")
    assert spec is not None and spec.loader is not None
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    files = sorted(p.relative_to(BATCHES).as_posix() for p in (BATCHES / "invalid").glob("*.json"))
    assert files == sorted(f"{name}.json" for name in make.INVALID_BATCHES)
    for name in make.INVALID_BATCHES:
        assert make.render(name) == (BATCHES / f"{name}.json").read_text(encoding="utf-8"), name


# --- the batch ------------------------------------------------------------------------------------------------------


def test_sample_batch_runs_through_dispatch() -> None:
    script = Script(**{VALID_ID: "done", "b1f0c6de-3a43-4d0e-9a55-1f0b7c8e2a02": "done"})
    rt, publisher = runtime(script)
    assert process(batch_file("domain.created"), rt) == {
        "batchItemFailures": [],
        "processed": 2,
        "parked": 0,
        "retry": 0,
    }
    assert publisher.events() == ["domain.provisioned", "domain.provisioned"]
    assert [c[1:] for c in script.calls] == [("billing", 0, False), ("billing", 0, False)]


def test_mixed_sample_batch_parks_invalid_and_unauthorised_records() -> None:
    rt, publisher = runtime(Script(**{VALID_ID: "done"}))
    summary = process(batch_file("invalid/domain.created.mixed"), rt)
    assert summary == {"batchItemFailures": [], "processed": 4, "parked": 3, "retry": 0}
    reasons = [headers["x-mailplane-error"] for _, headers in publisher.parked()]
    assert reasons == ["EventInvalid", "NotAuthorized", "NotAuthorized"]
    parked = [h["x-mailplane-reason"] for _, h in publisher.parked()]
    assert "'monitoring' may not send domain.created" in parked[1] and "no validated user_id" in parked[2]
    assert publisher.events() == ["domain.provisioned", "domain.failed", "domain.failed", "domain.failed"]


def test_valid_invalid_and_retrying_record() -> None:
    rt, publisher = runtime(Script(**{VALID_ID: "done", "retry-1": "retry"}))
    event = rmq_batch(
        rmq_record("domain.created"),
        rmq_record("domain.created", **INVALID),
        rmq_record("domain.created", id="retry-1"),
    )
    with pytest.raises(BatchRetryError) as info:
        process(event, rt)
    assert info.value.summary == {"processed": 3, "parked": 1, "retry": 1}
    assert publisher.events() == ["domain.provisioned", "domain.failed"]  # the first two were settled
    ((body, headers),) = publisher.parked()
    assert json.loads(body)["id"] == "bad-1" and headers["x-mailplane-error"] == EventInvalid.__name__


def test_records_after_a_retry_still_run() -> None:
    script = Script(**{VALID_ID: "done", "retry-1": "retry"})
    rt, publisher = runtime(script)
    event = rmq_batch(rmq_record("domain.created", id="retry-1"), rmq_record("domain.created"))
    with pytest.raises(BatchRetryError):
        process(event, rt)
    assert [c[0] for c in script.calls] == ["retry-1", VALID_ID]
    assert publisher.events() == ["domain.provisioned"]


def test_record_without_user_id_is_parked() -> None:
    rt, publisher = runtime(Script())
    assert process(rmq_batch(rmq_record("domain.created", user=None)), rt)["parked"] == 1
    ((body, headers),) = publisher.parked()
    assert headers["x-mailplane-error"] == NotAuthorized.__name__ and headers["x-mailplane-publisher"] == ""
    assert "no validated user_id" in headers["x-mailplane-reason"]
    assert json.loads(body)["id"] == VALID_ID  # the parked copy is the exact body


def test_undecodable_data_is_parked_without_running() -> None:
    script = Script()
    rt, publisher = runtime(script)
    rec = rmq_record("domain.created")
    rec["data"] = "not base64!"
    assert process(rmq_batch(rec), rt)["parked"] == 1
    assert script.calls == []
    ((body, headers),) = publisher.parked()
    assert body == b"not base64!" and "not base64" in headers["x-mailplane-reason"]


def test_rung_and_last_attempt_come_from_the_queue() -> None:
    script = Script()
    rt, _ = runtime(script)
    last = len(rt.ports.settings.broker.retry_delays)  # the rung after the last retry delay is the last attempt
    for queue in (f"q.work.{last - 1}", f"q.work.{last}"):
        process(rmq_batch(rmq_record("domain.created", **INVALID), queue=queue), rt)
    assert [c[2:] for c in script.calls] == [(last - 1, False), (last, True)]


def test_unconfirmed_settle_retries_the_batch() -> None:
    rt, publisher = runtime(Script(**{VALID_ID: "done"}))
    publisher.fail = pika.exceptions.NackError([])
    with pytest.raises(BatchRetryError) as info:
        process(rmq_batch(rmq_record("domain.created"), rmq_record("domain.created", **INVALID)), rt)
    assert info.value.summary == {"processed": 2, "parked": 0, "retry": 2}


def test_redelivered_batch_runs_completed_records_again() -> None:
    """Without partial batch responses the whole batch comes back: the dispatch (with its ledger) sees it twice."""
    script = Script(**{VALID_ID: "done", "retry-1": "retry"})
    rt, _ = runtime(script)
    event = rmq_batch(rmq_record("domain.created"), rmq_record("domain.created", id="retry-1"))
    for _ in range(2):
        with pytest.raises(BatchRetryError):
            process(copy.deepcopy(event), rt)
    assert [c[0] for c in script.calls] == [VALID_ID, "retry-1", VALID_ID, "retry-1"]


def ledger_run(ledger: Ledger, handled: list[str]) -> Callable[..., dispatch.Result]:
    """The dispatch integration recommended for dispatch.run: claim, replay a completed outcome, or run and complete.

    The handler is a stub that provisions ``VALID_ID`` and meets a DNS timeout for any other event.
    """

    def run(body: bytes, publisher: str | None, ports: Ports, *, attempt: int = 0, last_attempt: bool = True) -> Any:
        event = parse(body, publisher=publisher)
        with ledger.claim("domain_created", event) as claim:
            if claim.completed and claim.result is not None:
                doc = claim.result
                return dispatch.Result("done", Outcome(**{**doc, "emit": tuple(doc["emit"])}), event)
            handled.append(event.id)
            if event.id != VALID_ID:
                return dispatch.Result("retry", None, event, DnsServfail("timeout"))
            emit = ({"type": "domain.provisioned", "id": f"domain_created:{event.id}"},)
            outcome = Outcome("domain_created", event.id, event.subject, "provisioned", emit=emit)
            claim.complete(outcome.to_json())
            return dispatch.Result("done", outcome, event)

    return run


def test_redelivered_batch_replays_completed_records_from_the_ledger() -> None:
    handled: list[str] = []
    rt, publisher = runtime(ledger_run(Ledger(MemoryStore(), owner="lambda", lease=LEASE, keep=KEEP), handled))
    event = rmq_batch(rmq_record("domain.created"), rmq_record("domain.created", id="retry-1"))
    for _ in range(2):
        with pytest.raises(BatchRetryError):
            process(copy.deepcopy(event), rt)
    assert handled == [VALID_ID, "retry-1", "retry-1"]  # the completed record did not run again ...
    assert publisher.events() == ["domain.provisioned", "domain.provisioned"]  # ... its outcome was re-published


# --- the container --------------------------------------------------------------------------------------------------


def test_import_does_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "MAILPLANE_CONFIG": str(tmp_path / "missing.toml")}
    code = "import functions.runtime.lambda_rmq as m, sys; assert m._runtime is None; assert 'boto3' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)


def test_ports_are_built_once_per_container(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []
    settings = make_settings()

    def build_ports(s: object, **_: object) -> Ports:
        built.append(s)
        return cast(Ports, cast(Any, type("P", (), {"settings": settings})()))

    monkeypatch.setattr(lambda_rmq, "_runtime", None)
    monkeypatch.setattr(main, "load_settings", lambda path=None: settings)
    monkeypatch.setattr(main, "build_ports", build_ports)
    empty = {"eventSource": "aws:rmq", "rmqMessagesByQueue": {}}
    for _ in range(3):
        assert lambda_rmq.handler(empty, object())["processed"] == 0
    assert built == [settings]


def test_bad_settings_fail_the_invocation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lambda_rmq, "_runtime", None)
    monkeypatch.delenv("MAILPLANE_CONFIG", raising=False)
    with pytest.raises(ConfigError):
        lambda_rmq.handler({"eventSource": "aws:rmq", "rmqMessagesByQueue": {}}, object())
    assert lambda_rmq._runtime is None  # not cached: the next invocation tries again
