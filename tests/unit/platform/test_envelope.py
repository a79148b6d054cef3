"""functions._core.platform.envelope: decoding bounds, normalisation, fingerprint, build(), schema loading."""

from __future__ import annotations

import copy
import json
import shutil
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from functions._core.platform import envelope
from functions._core.platform.envelope import INBOUND_TYPES, MAX_BODY, OUTBOUND_TYPES, build, fingerprint, parse
from functions._core.platform.errors import ConfigError, EventInvalid
from tests.conftest import load_event

WORKER = "urn:mailplane:worker"
T0 = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


def body(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode("utf-8")


def created(domain: str, subject: str | None = None) -> dict[str, Any]:
    event = load_event("domain.created")
    event["data"]["domain"] = domain
    event["subject"] = domain if subject is None else subject
    return event


def provisioned_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = copy.deepcopy(load_event("domain.provisioned")["data"])
    data.update(changes)
    return data


# --- types and the Envelope value -----------------------------------------------------------------------------------


def test_type_lists() -> None:
    assert (len(INBOUND_TYPES), len(OUTBOUND_TYPES)) == (7, 5)
    assert not set(INBOUND_TYPES) & set(OUTBOUND_TYPES)


def test_envelope_fields() -> None:
    env = parse(body(load_event("domain.created")), publisher="billing")
    assert (env.id, env.type, env.source, env.subject) == (
        "b1f0c6de-3a43-4d0e-9a55-1f0b7c8e2a01",
        "domain.created",
        "urn:mailplane:billing",
        "alpha.test",
    )
    assert env.time == T0 and env.publisher == "billing"
    assert env.raw == load_event("domain.created")
    assert parse(body(load_event("domain.created"))).publisher is None


def test_envelope_is_read_only() -> None:
    env = parse(body(load_event("domain.provisioned")))
    with pytest.raises(AttributeError):
        env.subject = "beta.test"  # type: ignore[misc]
    with pytest.raises(TypeError):
        env.data["domain"] = "beta.test"  # type: ignore[index]
    with pytest.raises(TypeError):
        env.data["changes"]["dns"] = []
    assert isinstance(env.data["changes"]["dns"], tuple)


@pytest.mark.parametrize("stamp", ["2026-11-27T10:30:00+01:00", "2026-11-27t09:30:00z", "2026-11-27T09:30:00.000Z"])
def test_time_is_aware(stamp: str) -> None:
    event = load_event("domain.created")
    event["time"] = stamp
    assert parse(body(event)).time == T0


def test_extension_attributes() -> None:
    event = load_event("domain.created")
    event.update(traceparent="00-abc-01", partitionkey=7, replayed=True)
    assert parse(body(event)).raw["partitionkey"] == 7
    event["nested"] = {"a": 1}
    with pytest.raises(EventInvalid, match=r"^nested: "):
        parse(body(event))


# --- domain normalisation -------------------------------------------------------------------------------------------


def test_u_label_becomes_a_label() -> None:
    env = parse(body(load_event("domain.created.idn")))
    assert env.data["domain"] == env.subject == "xn--bcher-shop-9db.test"
    assert env.raw["data"]["domain"] == "bücher-shop.test"


@pytest.mark.parametrize(
    ("domain", "subject"),
    [("ALPHA.Test", "ALPHA.Test"), ("alpha.test", "Alpha.TEST"), ("alpha.test.", "alpha.test"), ("Alpha.test", None)],
)
def test_case_and_trailing_dot_are_normalised(domain: str, subject: str | None) -> None:
    env = parse(body(created(domain, subject)))
    assert env.data["domain"] == env.subject == "alpha.test"


def test_subject_compared_after_normalisation() -> None:
    env = parse(body(created("bücher-shop.test", "xn--bcher-shop-9db.test")))
    assert env.subject == "xn--bcher-shop-9db.test"
    with pytest.raises(EventInvalid, match="^subject: 'beta.test' does not match data.domain 'alpha.test'$"):
        parse(body(created("alpha.test", "beta.test")))


def test_failed_keeps_raw_domain() -> None:
    env = parse(body(load_event("domain.failed")))
    assert env.data["domain"] == env.subject == "alpha.test;rm -rf"


# --- decoding bounds ------------------------------------------------------------------------------------------------


def test_size_bound() -> None:
    raw = body(load_event("domain.created"))
    padded = raw + b" " * (MAX_BODY - len(raw))
    assert parse(padded).subject == "alpha.test"
    with pytest.raises(EventInvalid, match=f"^body: {MAX_BODY + 1} bytes exceeds the limit of {MAX_BODY}$"):
        parse(padded + b" ")


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        (b"", "body: not JSON"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b"{'id': 1}", "body: not JSON"),
        (b'{"id": "a", "id": "b"}', "body: duplicate key 'id'"),
        (b'{"id": NaN}', "NaN is not a JSON number"),
        (b'["domain.created"]', "event: the body must be a JSON object, not list"),
        (b'{"id": "\\ud800"}', "unpaired surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, "body: "),
        (b'{"n": 1' + b"0" * 5000 + b"}", "body: not acceptable JSON"),
    ],
)
def test_undecodable_bodies(raw: bytes, expect: str) -> None:
    with pytest.raises(EventInvalid) as info:
        parse(raw)
    assert expect in str(info.value)


