"""cert.renew through the handler: the samples parse, the outcome lists each step's system, a replay writes nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from functions import ROUTES, cert_renew
from functions._core.platform.envelope import parse
from functions._core.platform.errors import EventInvalid
from tests.conftest import load_event
from tests.stackenv import REPO
from tests.unit.model.test_dane import HOLD, make_world


def event(event_id: str, reason: str, node: str = "pmg1") -> bytes:
    raw = load_event("cert.renew")
    raw["id"], raw["subject"], raw["data"] = event_id, node, {"node": node, "reason": reason}
    return json.dumps(raw).encode()


def test_routed_and_the_samples_parse() -> None:
    assert ROUTES["cert.renew"].name == "cert_renew"
    for name in ("cert.renew", "cert.renew.rollover"):
        ev = parse(json.dumps(load_event(name)).encode(), publisher="scheduler")
        assert ev.type == "cert.renew" and ev.subject == ev.data["node"]


@pytest.mark.parametrize("sample", sorted((REPO / "events" / "invalid").glob("cert-renew-*.json")))
def test_invalid_samples_are_refused(sample: Path) -> None:
    case = json.loads(sample.read_text())
    with pytest.raises(EventInvalid, match=re.escape(case["expect"])):
        parse(json.dumps(case["event"]).encode(), publisher="scheduler")


def test_outcome_names_each_step_and_a_replay_changes_nothing() -> None:
    w = make_world()
    first = cert_renew.handle(parse(event("r1", "rollover")), w.ports)
    assert first.status == "pending" and first.detail["phase"] == "PUBLISHED"
    assert first.changes["dns"] == (
        "~ TLSA _25._tcp.pmg1.faster.test (old withdrawn / adopted)",
        "~ TLSA _25._tcp.pmg1.faster.test current+next",
    )
    assert first.detail["next_check"] is not None
    assert "PRIVATE" not in json.dumps(first.to_json())
    again = cert_renew.handle(parse(event("r1", "rollover")), w.ports)
    assert again.writes == 0 and again.status == "pending"
    w.clock.now += HOLD
    nudge = cert_renew.handle(parse(event("n1", "nudge")), w.ports)
    assert set(nudge.changes) >= {"acme", "pmg", "smtp"} and nudge.detail["phase"] == "VERIFIED"


def test_not_a_node() -> None:
    w = make_world()
    with pytest.raises(EventInvalid):
        cert_renew.handle(parse(event("x", "rollover", "mx9")), w.ports)
