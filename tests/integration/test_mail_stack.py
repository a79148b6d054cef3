"""Mail really flows (issue 13): real Postfix on every PMG node and on moo, rspamd signing on moo from Redis in
Mailcow's layout, the internet's sender and receiver MTAs resolving through the caching resolver, the receiver's
rspamd judging SPF, DKIM and DMARC. mailplane is driven only by its events; every assertion is about a message
that real MTAs delivered (Maildir files, their Received and Authentication-Results headers) or an SMTP answer.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from functions._core.model import nodes
from functions._core.platform.config import Settings
from functions.ops import mailcheck as mail
from functions.runtime.main import build_ports
from tests.integration import stack
from tests.integration.test_dkim_delegation_stack import foreign_zone
from tests.integration.test_key_rotate_stack import ROTATION, nudge, rotate_body, statuses, step
from tests.integration.test_nodes_stack import node_event, now_seq, restore_all
from tests.stackenv import REPO

pytestmark = pytest.mark.stack

NODES = ("pmg1.faster.test", "pmg2.faster.test", "pmg3.faster.test")
DAY = dt.timedelta(days=1)
# the propagation wait in real seconds: longer than the negative TTL of the zones holding the selectors (30 s,
# infra/local/zone-add), so that a receiver's resolver which cached the NSEC covering the new selector (aggressive
# NSEC, RFC 8198: on in unbound) sees it by then. The retire and keep periods pass by moving the clock on.
PROPAGATION = 40


class Clock:
    """Real time (plus 200 days: the first rotation is due by then), moved on by ``skip``."""

    def __init__(self) -> None:
        self.offset = 200 * DAY

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def skip(self, delta: dt.timedelta) -> None:
        self.offset += delta


def rotation_settings(settings: Settings) -> Settings:
    return replace(settings, dkim=replace(settings.dkim, **{**ROTATION, "propagation_seconds": PROPAGATION}))


@pytest.fixture(scope="module")
def settings(stack_env: dict[str, str]) -> Settings:
    return stack.settings_for(stack_env)


def provision(env: dict[str, str], settings: Settings, *domains: str) -> float:
    """domain.created for each, one worker run; returns the seconds from the first publish to the last outcome."""
    stack.zone_add(*domains)
    t0 = time.monotonic()
    for domain in domains:
        stack.publish(env, settings, stack.created_event(domain))
    stack.run_worker(settings)
    for domain in domains:
        outcomes = [stack.body_json(b) for _, b in stack.take(env, settings, "q.outcomes", domain)]
        assert [o["data"]["status"] for o in outcomes] == ["provisioned"], outcomes
    return time.monotonic() - t0


def receiver(env: dict[str, str]) -> Path:
    return Path(env["MAILPLANE_RECEIVER_MAILDIR"])


def inbound(env: dict[str, str], domain: str, subject: str) -> str:
    tag, msg = mail.message("alice@mta.sender.test", f"postmaster@{domain}", subject)
    mail.send(env["MAILPLANE_SENDER_SMTP"], msg)
    return tag


def outbound(env: dict[str, str], domain: str, subject: str) -> str:
    tag, msg = mail.message(f"postmaster@{domain}", f"bob@{env['MAILPLANE_RECEIVER_DOMAIN']}", subject)
    mail.send(env["MAILPLANE_MOO_SUBMISSION"], msg)
    return tag


def gateway_of(d: mail.Delivered) -> str:
    return mail.gateway(d, NODES)


def test_inbound_mail_reaches_the_mailbox_through_a_gateway(stack_env: dict[str, str], settings: Settings) -> None:
    domain = stack.unique_domain("mailin")
    t0 = time.monotonic()
    provisioned = provision(stack_env, settings, domain)
    mail.add_mailbox(stack_env, f"postmaster@{domain}")
    t_send = time.monotonic()
    tag = inbound(stack_env, domain, "inbound")
    got = mail.wait_for(mail.mailbox_dir(stack_env, f"postmaster@{domain}"), {tag}, 30)
    t_done = time.monotonic()
    assert tag in got, "not delivered to the Mailcow mailbox within 30 s"
    d = got[tag]
    hops = d.hops()
    assert hops[0] == "moo.faster.test" and gateway_of(d) in hops[1:2], hops  # sender -> PMG node -> moo
    assert "[127.0.4.1]" in next(r for r in d.received if f"by {gateway_of(d)}" in r)  # from the internet
    print(
        f"\nevent -> provisioned {provisioned:.2f} s; mailbox + send -> delivered {t_done - t_send:.2f} s; "
        f"event -> delivered {t_done - t0:.2f} s (via {gateway_of(d)})"
    )


def test_outbound_mail_passes_spf_dkim_and_dmarc_at_the_receiver(stack_env: dict[str, str], settings: Settings) -> None:
    domain = stack.unique_domain("mailout")
    provision(stack_env, settings, domain)
    selector = build_ports(settings, probe=False).mail.get_dkim(domain)
    assert selector is not None
    tag = outbound(stack_env, domain, "outbound")
    got = mail.wait_for(receiver(stack_env), {tag}, 30)
    assert tag in got, "not delivered to the receiver within 30 s"
    d = got[tag]
    assert gateway_of(d) in NODES  # left through a PMG smarthost, not directly from moo
    v = d.verdicts()
    assert (v.get("spf"), v.get("dkim"), v.get("dmarc")) == ("pass", "pass", "pass"), v
    assert (v["dkim.d"], v["dkim.s"]) == (domain, selector.selector), v
    print(f"\n{domain}: via {gateway_of(d)}, {v}")


def test_dkim_rotation_under_continuous_mail_never_fails_a_signature(
    stack_env: dict[str, str], settings: Settings
) -> None:
    """A whole rotation (publish, propagation, switch, retire, withdraw, destroy) with mail leaving at 2 msg/s. The
    propagation wait passes in real time; the retire and keep periods by moving the rotation's clock on. The
    resolvers' caches are never flushed."""
    domain = stack.unique_domain("mailrot")
    provision(stack_env, settings, domain)
    rot, clock = rotation_settings(settings), Clock()
    ports = replace(build_ports(rot, probe=False), clock=clock)
    old = build_ports(settings, probe=False).mail.get_dkim(domain)
    assert old is not None
    flow = mail.Flow(lambda subject: outbound(stack_env, domain, subject))
    try:
        time.sleep(3)
        step(ports, rotate_body(domain, f"rot-{uuid.uuid4().hex}", "scheduled", key_id=f"{domain}:{old.selector}"))
        time.sleep(PROPAGATION + 1)
        step(ports, nudge(domain))  # the new key signs from here on
        new = next(s for s, status in statuses(rot, domain).items() if status == "ACTIVE")
        assert new != old.selector
        time.sleep(4)
        clock.skip(7 * DAY)
        step(ports, nudge(domain))  # the old key's TXT is withdrawn
        time.sleep(4)
        clock.skip(30 * DAY)
        step(ports, nudge(domain))
        assert statuses(rot, domain) == {old.selector: "DESTROYED", new: "ACTIVE"}
        time.sleep(3)
    finally:
        tags = flow.stop()
    assert not flow.errors, flow.errors
    got = mail.wait_for(receiver(stack_env), set(tags), 60)
    assert len(got) == len(tags), f"{len(tags) - len(got)} of {len(tags)} messages not delivered"
    verdicts = [got[t].verdicts() for t in tags]
    failed = [
        (t, v) for t, v in zip(tags, verdicts, strict=True) if v.get("dkim") != "pass" or v.get("dmarc") != "pass"
    ]
    selectors = Counter(v.get("dkim.s") for v in verdicts)
    print(f"\n{len(tags)} messages during the rotation, {len(failed)} DKIM/DMARC failures, selectors {dict(selectors)}")
    assert failed == []
    assert set(selectors) == {old.selector, new}  # both keys signed, in that order
    first_new = next(i for i, v in enumerate(verdicts) if v.get("dkim.s") == new)
    assert all(v.get("dkim.s") == new for v in verdicts[first_new:])


