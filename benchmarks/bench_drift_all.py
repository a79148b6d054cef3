"""`mailplane drift --all` at fleet size (issue 17, item 3): the bulk reads against the per-domain path they replace.

``python -m benchmarks.bench_drift_all --domains 10000`` (inside the stack's namespace, stack up) provisions ONE domain
with the real domain.created handler (in-process Mailcow and PMG simulator models), then clones what that run left on
every system for N domains ``dNNNNN.drift<run>.test``: the zone file (with every managed record) into the stack's
BIND through its bulk path (``zones.conf`` + ``rndc reconfig``, timed separately), the Mailcow domain row and DKIM
entries and the PMG relay domain + transport straight into the simulator models (as a restore would), the state and
policy objects into two fresh buckets on LocalStack (S3 over HTTPS). 1 % of the domains get a DMARC record changed
and 0.5 % a Mailcow quota changed (drift to find). Then it runs, in this process:

- the per-domain path (``drift.drift_all``, what ``drift --all`` did before) on the first ``--sample`` domains, and
  extrapolates it to N;
- ``drift_bulk.drift_all`` over all N (what ``drift --all`` does now), with its progress lines on stderr.

It prints seconds, domains/s and peak RSS next to the 5-minute limit, the drift found against the drift seeded, and
whether the two paths gave identical results for the sample. Real parts: BIND (AXFR over TCP with TSIG, its servers'
NS/A queries), LocalStack S3. In-process: the Mailcow API (the simulator app without sockets; a real Mailcow adds its
HTTPS round trip per DKIM read) and PMG (API and the SMTP answers of each node's maps, without sockets).
The zones are removed from BIND at the end (the buckets stay until the stack stops).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

LIMIT_S = 300.0
DMARC_DRIFT, MAILCOW_DRIFT = 100, 200  # every 100th domain: DMARC changed; every 200th: Mailcow quota changed


def _ports() -> tuple[Any, Any, str]:
    """Settings of the stack, the in-process Mailcow and PMG, real DNS and S3 (fresh buckets)."""
    from functions.adapters.s3 import make_client
    from tests.fakes.mailcow import fake_mailcow
    from tests.fakes.pmg import fake_gateway
    from tests.fakes.settings import make_settings
    from tests.stackenv import load_stack_env

    env = load_stack_env()
    run = uuid.uuid4().hex[:6]
    settings = make_settings(env)
    store = dataclasses.replace(
        settings.store, state_bucket=f"mp-bench-drift-{run}-state", web_bucket=f"mp-bench-drift-{run}-web"
    )
    settings = dataclasses.replace(settings, store=store)
    mail, mail_model = fake_mailcow()
    gw = fake_gateway(settings)
    s3 = make_client(settings.store)
    for bucket in (store.state_bucket, store.web_bucket):
        s3.create_bucket(Bucket=bucket)
    return settings, (mail, mail_model, gw), run


def run(n: int, sample: int, *, keep: bool = False, workers: int = 0) -> dict[str, Any]:
    from functions import domain_created
    from functions._core.model.mailset import policy_key
    from functions._core.model.ports import Ports
    from functions._core.model.records import RecordSet
    from functions._core.model.state import state_key
    from functions._core.platform.envelope import parse
    from functions.adapters.dns import Rfc2136Dns
    from functions.ops import drift, drift_bulk
    from functions.runtime import main as runtime
    from tests.fakes.dns import FakeDns
    from tests.fakes.store import MemoryStore
    from tests.stackenv import stack_dir

    settings, (mail, mail_model, gw), run_id = _ports()
    suffix = f"drift{run_id}.test"
    template = f"template.{suffix}"

    # 1. one domain through the real handler (in memory), to clone from
    fdns, fstate, fweb = FakeDns(), MemoryStore(), MemoryStore()
    fdns.add_zone(template)
    tports = Ports(mail, gw.client, fdns, fstate, fweb, settings, smtp=gw.smtp)
    raw = json.loads((Path(__file__).resolve().parent.parent / "events/domain.created.json").read_text())
    raw["subject"] = raw["data"]["domain"] = template
    raw["data"].setdefault("dns", {})["hosted"] = True
    outcome = domain_created.handle(parse(json.dumps(raw).encode()), tports)
    if outcome.status != "provisioned":
        raise RuntimeError(f"template domain not provisioned: {outcome.status}")
    zone_records = list(fdns.zones[template].values())
    state_body = fstate.objects[state_key(template)].body.decode()
    policy = fweb.objects[policy_key(template)].body
    names = [f"d{i:05d}.{suffix}" for i in range(n)]

    # 2. BIND: zone files + zones.conf + rndc reconfig (the stack's bulk path)
    bind = stack_dir() / "bind"
    t0 = time.perf_counter()
    conf_lines = []
    for i, d in enumerate(names):
        lines = ["$TTL 300"]  # the template's records include its SOA
        for rs in zone_records:
            name = rs.name.replace(template, d)
            values = [v.replace(template, d) for v in rs.values]
            if i % DMARC_DRIFT == 1 and name == f"_dmarc.{d}" and rs.rtype == "TXT":
                values = ["v=DMARC1; p=none"]
            lines += RecordSet.of(name, rs.rtype, rs.ttl, values).zone_lines()
        (bind / "zones" / f"{d}.db").write_text("\n".join(lines) + "\n")
        conf_lines.append(
            f'zone "{d}" {{ type primary; file "zones/{d}.db"; update-policy {{ grant ddns-key zonesub ANY; }}; }};'
        )
    zones_conf = bind / "zones.conf"
    before = zones_conf.read_text() if zones_conf.exists() else ""
    zones_conf.write_text(before + "\n".join(conf_lines) + "\n")
    rndc = ["rndc", "-c", str(bind / "rndc.conf")]
    subprocess.run([*rndc, "reconfig"], check=True, capture_output=True, timeout=600)
    dns = Rfc2136Dns(settings.dns)
    deadline = time.monotonic() + 600
    while dns.serial(names[-1], f"{settings.dns.primary}:{settings.dns.port}") is None:
        if time.monotonic() > deadline:
            raise RuntimeError("BIND did not load the zones")
        time.sleep(0.5)
    bind_s = time.perf_counter() - t0

    try:
        # 3. Mailcow and PMG models (as a restore would), S3 objects
        t1 = time.perf_counter()
        _seed_models(mail_model, gw, template, names)
        state = runtime.build_store(settings.store, settings.store.state_bucket, probe=False)
        web = runtime.build_store(settings.store, settings.store.web_bucket, probe=False)

        def put(d: str) -> None:
            state.put(state_key(d), state_body.replace(template, d).encode())
            web.put(policy_key(d), policy, content_type="text/plain")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, names))
        seed_s = time.perf_counter() - t1

        ports = Ports(mail, gw.client, dns, state, web, settings, smtp=gw.smtp)
        # 4. the per-domain path on a sample, then the bulk path on all
        t2 = time.perf_counter()
        per = drift.drift_all(names[:sample], ports)
        per_s = time.perf_counter() - t2
        t3, cpu0 = time.perf_counter(), _cpu(stack_dir())
        progress = drift.Progress(n, lambda line: print(line, file=sys.stderr, flush=True), max(10, n // 10))
        bulk = drift_bulk.drift_all(names, ports, progress, workers=workers or drift_bulk.WORKERS)
        bulk_s = time.perf_counter() - t3
        cpu = {k: round(v - cpu0[k], 1) for k, v in _cpu(stack_dir()).items()}
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        summary = drift.as_json(bulk, all_checks=False)["summary"]
        same = drift.as_json(per, all_checks=True) == drift.as_json(bulk[:sample], all_checks=True)
        want = {i for i in range(n) if i % DMARC_DRIFT == 1 or i % MAILCOW_DRIFT == 3}
        seeded = len(want)
        surprise = [r for i, r in enumerate(bulk) if (r.status != "provisioned") != (i in want)]
        return {
            "domains": n,
            "bind_zones_seconds": round(bind_s, 2),
            "seed_other_seconds": round(seed_s, 1),
            "per_domain": {"sample": sample, "seconds": round(per_s, 2), "extrapolated_s": round(per_s * n / sample)},
            "bulk": {
                "seconds": round(bulk_s, 1),
                "per_s": round(n / bulk_s, 1),
                "rss_mb": round(rss, 1),
                "workers": workers or drift_bulk.WORKERS,
                "cpu_s": cpu,  # CPU seconds of this process (all threads), LocalStack and BIND during the run
                "load_avg": round(os.getloadavg()[0], 1),
            },
            "summary": summary,
            "drift_seeded": seeded,
            "identical_on_sample": same,
            "unexpected": len(surprise),
            "first_unexpected": surprise[0].as_json(all_checks=False) if surprise else None,
            "limit_s": LIMIT_S,
        }
    finally:
        if not keep:
            zones_conf.write_text(before)
            subprocess.run([*rndc, "reconfig"], check=False, capture_output=True, timeout=600)
            for d in names:
                (bind / "zones" / f"{d}.db").unlink(missing_ok=True)


def _cpu(stack: Path) -> dict[str, float]:
    """CPU seconds (user + system) so far of this process, LocalStack and BIND (their pid files in the stack)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = {"drift": ru.ru_utime + ru.ru_stime, "localstack": 0.0, "bind": 0.0}
    for name, pidfile in (("localstack", stack / "localstack/ls.pid"), ("bind", stack / "bind/named.bgpid")):
        try:
            fields = Path(f"/proc/{pidfile.read_text().strip()}/stat").read_text().rsplit(")", 1)[1].split()
            ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
            out[name] = ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
    return out


