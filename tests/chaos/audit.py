"""After a chaos run: what every system holds, checked against what the published events ask for.

Nothing here trusts the workers' own reports. Completion comes from the idempotency ledger in S3, parking from
the parked queue, effects from the simulators' ``/_sim/state``, BIND (AXFR straight from the server, not through
the proxy) and the S3 state objects. ``problems`` lists every violation; ``figures`` the numbers to print.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from functions import ROUTES
from functions._core.model import nodes, state
from functions._core.model.mailset import desired_records, policy_key
from functions._core.model.ports import Ports
from functions._core.model.records import Key, RecordSet
from functions._core.platform.envelope import Envelope, fingerprint, parse
from functions._core.platform.errors import AutomationError, EventInvalid
from functions._core.platform.idempotency import PREFIX
from functions.adapters.dns import Rfc2136Dns
from functions.runtime.main import build_ports
from tests.chaos.harness import Slice
from tests.chaos.mix import REFUSED_ALIASES, Message, Mix

ZONE_BASICS = ("SOA", "NS", "DNSKEY", "CDS", "CDNSKEY")  # the zone's own, and its signer's (inline signing)


@dataclass
class Parked:
    mid: str
    reason: str
    error: str
    attempt: int
    broker: bool  # dead-lettered by the broker (delivery limit), not parked by a worker


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    completed: set[str] = field(default_factory=set)
    parked: dict[str, list[Parked]] = field(default_factory=dict)
    raw: list[tuple[str, bytes]] = field(default_factory=list)  # parked messages and outcome events, for the scan

    def fail(self, text: str) -> None:
        self.problems.append(text)


# ---------------------------------------------------------------------------------------------- collecting


def parked_messages(sl: Slice, raw: list[tuple[str, bytes]] | None = None) -> dict[str, list[Parked]]:
    """The parked queue by message id (drained); with ``raw``, each message's properties and body appended."""
    out: dict[str, list[Parked]] = {}
    for props, body in sl.drain(sl.settings.broker.parked_queue):
        h = props.headers or {}
        if raw is not None:
            raw.append((f"parked {props.message_id} (properties)", repr(props).encode()))
            raw.append((f"parked {props.message_id} (body)", body))
        reason = str(h.get("x-mailplane-reason", ""))
        broker = not reason
        if broker:  # dead-lettered by a queue's delivery limit (or the last rung): the broker says why
            deaths = h.get("x-death") or [{}]
            reason = f"broker: {deaths[0].get('reason', '?')} on {deaths[0].get('queue', '?')}"
        p = Parked(
            props.message_id or "",
            reason,
            str(h.get("x-mailplane-error", "")),
            int(h.get("x-mailplane-attempt", -1)),
            broker,
        )
        out.setdefault(p.mid, []).append(p)
    return out


def _ledger_key(name: str, ev: dict[str, Any]) -> str:
    """``functions._core.platform.idempotency.ledger_key`` from the raw event (same formula: sha256(source/id))."""
    digest = hashlib.sha256(f"{ev['source']}/{ev['id']}".encode()).hexdigest()
    return f"{PREFIX}{name}/{digest}.json"


def ledger(ports: Ports, messages: Iterable[Message]) -> dict[str, dict[str, Any]]:
    """The ledger record of every well-formed, routed event (by id)."""
    wanted: dict[str, str] = {}
    for m in messages:
        if m.event is None or m.event.get("type") not in ROUTES or m.mid in wanted:
            continue
        wanted[m.mid] = _ledger_key(ROUTES[m.event["type"]].name, m.event)

    def get(item: tuple[str, str]) -> tuple[str, dict[str, Any] | None]:
        try:
            obj = ports.state.get(item[1])
            return item[0], json.loads(obj.body) if obj else None
        except (AutomationError, ValueError):  # an object LocalStack broke (see corrupted()): no evidence
            return item[0], None

    with ThreadPoolExecutor(8) as pool:
        return {mid: rec for mid, rec in pool.map(get, wanted.items()) if rec is not None}


def _envelope(m: Message) -> Envelope | None:
    try:
        return parse(m.body, publisher=m.user_id)
    except EventInvalid:
        return None


# ---------------------------------------------------------------------------------------------- the audit