def _sim_power(env: dict[str, str], node: str, down: bool) -> None:
    state_ = stack.pmg_control(env, "GET", "state")
    others = [n["name"] for n in state_["nodes"] if not n["up"] and n["name"] != node]
    stack.pmg_control(env, "POST", "faults", {"down": [*others, node] if down else others})


@pytest.fixture
def all_nodes_up(stack_env: dict[str, str], settings: Settings) -> Iterator[None]:
    ports = build_ports(settings, probe=False)
    restore_all(ports)
    yield
    stack.pmg_control(stack_env, "POST", "faults", {"down": []})
    restore_all(ports)


def _flush(env: dict[str, str], name: str) -> None:
    conf = Path(env["MAILPLANE_STACK_DIR"]) / "unbound/resolver.conf"
    subprocess.run(["unbound-control", "-c", str(conf), "flush", name], check=True, capture_output=True, timeout=10)


def test_node_down_loses_no_inbound_mail_and_node_up_brings_it_back(
    stack_env: dict[str, str], settings: Settings, all_nodes_up: None
) -> None:
    domain = stack.unique_domain("mailnode")
    provision(stack_env, settings, domain)
    box = f"postmaster@{domain}"
    mail.add_mailbox(stack_env, box)
    maildir = mail.mailbox_dir(stack_env, box)
    flow = mail.Flow(lambda subject: inbound(stack_env, domain, subject))
    back: str | None = None
    try:
        time.sleep(3)
        _sim_power(stack_env, "pmg2", down=True)  # its Postfix stops: connections refused
        stack.publish(stack_env, settings, node_event("node.down", "pmg2", now_seq()), user="monitoring")
        stack.run_worker(settings)
        time.sleep(5)
        down_at = len(flow.tags)
        _sim_power(stack_env, "pmg2", down=False)  # Postfix starts again
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stack.publish(stack_env, settings, node_event("node.up", "pmg2", now_seq()), user="monitoring")
            stack.run_worker(settings)  # held down for 1 s at first: published again until it is back
            if nodes.load(build_ports(settings, probe=False).state, "pmg2.faster.test").in_rotation:
                break
        # senders that asked for pmg2 while it was out hold the negative answer for the zone's negative TTL
        # (300 s); the test stands for those asking after it
        _flush(stack_env, "pmg2.faster.test")
        deadline, seen = time.monotonic() + 40, dict[Path, mail.Delivered | None]()
        while back is None and time.monotonic() < deadline:
            time.sleep(1)
            for t, d in mail.scan(maildir, seen).items():
                if t in flow.tags[down_at:] and gateway_of(d) == "pmg2.faster.test":
                    back = t
    finally:
        tags = flow.stop()
    assert not flow.errors, flow.errors
    got = mail.wait_for(maildir, set(tags), 60)
    via = Counter(gateway_of(d) for d in got.values())
    print(f"\n{len(tags)} messages sent, {len(got)} delivered, per gateway {dict(via)}")
    assert len(got) == len(tags), f"{len(tags) - len(got)} messages lost"
    assert back is not None, "pmg2 was not used again after node.up"


