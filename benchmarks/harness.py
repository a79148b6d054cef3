"""The benchmark sandbox: a private copy of the platform on the shared local stack, torn down at the end.

``Sandbox`` creates, per run: a RabbitMQ vhost loaded from infra/rabbitmq/definitions.json (plus the users'
permissions), two S3 buckets on LocalStack, its own Mailcow and PMG simulator processes (fresh credentials, its own
CA), a provider zone ``p<run>.test`` on the shared BIND holding the platform's hosts, and a settings TOML copied from
infra/local/platform.test.toml that points at all of it. Customer zones are added with infra/local/zone-add and
deleted with infra/local/zone-del. Nothing of the shared ``mailplane`` vhost, the shared simulators or faster.test is
touched, so other stack tests can run at the same time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import dns.tsig
import dns.update
import httpx
import pika

from functions._core.platform.config import Secret, Settings
from functions.runtime.amqp import Publisher, event_properties, params
from tests.stackenv import load_stack_env

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TEMPLATE = REPO / "infra/local/platform.test.toml"
DEFINITIONS = REPO / "infra/rabbitmq/definitions.json"
PLATFORM_ZONE = "faster.test"
SAMPLE = REPO / "events/domain.created.json"
ZONE_ADDERS = 4  # parallel infra/local/zone-add processes


class BenchError(RuntimeError):
    """The sandbox could not be set up or a benchmark step failed (the message says which)."""


def _mailcow_key() -> str:
    return "-".join(secrets.token_hex(3).upper() for _ in range(5))


# ---------------------------------------------------------------- RabbitMQ management API


class RabbitAdmin:
    """The management API as the admin user: vhosts, definitions, permissions, queue depths."""

    def __init__(self, env: Mapping[str, str]) -> None:
        auth = (env["MAILPLANE_AMQP_ADMIN_USER"], env["MAILPLANE_AMQP_ADMIN_PASSWORD"])
        verify = ssl.create_default_context(cafile=env["MAILPLANE_STACK_CA"])
        self._http = httpx.Client(base_url=env["MAILPLANE_AMQP_MGMT_URL"], auth=auth, verify=verify, timeout=60)

    def _check(self, resp: httpx.Response, what: str) -> httpx.Response:
        if resp.status_code >= 300:
            raise BenchError(f"rabbitmq management: {what}: {resp.status_code} {resp.text[:200]}")
        return resp

    def create_vhost(self, vhost: str, definitions: Mapping[str, Any]) -> None:
        """The vhost with the topology of ``definitions`` and every user's (topic) permissions on it."""
        q = urllib.parse.quote(vhost, safe="")
        self._check(self._http.put(f"/api/vhosts/{q}", json={}), f"create vhost {vhost}")
        scoped = {k: [{**item, "vhost": vhost} for item in definitions[k]] for k in _SCOPED}
        self._check(self._http.post(f"/api/definitions/{q}", json=scoped), f"import definitions into {vhost}")
        for p in definitions["permissions"]:
            body = {k: p[k] for k in ("configure", "write", "read")}
            self._check(self._http.put(f"/api/permissions/{q}/{p['user']}", json=body), f"permissions {p['user']}")
        for p in definitions.get("topic_permissions", []):
            body = {k: p[k] for k in ("exchange", "write", "read")}
            self._check(self._http.put(f"/api/topic-permissions/{q}/{p['user']}", json=body), "topic permissions")

    def delete_vhost(self, vhost: str) -> None:
        self._http.delete(f"/api/vhosts/{urllib.parse.quote(vhost, safe='')}")

    def close(self) -> None:
        self._http.close()


_SCOPED = ("exchanges", "queues", "bindings", "policies")


# ---------------------------------------------------------------- simulators