def test_hostile_input_is_not_echoed() -> None:
    event = load_event("domain.created")
    event["data"]["customer_id"] = "X" * 5000 + "\n<script>"
    with pytest.raises(EventInvalid) as info:
        parse(body(event))
    message = str(info.value)
    assert message.startswith("data.customer_id: 'XXX")
    assert message.count("X") <= 80 and "\n" not in message and "<script>" not in message
    event = created("a" * 60 + "\n" + "b" * 180 + ".test")
    with pytest.raises(EventInvalid) as info:
        parse(body(event))
    assert len(str(info.value)) <= 300 and "b" * 81 not in str(info.value)


def test_integers_are_strict() -> None:
    event = load_event("domain.created")
    event["data"]["plan"]["mailboxes"] = True
    with pytest.raises(EventInvalid, match=r"^data.plan.mailboxes: True is not of type 'integer'$"):
        parse(body(event))


# --- fingerprint ----------------------------------------------------------------------------------------------------


def test_fingerprint_ignores_key_order_and_envelope_metadata() -> None:
    event = load_event("domain.created")
    reordered = {k: event[k] for k in reversed(list(event))}
    reordered["data"] = {k: event["data"][k] for k in reversed(list(event["data"]))}
    reordered["data"]["plan"] = dict(reversed(list(event["data"]["plan"].items())))
    reordered.update(id="another-delivery", time="2026-11-28T00:00:00Z", source="urn:mailplane:replay")
    a, b = fingerprint(parse(body(event))), fingerprint(parse(body(reordered)))
    assert a == b and len(a) == 64 and int(a, 16) >= 0


def test_fingerprint_ignores_idn_spelling() -> None:
    u_label = load_event("domain.created.idn")
    a_label = copy.deepcopy(u_label)
    a_label["data"]["domain"] = a_label["subject"] = "XN--BCHER-SHOP-9DB.test"
    assert fingerprint(parse(body(u_label))) == fingerprint(parse(body(a_label)))


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e["data"]["plan"].update(mailboxes=11),
        lambda e: e["data"].update(dkim={"delegate": False}),
        lambda e: e["data"]["dns"].update(hosted=False),
        lambda e: e.update(subject="beta.test") or e["data"].update(domain="beta.test"),
    ],
)
def test_fingerprint_sees_changes(change: Any) -> None:
    event = load_event("domain.created")
    changed = copy.deepcopy(event)
    change(changed)
    assert fingerprint(parse(body(event))) != fingerprint(parse(body(changed)))


def test_fingerprint_sees_type() -> None:
    rotate = load_event("key.rotate")
    env = parse(body(rotate))
    assert fingerprint(env) != fingerprint(envelope.Envelope(**{**env.__dict__, "type": "key.rotated"}))


# --- build() --------------------------------------------------------------------------------------------------------


def test_build_outbound_event() -> None:
    event = build("domain.provisioned", "alpha.test", provisioned_data(), source=WORKER, id="domain_created:1", time=T0)
    assert event == build(
        "domain.provisioned", "alpha.test", provisioned_data(), source=WORKER, id="domain_created:1", time=T0
    )
    assert event["time"] == "2026-11-27T09:30:00Z" and event["id"] == "domain_created:1"
    assert event["specversion"] == "1.0" and event["datacontenttype"] == "application/json"
    assert event["dataschema"] == "https://mailplane.invalid/schemas/domain.provisioned.json"
    env = parse(body(event))
    assert env.type == "domain.provisioned" and env.data["changes"]["mailcow"][0] == "create domain alpha.test"