def _seed_models(mail_model: Any, gw: Any, template: str, names: list[str]) -> None:
    """Copy the template's Mailcow row and DKIM entries, and its PMG relay domain and transport, to every name."""
    from sim.pmg.model import parse_domains, parse_transport, render_domains, render_transport

    row = mail_model.domains[template]
    hashes = {h: dict(v) for h, v in mail_model.redis.items()}
    for i, d in enumerate(names):
        quota = row.quota + 1 if i % MAILCOW_DRIFT == 3 else row.quota
        mail_model.domains[d] = dataclasses.replace(row, domain=d, quota=quota)
        for h, entries in hashes.items():
            for key, value in entries.items():
                if key == template or key.endswith("." + template):
                    mail_model.redis[h][key.replace(template, d)] = value
    pmg_model = gw.model
    gw.clock.sleep(2.0)  # PMG's whole-second postmap rule: a later second than the template's writes
    with pmg_model._lock:
        master = pmg_model.nodes[pmg_model.master]
        doms, tmap = parse_domains(master.files["domains"]), parse_transport(master.files["transport"])
        for d in names:
            doms[d] = doms[template]
            tmap[d] = dict(tmap[template])
        pmg_model._store(master, "domains", render_domains(doms))
        pmg_model._store(master, "transport", render_transport(tmap))
        for node in pmg_model.nodes.values():
            if node.up and node is not master:
                pmg_model._copy(master, node)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--domains", type=int, default=10_000)
    ap.add_argument("--sample", type=int, default=300)
    ap.add_argument("--keep", action="store_true", help="leave the zones in BIND")
    ap.add_argument("--workers", type=int, default=0, help="read-ahead threads (default drift_bulk.WORKERS)")
    args = ap.parse_args()
    r = run(args.domains, min(args.sample, args.domains), keep=args.keep, workers=args.workers)
    per, bulk = r["per_domain"], r["bulk"]
    print(f"drift --all at {r['domains']} domains (BIND zones loaded in {r['bind_zones_seconds']} s, other systems")
    print(f"seeded in {r['seed_other_seconds']} s):")
    print(f"{'path':<34}{'seconds':>10}{'domains/s':>12}{'peak RSS MB':>14}")
    rate = per["sample"] / per["seconds"] if per["seconds"] else 0.0
    print(
        f"{'per domain (sample ' + str(per['sample']) + ', extrapolated)':<34}{per['extrapolated_s']:>10}{rate:>12.1f}"
    )
    print(f"{'bulk reads (drift --all now)':<34}{bulk['seconds']:>10}{bulk['per_s']:>12}{bulk['rss_mb']:>14}")
    print(f"{'limit':<34}{LIMIT_S:>10}")
    print(f"found {r['summary']} (drift seeded in {r['drift_seeded']}, unexpected {r['unexpected']});")
    print(f"identical to the per-domain path on the sample: {r['identical_on_sample']}")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
