"""`mailplane adopt`'s plan output and the events it publishes (with the in-process fakes)."""

from __future__ import annotations

import datetime as dt
import json

from rich.console import Console

from functions._core.model import adoption
from functions._core.platform.envelope import parse
from functions.ops import adopt as adopt_mod
from tests.unit.test_domain_adopt import BY_NAME, D, World, world  # noqa: F401 - the fixture

NOW = dt.datetime(2026, 12, 2, 4, 0, tzinfo=dt.UTC)


def _text(p: adoption.Plan) -> str:
    console = Console(width=300, record=True)
    adopt_mod.render(p, console)
    return console.export_text()


def test_plan_shows_each_class_action_and_risk(world: World) -> None:  # noqa: F811
    world.build(BY_NAME["hard-fail-spf"])
    text = _text(adoption.plan(D, world.ports))
    assert "different" in text and f"--fix {D}/TXT" in text and "-all vs ~all" in text
    assert "dns: + TXT _mailplane.handmade.test" in text


def test_refused_plan_says_why_and_lists_no_changes(world: World) -> None:  # noqa: F811
    world.build(BY_NAME["foreign-autoconfig"])
    p = adoption.plan(D, world.ports)
    text = _text(p)
    assert "refused:" in text and "autoconfig" in text and "dns:" not in text
    data = adopt_mod.as_json([p])
    assert data["refused"] == 1 and data["domains"][0]["refusals"]


def test_weak_key_and_managed_domains_are_reported(world: World) -> None:  # noqa: F811
    world.build(BY_NAME["weak-key"])
    assert "1024 bits" in _text(adoption.plan(D, world.ports))
    assert "managed by mailplane already" in _text(adoption.Plan(D, managed=True))


def test_published_events_are_valid_for_their_publishers() -> None:
    adopt = adopt_mod.adopt_event(D, customer_id="C-1", fix=("@/TXT",))
    env = parse(json.dumps(adopt).encode(), publisher="operator")
    assert env.type == "domain.adopt" and dict(env.data) == {"domain": D, "customer_id": "C-1", "fix": ("@/TXT",)}
    rotate = adopt_mod.rotate_event(D, "dkim", NOW)
    env = parse(json.dumps(rotate).encode(), publisher="scheduler")
    assert dict(env.data) == {"domain": D, "reason": "scheduled", "key_id": f"{D}:dkim"}
