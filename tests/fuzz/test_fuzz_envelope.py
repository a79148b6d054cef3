"""Fuzzing the envelope and data parser (functions/_core/platform/envelope.py: CloudEvents envelope, the per-type
schemas in schemas/, domain normalisation).

Every body is either accepted in the documented normal form or refused with ``EventInvalid`` and a one-line
reason that starts with where the fault is; nothing else is ever raised. The normal form: ``id``, ``type``,
``source`` as sent; ``time`` the timezone-aware instant sent; every ``domain`` field of ``data`` (any depth) is
``normalize_domain`` of the value sent (not in ``domain.failed``, which reports invalid input as received), every
other value as sent; the subject is the normalised domain and equals ``data.domain`` (``domain.*``, ``key.*``) or
equals ``data.node`` (``node.*``). It is a fixed point: the normal form re-serialised parses to the same event
with the same fingerprint.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pytest
from hypothesis import event as tally
from hypothesis import example, given, note
from hypothesis import strategies as st

from functions._core.platform.envelope import MAX_BODY, Envelope, fingerprint, parse
from functions._core.platform.errors import EventInvalid
from functions._core.platform.names import normalize_domain
from tests.fuzz.strategies import (
    MUTATIONS,
    SAMPLES,
    SCHEMAS,
    base_events,
    dumps,
    fuzz,
    hostile_bodies,
    mutate,
    samples,
    seeds,
    valid_events,
)

WHERE = re.compile(r"^(body|event|subject|dataschema|data|[a-z0-9]{1,20})([.\[:]| )")
DOMAIN_TYPES = ("domain.created", "domain.deleted", "domain.provisioned", "key.rotate", "key.rotated")
NODE_TYPES = ("node.down", "node.up", "node.drained", "node.restored")
ALPHA = SAMPLES["domain.created.json"]


def thaw(value: Any) -> Any:
    """An envelope's read-only data as plain JSON values."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def expected_data(raw: Any) -> Any:
    """``raw`` data with every ``domain`` string normalised (the oracle: ``normalize_domain`` field by field)."""
    if isinstance(raw, dict):
        return {
            k: normalize_domain(v) if k == "domain" and isinstance(v, str) else expected_data(v) for k, v in raw.items()
        }
    if isinstance(raw, list):
        return [expected_data(v) for v in raw]
    return raw


def assert_normal_form(env: Envelope) -> None:
    raw = env.raw
    assert (env.id, env.type, env.source) == (raw["id"], raw["type"], raw["source"])
    assert env.time.tzinfo is not None and env.time == datetime.fromisoformat(raw["time"].upper())
    data = thaw(env.data)
    assert data == (raw["data"] if env.type == "domain.failed" else expected_data(raw["data"]))
    if env.type in DOMAIN_TYPES:
        assert env.subject == data["domain"] == normalize_domain(raw["subject"])
    elif env.type in NODE_TYPES:
        assert env.subject == raw["subject"] == data["node"]
    again = parse(dumps({**raw, "subject": env.subject, "data": data}))  # the normal form is a fixed point
    assert (again.subject, thaw(again.data), fingerprint(again)) == (env.subject, data, fingerprint(env))


def parsed_or_refused(body: bytes) -> Envelope | None:
    """The event in normal form, or None after checking the refusal (EventInvalid, a one-line located reason)."""
    try:
        env = parse(body)
    except EventInvalid as exc:
        reason = str(exc)
        assert reason and "\n" not in reason and len(reason) <= 300, reason
        assert WHERE.match(reason), reason
        return None
    assert len(body) <= MAX_BODY
    assert_normal_form(env)
    return env


def body_of(event: dict[str, Any]) -> bytes:
    return dumps(event)


@fuzz()
@given(st.one_of(valid_events, samples))
@example({**ALPHA, "subject": "ALPHA.test.", "data": {**ALPHA["data"], "domain": "Alpha\uff0eTEST\u3002"}})
@example({**ALPHA, "time": "2026-11-27t09:30:00.123z"})
def test_valid_events_are_accepted_in_normal_form(event: dict[str, Any]) -> None:
    note(json.dumps(event, ensure_ascii=False))
    assert parsed_or_refused(dumps(event)) is not None, "a valid event was refused"


