"""The suite's tables (markdown, so they paste into BENCHMARKS.md): headline figures against the goals, calls per
event per type next to the minimum, and the dependencies' capacity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmarks.bench_fleet_calls import render as fleet_table

SYSTEMS = ("mailcow", "pmg", "dns", "s3")
Row = tuple[str, str, str, str, str]  # benchmark, figure, value, goal, verdict


def _ok(good: bool | None) -> str:
    return "n/a" if good is None else ("met" if good else "MISSED")


def _num(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def row(bench: str, figure: str, value: str, goal: str = "", good: bool | None = None, judged: bool = True) -> Row:
    """One table row; ``judged`` rows carry met / MISSED / n/a, the others only inform."""
    return (bench, figure, value, goal, _ok(good) if judged and goal else "")


def stack_limit(capacity: Mapping[str, Any]) -> tuple[str, float, Mapping[str, Any]] | None:
    """(slowest system, its domains/s, its figures), or None without capacity figures."""
    if not capacity:
        return None
    system, cap = min(capacity.items(), key=lambda kv: kv[1]["domains_per_s"])
    return system, float(cap["domains_per_s"]), cap


def _per_system(calls: Mapping[str, Mapping[str, float]], kind: str) -> str:
    return " · ".join(f"{s} {calls.get(s, {}).get(kind, 0):.2g}" for s in SYSTEMS)


def _pair(a: Any, b: Any, fmt: str, unit: str) -> str:
    return f"{_num(a, fmt)} / {_num(b, fmt)} {unit}"


def throughput_rows(r: Mapping[str, Any]) -> list[Row]:
    t, cap = r.get("throughput"), r.get("capacity")
    if not t:
        return [row("throughput", "provisioning", _error(r, "throughput"), ">= 20x")]
    mp, base = t["mailplane"], t["baseline"]
    ratio = mp["rate"] / base["rate"] if base["rate"] else None
    who = f"mailplane: {t['workers']} workers x {t['pool']} threads, {mp['done']}/{mp['events']} domain.created"
    rows = [
        row("throughput", who, f"{mp['rate']:.2f} domains/s"),
        row("throughput", f"naive baseline: sequential, {base['domains']} domains", f"{base['rate']:.2f} domains/s"),
        row("throughput", "ratio mailplane / baseline", f"{_num(ratio, '.1f')}x", ">= 20x", _ge(ratio, 20)),
    ]
    limit = stack_limit(cap or {})
    if limit is None:
        return [*rows, row("throughput", "stack limit", _error(r, "capacity"), ">= 70 %")]
    system, rate, c = limit
    share = mp["rate"] / rate if rate else None
    what = f"stack limit: {system}, {c['calls_per_s']:.0f} calls/s / {c['calls_per_domain']:.1f} calls per event"
    cpu = mp.get("cpu_ms_per_event") or {}
    total = sum(cpu.values())
    rows += [
        row("throughput", what, f"{rate:.2f} domains/s"),
        row(
            "throughput",
            "mailplane's share of the stack limit",
            f"{_num(_pct(share), '.0f')} %",
            ">= 70 %",
            _ge(share, 0.7),
        ),
        row("throughput", "best ratio the stack allows (stack limit / baseline)", f"{rate / base['rate']:.1f}x"),
    ]
    if total:
        cores = r["machine"]["nproc"] or 1
        mine = cpu.get("mailplane workers", 0.0)
        rows += [
            row("throughput", f"CPU per event, all processes (mailplane workers {mine:.0f} ms)", f"{total:.0f} ms"),
            row(
                "throughput",
                f"CPU-bound limit ({cores} cores / CPU per event); mailplane's share",
                _cpu_share(cores, total, mp["rate"]),
            ),
        ]
    return rows


def _pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def _ge(x: float | None, goal: float) -> bool | None:
    return None if x is None else x >= goal


def _cpu_share(cores: int, total_ms: float, rate: float) -> str:
    limit = 1000 * cores / total_ms
    return f"{limit:.2f} domains/s; {100 * rate / limit:.0f} %"


def replay_rows(r: Mapping[str, Any]) -> list[Row]:
    t = r.get("throughput")
    if not t:
        return [row("replay", "redelivery of all N events", _error(r, "throughput"), "0 writes")]
    calls = t["replay"]["calls"]
    writes = sum(calls[s].get("write", 0) for s in SYSTEMS)
    reads = sum(calls[s].get("read", 0) for s in SYSTEMS)
    refused = sum(calls[s].get("refused", 0) for s in SYSTEMS)
    return [
        row("replay", f"writes per event ({_per_system(calls, 'write')})", f"{writes:.2g}", "0", writes == 0),
        row("replay", f"reads per event ({_per_system(calls, 'read')})", f"{reads:.2g}", "<= 2", reads <= 2),
        row("replay", "refused conditional writes per event (the ledger claim; nothing changes)", f"{refused:.2g}"),
        row("replay", "all calls per event, the refused claim included", f"{reads + writes + refused:.2g}"),
    ]


def overhead_rows(r: Mapping[str, Any]) -> list[Row]:
    o = r.get("overhead")
    if not o:
        return [row("overhead", "no-op handler", _error(r, "overhead"), ">= 1000/s")]
    tp, raw, lat, led = o["throughput"], o["raw_throughput"], o["latency"], o["with_ledger"]
    ratio = tp["rate"] / raw["rate"] if raw["rate"] else None
    p99 = lat["in_worker_p99_ms"]
    paced = f"{lat['events']} events at {lat['per_second']:.0f}/s, {lat['rounds']} rounds"
    parts = ", ".join(
        f"{k} {_pair(lat[f'{k}_p50_ms'], lat[f'{k}_p99_ms'], '.2f', 'ms')}" for k in ("handoff", "dispatch", "after")
    )
    ledger = (
        f"{led['rate']:.0f}/s, dispatch p50 / p99 {_pair(led['dispatch_p50_ms'], led['dispatch_p99_ms'], '.0f', 'ms')}"
    )
    return [
        row(
            "overhead",
            f"no-op events/s, one worker process ({tp['done']} events, {o['pool']} threads)",
            f"{tp['rate']:.0f}/s",
            ">= 1000/s",
            tp["rate"] >= 1000,
        ),
        row(
            "overhead",
            "bare pika consumer, same queue and prefetch (baseline)",
            f"{raw['rate']:.0f}/s (mailplane {_num(ratio, '.2f')}x)",
        ),
        row(
            "overhead",
            f"runtime time per event, delivery -> ack, p50 / p99 ({paced})",
            _pair(lat["in_worker_p50_ms"], p99, ".2f", "ms"),
            "p99 <= 5 ms",
            None if p99 is None else p99 <= 5,
        ),
        row(
            "overhead", "publish -> ack through mailplane, p50 / p99", _pair(lat["p50_ms"], lat["p99_ms"], ".2f", "ms")
        ),
        row(
            "overhead",
            "publish -> ack, bare pika consumer in alternating rounds (baseline), p50 / p99",
            _pair(lat["raw_p50_ms"], lat["raw_p99_ms"], ".2f", "ms"),
        ),
        row("overhead", "delivery -> ack in parts, p50 / p99", parts),
        row("overhead", f"with the S3 idempotency ledger + subject lock ({led['done']} events)", ledger),
    ]


def failover_rows(r: Mapping[str, Any]) -> list[Row]:
    f = r.get("failover")
    if not f or "withdrawal" not in f:
        why = f.get("missing", "no p50/p99 in its output") if f else _error(r, "failover")
        return [row("failover", "node.down -> verified withdrawal", f"n/a ({why})", "p99 < 1 s")]
    w = f["withdrawal"]
    rows = [
        row(
            "failover",
            f"node.down -> withdrawn on every authoritative server, p50 / p99 ({w['n']} runs)",
            _pair(w["p50_ms"], w["p99_ms"], ".0f", "ms"),
            "p99 < 1 s",
            w["p99_ms"] < 1000,
        ),
    ]
    if "restore" in f:
        u = f["restore"]
        rows.append(
            row(
                "failover",
                "node.up -> served again everywhere, p50 / p99",
                _pair(u["p50_ms"], u["p99_ms"], ".0f", "ms"),
            )
        )
    return rows


def memory_rows(r: Mapping[str, Any]) -> list[Row]:
    m = r.get("memory")
    if not m:
        return [row("memory", "worker with a backlog", _error(r, "memory"), "< 200 MB")]
    mb = m["peak_rss_mib"] * 1.048576
    rows = [
        row(
            "memory",
            f"worker peak RSS, {m['backlog']:,}-event backlog drained (prefetch {m['prefetch']})",
            f"{mb:.0f} MB",
            "< 200 MB",
            mb < 200,
        ),
    ]
    t = r.get("throughput")
    if t:
        real = t["mailplane"]["peak_rss_mib"] * 1.048576
        rows.append(row("memory", "worker peak RSS in the throughput run (real handler)", f"{real:.0f} MB"))
    return rows


def calls_table(r: Mapping[str, Any]) -> str:
    c = r.get("calls")
    if not c:
        return f"calls per event: {_error(r, 'calls')}\n"
    lines = ["| event | " + " | ".join(SYSTEMS) + " | total | minimum |", "|---" * (len(SYSTEMS) + 3) + "|"]
    for name, sc in c["scenarios"].items():
        if "skipped" in sc:
            lines.append(f"| {name} | " + " | ".join("-" for _ in SYSTEMS) + f" | {sc['skipped']} | |")
            continue
        cells, total = [], 0.0
        for s in SYSTEMS:
            k = sc["calls"][s]
            n = k.get("read", 0) + k.get("write", 0) + k.get("refused", 0)
            total += n
            minimum = (sc["minimum"] or {}).get(s)
            cells.append(f"{k.get('read', 0):.3g}r {k.get('write', 0) + k.get('refused', 0):.3g}w (min {minimum})")
        bad = {v: n for v, n in sc["verdicts"].items() if v != "done"}
        note = f" {bad}" if bad else ""
        minimum = sum((sc["minimum"] or {}).values())
        lines.append(f"| {name}{note} | " + " | ".join(cells) + f" | {total:.3g} | {minimum} |")
    t = r.get("throughput")
    if t:
        base = t["baseline"]["per_domain"]
        mp = t["mailplane"]["calls"]
        cells = [f"{mp[s].get('read', 0):.3g}r {mp[s].get('write', 0) + mp[s].get('refused', 0):.3g}w" for s in SYSTEMS]
        lines.append(f"| domain.created under load ({t['workers']} workers) | " + " | ".join(cells) + " | | |")
        lines.append("| naive baseline, per domain | " + " | ".join(f"{base[s]:.3g}" for s in SYSTEMS) + " | | |")
    return "\n".join(lines) + "\n"


def capacity_table(r: Mapping[str, Any]) -> str:
    cap = r.get("capacity")
    if not cap:
        return f"capacity: {_error(r, 'capacity')}\n"
    lines = ["| dependency | calls/s | calls per domain.created | domains/s |", "|---|---|---|---|"]
    for system, c in cap.items():
        lines.append(f"| {system} | {c['calls_per_s']:.0f} | {c['calls_per_domain']:.1f} | {c['domains_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


def _error(r: Mapping[str, Any], name: str) -> str:
    err = r.get("errors", {}).get(name)
    return f"error: {err}" if err else "not run"


def render(r: Mapping[str, Any]) -> str:
    m = r["machine"]
    head = (
        f"mailplane benchmarks, size {r['size']}: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, Python "
        f"{m['python']}, load before {m['load_before'][0]:.2f}; {r.get('seconds', 0):.0f} s\n"
    )
    rows = throughput_rows(r) + replay_rows(r) + overhead_rows(r) + failover_rows(r) + memory_rows(r)
    table = ["| benchmark | figure | value | goal | |", "|---|---|---|---|---|"]
    table += [f"| {' | '.join(row)} |" for row in rows]
    parts = [
        head,
        "\n".join(table) + "\n",
        "Calls per event (r = reads, w = writes incl. refused conditional writes):\n",
        calls_table(r),
        "Dependencies loaded alone (the stack's limit):\n",
        capacity_table(r),
    ]
    fleet = r.get("fleet")
    if isinstance(fleet, Mapping) and "per_size" in fleet:
        parts += ["Calls and bytes per event at fleet size (bench_fleet_calls.py):\n", fleet_table(dict(fleet))]
    if r.get("errors"):
        parts.append("Errors: " + "; ".join(f"{k}: {v}" for k, v in r["errors"].items()) + "\n")
    return "\n".join(parts)