def audit(sl: Slice, mix: Mix) -> Report:
    r = Report()
    ports = build_ports(sl.settings, probe=False)
    r.parked = parked_messages(sl, r.raw)
    drained = sl.drain("q.outcomes")
    r.raw += [(f"outcome event {p.message_id} (properties)", repr(p).encode()) for p, _ in drained]
    r.raw += [(f"outcome event {p.message_id}", b) for p, b in drained]
    outcomes = [json.loads(b) for _, b in drained]
    records = ledger(ports, mix.messages)
    r.completed = {mid for mid, rec in records.items() if rec["status"] == "COMPLETED"}
    _account(r, mix, records, ports)
    _domains(r, sl, mix, ports, records)
    _node(r, sl, mix, ports, records)
    r.figures["outcome events"] = dict(Counter(o["type"] for o in outcomes))
    r.figures["distinct outcome ids"] = len({o["id"] for o in outcomes})
    return r


def _account(r: Report, mix: Mix, records: dict[str, dict[str, Any]], ports: Ports) -> None:
    """Every logical event completed or parked with a reason; the refused ones never completed; no valid event
    parked (a refusable one only with the refusal's reason; a LocalStack artefact only with evidence)."""
    lost, wrong, valid_parked, artefacts = [], [], [], []
    for mid, msgs in mix.logical().items():
        expect = {m.expect for m in msgs}
        done, parked = mid in r.completed, r.parked.get(mid, [])
        if not done and not parked:
            lost.append(f"{msgs[0].kind} {mid} {msgs[0].subject[:60]!r}")
        if "park" in expect and done:
            wrong.append(f"{msgs[0].kind} {mid} completed but must be refused")
        if "park" in expect and not parked:
            wrong.append(f"{msgs[0].kind} {mid} not parked")
        if any(m.kind == "twin" for m in msgs):
            # parking is at-least-once (a worker killed between the parked copy's confirm and its ack parks it
            # again): copies of the one refusal are fine, another reason is not
            if not done or len({p.reason for p in parked}) != 1 or "same id, different body" not in parked[0].reason:
                wrong.append(f"twin {mid}: completed={done} parked={[p.reason for p in parked]}")
        elif expect & {"complete", "complete or refuse"} and parked:
            refusable = "complete or refuse" in expect
            for p in parked:
                if refusable and REFUSED_ALIASES in p.reason and not done:
                    continue
                torn = torn_key(ports, p.reason)
                text = f"{msgs[0].kind} {mid}: {p.reason}"
                (artefacts if torn else valid_parked).append(text + (f" [torn object {torn}]" if torn else ""))
        if any(not p.reason for p in parked):
            wrong.append(f"{mid} parked without a reason")
    r.figures["lost"] = len(lost)
    r.figures["logical events"] = len(mix.logical())
    r.figures["completed (ledger)"] = len(r.completed)
    r.figures["parked events"] = sum(1 for v in r.parked.values() if v)
    r.figures["valid events parked"] = len(valid_parked)
    r.figures["valid events parked by a LocalStack artefact (torn object, with evidence)"] = artefacts[:10]
    reasons = Counter(_reason_class(p.reason) for ps in r.parked.values() for p in ps)
    r.figures["parked by reason"] = dict(reasons.most_common())
    r.figures["parked not ours"] = sorted(set(r.parked) - set(mix.logical()))[:5]
    for text in lost[:20]:
        r.fail(f"lost: {text}")
    for text in wrong[:20]:
        r.fail(text)
    for text in valid_parked[:20]:
        r.fail(f"valid event parked: {text}")


_STORE_KEY = re.compile(r"Store\w+: get (\S+): (ResponseStreamingError|IncompleteReadError)")


def torn_key(ports: Ports, reason: str) -> str | None:
    """The object a parking reason names, when it is verifiably one LocalStack stored torn (see ``corrupted``):
    the only evidence that excuses a valid event parked."""
    m = _STORE_KEY.search(reason)
    return m.group(1) if m and corrupted(ports, m.group(1)) else None


def _reason_class(reason: str) -> str:
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", reason)
    text = re.sub(r"\S*x[0-9]{4,6}\S*", "<name>", text)
    text = re.sub(r"'[^']*'", "'…'", text)
    return text[:90]


def corrupted(ports: Ports, key: str) -> bool:
    """True when ``key`` is an object LocalStack stored from an aborted PUT: listed, but its body cannot be read
    (HEAD announces more bytes than GET delivers) or is truncated JSON. S3 never stores an incomplete upload;
    LocalStack does, so a SIGKILL in the middle of a PUT leaves such objects behind."""
    try:
        obj = ports.state.get(key)
        if obj is not None:
            json.loads(obj.body)
    except (AutomationError, ValueError):
        return True
    return False


# ---------------------------------------------------------------------------------------------- domains


