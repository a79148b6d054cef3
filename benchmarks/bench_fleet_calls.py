"""Calls and bytes per event at fleet size: is the cost of one event independent of how many domains there are?

For each fleet size (cumulative: the sandbox's PMG, Mailcow and object store grow from one size to the next), the
other domains are put in place directly, never through mailplane: PMG relay domains + transports and Mailcow domains
with a DKIM key through the simulators' test-only ``/_sim/seed``, a state object per domain written straight into
the state bucket, and customer zones on BIND written as zone files + one ``rndc reconfig`` (``rndc addzone`` takes
~0.3 s per zone on this machine). Then each event type runs through ``dispatch.run`` (what a worker does, minus the
broker) for fresh domains of the same name length: domain.created (new hosted domain), key.rotate (scheduled),
domain.deleted (grace 0), node.down, node.up, domain.adopt (a hand-made domain, tests/handmade.py).

Counted per event and system: Mailcow and PMG requests and bytes (URL + bodies, from the simulators' request logs),
DNS messages (queries, AXFRs, UPDATEs; bytes in wire form) and object-store requests (bytes: bodies and key names)
from the counted ports, and the listings among them (PMG ``GET /config/{domains,transport,mynetworks}``, Mailcow
``get/*/all``, store listings, zone transfers). One warm-up created/deleted pair runs first, unmeasured (logins, PMG
ticket, the one map listing per process that a re-touch after a delete may need, see pmg_maps.py).

Run: ``benchmarks/run --only fleet`` (suite) or ``python -m benchmarks.bench_fleet_calls [--sizes 100,10000,100000]
[--zones 10000] [--store N]`` on a running stack.
"""

from __future__ import annotations

import argparse
import json
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dns.name
import dns.update
import httpx
import requests

from benchmarks.counting import Tally, counted, sim_counts
from benchmarks.harness import BIND_DIR, REPO, Sandbox, created_event
from functions._core.model.ports import Ports
from functions._core.model.records import render_value
from functions.runtime import dispatch
from functions.runtime.main import build_ports
from tests.handmade import VARIANTS, Operator

SYSTEMS = ("pmg", "mailcow", "dns", "s3")
EVENTS = ("domain.created", "key.rotate", "domain.deleted", "node.down", "node.up", "domain.adopt")
SIZES = (100, 10_000, 100_000)
PMG_LISTINGS = frozenset({"/config/domains", "/config/transport", "/config/mynetworks"})
EXACT = VARIANTS[0]  # the hand-made domain adopted: mailplane's records typed by hand


@dataclass
class Fleet:
    """What is in place so far (cumulative across sizes)."""

    pmg: int = 0
    mailcow: int = 0
    store: int = 0
    zones: int = 0
    seconds: dict[str, float] | None = None


