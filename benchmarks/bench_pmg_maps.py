"""PMG's whole-second postmap rule: what each ``pmg.map_writes`` mode costs and loses (not part of the suite).

    python -m benchmarks.bench_pmg_maps [--domains 12] [--threads 1,4] [--latency-ms 50]

Each run provisions DOMAINS relay domains + transports (as domain.created does: add_relay_domain, add_transport,
then ``settle()``) through the real PmgClient over HTTPS against a fresh simulated 3-node cluster, on the real
clock, with THREADS handler threads and LATENCY_MS per API call (the live PMG answered domain/transport writes in
30-90 ms). Reported per mode: wall time, API writes sent, and the relay domains the master's postfix does not use
afterwards (lost to the rule). Figures go to BENCHMARKS.md; no assertions here.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sim.common import ensure_certs
from sim.pmg import PmgModel
from sim.pmg.app import serve_cluster

from functions._core.model.ports import GatewayTransport, RelayDomain
from functions._core.platform.config import MxHost, PmgSettings, Secret
from functions.adapters.pmg import PmgClient

MODES = ("off", "space", "retouch")


def run(mode: str, domains: int, threads: int, latency_ms: float, tls: Path) -> dict[str, float | int | str]:
    ca, cert, key = ensure_certs(tls)
    model = PmgModel(nodes=[(f"pmg{i}", "127.0.0.1") for i in (1, 2, 3)], auth_failure_delay=0, network_write_delay=0)
    model.configure(latency_ms=latency_ms)
    user, password = model.credentials
    servers = serve_cluster([0, 0, 0], (cert, key), user, password, model=model)
    try:
        hosts = [
            MxHost(f"pmg{i}", "127.0.0.1", "", api_url=f"https://127.0.0.1:{s.server_address[1]}")
            for i, s in enumerate(servers, 1)
        ]
        client = PmgClient(PmgSettings(user, Secret(password), ca_file=str(ca), map_writes=mode), hosts)
        client.list_relay_domains()  # log in first
        names = [f"d{i}.bench.test" for i in range(domains)]

        def provision(domain: str) -> None:
            client.add_relay_domain(RelayDomain(domain, "managed-by mailplane"))
            client.add_transport(GatewayTransport(domain, "moo.faster.test", 25, "smtp", False, "managed-by mailplane"))
            client.settle()

        before, t0 = model.writes(), time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(provision, names))
        wall = time.monotonic() - t0
        used = set(model.effective("pmg1")["domains"])
        return {
            "mode": mode,
            "threads": threads,
            "seconds": round(wall, 2),
            "writes": model.writes() - before,
            "lost": sum(1 for n in names if n not in used),
        }
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--domains", type=int, default=12)
    parser.add_argument("--threads", default="1,4")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    print(f"{args.domains} domains, {args.latency_ms:g} ms per API call")
    print(f"{'mode':8} {'threads':>7} {'seconds':>8} {'writes':>7} {'lost':>5}")
    with tempfile.TemporaryDirectory() as tmp:
        for threads in (int(t) for t in args.threads.split(",")):
            for mode in MODES:
                r = run(mode, args.domains, threads, args.latency_ms, Path(tmp))
                print(f"{r['mode']:8} {r['threads']:>7} {r['seconds']:>8} {r['writes']:>7} {r['lost']:>5}", flush=True)


if __name__ == "__main__":
    main()
