"""Mail that really flows (issue 13), on the local stack's mail plane (docs/mail-plane.md): real Postfix on the PMG
nodes and moo, rspamd signing on moo and judging at the internet's receiver, the caching resolver in front of BIND.

- ``first delivery``: ``--domains`` fresh hosted zones (one batched infra/local/zone-add), then one domain.created at
  a time, handled in process (a NotPropagated, e.g. a node not yet accepting the domain, is retried after 0.2 s
  instead of the broker's ladder); once it returns, the customer's first mailbox is created through the Mailcow API
  and the internet's sender MTA sends to it. Printed: event -> provisioned, provisioned -> in the Maildir, and event
  -> first delivery (p50/p99; goal p50 <= 3 s). The delivery is read from the Maildir the real Postfix wrote.
- ``rotation``: one more domain; mail leaves it through moo's submission port at ``--rate`` messages/s while a whole
  DKIM rotation runs (the propagation wait in real time, ``--propagation`` s, longer than the zones' 30 s negative
  TTL; the retire and keep periods by moving the rotation's clock on; no cache flushed). Printed: messages, the
  receiver's DKIM/DMARC failures (goal 0), selectors seen.

A benchmark, not a test: it asserts nothing; it prints figures, the goal and the load average next to them.

    . .stack/env.sh && PYTHONPATH=.:infra/local .venv/bin/python -m benchmarks.bench_mail --domains 20
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "infra" / "local")]

from benchmarks.bench_dns_gate import load, pct, show  # noqa: E402
from benchmarks.bench_mtasts import event, handle  # noqa: E402
from functions._core.model import state  # noqa: E402
from functions._core.model.ports import Ports  # noqa: E402
from functions._core.platform.config import Settings  # noqa: E402
from functions.ops import mailcheck as mail  # noqa: E402
from functions.runtime import dispatch  # noqa: E402
from functions.runtime.main import build_ports  # noqa: E402
from tests.stackenv import load_stack_env  # noqa: E402

GOAL_P50_S = 3.0
DAY = dt.timedelta(days=1)


class Clock:
    """Real time plus ``offset`` (200 days at first: the domain's first rotation is due), moved on by ``skip``."""

    def __init__(self) -> None:
        self.offset = 200 * DAY

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def skip(self, delta: dt.timedelta) -> None:
        self.offset += delta


def first_delivery(env: dict[str, str], ports: Ports, domain: str) -> tuple[str, float, float]:
    """(status, event -> provisioned, provisioned -> delivered) in seconds; delivered is inf when it never was."""
    t0 = time.perf_counter()
    status = handle(event(domain), ports)
    t1 = time.perf_counter()
    box = f"postmaster@{domain}"
    mail.add_mailbox(env, box)
    tag, msg = mail.message("alice@mta.sender.test", box, "bench: first delivery")
    mail.send(env["MAILPLANE_SENDER_SMTP"], msg)
    got = mail.wait_for(mail.mailbox_dir(env, box), {tag}, 30)
    return status, t1 - t0, (time.perf_counter() - t1) if tag in got else float("inf")


def rotate(ports: Ports, domain: str, reason: str, **data: Any) -> str:
    raw = json.loads((REPO / "events" / "key.rotate.json").read_text())
    raw["id"], raw["subject"], raw["source"] = f"bench-{uuid.uuid4().hex}", domain, "urn:mailplane:scheduler"
    raw["data"] = {"domain": domain, "reason": reason, **data}
    result = dispatch.run(json.dumps(raw).encode(), "scheduler", ports)
    if result.verdict != "done":
        raise RuntimeError(f"key.rotate {reason} for {domain}: {result.verdict} {result.reason}")
    return result.verdict


def keys(ports: Ports, domain: str) -> dict[str, str]:
    return {k.selector: k.status for k in state.load(ports.state, domain).keys}


def rotation_under_load(
    env: dict[str, str], settings: Settings, domain: str, rate: float, propagation: int
) -> dict[str, Any]:
    dkim = replace(settings.dkim, propagation_seconds=propagation, retire_days=7, revoke_hours=0, keep_days=30)
    clock = Clock()
    ports = replace(build_ports(replace(settings, dkim=dkim), probe=False), clock=clock)
    old = ports.mail.get_dkim(domain)
    if old is None:
        raise RuntimeError(f"{domain} has no DKIM key in Mailcow")
    receiver = Path(env["MAILPLANE_RECEIVER_MAILDIR"])
    rcpt = f"bob@{env['MAILPLANE_RECEIVER_DOMAIN']}"

    def outbound(subject: str) -> str:
        tag, msg = mail.message(f"postmaster@{domain}", rcpt, subject)
        mail.send(env["MAILPLANE_MOO_SUBMISSION"], msg)
        return tag

    t0 = time.perf_counter()
    flow = mail.Flow(outbound, rate)
    try:
        time.sleep(3)
        rotate(ports, domain, "scheduled", key_id=f"{domain}:{old.selector}")
        time.sleep(propagation + 1)
        rotate(ports, domain, "nudge")  # the new key signs
        time.sleep(4)
        clock.skip(7 * DAY)
        rotate(ports, domain, "nudge")  # the old key's TXT withdrawn
        time.sleep(4)
        clock.skip(30 * DAY)
        rotate(ports, domain, "nudge")  # the old key destroyed
        time.sleep(3)
    finally:
        tags = flow.stop()
    elapsed = time.perf_counter() - t0
    got = mail.wait_for(receiver, set(tags), 60)
    verdicts = [got[t].verdicts() for t in tags if t in got]
    failed = sum(1 for v in verdicts if v.get("dkim") != "pass" or v.get("dmarc") != "pass")
    return {
        "sent": len(tags),
        "refused": len(flow.errors),
        "delivered": len(got),
        "failures": failed,
        "selectors": dict(Counter(v.get("dkim.s", "") for v in verdicts)),
        "keys": keys(ports, domain),
        "seconds": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--domains", type=int, default=20)
    ap.add_argument("--rate", type=float, default=2.0, help="messages/s during the rotation")
    ap.add_argument("--propagation", type=int, default=40, help="the rotation's propagation wait in real seconds")
    ap.add_argument("--no-rotation", action="store_true")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    env = {**load_stack_env(), **os.environ}  # the stack's env.sh, so that it runs without sourcing it too
    settings = Settings.load(env["MAILPLANE_CONFIG"], env)
    ports = build_ports(settings)
    tag = uuid.uuid4().hex[:6]
    domains = [f"mb{tag}{i}.test" for i in range(args.domains)]
    rot = f"mbrot{tag}.test"
    subprocess.run([str(REPO / "infra/local/zone-add"), *domains, rot], check=True, capture_output=True)
    print(f"mail bench: {args.domains} domains, then a rotation at {args.rate} msg/s (load {load()})")
    statuses: Counter[str] = Counter()
    provisioned: list[float] = []
    delivered: list[float] = []
    total: list[float] = []
    for d in domains:
        status, to_status, to_mail = first_delivery(env, ports, d)
        statuses[status] += 1
        provisioned.append(to_status)
        if to_mail != float("inf"):
            delivered.append(to_mail)
            total.append(to_status + to_mail)
    show("event -> provisioned (handler done)", provisioned, "s")
    show("provisioned -> first message in the Maildir", delivered, "s")
    show("event -> first delivery", total, "s")
    p50 = pct(total, 50) if total else float("inf")
    verdict = "met" if p50 <= GOAL_P50_S else "MISSED"
    print(
        f"statuses {dict(statuses)}; delivered {len(total)} of {len(domains)}; p50 {p50:.2f} s, goal <= 3 s: {verdict}"
    )
    out: dict[str, Any] = {
        "statuses": dict(statuses),
        "provisioned": provisioned,
        "delivered": delivered,
        "total": total,
        "load": load(),
    }
    if not args.no_rotation:
        handle(event(rot), ports)
        r = rotation_under_load(env, settings, rot, args.rate, args.propagation)
        print(
            f"rotation under load: {r['sent']} sent ({r['refused']} refused at submission), {r['delivered']} "
            f"delivered in {r['seconds']:.0f} s, DKIM/DMARC failures {r['failures']} (goal 0: "
            f"{'met' if r['failures'] == 0 and r['refused'] == 0 and r['delivered'] == r['sent'] else 'MISSED'}); "
            f"selectors {r['selectors']}; keys {r['keys']} (load {load()})"
        )
        out["rotation"] = r
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