def _event(kind: str, domain: str, **data: Any) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((REPO / "events" / f"{kind}.json").read_text())
    raw["id"] = f"fleet-{uuid.uuid4().hex[:16]}"
    raw["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    raw["subject"] = domain
    raw["data"].update({"domain": domain, **data} if "domain" in raw["data"] else data)
    return raw


class Bench:
    def __init__(self, sb: Sandbox, ports: Ports, tally: Tally) -> None:
        self.sb, self.ports, self.tally = sb, ports, tally
        self.fleet = Fleet(seconds={})
        self.bulk_zones: list[str] = []
        self.seq = int(time.time() * 1000)
        self.node = sb.settings.provider.mx_hosts[-1].name.split(".")[0]
        self._state_template: bytes | None = None
        self._template_domain = f"w{sb.run}-000000.test"

    # -- seeding the fleet directly ----------------------------------------------------------------------------

    def grow(self, size: int, zones_max: int, store_max: int) -> None:
        assert self.fleet.seconds is not None
        t0 = time.monotonic()
        with self.sb._sim_http() as http:  # noqa: SLF001 - the sandbox's own simulators
            for system, have in (("pmg", self.fleet.pmg), ("mailcow", self.fleet.mailcow)):
                body: dict[str, Any] = {"count": size - have, "prefix": f"f{size}n"}
                if system == "pmg":
                    body["comment"] = "managed-by mailplane customer=C-seed"
                    body["host"] = self.sb.settings.mailcow.host
                else:
                    body["pubkey"] = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" + "A" * 348
                if body["count"] > 0:
                    http.post(f"{self.sb._sim_url(system)}/_sim/seed", json=body).raise_for_status()  # noqa: SLF001
        self.fleet.pmg = self.fleet.mailcow = size
        self.fleet.seconds[f"{size}: sims"] = time.monotonic() - t0
        t0 = time.monotonic()
        want = min(size, store_max)
        self._seed_store(self.fleet.store, want)
        self.fleet.store = max(self.fleet.store, want)
        self.fleet.seconds[f"{size}: store to {self.fleet.store}"] = time.monotonic() - t0
        t0 = time.monotonic()
        want = min(size, zones_max)
        if want > self.fleet.zones:
            self._add_bulk_zones([f"z{self.sb.run}-{i:06d}.test" for i in range(self.fleet.zones, want)])
            self.fleet.zones = want
        self.fleet.seconds[f"{size}: BIND to {self.fleet.zones} zones"] = time.monotonic() - t0

    def _seed_store(self, start: int, stop: int) -> None:
        """State objects of other domains, written straight into the bucket (copies of a real state)."""
        if stop <= start:
            return
        assert self._state_template is not None, "warm up first"
        s3, bucket = self.sb._s3(), self.sb.settings.store.state_bucket  # noqa: SLF001
        template = self._state_template

        def put(i: int) -> None:
            domain = f"s{self.sb.run}-{i:06d}.test"
            body = template.replace(self._template_domain.encode(), domain.encode())
            s3.put_object(Bucket=bucket, Key=f"domains/{domain}.json", Body=body, ContentType="application/json")

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(put, range(start, stop)))

    def _add_bulk_zones(self, zones: list[str]) -> None:
        """Zone files + entries in the stack's zones.conf (bulk-generated zones), then one ``rndc reconfig``."""
        zdir = BIND_DIR / "zones"
        lines = []
        for zone in zones:
            (zdir / f"{zone}.db").write_text(
                f"$TTL 300\n@ IN SOA ns1.{zone}. hostmaster.{zone}. ( 1 3600 600 86400 300 )\n"
                f"  IN NS ns1.{zone}.\nns1 IN A 127.0.0.1\n@ IN MX 10 mx.{zone}.\n"
            )
            lines.append(f'zone "{zone}" {{ type primary; file "zones/{zone}.db"; }}; // bench-fleet {self.sb.run}\n')
        with (BIND_DIR / "zones.conf").open("a") as conf:
            conf.writelines(lines)
        self.bulk_zones += zones
        self._reconfig()

    def _reconfig(self) -> None:
        subprocess.run(["rndc", "-c", str(BIND_DIR / "rndc.conf"), "reconfig"], check=True, capture_output=True)

    def drop_bulk_zones(self) -> None:
        conf = BIND_DIR / "zones.conf"
        if not self.bulk_zones or not conf.exists():
            return
        tag = f"// bench-fleet {self.sb.run}"
        conf.write_text("".join(ln for ln in conf.read_text().splitlines(True) if tag not in ln))
        self._reconfig()
        for zone in self.bulk_zones:
            for suffix in (".db", ".db.jnl"):
                (BIND_DIR / "zones" / f"{zone}{suffix}").unlink(missing_ok=True)
        self.bulk_zones.clear()

    # -- events ------------------------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """A domain.created (its state becomes the template of the seeded states) and a node.down/node.up pair
        (the node's state object exists from then on, as on a running platform), unmeasured."""
        domain = self._template_domain
        self.sb.add_zones([domain])
        self._check(self._run(created_event(domain), "billing"))
        got = self.ports.state.get(f"domains/{domain}.json")
        assert got is not None
        self._state_template = got.body
        self._check(self._run(self._node("node.down"), "monitoring"))
        time.sleep(1.2)
        self._check(self._run(self._node("node.up"), "monitoring"))

    def warm_delete(self) -> None:
        """The warm-up domain's domain.deleted, unmeasured, once the first fleet is in place: a process that knows
        no entry of ours in a PMG map lists that map once to find one to re-touch (pmg_maps.py); this is it."""
        event = _event("domain.deleted.force", self._template_domain, grace_days=0, customer_id="C-000000")
        self._check(self._run(event, "billing"))

    @staticmethod
    def _check(verdict: str) -> None:
        if verdict != "done":
            raise RuntimeError(f"bench fleet: warm-up event not done: {verdict}")

    def _run(self, event: dict[str, Any], publisher: str, ports: Ports | None = None) -> str:
        result = dispatch.run(json.dumps(event).encode(), publisher, ports or self.ports)
        return result.verdict if result.verdict == "done" else f"{result.verdict}: {result.reason[:160]}"

    def measure(self, size: int, k: int) -> dict[str, Any]:
        """k events of each type on fresh domains (same name length at every size); figures per event."""
        tag = f"{SIZES.index(size) if size in SIZES else 9}"
        domains = [f"e{self.sb.run}{tag}-{size % 1000000:06d}{i}.test" for i in range(k)]
        adopt = [f"a{self.sb.run}{tag}-{size % 1000000:06d}{i}.test" for i in range(k)]
        self.sb.add_zones(domains)
        operator = self._operator()
        for d in adopt:
            operator.build(d, EXACT, self.sb.settings)
        out: dict[str, Any] = {}
        steps: dict[str, Callable[[], list[tuple[dict[str, Any], str]]]] = {
            "domain.created": lambda: [(created_event(d, i=i), "billing") for i, d in enumerate(domains)],
            "key.rotate": lambda: [(_event("key.rotate", d, reason="scheduled"), "scheduler") for d in domains],
            "domain.deleted": lambda: [
                (_event("domain.deleted.force", d, grace_days=0, customer_id=f"C-{i:06d}"), "billing")
                for i, d in enumerate(domains)
            ],
            "node.down": lambda: [(self._node("node.down"), "monitoring") for _ in range(k)],
            "node.up": lambda: [(self._node("node.up"), "monitoring") for _ in range(k)],
            "domain.adopt": lambda: [(_event("domain.adopt", d, customer_id="C-adopt"), "operator") for d in adopt],
        }
        for name in EVENTS:
            out[name] = self._count(name, steps[name]())
        return out

    def listings(self) -> dict[str, float]:
        """Bytes of what the per-event reads were before issue 17 (main e10a281): PMG's three listings, which
        every domain.created read (domain.deleted and adopt two or three of them), and Mailcow's domain listing."""
        start = len(self.sb.sim_requests("pmg"))
        t0 = time.monotonic()
        gw = self.ports.gateway
        gw.list_relay_domains()
        gw.list_transports()
        gw.list_networks()
        pmg_s = time.monotonic() - t0
        pmg = sim_counts(self.sb.sim_requests("pmg")[start:])["bytes"]
        # straight to the simulator with a long timeout: at 100,000 domains the answer takes longer than the
        # adapter's 15 s on this loaded machine
        sb = self.sb
        ca = ssl.create_default_context(cafile=sb.env["MAILPLANE_SIM_CA"])
        with httpx.Client(verify=ca, timeout=600) as http:
            t0 = time.monotonic()
            resp = http.get(
                f"{sb.env['MAILPLANE_MAILCOW_URL']}/api/v1/get/domain/all",
                headers={"X-API-Key": sb.env["MAILPLANE_MAILCOW_API_KEY"]},
            )
            mailcow_s = time.monotonic() - t0
        resp.raise_for_status()
        return {"pmg": pmg, "pmg_s": pmg_s, "mailcow": len(resp.content), "mailcow_s": mailcow_s}

    def _node(self, kind: str) -> dict[str, Any]:
        self.seq += 1
        raw = _event(kind, self.node, sequence=self.seq, observer="bench")
        raw["data"]["node"] = self.node
        raw["data"].pop("domain", None)
        return raw

    def _count(self, name: str, events: list[tuple[dict[str, Any], str]]) -> dict[str, Any]:
        logs = {s: self.sb.sim_requests(s) for s in ("mailcow", "pmg")}
        start = {s: len(v) for s, v in logs.items()}
        self.tally.counts.clear()
        verdicts: dict[str, int] = {}
        for event, publisher in events:
            if name == "node.up":
                time.sleep(1.2)  # the node.up hold-down after node.down
            v = self._run(event, publisher)
            verdicts[v] = verdicts.get(v, 0) + 1
        n = len(events)
        figures: dict[str, dict[str, float]] = {}
        for system in ("mailcow", "pmg"):
            new = self.sb.sim_requests(system)[start[system] :]
            c = sim_counts(new)
            figures[system] = {
                "calls": (c["read"] + c["write"]) / n,
                "bytes": c["bytes"] / n,
                "listings": sum(1 for r in new if _is_listing(system, r)) / n,
            }
        snap = self.tally.snapshot()
        for system in ("dns", "s3"):
            calls = sum(snap.get(f"{system}.{k}", 0) for k in ("read", "write", "refused"))
            if system == "dns":  # zone transfers (of the event's own zone or the provider zone; never of all zones)
                listing = snap.get("dns.transfer", 0)
            else:
                listing = sum(v for key, v in snap.items() if key.startswith("s3.list:") and _fleet_prefix(key[8:]))
            figures[system] = {"calls": calls / n, "bytes": snap.get(f"{system}.bytes", 0) / n, "listings": listing / n}
        return {"events": n, "verdicts": verdicts, "figures": figures}

    def _operator(self) -> Operator:
        sb = self.sb
        verify = sb.env["MAILPLANE_SIM_CA"]
        ca = ssl.create_default_context(cafile=verify)
        mailcow = httpx.Client(base_url=sb.env["MAILPLANE_MAILCOW_URL"], verify=ca, timeout=30)
        mailcow.headers["X-API-Key"] = sb.env["MAILPLANE_MAILCOW_API_KEY"]
        login = (sb.settings.pmg.user, sb.env["MAILPLANE_PMG_PASSWORD"])

        def write_zone(domain: str, records: list[Any], hosted: bool) -> None:
            sb.add_zones([domain])
            update = dns.update.UpdateMessage(domain)
            for rs in records:
                for value in rs.values:
                    update.add(dns.name.from_text(rs.name), rs.ttl, rs.rtype, render_value(rs.rtype, value))
            sb.dns_update(update)

        return Operator(mailcow, requests.Session(), sb.env["MAILPLANE_PMG1_URL"], login, write_zone, pmg_verify=verify)


def _is_listing(system: str, r: dict[str, Any]) -> bool:
    """A request whose answer grows with the fleet: a PMG map listing, a Mailcow ``get/<what>/all`` of domains,
    mailboxes, aliases or DKIM keys (relayhosts and transports are per gateway node, not per domain)."""
    path, method = str(r.get("path", "")), r.get("method")
    if system == "pmg":
        return method == "GET" and path in PMG_LISTINGS
    what = path.removeprefix("/api/v1/get/").split("/")
    return method == "GET" and len(what) == 2 and what[1] == "all" and what[0] not in ("relayhost", "transport")


def _fleet_prefix(prefix: str) -> bool:
    """A store listing across domains (``domains/``, ``keys/``, ``index/due/``...), not one domain's own prefix."""
    return prefix.count("/") <= 1 or prefix.startswith("index/")


def run(
    sb: Sandbox, sizes: Sequence[int] = SIZES, *, zones: int = 10_000, store: int | None = None, k: int = 1
) -> dict[str, Any]:
    """Figures per size and event type (see the module docstring); ``zones``/``store`` cap what is put on BIND and
    into the object store (None: the fleet size)."""
    sb.set_latency(0)
    tally = Tally()
    # the gate asks the primary only: a secondary that lags adds a round of questions, which is timing, not what an
    # event reads (counted here); bench_dns_gate measures the gate on every server
    dnss = sb.settings.dns
    primary_only = replace(sb.settings, dns=replace(dnss, servers=(f"{dnss.primary}:{dnss.port}",)))
    ports = counted(build_ports(primary_only), tally)
    for mx in sb.settings.provider.mx_hosts:  # one Mailcow relayhost per node, as on the platform
        ports.mail.add_relayhost(sb.settings.nodes.smarthost_format.format(host=mx.name))
    bench = Bench(sb, ports, tally)
    out: dict[str, Any] = {"sizes": list(sizes), "per_size": {}, "fleet": {}, "old_listings": {}}
    try:
        bench.warm_up()
        for size in sorted(sizes):
            print(f"bench fleet: growing to {size} ...", file=sys.stderr, flush=True)
            bench.grow(size, zones, size if store is None else store)
            if size == min(sizes):
                bench.warm_delete()
            print(f"bench fleet: measuring at {size} ...", file=sys.stderr, flush=True)
            out["per_size"][size] = bench.measure(size, k)
            try:
                out["old_listings"][size] = bench.listings()
            except Exception as exc:  # noqa: BLE001 - a reference figure; the per-event figures stand without it
                out["old_listings"][size] = {"error": f"{type(exc).__name__}: {exc}"}
            out["fleet"][size] = {
                "pmg": bench.fleet.pmg,
                "mailcow": bench.fleet.mailcow,
                "store": bench.fleet.store,
                "zones": bench.fleet.zones,
            }
    finally:
        bench.drop_bulk_zones()
    out["seed_seconds"] = bench.fleet.seconds
    return out


def flat(r: dict[str, Any], tolerance: float = 0.05) -> dict[str, dict[str, bool]]:
    """Per event and system: the same calls and listings at every size, bytes within ``tolerance`` of the smallest
    size's (domain names, serials and key material differ by a few bytes)."""
    sizes = sorted(r["per_size"], key=int)
    out: dict[str, dict[str, bool]] = {}
    for event in EVENTS:
        out[event] = {}
        base = r["per_size"][sizes[0]][event]["figures"]
        for system in SYSTEMS:
            b = base[system]
            same = all(r["per_size"][s][event]["figures"][system]["calls"] == b["calls"] for s in sizes)
            same &= all(r["per_size"][s][event]["figures"][system]["listings"] == b["listings"] for s in sizes)
            same &= all(
                abs(r["per_size"][s][event]["figures"][system]["bytes"] - b["bytes"]) <= tolerance * max(b["bytes"], 1)
                for s in sizes
            )
            out[event][system] = same
    return out


def render(r: dict[str, Any]) -> str:
    sizes = sorted(r["per_size"], key=int)
    head = " | ".join(f"calls @{int(s):,}" for s in sizes) + " | " + " | ".join(f"bytes @{int(s):,}" for s in sizes)
    lines = [
        f"| event | system | {head} | listings¹ | flat² |",
        "|---|---|" + "---|" * (2 * len(sizes) + 2),
    ]
    ok = flat(r)
    for event in EVENTS:
        for system in SYSTEMS:
            rows = [r["per_size"][s][event]["figures"][system] for s in sizes]
            calls = " | ".join(f"{x['calls']:g}" for x in rows)
            size = " | ".join(f"{x['bytes']:,.0f}" for x in rows)
            mark = "✓" if ok[event][system] else "✗"
            lines.append(f"| {event} | {system} | {calls} | {size} | {rows[-1]['listings']:g} | {mark} |")
    fleet = "; ".join(
        f"{int(s):,}: PMG {f['pmg']:,}, Mailcow {f['mailcow']:,}, store {f['store']:,} states, "
        f"BIND {f['zones']:,} zones"
        for s, f in sorted(r["fleet"].items(), key=lambda kv: int(kv[0]))
    )
    verdicts = {e: r["per_size"][s][e]["verdicts"] for s in sizes for e in EVENTS}
    bad = {e: v for e, v in verdicts.items() if set(v) != {"done"}}
    lines += [
        "",
        "¹ per event at the largest size: PMG map listings, Mailcow get/<domain|mailbox|alias-domain|dkim>/all, store "
        "listings across domains; for dns the AXFRs of the event's own zone (or the provider zone), never of others.",
        "² the same calls and listings at every size, bytes within 5 % of the smallest size's.",
        "before (main e10a281), every domain.created also read PMG's three listings; their bytes (PMG: relay "
        "domains + transports + trusted networks; Mailcow: get/domain/all, for comparison): "
        + "; ".join(
            f"{int(s):,}: " + (v["error"] if "error" in v else _listing_text(v))
            for s, v in sorted(r.get("old_listings", {}).items(), key=lambda kv: int(kv[0]))
        ),
        f"fleet per size: {fleet}",
        f"seeding seconds: {json.dumps({k: round(v, 1) for k, v in r['seed_seconds'].items()})}",
    ]
    lines.append("verdicts: all done" if not bad else f"verdicts not done: {bad}")
    return "\n".join(lines) + "\n"


def _listing_text(v: dict[str, float]) -> str:
    return f"PMG {v['pmg']:,.0f} B ({v['pmg_s']:.1f} s), Mailcow {v['mailcow']:,.0f} B ({v['mailcow_s']:.1f} s)"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_fleet_calls", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    p.add_argument("--zones", type=int, default=10_000, help="at most this many customer zones on BIND")
    p.add_argument("--store", type=int, help="at most this many seeded state objects (default: the fleet size)")
    p.add_argument("-k", type=int, default=1, help="events per type and size")
    p.add_argument("--json", help="also write the figures as JSON to this file")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.monotonic()
    with Sandbox() as sb:
        r = run(sb, sizes, zones=args.zones, store=args.store, k=args.k)
    r["seconds"] = time.monotonic() - started
    print(render(r))
    print(f"total {r['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1, default=str))
    return 0 if all(all(v.values()) for v in flat(r).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
