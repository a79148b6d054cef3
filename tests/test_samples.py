"""The samples in events/ and the contracts in schemas/ agree: every sample validates, every schema has a sample,
every invalid sample is refused for its stated reason, the aws:rmq batches embed the samples, and asyncapi.yaml
references every schema with the publishers of infra/platform.toml."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from functions._core.platform.envelope import INBOUND_TYPES, MAX_BODY, OUTBOUND_TYPES, dataschema_uri, parse
from functions._core.platform.errors import EventInvalid
from tests.stackenv import REPO

EVENTS = REPO / "events"
SCHEMAS = REPO / "schemas"
TYPES = INBOUND_TYPES + OUTBOUND_TYPES
SAMPLES = sorted(EVENTS.glob("*.json"))
INVALID = sorted((EVENTS / "invalid").glob("*.json"))
BATCHES = sorted((EVENTS / "aws-rmq").glob("*.json"))
ASYNCAPI = SCHEMAS / "asyncapi.yaml"


def sample_type(path: Path) -> str:
    """``domain.created.idn.json`` -> ``domain.created``: the known type the file name starts with."""
    stem = path.name.removesuffix(".json")
    found = [t for t in TYPES if stem == t or stem.startswith(t + ".")]
    assert found, f"{path.name}: name must be <type>[.<variant>].json with a known type"
    return max(found, key=len)


def load_make() -> ModuleType:
    spec = importlib.util.spec_from_file_location("aws_rmq_make", EVENTS / "aws-rmq" / "make.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- valid samples --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_is_valid(path: Path) -> None:
    raw = json.loads(path.read_text(encoding="utf-8"))
    env = parse(path.read_bytes())
    assert env.type == sample_type(path)
    assert raw["source"].startswith("urn:mailplane:")
    assert env.time.tzinfo is not None
    assert raw.get("dataschema", dataschema_uri(env.type)) == dataschema_uri(env.type)


def test_every_schema_has_a_sample() -> None:
    schema_types = {p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")} - {"envelope"}
    assert schema_types == set(TYPES)
    assert schema_types <= {sample_type(p) for p in SAMPLES}


@pytest.mark.parametrize("name", ["envelope", *TYPES])
def test_schema_id_matches_its_file(name: str) -> None:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))
    assert schema["$id"] == dataschema_uri(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_required_variants_exist() -> None:
    names = {p.name for p in SAMPLES}
    assert {"domain.created.idn.json", "domain.created.external.json", "key.rotate.compromised.json"} <= names
    idn = json.loads((EVENTS / "domain.created.idn.json").read_text(encoding="utf-8"))
    assert not idn["data"]["domain"].isascii()
    assert json.loads((EVENTS / "domain.created.external.json").read_text())["data"]["dns"]["hosted"] is False


# --- invalid samples ------------------------------------------------------------------------------------------------


def test_enough_invalid_samples() -> None:
    assert len(INVALID) >= 15


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_sample_is_refused(path: Path) -> None:
    case: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    assert set(case) == {"reason", "expect", "event"} and case["reason"] and case["expect"]
    with pytest.raises(EventInvalid) as info:
        parse(json.dumps(case["event"], ensure_ascii=False).encode("utf-8"))
    message = str(info.value)
    assert case["expect"] in message
    assert "\n" not in message and len(message) <= 300


# --- aws:rmq batches ------------------------------------------------------------------------------------------------


def test_aws_rmq_batches_are_current() -> None:
    make = load_make()
    assert sorted(f"{name}.json" for name in make.BATCHES) == [p.name for p in BATCHES]
    for name in make.BATCHES:
        assert make.render(name) == (EVENTS / "aws-rmq" / f"{name}.json").read_text(encoding="utf-8"), name


@pytest.mark.parametrize("path", BATCHES, ids=lambda p: p.name)
def test_aws_rmq_batch_embeds_the_samples(path: Path) -> None:
    make = load_make()
    batch = json.loads(path.read_text(encoding="utf-8"))
    assert batch["eventSource"] == "aws:rmq"
    (queue, records), *rest = batch["rmqMessagesByQueue"].items()
    assert not rest and queue == "q.work.0::mailplane"
    sources = make.BATCHES[path.name.removesuffix(".json")]
    assert len(records) == len(sources)
    for record, sample in zip(records, sources, strict=True):
        body = base64.b64decode(record["data"], validate=True)
        props = record["basicProperties"]
        assert json.loads(body) == json.loads((EVENTS / f"{sample}.json").read_text(encoding="utf-8"))
        env = parse(body, publisher=props["userId"])
        assert env.publisher == "billing" and props["deliveryMode"] == 2
        assert props["messageId"] == env.id and props["type"] == env.type and props["bodySize"] == len(body)
        assert bytes(props["headers"]["ce-subject"]["bytes"]).decode("utf-8") == env.raw["subject"]
        assert len(body) < MAX_BODY


# --- AsyncAPI -------------------------------------------------------------------------------------------------------


def _asyncapi_text() -> str:
    return ASYNCAPI.read_text(encoding="utf-8")


def _camel(routing_key: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in routing_key.split("."))


def test_asyncapi_references_every_schema() -> None:
    text = _asyncapi_text()
    assert re.search(r"^asyncapi: 3\.\d+\.\d+$", text, re.M)
    for path in SCHEMAS.glob("*.schema.json"):
        assert f"$ref: './{path.name}'" in text, path.name
    for routing_key in TYPES:
        assert re.search(rf"^  {re.escape(routing_key)}:\n    address: {re.escape(routing_key)}$", text, re.M)
    assert "name: events\n          type: topic" in text and "name: parked\n          type: direct" in text
    assert text.count("vhost: mailplane") >= 2


def test_asyncapi_publishers_match_platform() -> None:
    """The send operation of each inbound type uses the user_id allowed in infra/platform.toml; outbound: worker."""
    text = _asyncapi_text()
    allowed = tomllib.loads((REPO / "infra" / "platform.toml").read_text(encoding="utf-8"))["broker"]["publishers"]
    for routing_key in TYPES:
        block = re.search(rf"^  send{_camel(routing_key)}:\n((?:    .*\n)+)", text, re.M)
        assert block, routing_key
        publisher = re.search(r"operationBindings/(\w+)'", block.group(1))
        assert publisher, routing_key
        want = allowed.get(routing_key, ["worker"]) if routing_key in INBOUND_TYPES else ["worker"]
        assert [publisher.group(1)] == want, routing_key
    for user in ("billing", "scheduler", "monitoring", "worker"):
        assert re.search(
            rf"^    {user}:\n      amqp:\n        userId: {user}\n        deliveryMode: 2\n"
            r"        mandatory: true\n",
            text,
            re.M,
        ), user


def test_asyncapi_matches_topology() -> None:
    """The exchanges named here exist in infra/rabbitmq/definitions.json and bind every routing key."""
    definitions = json.loads((REPO / "infra" / "rabbitmq" / "definitions.json").read_text(encoding="utf-8"))
    exchanges = {e["name"]: e["type"] for e in definitions["exchanges"] if e["vhost"] == "mailplane"}
    assert exchanges["events"] == "topic" and exchanges["parked"] == "direct"
    bound = {b["routing_key"] for b in definitions["bindings"] if b["source"] == "events"}
    assert bound == set(TYPES)
    assert {b["routing_key"] for b in definitions["bindings"] if b["source"] == "parked"} == {"parked"}


def test_asyncapi_structure() -> None:
    """With PyYAML (not a project dependency): every local $ref resolves and every file $ref exists."""
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(_asyncapi_text())
    assert set(doc["channels"]) == {*TYPES, "parked"}
    assert {op["action"] for op in doc["operations"].values()} == {"send", "receive"}
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    for ref in refs:
        if ref.startswith("#/"):
            target = doc
            for part in ref[2:].split("/"):
                target = target[part]
        else:
            assert (SCHEMAS / ref).is_file(), ref


def test_retry_ladder_matches_the_local_settings() -> None:
    """The worker counts rungs from the settings; the broker's wait queues must have the same delays."""
    from tests.fakes.settings import make_settings

    defs = json.loads((REPO / "infra" / "rabbitmq" / "definitions.json").read_text())
    ttls = {p["pattern"]: p["definition"].get("message-ttl") for p in defs["policies"]}
    delays = make_settings().broker.retry_delays
    assert [ttls.get(rf"^q\.wait\.{k}$") for k in range(1, len(delays) + 1)] == [d * 1000 for d in delays]
    work = {p["pattern"]: p["definition"] for p in defs["policies"]}
    assert work[rf"^q\.work\.{len(delays)}$"]["dead-letter-exchange"] == "parked"
    assert {q["name"] for q in defs["queues"]} >= {f"q.work.{k}" for k in range(len(delays) + 1)}