def test_domain_deleted_is_refused_at_every_node(stack_env: dict[str, str], settings: Settings) -> None:
    domain = stack.unique_domain("maildel")
    provision(stack_env, settings, domain)
    smtp = [stack_env[f"MAILPLANE_PMG{i}_SMTP"] for i in (1, 2, 3)]
    assert [mail.rcpt(a, f"postmaster@{domain}")[0] for a in smtp] == [250, 250, 250]
    event = stack.created_event(domain, "domain.deleted", customer_id="C-10042", grace_days=0)
    stack.publish(stack_env, settings, event)
    stack.run_worker(settings)
    deadline, answers = time.monotonic() + 20, []
    while time.monotonic() < deadline:
        answers = [mail.rcpt(a, f"postmaster@{domain}") for a in smtp]
        if all(code == 554 for code, _ in answers):
            break
        time.sleep(0.5)
    assert [code for code, _ in answers] == [554, 554, 554], answers
    assert all("Relay access denied" in text for _, text in answers)
    print(f"\n{json.dumps(answers)}")


def test_externally_hosted_domain_with_delegated_dkim_rotates_without_the_customer(
    stack_env: dict[str, str], settings: Settings
) -> None:
    """The customer's zone is hosted elsewhere (a "foreign" zone on the local BIND that mailplane cannot write). Mail
    flows once the customer published the instructed lines and the nudge activated signing; a rotation through the
    delegation zone (the customer's CNAMEs never change) keeps every message passing."""
    domain = stack.unique_domain("mailext")
    foreign_zone(domain, [])
    try:
        stack.publish(stack_env, settings, stack.created_event(domain, "domain.created.delegate"))
        stack.run_worker(settings)
        ((_, body),) = stack.take(stack_env, settings, "q.outcomes", domain)
        data = stack.body_json(body)["data"]
        assert data["status"] == "awaiting_dns", data
        foreign_zone(domain, data["instructions"])  # the customer publishes what they were asked to
        rot, clock = rotation_settings(settings), Clock()
        ports = replace(build_ports(rot, probe=False), clock=clock)
        step(ports, nudge(domain))  # the scheduler's next nudge: the first key signs
        assert statuses(rot, domain) == {"fca": "ACTIVE"}
        mail.add_mailbox(stack_env, f"postmaster@{domain}")
        tag = inbound(stack_env, domain, "inbound, hosted elsewhere")
        assert tag in mail.wait_for(mail.mailbox_dir(stack_env, f"postmaster@{domain}"), {tag}, 30)

        flow = mail.Flow(lambda subject: outbound(stack_env, domain, subject))
        try:
            time.sleep(3)
            step(ports, rotate_body(domain, f"rot-{uuid.uuid4().hex}", "scheduled"))
            time.sleep(PROPAGATION + 1)
            step(ports, nudge(domain))
            assert statuses(rot, domain) == {"fca": "RETIRING", "fcb": "ACTIVE"}
            time.sleep(4)
        finally:
            tags = flow.stop()
        got = mail.wait_for(receiver(stack_env), set(tags), 60)
        assert len(got) == len(tags), f"{len(tags) - len(got)} of {len(tags)} messages not delivered"
        verdicts = [got[t].verdicts() for t in tags]
        selectors = Counter(v.get("dkim.s") for v in verdicts)
        failed = [v for v in verdicts if (v.get("spf"), v.get("dkim"), v.get("dmarc")) != ("pass", "pass", "pass")]
        print(f"\n{domain}: {len(tags)} messages, {len(failed)} failures, selectors {dict(selectors)}")
        assert failed == [] and set(selectors) == {"fca", "fcb"}
    finally:
        subprocess.run([str(REPO / "infra/local/zone-del"), domain], check=False, capture_output=True)