def schema_at(event: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any] | None:
    """The schema that governs the value at ``path`` of ``event`` (None: an extension or an unknown type)."""
    envelope = SCHEMAS["envelope"]
    if not path:
        return envelope
    if path[0] != "data":
        return envelope["properties"].get(path[0])
    data_schema = SCHEMAS.get(str(event.get("type")))
    if data_schema is None:
        return None
    node: dict[str, Any] | None = data_schema
    for key in path[1:]:
        node = _deref(node, data_schema)
        if node is None:
            return None
        node = node.get("items") if isinstance(key, int) else node.get("properties", {}).get(key)
    return _deref(node, data_schema)


def _deref(node: dict[str, Any] | None, root: dict[str, Any]) -> dict[str, Any] | None:
    if node is not None and "$ref" in node:
        return _deref(root["$defs"][node["$ref"].removeprefix("#/$defs/")], root)
    return node


def must_refuse(how: str, before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether the contract forbids this mutation: a required attribute or field removed, a field of a typed value
    retyped, an unknown field added to a closed object, a hostile domain or subject."""
    diff = _difference(before, after)
    if diff is None:
        return False
    path, key = diff[:-1], diff[-1]
    if how == "remove":
        parent = schema_at(before, path)
        return parent is not None and key in parent.get("required", ())
    if how == "retype":
        schema = schema_at(before, diff)
        return schema is not None and any(k in schema for k in ("type", "const", "enum", "pattern"))
    if how == "extra" and path and path[0] == "data":
        parent = schema_at(before, path)
        known = parent.get("properties", {}) if parent else {}
        return parent is not None and parent.get("additionalProperties") is False and key not in known
    if how == "hostile-name":
        domain_field = diff[0] == "data" and key == "domain" and before.get("type") != "domain.failed"
        subject = diff == ("subject",) and before.get("type") in DOMAIN_TYPES
        return domain_field or subject
    return False


def _difference(before: Any, after: Any, path: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """The path of the one mutated value (a removed or added key: its own path), None if nothing changed."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = set(before) ^ set(after)
        if keys:
            return (*path, keys.pop())
        for k in before:
            found = _difference(before[k], after[k], (*path, k))
            if found is not None:
                return found
        return None
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            found = _difference(b, a, (*path, i))
            if found is not None:
                return found
        return None
    return None if before == after and type(before) is type(after) else path


def check_mutation(case: tuple[dict[str, Any], str, int]) -> None:
    before, how, seed = case
    after = mutate(before, how, random.Random(seed))
    note(f"{how}: {json.dumps(after, ensure_ascii=False)[:3000]}")
    env = parsed_or_refused(dumps(after))
    if must_refuse(how, before, after):
        assert env is None, f"{how} was accepted"


def check_hostile(body: bytes) -> None:
    note(repr(body[:2000]))
    with pytest.raises(EventInvalid) as info:
        parse(body)
    assert WHERE.match(str(info.value)), str(info.value)


def check_any(body: bytes) -> None:
    note(repr(body[:2000]))
    parsed_or_refused(body)


# The classes of input share one property, each with its own expectation, (class, value): one property per class
# would double the CI time (most of it is Hypothesis' per-example overhead).
mutations = st.tuples(base_events, st.sampled_from(MUTATIONS), seeds).map(lambda v: ("mutation", v))
inputs = st.one_of(
    mutations,
    hostile_bodies.map(lambda v: ("hostile", v)),
    st.binary(max_size=300).map(lambda v: ("any", v)),
)
CHECKS: dict[str, Any] = {"mutation": check_mutation, "hostile": check_hostile, "any": check_any}


@fuzz()
@given(inputs)
@example(("mutation", (ALPHA, "remove", 0)))
@example(("any", b'{"id": "x"' + b"[" * 100_000))
@example(("any", body_of({**ALPHA, "id": "abc\n"})))  # bug found writing the generators: Python's $ allowed a final \n
@example(("any", body_of({**ALPHA, "dataschema": ["x"]})))  # bug found by a fuzz run: TypeError from urlsplit
@example(("any", body_of({**ALPHA, "dataschema": 5})))
@example(("hostile", b"[" * 100_000))
@example(("hostile", b'{"specversion": "1.0", "specversion": "1.0"}'))
@example(("hostile", body_of(ALPHA).replace(b"alpha.test", b"alpha\xff.test")))
@example(("hostile", body_of(ALPHA).replace(b"alpha.test", b"alpha\x00.test")))
def test_mutated_and_hostile_bodies_are_refused_where_the_contract_forbids_them(case: Any) -> None:
    kind, value = case
    CHECKS[kind](value)
    tally(kind if kind != "mutation" else f"mutation: {value[1]}")