def _expected(msgs: list[Message], records: dict[str, dict[str, Any]]) -> tuple[Message | None, bool]:
    """The newest completed event of a domain and whether the state must match it exactly (its newest event
    completed: nothing parked half-way may be newer)."""
    newest_done: Message | None = None
    newest_any: Message | None = None
    for m in msgs:
        assert m.event is not None
        if newest_any is None or m.event["time"] > newest_any.event["time"]:  # type: ignore[index]
            newest_any = m
        rec = records.get(m.mid)
        if rec is None or rec["status"] != "COMPLETED" or rec["payload_hash"] != _hash(m):
            continue
        if newest_done is None or m.event["time"] > newest_done.event["time"]:  # type: ignore[index]
            newest_done = m
    exact = newest_done is not None and newest_any is not None and newest_done.event["time"] == newest_any.event["time"]  # type: ignore[index]
    return newest_done, exact


_HASHES: dict[bytes, str] = {}


def _hash(m: Message) -> str:
    if m.body not in _HASHES:
        env = _envelope(m)
        _HASHES[m.body] = fingerprint(env) if env else ""
    return _HASHES[m.body]


def _domains(r: Report, sl: Slice, mix: Mix, ports: Ports, records: dict[str, dict[str, Any]]) -> None:
    mc = sl.sims.mailcow_state()
    pmg = sl.sims.pmg_state()
    master = next(n for n in pmg["nodes"] if n["name"] == pmg["master"])["config"]
    rows = Counter(d["domain"] for d in mc["tables"]["domain"])
    relay = Counter(d["domain"] for d in master["domains"])
    transport = Counter(t["domain"] for t in master["transport"])
    nets = Counter(n["cidr"] for n in master["mynetworks"])
    direct = Rfc2136Dns(replace(sl.settings.dns, port=int(sl.stack_env["MAILPLANE_DNS_PORT"])))
    dup = 0
    for name, counter in (("mailcow domain", rows), ("pmg relay domain", relay), ("pmg transport", transport)):
        for key, n in counter.items():
            if n > 1:
                dup += 1
                r.fail(f"{name} {key} appears {n} times")
    for cidr, n in nets.items():
        if n > 1:
            dup += 1
            r.fail(f"pmg trusted network {cidr} appears {n} times")
    refused = set(mix.hostile_names)
    for name in refused:
        if rows.get(name) or relay.get(name) or transport.get(name):
            r.fail(f"refused name {name!r} was applied")
    checked = partial = 0
    broken: list[str] = []
    for domain, msgs in sorted(mix.by_domain().items()):
        want, exact = _expected(msgs, records)
        if want is None:
            partial += 1
            continue
        try:
            dup += _one_domain(r, ports, direct, mc, (rows, relay, transport), domain, want, exact, mix.rotated)
        except (AutomationError, ValueError) as exc:  # its state object cannot be read back
            broken.append(f"{domain}: {type(exc).__name__}")
            continue
        checked += 1
        partial += 0 if exact else 1
    r.figures["domains checked"] = checked
    r.figures["domains whose state LocalStack corrupted (SIGKILL during a PUT)"] = broken
    for text in broken:
        if not corrupted(ports, state.state_key(text.split(":")[0])):
            r.fail(f"state unreadable but not a corrupted object: {text}")
    r.figures["domains whose newest event parked (checked loosely)"] = partial
    r.figures["duplicated"] = dup
    r.figures["mailcow writes"] = sum(1 for q in sl.sims.mailcow_requests() if q.get("write"))
    r.figures["pmg writes"] = sum(1 for q in sl.sims.pmg_requests() if q.get("write"))