def test_build_normalises_and_defaults() -> None:
    data = provisioned_data(domain="Bücher-Shop.test")
    event = build("domain.provisioned", "bücher-shop.test", data, source=WORKER)
    assert event["subject"] == event["data"]["domain"] == "xn--bcher-shop-9db.test"
    assert data["domain"] == "Bücher-Shop.test"
    assert (
        len(event["id"]) == 36
        and event["id"] != build("domain.provisioned", "alpha.test", provisioned_data(), source=WORKER)["id"]
    )
    assert abs(datetime.fromisoformat(event["time"]) - datetime.now(UTC)) < timedelta(minutes=1)
    local = build(
        "key.rotated",
        "alpha.test",
        load_event("key.rotated")["data"],
        source=WORKER,
        time=datetime(2026, 11, 27, 10, 30, tzinfo=timezone(timedelta(hours=1))),
    )
    assert local["time"] == "2026-11-27T09:30:00Z"


def test_build_accepts_frozen_data() -> None:
    env = parse(body(load_event("node.drained")))
    event = build("node.drained", env.subject, env.data, source=WORKER, id="x", time=T0)
    assert event["data"]["in_rotation"] == load_event("node.drained")["data"]["in_rotation"]
    assert isinstance(event["data"]["in_rotation"], list)


@pytest.mark.parametrize(
    ("type_", "subject", "data", "expect"),
    [
        (
            "domain.provisioned",
            "beta.test",
            provisioned_data(domain="beta.test", status="awaiting_dns"),
            "data: 'instructions' is a required property",
        ),
        ("domain.provisioned", "alpha.test", provisioned_data(status="done"), "data.status: 'done' is not one of"),
        ("domain.provisioned", "beta.test", provisioned_data(), "subject: 'beta.test' does not match"),
        ("key.rotated", "alpha.test", {"domain": "alpha.test"}, "'selector' is a required property"),
        ("node.drained", "pmg2", {**load_event("node.drained")["data"], "sequence": -1}, "data.sequence: -1"),
        (
            "domain.failed",
            "x",
            {"domain": "x", "reason": "", "error": "E", "attempt": 0, "parked": True},
            "data.reason: '' should be non-empty",
        ),
        ("domain.exploded", "alpha.test", {}, "type: 'domain.exploded' is not one of"),
    ],
)
def test_build_validates(type_: str, subject: str, data: dict[str, Any], expect: str) -> None:
    with pytest.raises(EventInvalid) as info:
        build(type_, subject, data, source=WORKER, id="x", time=T0)
    assert expect in str(info.value)


def test_build_refuses_naive_time_and_bad_source() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build("node.drained", "pmg2", load_event("node.drained")["data"], source=WORKER, time=datetime(2026, 1, 1))
    with pytest.raises(EventInvalid, match="^source: 'not a uri' is not a 'uri-reference'$"):
        build("node.drained", "pmg2", load_event("node.drained")["data"], source="not a uri")


# --- schema loading -------------------------------------------------------------------------------------------------


def test_schemas_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo_schemas = envelope.schemas_dir()
    copy_dir = tmp_path / "schemas"
    shutil.copytree(repo_schemas, copy_dir)
    monkeypatch.setenv("MAILPLANE_SCHEMAS_DIR", str(copy_dir))
    assert envelope.schemas_dir() == copy_dir
    assert parse(body(load_event("node.up"))).subject == "pmg2"
    monkeypatch.setenv("MAILPLANE_SCHEMAS_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="envelope.schema.json"):
        parse(body(load_event("node.up")))
    monkeypatch.setenv("MAILPLANE_SCHEMAS_DIR", "")
    with pytest.raises(ConfigError, match="set but empty"):
        parse(body(load_event("node.up")))


def test_schema_with_wrong_id_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(envelope.schemas_dir(), tmp_path, dirs_exist_ok=True)
    schema = json.loads((tmp_path / "node.up.schema.json").read_text())
    schema["$id"] = "https://example.invalid/other.json"
    (tmp_path / "node.up.schema.json").write_text(json.dumps(schema))
    monkeypatch.setenv("MAILPLANE_SCHEMAS_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"\$id must be"):
        parse(body(load_event("node.up")))