@dataclass
class SimProcess:
    """One ``python -m sim.serve`` process of this sandbox."""

    name: str
    proc: subprocess.Popen[str]
    ports: list[int]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_sim(system: str, port_args: list[str], tls_dir: Path, env: Mapping[str, str], log: Path) -> SimProcess:
    """Start a simulator on free loopback ports and wait for its ``ready`` line.

    Raises:
        BenchError: it exited or did not announce itself within 60 s.
    """
    cmd = [PYTHON, "-m", "sim.serve", system, *port_args, "--tls-dir", str(tls_dir)]
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=dict(env), stdout=subprocess.PIPE, stderr=err, text=True)
    ports: list[int] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        words = line.split()
        if words[:1] in ([system], [f"{system}-smtp"]) and len(words) == 2:  # HTTP ports first, then SMTP
            ports.append(int(words[1]))
        if line.strip() == "ready" or time.monotonic() > deadline:
            break
    if proc.poll() is not None or not ports:
        raise BenchError(f"simulator {system} did not start (see {log})")
    return SimProcess(system, proc, ports)


# ---------------------------------------------------------------- the sandbox


@dataclass
class Sandbox:
    """A private platform on the shared stack; use as a context manager (``close`` tears everything down)."""

    stack: dict[str, str] = field(default_factory=load_stack_env)
    run: str = field(default_factory=lambda: secrets.token_hex(4))
    prefetch: int | None = None
    workdir: Path = field(init=False)
    env: dict[str, str] = field(init=False, default_factory=dict)
    settings_path: Path = field(init=False)
    settings: Settings = field(init=False)
    sims: list[SimProcess] = field(init=False, default_factory=list)
    zones: list[str] = field(init=False, default_factory=list)
    bulk_zones: list[str] = field(init=False, default_factory=list)
    _admin: RabbitAdmin | None = field(init=False, default=None)
    _buckets: list[str] = field(init=False, default_factory=list)
    workers: list[WorkerProc] = field(init=False, default_factory=list)

    @property
    def vhost(self) -> str:
        return f"bench-{self.run}"

    @property
    def provider_zone(self) -> str:
        return f"p{self.run}.test"

    def domain(self, i: int, tag: str = "d") -> str:
        return f"{tag}{self.run}-{i:06d}.test"

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def __enter__(self) -> Sandbox:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Create everything (see the module docstring)."""
        self.workdir = Path(tempfile.mkdtemp(prefix=f"mailplane-bench-{self.run}-"))
        self._admin = RabbitAdmin(self.stack)
        self._admin.create_vhost(self.vhost, json.loads(DEFINITIONS.read_text()))
        self._start_sims()
        self._write_settings()
        self._create_buckets()
        self.add_zones([self.provider_zone])
        self._fill_provider_zone()

    def close(self) -> None:
        """Stop workers and simulators, delete the vhost, the zones, the buckets and the work directory; a failed
        step is reported on stderr and the others still run."""
        steps: list[tuple[str, Callable[[], None]]] = [
            ("workers", self._stop_workers),
            ("simulators", self._stop_sims),
            ("vhost", self._drop_vhost),
            ("zones", self._drop_zones),
            ("bulk zones", self._drop_bulk_zones),
            ("buckets", self._drop_buckets),
        ]
        for name, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - teardown reports and goes on
                print(f"bench: teardown of the {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if hasattr(self, "workdir") and not os.environ.get("MAILPLANE_BENCH_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_workers(self) -> None:
        for worker in self.workers:
            worker.terminate(grace=10)

    def _stop_sims(self) -> None:
        for sim in self.sims:
            sim.stop()

    def _drop_buckets(self) -> None:
        for bucket in self._buckets:
            _empty_bucket(self._s3(), bucket)

    def _drop_vhost(self) -> None:
        if self._admin is not None:
            self._admin.delete_vhost(self.vhost)
            self._admin.close()

    def _drop_zones(self) -> None:
        size = max(1, -(-len(self.zones) // ZONE_ADDERS))
        dels = [
            subprocess.Popen(
                [str(REPO / "infra/local/zone-del"), *chunk], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            for chunk in _chunks(self.zones, size)
        ]
        for p in dels:
            p.wait()
        self.zones.clear()

    # -- parts -------------------------------------------------------------------------------------------------

    def _start_sims(self) -> None:
        tls = self.workdir / "tls"
        creds = {
            "SIM_MAILCOW_API_KEY": _mailcow_key(),
            "SIM_MAILCOW_API_KEY_RO": _mailcow_key(),
            "SIM_PMG_USER": "automation@pmg",
            "SIM_PMG_PASSWORD": secrets.token_urlsafe(18),
        }
        sim_env = {**os.environ, **creds, "PYTHONPATH": str(REPO / "infra/local")}
        mailcow = start_sim("mailcow", ["--port", "0"], tls, sim_env, self.workdir / "sim-mailcow.log")
        self.sims.append(mailcow)
        pmg_args = [
            "--ports",
            "0,0,0",
            "--cert",
            "ca-signed",
            "--smtp",
            "127.0.0.1:0,127.0.0.1:0,127.0.0.1:0",
            "--network-write-delay",
            "0.05",
            "--sync-interval",
            "0.5",
        ]
        pmg = start_sim("pmg", pmg_args, tls, sim_env, self.workdir / "sim-pmg.log")
        self.sims.append(pmg)
        self.env = {
            **os.environ,
            **self.stack,
            "MAILPLANE_MAILCOW_URL": f"https://127.0.0.1:{mailcow.ports[0]}",
            "MAILPLANE_MAILCOW_API_KEY": creds["SIM_MAILCOW_API_KEY"],
            "MAILPLANE_MAILCOW_API_KEY_RO": creds["SIM_MAILCOW_API_KEY_RO"],
            "MAILPLANE_SIM_CA": str(tls / "ca.pem"),
            "MAILPLANE_PMG_PASSWORD": creds["SIM_PMG_PASSWORD"],
            "PYTHONPATH": os.pathsep.join([str(REPO / "infra/local"), str(REPO)]),
        }
        for i, port in enumerate(pmg.ports[:3], start=1):
            self.env[f"MAILPLANE_PMG{i}_URL"] = f"https://127.0.0.1:{port}"
            self.env[f"MAILPLANE_PMG{i}_FINGERPRINT"] = ""  # ca-signed certificates: verified with the CA
        for i, port in enumerate(pmg.ports[3:], start=1):
            self.env[f"MAILPLANE_PMG{i}_SMTP"] = f"127.0.0.1:{port}"

    def _write_settings(self) -> None:
        text = TEMPLATE.read_text().replace(PLATFORM_ZONE, self.provider_zone)
        subs = {
            "vhost": f'"{self.vhost}"',
            "state_bucket": f'"mpbench-{self.run}-state"',
            "web_bucket": f'"mpbench-{self.run}-web"',
            # SOGo restarted within the event that needs it: each event's cost includes its restart (no gather wait)
            "sogo_restart_interval": "0",
        }
        if self.prefetch is not None:
            subs["prefetch"] = str(self.prefetch)
        for key, value in subs.items():
            text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)
            if n != 1:
                raise BenchError(f"{TEMPLATE}: expected one '{key} = ...' line, found {n}")
        self.settings_path = self.workdir / "platform.bench.toml"
        self.settings_path.write_text(text)
        self.env["MAILPLANE_CONFIG"] = str(self.settings_path)
        self.settings = Settings.load(self.settings_path, self.env)
        if self.settings.broker.vhost != self.vhost or self.settings.provider.zone != self.provider_zone:
            raise BenchError("the settings copy does not point at the sandbox")

    def _s3(self) -> Any:
        st = self.settings.store
        return boto3.session.Session().client(
            "s3",
            endpoint_url=st.endpoint_url,
            verify=st.ca_file or None,
            region_name=st.region,
            aws_access_key_id=st.access_key_id.reveal(),
            aws_secret_access_key=st.secret_access_key.reveal(),
        )

    def _create_buckets(self) -> None:
        s3 = self._s3()
        for bucket in (self.settings.store.state_bucket, self.settings.store.web_bucket):
            s3.create_bucket(Bucket=bucket)
            self._buckets.append(bucket)

    def add_zones(self, zones: Iterable[str]) -> None:
        """Empty customer zones on the shared BIND (infra/local/zone-add); deleted again by ``close``."""
        todo = list(zones)
        self.zones.extend(todo)
        size = max(1, -(-len(todo) // ZONE_ADDERS))  # zone-add runs one rndc per zone: a few of them in parallel
        procs = [
            subprocess.Popen(
                [str(REPO / "infra/local/zone-add"), *chunk], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            for chunk in _chunks(todo, size)
        ]
        failed = [p.communicate()[1].decode(errors="replace").strip() for p in procs]
        failed = [err for p, err in zip(procs, failed, strict=True) if p.returncode != 0]
        if failed:
            raise BenchError(f"zone-add failed: {failed[0][-300:]}")

    def add_zones_bulk(self, zones: Iterable[str], *, signed: bool = True) -> None:
        """Many empty customer zones at once (``add_bulk_zones``); deleted again by ``close``."""
        todo = [z.rstrip(".").lower() for z in zones]
        self.bulk_zones.extend(todo)
        add_bulk_zones({z: "" for z in todo}, f"bench-sandbox {self.run}", signed=signed)

    def _drop_bulk_zones(self) -> None:
        drop_bulk_zones(self.bulk_zones, f"bench-sandbox {self.run}")
        self.bulk_zones.clear()

    def _fill_provider_zone(self) -> None:
        """The platform's hosts in the sandbox's provider zone (what infra/local/up writes into faster.test)."""
        s, zone = self.settings, self.provider_zone
        update = dns.update.UpdateMessage(zone)
        for mx in s.provider.mx_hosts:
            update.add(f"{mx.name}.", 300, "A", mx.ipv4)
            update.add(f"{mx.name}.", 300, "AAAA", mx.ipv6)
        update.add(f"{s.mailcow.host}.", 300, "A", s.mailcow.ipv4)
        update.add(f"{s.mailcow.host}.", 300, "AAAA", s.mailcow.ipv6)
        update.add(f"{s.policy.mta_sts_host}.", 300, "A", "127.0.3.1")
        v4 = " ".join(f"ip4:{mx.ipv4}" for mx in s.provider.mx_hosts)
        v6 = " ".join(f"ip6:{mx.ipv6}" for mx in s.provider.mx_hosts)
        update.add(f"{s.policy.spf_include}.", 300, "TXT", f'"v=spf1 {v4} {v6} -all"')
        update.add(f"*._report._dmarc.{zone}.", 300, "TXT", '"v=DMARC1"')
        self.dns_update(update)

    def dns_update(self, update: dns.update.UpdateMessage) -> None:
        """Send a TSIG-signed UPDATE to the shared BIND.

        Raises:
            BenchError: the server refused it.
        """
        d = self.settings.dns
        update.use_tsig(dns.tsig.Key(d.tsig_name, d.tsig_secret.reveal(), d.tsig_algorithm))
        response = dns.query.tcp(update, d.primary, port=d.port, timeout=5)
        if response.rcode() != 0:
            raise BenchError(f"UPDATE {update.origin}: rcode {response.rcode()}")

    # -- simulators' control plane -----------------------------------------------------------------------------

    def _sim_url(self, system: str) -> str:
        return self.env["MAILPLANE_MAILCOW_URL"] if system == "mailcow" else self.env["MAILPLANE_PMG1_URL"]

    def _sim_http(self) -> httpx.Client:
        return httpx.Client(verify=ssl.create_default_context(cafile=self.env["MAILPLANE_SIM_CA"]), timeout=30)

    def set_latency(self, ms: float) -> None:
        """Latency injected into every API call of this sandbox's Mailcow and PMG simulators."""
        with self._sim_http() as http:
            for system in ("mailcow", "pmg"):
                body = {"latency_ms": int(ms) if float(ms).is_integer() else ms}  # the Mailcow simulator wants an int
                http.post(f"{self._sim_url(system)}/_sim/faults", json=body).raise_for_status()

    def sim_requests(self, system: str) -> list[dict[str, Any]]:
        """The simulator's request log (every API request since start or reset)."""
        with self._sim_http() as http:
            resp = http.get(f"{self._sim_url(system)}/_sim/requests")
            resp.raise_for_status()
            data: list[dict[str, Any]] = resp.json()
            return data

    def reset_sims(self) -> None:
        """Empty both simulators' models, faults and request logs."""
        with self._sim_http() as http:
            for system in ("mailcow", "pmg"):
                http.post(f"{self._sim_url(system)}/_sim/reset").raise_for_status()

    # -- workers -----------------------------------------------------------------------------------------------

    def start_worker(
        self,
        name: str,
        *,
        pool: int,
        noop: bool = False,
        ledger: bool = True,
        until_idle: bool = True,
        idle_seconds: float = 1.5,
        samples: bool = True,
        extra: Sequence[str] = (),
        settings_path: Path | None = None,
    ) -> WorkerProc:
        """Start a benchmark worker (benchmarks/worker.py) on the sandbox's settings (or ``settings_path``);
        ``extra``: more flags of benchmarks/worker.py."""
        out, log = self.workdir / f"{name}.json", self.workdir / f"{name}.log"
        out.unlink(missing_ok=True)
        config = self.settings_path if settings_path is None else settings_path
        cmd = [PYTHON, "-m", "benchmarks.worker", "--config", str(config), "--out", str(out), *extra]
        cmd += ["--pool", str(pool), "--idle-seconds", str(idle_seconds)]
        flags = {"--noop": noop, "--no-ledger": not ledger, "--until-idle": until_idle, "--no-samples": not samples}
        cmd += [flag for flag, on in flags.items() if on]
        with log.open("wb") as sink:
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=sink, stderr=subprocess.STDOUT)
        worker = WorkerProc(proc, out, log)
        self.workers.append(worker)
        return worker

    # -- broker ------------------------------------------------------------------------------------------------

    def password(self, user: str) -> Secret:
        return Secret(self.stack[f"MAILPLANE_AMQP_{user.upper()}_PASSWORD"])

    def publish(self, events: Iterable[Mapping[str, Any]], user: str = "billing") -> int:
        """Publish with confirms (one connection); returns the count."""
        pub = Publisher(params(self.settings.broker, user, self.password(user)))
        n = 0
        try:
            for event in events:
                pub.publish_event(self.settings.broker.exchange, event, user)
                n += 1
        finally:
            pub.close()
        return n

    def publish_fast(self, bodies: Iterable[tuple[str, bytes]], user: str = "billing") -> int:
        """Publish ``(routing_key, body)`` pairs without per-message confirms (bulk backlogs); returns the count.

        The caller checks the queue depth afterwards (``queue_depth``): unconfirmed messages can be dropped.
        """
        conn = pika.BlockingConnection(params(self.settings.broker, user, self.password(user)))
        n = 0
        try:
            ch = conn.channel()
            for key, body in bodies:
                event = json.loads(body)
                ch.basic_publish(self.settings.broker.exchange, key, body, event_properties(event, user))
                n += 1
                if n % 2000 == 0:
                    conn.process_data_events(0)
        finally:
            conn.close()
        return n

    def queue_depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (passive declare as the admin user)."""
        conn = pika.BlockingConnection(params(self.settings.broker, "admin", self.password("admin")))
        try:
            return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
        finally:
            conn.close()


# ---------------------------------------------------------------- CPU accounting

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_snapshot() -> dict[int, tuple[float, str]]:
    """CPU seconds (user + system) and command line of every process on the machine."""
    out: dict[int, tuple[float, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[int(entry.name)] = ((int(fields[11]) + int(fields[12])) / _TICK, cmd)
    return out


def cpu_delta(before: dict[int, tuple[float, str]], names: Mapping[int, str]) -> dict[str, float]:
    """CPU seconds per process group since ``before``: ``names`` maps known pids to groups, the shared services are
    recognised by their command line, everything else is "other processes" (other users of the machine)."""
    groups: dict[str, float] = {}
    for pid, (cpu, cmd) in cpu_snapshot().items():
        spent = cpu - before[pid][0] if pid in before and before[pid][1] == cmd else cpu
        if pid in names:
            group = names[pid]
        elif "localstack.runtime.main" in cmd:
            group = "localstack (s3)"
        elif cmd.startswith("named "):
            group = "bind (dns)"
        elif "beam.smp" in cmd:
            group = "rabbitmq"
        else:
            group = "other processes"
        groups[group] = groups.get(group, 0.0) + max(spent, 0.0)
    return groups


# ---------------------------------------------------------------- worker processes


@dataclass
class WorkerProc:
    """A ``python -m benchmarks.worker`` process of the sandbox; its report is read from ``out``."""

    proc: subprocess.Popen[bytes]
    out: Path
    log: Path

    def wait(self, timeout: float) -> dict[str, Any]:
        """Wait for the worker to exit (it was started with ``until_idle``) and return its report.

        Raises:
            BenchError: it did not exit in time (it is stopped) or wrote no report.
        """
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise BenchError(f"worker {self.proc.pid} still busy after {timeout:.0f} s (log: {self.log})") from None
        return self.report()

    def stop(self, grace: float = 60) -> dict[str, Any]:
        """SIGTERM (the worker finishes in-flight work), wait, return the report."""
        self.terminate(grace)
        return self.report()

    def terminate(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def report(self) -> dict[str, Any]:
        if not self.out.exists():
            raise BenchError(f"worker {self.proc.pid} exited {self.proc.returncode} without a report (log: {self.log})")
        data: dict[str, Any] = json.loads(self.out.read_text())
        return data


# ---------------------------------------------------------------- events


def created_event(domain: str, *, i: int = 0) -> dict[str, Any]:
    """A domain.created for ``domain`` (hosted zone), built from events/domain.created.json with a fresh id."""
    raw: dict[str, Any] = json.loads(SAMPLE.read_text())
    raw["id"] = str(uuid.uuid4())
    raw["subject"] = raw["data"]["domain"] = domain
    raw["data"]["customer_id"] = f"C-{i:06d}"
    raw["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() // 1000 % 1_000_000:06d}Z"
    return raw


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _empty_bucket(s3: Any, bucket: str) -> None:
    """Delete every object, then the bucket (a missing bucket is fine)."""
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        s3.delete_bucket(Bucket=bucket)
    except Exception as exc:  # noqa: BLE001 - teardown reports and goes on
        print(f"bench: cannot remove bucket {bucket}: {type(exc).__name__}", file=sys.stderr)


BIND_DIR = Path(os.environ.get("MAILPLANE_STACK_DIR", str(REPO / ".stack"))) / "bind"


def add_bulk_zones(zones: Mapping[str, str], tag: str, *, signed: bool = True, timeout: float = 3600.0) -> None:
    """Many customer zones at once on the stack's BIND, as infra/local/zone-add makes them (same SOA, NS ns2/ns3,
    dnssec-policy with inline-signing, TSIG updates with ddns-key, catalog membership, delegation from ``test.``), plus
    each zone's extra zone-file lines (``zones[zone]``), through the stack's bulk path: zone files + ``zones.conf``
    (lines marked ``// tag``) + one ``rndc reconfig`` instead of one ``rndc addzone`` each (~0.3 s per zone), catalog
    and delegation lines in UPDATEs of 200; returns once both secondaries serve every zone (``drop_bulk_zones``).

    ``signed=False`` leaves out dnssec-policy: BIND keys and signs new zones one after another (10,000 zones took it
    over 5 minutes, and the secondaries' transfers of them ~3 s each meanwhile), which a bulk run need not wait for;
    the zones are then unsigned (no DS to report), everything else the same."""
    zdir = BIND_DIR / "zones"
    dnssec = ' dnssec-policy "mailplane"; inline-signing yes;' if signed else ""
    lines = []
    for zone, extra in zones.items():
        (zdir / f"{zone}.db").write_text(
            f"$TTL 300\n@ IN SOA ns1.{zone}. hostmaster.{zone}. ( 1 3600 600 86400 30 )\n"
            f"  IN NS ns2.faster.test.\n  IN NS ns3.faster.test.\nns1 IN A 127.0.0.1\n{extra}"
        )
        lines.append(
            f'zone "{zone}" {{ type primary; file "zones/{zone}.db";'
            f" update-policy {{ grant ddns-key zonesub ANY; }};{dnssec} }}; // {tag}\n"
        )
    with (BIND_DIR / "zones.conf").open("a") as conf:
        conf.writelines(lines)
    _rndc("reconfig")
    catalog = [f"update add {_catalog_label(z)}.zones.catalog.invalid. 0 IN PTR {z}." for z in zones]
    parent = [ln for z in zones if z.count(".") == 1 for ln in _delegation(z)]
    _nsupdate([("catalog.invalid", catalog), ("test", parent)])
    deadline = time.monotonic() + timeout
    for server in ("127.0.5.1", "127.0.5.2"):
        for zone in zones:
            while not _serves(server, zone):
                if time.monotonic() > deadline:
                    raise BenchError(f"bulk zones: {server} does not serve {zone} after {timeout:.0f} s")
                time.sleep(0.2)


def drop_bulk_zones(zones: Sequence[str], tag: str) -> None:
    """Undo ``add_bulk_zones`` for ``zones`` (marked ``// tag``): catalog, delegations, config lines, files, keys."""
    if not zones:
        return
    conf = BIND_DIR / "zones.conf"
    catalog = [f"update delete {_catalog_label(z)}.zones.catalog.invalid." for z in zones]
    parent = [ln for z in zones if z.count(".") == 1 for ln in (f"update delete {z}.", f"update delete ns1.{z}.")]
    _nsupdate([("catalog.invalid", catalog), ("test", parent)])
    conf.write_text("".join(ln for ln in conf.read_text().splitlines(True) if f"// {tag}" not in ln))
    _rndc("reconfig")
    gone = set(zones)
    for folder, owner in ((BIND_DIR / "zones", r"(.+)\.db"), (BIND_DIR / "keys", r"K(.+)\.\+\d+\+\d+")):
        for path in folder.iterdir():  # one listing each: a glob per zone would read the folder 10,000 times
            m = re.match(owner, path.name)
            if m and m.group(1) in gone:
                path.unlink(missing_ok=True)


def _rndc(*args: str) -> None:
    subprocess.run(["rndc", "-c", str(BIND_DIR / "rndc.conf"), *args], check=True, capture_output=True, timeout=600)


def _catalog_label(zone: str) -> str:
    """The member label infra/local/zone-add gives a zone in the catalog (sha1 of the lowercase name with the dot)."""
    return hashlib.sha1(f"{zone.lower()}.".encode()).hexdigest()


def _delegation(zone: str) -> list[str]:
    return [f"update delete {zone}. NS", *(f"update add {zone}. 300 IN NS ns{i}.faster.test." for i in (2, 3))]


def _nsupdate(batches: Sequence[tuple[str, Sequence[str]]]) -> None:
    """nsupdate with the stack's xfr-key: each zone's lines in UPDATEs of at most 200 lines (zone-add's batching)."""
    script = ["server 127.0.0.1 5399"]
    for zone, lines in batches:
        for i in range(0, len(lines), 200):
            script += [f"zone {zone}", *lines[i : i + 200], "send"]
    done = subprocess.run(
        ["nsupdate", "-t", "30", "-k", str(BIND_DIR / "xfr-key.key")],
        input="\n".join(script) + "\n",
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise BenchError(f"nsupdate failed: {done.stderr.strip()[-300:]}")


def _serves(server: str, zone: str) -> bool:
    """Whether ``server`` answers the zone's SOA authoritatively (RD=0)."""
    q = dns.message.make_query(zone, "SOA")
    q.flags &= ~dns.flags.RD
    try:
        r = dns.query.udp(q, server, port=5399, timeout=2)
    except (OSError, dns.exception.Timeout):
        return False
    return bool(r.flags & dns.flags.AA) and any(rr.rdtype == dns.rdatatype.SOA for rr in r.answer)