def _one_domain(
    r: Report,
    ports: Ports,
    direct: Rfc2136Dns,
    mc: dict[str, Any],
    counters: tuple[Counter[str], Counter[str], Counter[str]],
    domain: str,
    want: Message,
    exact: bool,
    rotations: set[str],
) -> int:
    """Check one domain; returns how many exactly-once violations it shows."""
    assert want.event is not None
    dup = 0
    data = want.event["data"]
    names = ("mailcow domain", "pmg relay domain", "pmg transport")
    for name, counter in zip(names, counters, strict=True):
        if counter.get(domain, 0) != 1:
            r.fail(f"{domain}: {name} {counter.get(domain, 0)} times")
    st = state.load(ports.state, domain)
    blobs = list(ports.state.list(f"keys/{domain}/"))
    rotated = domain in rotations
    selectors = [k.selector for k in st.keys]
    generated = Counter(h["event"] for h in st.history if h.get("transition", "").endswith("->GENERATED"))
    want_keys = 1 + sum(generated.values()) if rotated else 1
    live = [k for k in st.keys if k.status != "DESTROYED"]
    if len(set(selectors)) != len(selectors) or len(st.keys) != want_keys or len(blobs) != len(live):
        dup += 1
        r.fail(f"{domain}: keys {[(k.selector, k.status) for k in st.keys]}, {len(blobs)} sealed, want {want_keys}")
    if any(n > 1 for n in generated.values()):
        dup += 1
        r.fail(f"{domain}: one key.rotate generated several keys: {dict(generated)}")
    cur = st.current
    if cur is None:
        r.fail(f"{domain}: no current key")
        return dup + 1
    hosted = bool(data["dns"]["hosted"])
    signing = mc["redis"]["DKIM_SELECTORS"].get(domain)
    if signing != (cur.selector if hosted else None):  # a zone hosted elsewhere: no key imported before DNS
        r.fail(f"{domain}: Mailcow signs with {signing}, the state's current key is {cur.selector}")
    if ports.web.get(policy_key(domain)) is None:
        r.fail(f"{domain}: no MTA-STS policy")
    want_status = "provisioned" if hosted else "awaiting_dns"
    if st.status != want_status:
        r.fail(f"{domain}: state status {st.status}, want {want_status}")
    if exact:
        row = next(d for d in mc["tables"]["domain"] if d["domain"] == domain)
        plan = data["plan"]
        have = (row["quota"], row["maxquota"], row["defquota"], row["mailboxes"], row["aliases"])
        need = (
            plan["quota_mib"],
            plan["mailbox_quota_mib"],
            plan["default_mailbox_quota_mib"],
            plan["mailboxes"],
            plan["aliases"],
        )
        if have != need:
            r.fail(f"{domain}: Mailcow has {have}, the newest event says {need}")
        if st.request.get("plan") != plan:
            r.fail(f"{domain}: state request plan {st.request.get('plan')} != newest {plan}")
    if hosted:
        served = {k.selector for k in st.keys if k.status in _served()} if rotated else {cur.selector}
        dup += _zone(r, ports, direct, domain, cur.selector, cur.public_b64, served)
    return dup


def _zone(
    r: Report, ports: Ports, direct: Rfc2136Dns, domain: str, selector: str, public: str, served: set[str]
) -> int:
    """The zone holds exactly the managed records (one DKIM TXT per served key) and nothing else of ours."""
    zone = direct.read_zone(domain)
    expected: dict[Key, RecordSet] = desired_records(domain, ports.settings, selector, public)
    dkim = f"._domainkey.{domain}"
    mine = {k: v for k, v in zone.items() if k[1] not in ZONE_BASICS and k != (f"ns1.{domain}", "A")}
    keys_in_dns = {k[0].removesuffix(dkim) for k in mine if k[0].endswith(dkim)}
    mine = {k: v for k, v in mine.items() if not k[0].endswith(dkim) or k[0] == f"{selector}{dkim}"}
    extra = sorted(set(mine) - set(expected))
    wrong = sorted(k for k in expected if mine.get(k) is None or mine[k].values != expected[k].values)
    if extra or wrong or keys_in_dns != served:
        r.fail(f"{domain}: zone extra {extra[:4]} wrong {wrong[:3]} dkim {sorted(keys_in_dns)} want {sorted(served)}")
        return 1
    return 0


def _served() -> tuple[str, ...]:
    from functions._core.model.rotation import SERVED  # only when key.rotate has a handler

    return tuple(SERVED)


# ---------------------------------------------------------------------------------------------- node


def _node(r: Report, sl: Slice, mix: Mix, ports: Ports, records: dict[str, dict[str, Any]]) -> None:
    node_msgs = [m for m in mix.messages if m.kind == "node" and m.event]
    if not node_msgs:
        return
    done = [m for m in node_msgs if records.get(m.mid, {}).get("status") == "COMPLETED"]
    st = nodes.load(ports.state, mix.node)
    zone = Rfc2136Dns(replace(sl.settings.dns, port=int(sl.stack_env["MAILPLANE_DNS_PORT"]))).read_zone(
        sl.settings.provider.zone
    )
    serving = (mix.node, "A") in zone
    r.figures["node events completed"] = f"{len(done)}/{len({m.mid for m in node_msgs})}"
    if not done:
        return
    last = max(done, key=lambda m: m.event["data"]["sequence"])  # type: ignore[index]
    assert last.event is not None
    if st.sequence != last.event["data"]["sequence"]:
        r.fail(f"node {mix.node}: state sequence {st.sequence}, newest completed {last.event['data']['sequence']}")
    if st.in_rotation != serving:
        r.fail(f"node {mix.node}: state in_rotation={st.in_rotation} but DNS serving={serving}")
    if st.in_rotation != (last.event["type"] == "node.up"):
        seq = last.event["data"]["sequence"]
        r.fail(f"node {mix.node}: in_rotation={st.in_rotation} after {last.event['type']} #{seq}")
