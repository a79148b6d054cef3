"""The mixed event stream of a chaos run, and what each message must end as.

Kinds (``Message.kind``) and what the audit expects of them:

=============  ========================================================================  =================
kind           what                                                                      expected end
=============  ========================================================================  =================
create         domain.created for a new domain (zone added first; some dns.hosted=false)  completed
quota          domain.created again for an existing domain, later time, new quotas        completed; one that
                                                                                          lowers aliases to 0
                                                                                          (Mailcow cannot) may
                                                                                          be refused instead
duplicate      the very same message (same id and body) published again                   completed (replay)
twin           same id as a create, other body (customer_id): a hostile id reuse          one of the two parks
invalid        schema-invalid, not JSON, hostile domain names, the provider's own zone     parked
publisher      wrong publisher (monitoring/scheduler sending domain.created) or no user_id parked
rotate         key.rotate "scheduled" (scheduler) for a hosted domain created earlier        completed, or parked
                                                                                          "no handler" if
                                                                                          key.rotate has none
node           node.down / node.up of pmg3 with increasing sequence                       completed
=============  ========================================================================  =================
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from functions import ROUTES
from functions._core.platform.config import Settings
from tests.conftest import load_event

BASE_TIME = dt.datetime(2026, 11, 27, 9, 30, tzinfo=dt.UTC)
HOSTILE = (
    "*.{d}",
    'a"b.{d}',
    "a b.{d}",
    "{d}\nevil.test",
    "{d};rm",
    "{long}.{d}",
    "{d} trailing",
)
SHARES = {  # of the whole stream; the rest is made of duplicates
    "create": 0.16,
    "quota": 0.07,
    "twin": 0.01,
    "invalid": 0.12,
    "publisher": 0.10,
    "rotate": 0.04,
    "node": 0.02,
}


@dataclass
class Message:
    """One publication: ``body`` goes to ``routing_key`` as ``user`` (``user_id`` None = property left unset)."""

    kind: str
    mid: str  # AMQP message_id (= event id when the body has one)
    routing_key: str
    user: str
    user_id: str | None
    subject: str
    body: bytes
    event: dict[str, Any] | None = None  # the parsed body of a well-formed event

    @property
    def expect(self) -> str:
        if self.kind in ("create", "quota", "duplicate") and self.refusable:
            return "complete or refuse"
        if self.kind in ("create", "quota", "duplicate", "node"):
            return "complete"
        if self.kind == "twin":
            return "either"
        if self.kind == "rotate":
            return "complete" if "key.rotate" in ROUTES else "park"
        return "park"

    @property
    def refusable(self) -> bool:
        """A domain.created asking for 0 aliases: Mailcow's edit/domain cannot lower aliases to 0, so the product
        refuses it up front (REFUSED_ALIASES in the reason) when the domain exists with other limits; it completes
        when it creates the domain, finds 0 already, or is older than what was applied."""
        ev = self.event or {}
        return ev.get("type") == "domain.created" and ev.get("data", {}).get("plan", {}).get("aliases") == 0


REFUSED_ALIASES = "Mailcow cannot lower aliases"  # the reason of a refused refusable message


@dataclass
class Mix:
    """The stream in publication order, plus the facts the audit needs."""

    run_id: str
    messages: list[Message] = field(default_factory=list)
    hosted: list[str] = field(default_factory=list)  # zones to add before publishing
    domains: list[str] = field(default_factory=list)  # every domain a create/quota is about
    hostile_names: list[str] = field(default_factory=list)
    rotated: set[str] = field(default_factory=set)  # domains that get key.rotate events
    node: str = ""

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.messages:
            out[m.kind] = out.get(m.kind, 0) + 1
        return out

    def logical(self) -> dict[str, list[Message]]:
        """Messages grouped by id (duplicates and twins share one)."""
        out: dict[str, list[Message]] = {}
        for m in self.messages:
            out.setdefault(m.mid, []).append(m)
        return out

    def by_domain(self) -> dict[str, list[Message]]:
        out: dict[str, list[Message]] = {}
        for m in self.messages:
            if m.kind in ("create", "quota", "twin", "duplicate") and m.event and m.event["type"] == "domain.created":
                out.setdefault(m.subject, []).append(m)
        return out


def _body(event: dict[str, Any]) -> bytes:
    return json.dumps(event, sort_keys=True).encode()


def _plan(rng: random.Random) -> dict[str, Any]:
    quota = rng.choice((10240, 20480, 51200, 102400))
    box = quota // rng.choice((2, 4, 5))
    return {
        "name": f"plan-{quota}",
        "mailboxes": rng.randint(1, 200),
        "aliases": rng.randint(0, 400),
        "quota_mib": quota,
        "mailbox_quota_mib": box,
        "default_mailbox_quota_mib": box // 2,
    }


class Builder:
    def __init__(self, run_id: str, settings: Settings, seed: int) -> None:
        self.mix = Mix(run_id, node=f"pmg3.{settings.provider.zone}")
        self.settings = settings
        self.rng = random.Random(seed)
        self.tick = 0
        self.sequence = 1000

    def _time(self) -> str:
        self.tick += 1
        return (BASE_TIME + dt.timedelta(seconds=self.tick)).isoformat().replace("+00:00", "Z")

    def _created(self, domain: str, hosted: bool) -> dict[str, Any]:
        ev = load_event("domain.created")
        ev["id"] = str(uuid.uuid4())
        ev["time"] = self._time()
        ev["subject"] = ev["data"]["domain"] = domain
        ev["data"]["customer_id"] = f"C-{self.rng.randint(10000, 99999)}"
        ev["data"]["plan"] = _plan(self.rng)
        ev["data"]["dns"] = {"hosted": hosted}
        return ev

    def _event_msg(self, kind: str, ev: dict[str, Any], user: str) -> Message:
        return Message(kind, ev["id"], ev["type"], user, user, ev["subject"], _body(ev), ev)

    def create(self) -> Message:
        domain = f"c{self.mix.run_id}x{len(self.mix.domains):05d}.test"
        hosted = self.rng.random() < 0.85
        self.mix.domains.append(domain)
        if hosted:
            self.mix.hosted.append(domain)
        return self._event_msg("create", self._created(domain, hosted), "billing")

    def quota(self, original: Message) -> Message:
        assert original.event is not None
        ev = copy.deepcopy(original.event)
        ev["id"], ev["time"] = str(uuid.uuid4()), self._time()
        ev["data"]["plan"] = _plan(self.rng)
        return self._event_msg("quota", ev, "billing")

    def twin(self, original: Message) -> Message:
        assert original.event is not None
        ev = copy.deepcopy(original.event)
        ev["data"]["customer_id"] = "C-66666"
        return self._event_msg("twin", ev, "billing")

    def invalid(self) -> Message:
        base = f"i{self.mix.run_id}x{self.rng.randrange(10**6):06d}.test"
        choice = self.rng.randrange(4)
        ev = self._created(base, True)
        if choice == 0:  # schema-invalid
            ev["data"]["plan"]["mailboxes"] = -1
        elif choice == 1:  # not JSON at all
            mid = str(uuid.uuid4())
            return Message("invalid", mid, "domain.created", "billing", "billing", base, b"{not json" + mid.encode())
        elif choice == 2:  # a hostile domain name
            name = self.rng.choice(HOSTILE).format(d=base, long="x" * 64)
            ev["subject"] = ev["data"]["domain"] = name
            self.mix.hostile_names.append(name)
        else:  # the provider's own zone
            name = f"{base.split('.')[0]}.{self.settings.provider.zone}"
            ev["subject"] = ev["data"]["domain"] = name
            self.mix.hostile_names.append(name)
        return self._event_msg("invalid", ev, "billing")

    def publisher(self) -> Message:
        domain = f"p{self.mix.run_id}x{self.rng.randrange(10**6):06d}.test"
        ev = self._created(domain, True)
        self.mix.hostile_names.append(domain)
        body, choice = _body(ev), self.rng.randrange(3)
        if choice == 0:  # monitoring may publish node.* only: it smuggles domain.created under node.down
            return Message("publisher", ev["id"], "node.down", "monitoring", "monitoring", domain, body, ev)
        if choice == 1:  # scheduler under key.rotate
            return Message("publisher", ev["id"], "key.rotate", "scheduler", "scheduler", domain, body, ev)
        return Message("publisher", ev["id"], "domain.created", "billing", None, domain, body, ev)  # no user_id

    def rotate(self, domain: str) -> Message:
        self.mix.rotated.add(domain)
        ev = load_event("key.rotate")
        ev["id"], ev["time"] = str(uuid.uuid4()), self._time()
        ev["subject"] = ev["data"]["domain"] = domain
        return self._event_msg("rotate", ev, "scheduler")

    def node(self) -> Message:
        self.sequence += 1
        etype = "node.down" if self.sequence % 2 else "node.up"
        ev = load_event(etype)
        ev["id"] = f"chaos-{self.mix.run_id}-{self.sequence}"
        ev["time"] = self._time()
        ev["subject"] = ev["data"]["node"] = self.mix.node
        ev["data"]["sequence"] = self.sequence
        ev["data"]["observer"] = "chaos"
        return self._event_msg("node", ev, "monitoring")


def build_mix(total: int, run_id: str, settings: Settings, seed: int) -> Mix:
    """``total`` messages: the shares of SHARES, the rest duplicates of earlier well-formed events."""
    b = Builder(run_id, settings, seed)
    rng = b.rng
    want = {k: max(1, round(total * v)) for k, v in SHARES.items()}
    kinds = [k for k, n in want.items() for _ in range(n)]
    rng.shuffle(kinds)
    creates: list[Message] = []
    stream: list[Message] = []
    for kind in kinds:
        if kind != "create" and not creates:
            kind = "create"
        if kind == "create":
            msg = b.create()
            creates.append(msg)
        elif kind == "quota":
            msg = b.quota(rng.choice(creates))
        elif kind == "twin":
            msg = b.twin(creates.pop(rng.randrange(len(creates))) if len(creates) > 1 else creates[0])
        elif kind == "rotate":
            hosted = [c.subject for c in creates if c.event and c.event["data"]["dns"]["hosted"]]
            msg = b.rotate(rng.choice(hosted or [creates[0].subject]))
        else:
            msg = getattr(b, kind)()
        stream.append(msg)
    originals = [m for m in stream if m.kind in ("create", "quota", "node", "rotate")]
    twinned = {m.mid for m in stream if m.kind == "twin"}
    pool = [m for m in originals if m.mid not in twinned]
    while len(stream) < total:
        src = rng.choice(pool)
        # a duplicate goes somewhere after its original: soon (in flight) or much later (completed)
        at = stream.index(src) + 1 + int(rng.random() ** 2 * (len(stream) - stream.index(src)))
        stream.insert(
            at, Message("duplicate", src.mid, src.routing_key, src.user, src.user_id, src.subject, src.body, src.event)
        )
    b.mix.messages = stream
    return b.mix


def waves(messages: list[Message], n: int) -> Iterator[list[Message]]:
    """The stream cut into ``n`` consecutive waves."""
    size = max(1, -(-len(messages) // n))
    for i in range(0, len(messages), size):
        yield messages[i : i + size]
