"""renew-due: which nodes get a cert.renew (one node at a time), with deterministic ids, over the model's state."""

from __future__ import annotations

import datetime as dt
import json

from functions._core.platform.envelope import parse
from functions.ops import renew_due
from tests.unit.model.test_dane import NODES, finish, make_world


def test_one_start_then_nudges_then_renewal_when_near_expiry() -> None:
    w = make_world()
    s, store = w.ports.settings, w.store
    for n in NODES[1:]:
        w.run(n, f"adopt-{n}")  # a nudge only adopts: the TLSA of what the node presents
    first = renew_due.run(store, s, w.clock.now, None)
    assert [(d.node, d.reason) for d in first] == [("pmg1", "rollover")]  # never seen: roll to a key we hold
    published: list[dict[str, object]] = []
    renew_due.run(store, s, w.clock.now, published.append)
    ev = parse(json.dumps(published[0]).encode(), publisher="scheduler")
    assert ev.type == "cert.renew" and ev.subject == "pmg1" and ev.data["reason"] == "rollover"
    w.run("pmg1", ev.id, "rollover")
    assert [(d.node, d.reason) for d in renew_due.run(store, s, w.clock.now, None)] == [("pmg1", "nudge")]
    finish(w, "pmg1", ev.id, "rollover")
    for n in NODES[1:]:
        finish(w, n, f"roll-{n}", "rollover")
    assert renew_due.run(store, s, w.clock.now, None) == []
    later = w.clock.now + dt.timedelta(days=65)
    due = renew_due.run(store, s, later, None)
    assert [(d.node, d.reason) for d in due] == [("pmg1", "scheduled")]
    assert renew_due.event_for(due[0], later)["id"] == renew_due.event_for(due[0], later + dt.timedelta(hours=2))["id"]
