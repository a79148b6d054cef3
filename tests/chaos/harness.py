"""An isolated slice of the local stack for chaos and runtime proofs, plus worker processes to torture.

Per run: a fresh RabbitMQ vhost (infra/rabbitmq/definitions.json imported under another name, same users and
permissions), our own Mailcow and PMG simulator processes on free ports (faults injected there touch nobody
else), a provider zone of our own in the shared BIND (so node.* events never touch faster.test), a DNS proxy that
can answer SERVFAIL, and a settings file pointing at all of it. The shared LocalStack S3 is used with unique
names. Everything is removed again by ``close()``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import ssl
import subprocess
import threading
import time
import tomllib
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.query
import dns.tsig
import dns.tsigkeyring
import dns.update
import httpx
import pika

from functions._core.platform.config import Secret, Settings
from functions.runtime.amqp import Publisher, event_properties, params
from tests.chaos.dnsproxy import DnsProxy
from tests.stackenv import REPO

PY = str(REPO / ".venv" / "bin" / "python")


# ---------------------------------------------------------------------------------------------- secrets


class Redacted(dict[str, str]):
    """An environment mapping whose repr hides secret values (pytest prints arguments of failing frames)."""

    SECRET = re.compile(r"PASSWORD|SECRET|API_KEY|KEK|TOKEN")

    def __repr__(self) -> str:
        shown = {k: ("***" if self.SECRET.search(k) else v) for k, v in self.items()}
        return f"Redacted({shown!r})"


# ---------------------------------------------------------------------------------------------- TOML out


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _inline(value: Any) -> bool:
    return isinstance(value, dict) and set(value) <= {"env", "file"}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {type(value).__name__}")


def dump_toml(doc: Mapping[str, Any], prefix: str = "") -> str:
    """Enough TOML for the settings file: tables, arrays of tables, inline ``{ env = ... }`` references."""
    out: list[str] = []
    tables: list[tuple[str, Any]] = []
    for key, value in doc.items():
        if isinstance(value, dict) and not _inline(value):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) and not _inline(v) for v in value):
            tables.append((key, value))
        else:
            out.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables:
        name = f"{prefix}{_toml_key(key)}"
        if isinstance(value, list):
            for item in value:
                out.append(f"\n[[{name}]]")
                out.append(dump_toml(item, f"{name}."))
        else:
            out.append(f"\n[{name}]")
            out.append(dump_toml(value, f"{name}."))
    return "\n".join(line for line in out if line)


# ---------------------------------------------------------------------------------------------- management API


class Mgmt:
    """The RabbitMQ management API as admin (credentials from .stack/env.sh)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.client = httpx.Client(
            base_url=env["MAILPLANE_AMQP_MGMT_URL"],
            auth=(env["MAILPLANE_AMQP_ADMIN_USER"], env["MAILPLANE_AMQP_ADMIN_PASSWORD"]),
            verify=ssl.create_default_context(cafile=env["MAILPLANE_STACK_CA"]),
            timeout=30,
        )

    def _ok(self, resp: httpx.Response) -> httpx.Response:
        if resp.status_code >= 400:
            raise RuntimeError(f"management API {resp.request.method} {resp.request.url.path}: {resp.status_code}")
        return resp

    def create_vhost(self, vhost: str) -> None:
        """A vhost with the topology of infra/rabbitmq/definitions.json and the same users' permissions."""
        defs = json.loads((REPO / "infra" / "rabbitmq" / "definitions.json").read_text())
        q = urllib.parse.quote(vhost, safe="")
        self._ok(self.client.put(f"/api/vhosts/{q}", json={"description": "mailplane chaos run"}))
        scoped = {k: [_unscoped(x) for x in defs[k]] for k in ("queues", "exchanges", "bindings", "policies")}
        self._ok(self.client.post(f"/api/definitions/{q}", json=scoped))
        for p in defs["permissions"]:
            body = {k: p[k] for k in ("configure", "write", "read")}
            self._ok(self.client.put(f"/api/permissions/{q}/{p['user']}", json=body))
        for tp in defs["topic_permissions"]:
            body = {k: tp[k] for k in ("exchange", "write", "read")}
            self._ok(self.client.put(f"/api/topic-permissions/{q}/{tp['user']}", json=body))

    def delete_vhost(self, vhost: str) -> None:
        resp = self.client.delete(f"/api/vhosts/{urllib.parse.quote(vhost, safe='')}")
        if resp.status_code not in (204, 404):
            self._ok(resp)

    def queues(self, vhost: str) -> dict[str, dict[str, Any]]:
        q = urllib.parse.quote(vhost, safe="")
        rows = self._ok(self.client.get(f"/api/queues/{q}")).json()
        return {r["name"]: r for r in rows}

    def connections(self, vhost: str, user: str | None = None) -> list[dict[str, Any]]:
        rows = self._ok(self.client.get("/api/connections")).json()
        return [r for r in rows if r.get("vhost") == vhost and (user is None or r.get("user") == user)]

    def close_connection(self, name: str) -> None:
        resp = self.client.delete(f"/api/connections/{urllib.parse.quote(name, safe='')}")
        if resp.status_code not in (204, 404):
            self._ok(resp)


def _unscoped(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "vhost"}


# ---------------------------------------------------------------------------------------------- simulators


@dataclass
class Sims:
    """Our own Mailcow and PMG simulator processes (HTTPS, own CA)."""

    tls_dir: Path
    mailcow_url: str = ""
    pmg_urls: tuple[str, ...] = ()
    pmg_smtp: tuple[str, ...] = ()  # host:port of each node's SMTP listener (the acceptance gate probes them)
    api_key: Secret = field(default_factory=lambda: Secret("-".join(secrets.token_hex(3).upper() for _ in range(5))))
    pmg_password: Secret = field(default_factory=lambda: Secret(secrets.token_urlsafe(18)))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def ca(self) -> str:
        return str(self.tls_dir / "ca.pem")

    def start(self) -> Sims:
        env = {
            **os.environ,
            "PYTHONPATH": f"{REPO / 'infra' / 'local'}:{REPO}",
            "SIM_MAILCOW_API_KEY": self.api_key.reveal(),
            "SIM_PMG_USER": "automation@pmg",
            "SIM_PMG_PASSWORD": self.pmg_password.reveal(),
        }
        ports = self._serve(["mailcow", "--port", "0"], env)
        self.mailcow_url = f"https://127.0.0.1:{ports[0]}"
        smtp = "127.0.0.1:0,127.0.0.1:0,127.0.0.1:0"
        pmg = [
            "pmg",
            "--ports",
            "0,0,0",
            "--cert",
            "ca-signed",
            "--smtp",
            smtp,
            "--network-write-delay",
            "0.05",
            "--sync-interval",
            "0.5",
        ]
        ports = self._serve(pmg, env)
        self.pmg_urls = tuple(f"https://127.0.0.1:{p}" for p in ports[:3])
        self.pmg_smtp = tuple(f"127.0.0.1:{p}" for p in ports[3:])
        return self

    def _serve(self, args: list[str], env: dict[str, str]) -> list[int]:
        with open(self.tls_dir / f"{args[0]}.log", "ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [PY, "-m", "sim.serve", *args, "--tls-dir", str(self.tls_dir)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self.procs.append(proc)
        assert proc.stdout is not None
        ports: list[int] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode().strip()
            if line == "ready":
                return ports
            if not line and proc.poll() is not None:
                break
            if line:  # "<system> <port>", then "<system>-smtp <port>" (HTTP ports first)
                ports.append(int(line.split()[1]))
        raise RuntimeError(f"simulator {args[0]} did not start (see {self.tls_dir})")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _client(self) -> httpx.Client:
        return httpx.Client(verify=ssl.create_default_context(cafile=self.ca), timeout=30)

    def faults(self, *, mailcow: dict[str, Any] | None = None, pmg: dict[str, Any] | None = None) -> None:
        with self._client() as c:
            if mailcow is not None:
                c.post(f"{self.mailcow_url}/_sim/faults", json=mailcow).raise_for_status()
            if pmg is not None:
                c.post(f"{self.pmg_urls[0]}/_sim/faults", json=pmg).raise_for_status()

    def mailcow_state(self) -> dict[str, Any]:
        with self._client() as c:
            data: dict[str, Any] = c.get(f"{self.mailcow_url}/_sim/state").raise_for_status().json()
            return data

    def pmg_state(self) -> dict[str, Any]:
        with self._client() as c:
            data: dict[str, Any] = c.get(f"{self.pmg_urls[0]}/_sim/state").raise_for_status().json()
            return data

    def mailcow_requests(self) -> list[dict[str, Any]]:
        with self._client() as c:
            data: list[dict[str, Any]] = c.get(f"{self.mailcow_url}/_sim/requests").raise_for_status().json()
            return data

    def pmg_requests(self) -> list[dict[str, Any]]:
        with self._client() as c:
            data: list[dict[str, Any]] = c.get(f"{self.pmg_urls[0]}/_sim/requests").raise_for_status().json()
            return data


# ---------------------------------------------------------------------------------------------- zones


def zone_script(name: str, zones: list[str], env: Mapping[str, str], parallel: int = 4) -> None:
    """infra/local/zone-add or zone-del for many zones: chunks run side by side (one rndc call per zone)."""
    run_env = {**os.environ, "MAILPLANE_STACK_DIR": env["MAILPLANE_STACK_DIR"]}
    chunks = [zones[i::parallel] for i in range(parallel) if zones[i::parallel]]

    def one(chunk: list[str]) -> None:
        done = subprocess.run(
            [str(REPO / "infra" / "local" / name), *chunk], env=run_env, capture_output=True, text=True, timeout=900
        )
        if done.returncode != 0:
            raise RuntimeError(f"{name}: {done.stderr[-500:]}")

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, chunks))


def provider_records(settings: Settings) -> list[tuple[str, str, str]]:
    """(relative name, type, value) of the provider zone: the gateways, Mailcow, the MTA-STS host, SPF, DMARC."""
    zone = settings.provider.zone
    rows = []
    for host in settings.provider.mx_hosts:
        label = host.name.removesuffix(f".{zone}")
        rows += [(label, "A", host.ipv4), (label, "AAAA", host.ipv6)]
    mc = settings.mailcow
    rows += [("moo", "A", mc.ipv4), ("moo", "AAAA", mc.ipv6), ("web6", "A", "127.0.3.1")]
    addrs = " ".join(f"ip4:{h.ipv4} ip6:{h.ipv6}" for h in settings.provider.mx_hosts)
    rows += [("_pmg", "TXT", f'"v=spf1 {addrs} -all"'), ("*._report._dmarc", "TXT", '"v=DMARC1"')]
    return rows


def fill_provider_zone(env: Mapping[str, str], settings: Settings) -> None:
    keyring = dns.tsigkeyring.from_text(
        {env["MAILPLANE_TSIG_NAME"]: (dns.tsig.HMAC_SHA256, env["MAILPLANE_TSIG_SECRET"])}
    )
    update = dns.update.UpdateMessage(settings.provider.zone, keyring=keyring, keyalgorithm=dns.tsig.HMAC_SHA256)
    for name, rtype, value in provider_records(settings):
        update.add(name, 300, rtype, value)
    response = dns.query.tcp(update, env["MAILPLANE_DNS_SERVER"], port=int(env["MAILPLANE_DNS_PORT"]), timeout=10)
    if response.rcode() != 0:
        raise RuntimeError(f"provider zone update failed: rcode {response.rcode()}")


# ---------------------------------------------------------------------------------------------- the slice


@dataclass(repr=False)
class Slice:
    """Everything one chaos run uses; build with ``Slice.open(stack_env, workdir)``, remove with ``close()``."""

    stack_env: dict[str, str]
    workdir: Path
    run_id: str
    vhost: str
    sims: Sims
    proxy: DnsProxy
    mgmt: Mgmt
    config: Path
    env: dict[str, str]
    settings: Settings
    zones: list[str] = field(default_factory=list)
    workers: list[WorkerProc] = field(default_factory=list)

    @classmethod
    def open(cls, stack_env: dict[str, str], workdir: Path) -> Slice:
        stack_env = stack_env if isinstance(stack_env, Redacted) else Redacted(stack_env)
        run_id = uuid.uuid4().hex[:8]
        vhost = f"chaos-{run_id}"
        mgmt = Mgmt(stack_env)
        sims = Sims(workdir / "sim")
        sims.tls_dir.mkdir(parents=True, exist_ok=True)
        proxy = DnsProxy(
            (stack_env["MAILPLANE_DNS_SERVER"], int(stack_env["MAILPLANE_DNS_PORT"])),
            stack_env["MAILPLANE_TSIG_NAME"],
            stack_env["MAILPLANE_TSIG_ALGORITHM"],
            Secret(stack_env["MAILPLANE_TSIG_SECRET"]),
        ).start()
        try:
            mgmt.create_vhost(vhost)
            buckets(stack_env, vhost, create=True)
            sims.start()
            provider = f"prov{run_id}.test"
            config = workdir / "platform.chaos.toml"
            config.write_text(settings_toml(vhost, proxy.port, provider))
            env = Redacted(
                {
                    **stack_env,
                    "MAILPLANE_CONFIG": str(config),
                    "MAILPLANE_MAILCOW_URL": sims.mailcow_url,
                    "MAILPLANE_MAILCOW_API_KEY": sims.api_key.reveal(),
                    "MAILPLANE_PMG_PASSWORD": sims.pmg_password.reveal(),
                    "MAILPLANE_SIM_CA": sims.ca,
                    **{f"MAILPLANE_PMG{i}_URL": url for i, url in enumerate(sims.pmg_urls, 1)},
                    **{f"MAILPLANE_PMG{i}_SMTP": smtp for i, smtp in enumerate(sims.pmg_smtp, 1)},
                    **{f"MAILPLANE_PMG{i}_FINGERPRINT": "" for i in (1, 2, 3)},  # ca-signed: verified with the CA
                    "MAILPLANE_AMQP_VHOST": vhost,
                }
            )
            settings = Settings.load(config, env)
            zone_script("zone-add", [provider], stack_env)
            fill_provider_zone(stack_env, settings)
        except BaseException:
            proxy.close()
            sims.stop()
            mgmt.delete_vhost(vhost)
            buckets(stack_env, vhost, create=False)
            raise
        return cls(stack_env, workdir, run_id, vhost, sims, proxy, mgmt, config, env, settings, [provider])

    def __repr__(self) -> str:
        return f"Slice(vhost={self.vhost!r}, workdir={str(self.workdir)!r})"

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        self.proxy.close()
        self.sims.stop()
        self.mgmt.delete_vhost(self.vhost)
        buckets(self.stack_env, self.vhost, create=False)
        if self.zones:
            zone_script("zone-del", self.zones, self.stack_env)

    # -------------------------------------------------------------------------- workers

    def worker(self, name: str, **hooks: str) -> WorkerProc:
        w = WorkerProc(self, name, hooks)
        self.workers.append(w)
        return w.start()

    # -------------------------------------------------------------------------- publishing

    def publisher(self, user: str) -> Publisher:
        return Publisher(
            params(self.settings.broker, user, Secret(self.stack_env[f"MAILPLANE_AMQP_{user.upper()}_PASSWORD"]))
        )

    def admin_params(self) -> pika.ConnectionParameters:
        return params(self.settings.broker, "admin", Secret(self.stack_env["MAILPLANE_AMQP_ADMIN_PASSWORD"]))

    @contextmanager
    def channel(self, user: str = "admin") -> Iterator[Any]:
        password = Secret(self.stack_env[f"MAILPLANE_AMQP_{user.upper()}_PASSWORD"])
        conn = pika.BlockingConnection(params(self.settings.broker, user, password))
        try:
            yield conn.channel()
        finally:
            if conn.is_open:
                conn.close()

    def depth(self) -> dict[str, int]:
        """Ready messages per work/wait queue (passive declares: exact, no statistics lag)."""
        names = [f"q.work.{r}" for r in range(len(self.settings.broker.retry_delays) + 1)]
        names += [f"q.wait.{r}" for r in range(1, len(self.settings.broker.retry_delays) + 1)]
        with self.channel() as ch:
            return {n: ch.queue_declare(n, passive=True).method.message_count for n in names}

    def settled(self) -> bool:
        """No ready message on any work/wait queue and none unacknowledged (management statistics)."""
        if any(self.depth().values()):
            return False
        rows = self.mgmt.queues(self.vhost)
        return all(
            r.get("messages", 0) == 0 and r.get("messages_unacknowledged", 0) == 0
            for n, r in rows.items()
            if n.startswith(("q.work.", "q.wait."))
        )

    def wait_settled(self, timeout: float, quiet: float = 7.0) -> float:
        """Wait until the work is done (settled for ``quiet`` seconds: management statistics lag ~5 s)."""
        start = time.monotonic()
        since: float | None = None
        while time.monotonic() - start < timeout:
            for w in self.workers:
                w.check()
            if self.settled():
                since = since or time.monotonic()
                if time.monotonic() - since >= quiet:
                    return since - start
            else:
                since = None
            time.sleep(0.5)
        raise AssertionError(f"not settled after {timeout:.0f} s: {self.depth()}")

    def drain(self, queue: str) -> list[tuple[Any, bytes]]:
        """Remove and return every message of ``queue`` (properties, body)."""
        out: list[tuple[Any, bytes]] = []
        with self.channel() as ch:
            while True:
                method, props, body = ch.basic_get(queue, auto_ack=True)
                if method is None:
                    return out
                out.append((props, body))


def buckets(stack_env: Mapping[str, str], vhost: str, *, create: bool) -> None:
    """Create, or empty and delete, the run's private state and web buckets in LocalStack.

    Both are versioned. LocalStack's ephemeral storage writes an unversioned object's data in place: a PUT cut off by
    a SIGKILLed worker (or refused for a bad Content-MD5) truncates the existing object, whose metadata keeps the old
    size, so every later GET of it breaks (ResponseStreamingError, or a read timeout). S3 and MinIO never expose a
    PUT that did not complete. With versioning each PUT writes a new version's own file, and one that fails never
    becomes current: the slice's store behaves as production's does when workers are killed mid-write. Conditional
    writes, deletes and listings behave the same on a versioned bucket (what the product relies on).
    """
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=stack_env["MAILPLANE_S3_ENDPOINT"],
        verify=stack_env["MAILPLANE_STACK_CA"],
        region_name="us-east-1",
        aws_access_key_id=stack_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=stack_env["AWS_SECRET_ACCESS_KEY"],
    )
    for name in (f"{vhost}-state", f"{vhost}-web"):
        if create:
            s3.create_bucket(Bucket=name)
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
            continue
        try:
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
                versions = [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
                gone: list[Any] = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in versions]
                for i in range(0, len(gone), 1000):
                    s3.delete_objects(Bucket=name, Delete={"Objects": gone[i : i + 1000], "Quiet": True})
            s3.delete_bucket(Bucket=name)
        except s3.exceptions.NoSuchBucket:
            pass


def settings_toml(vhost: str, dns_port: int, provider: str) -> str:
    doc = tomllib.loads((REPO / "infra" / "local" / "platform.test.toml").read_text())
    doc["broker"]["vhost"] = vhost
    # private buckets, versioned (see buckets()): LocalStack tears an object whose overwrite is cut off mid-PUT
    doc["store"]["state_bucket"], doc["store"]["web_bucket"] = f"{vhost}-state", f"{vhost}-web"
    doc["dns"]["port"] = dns_port
    doc["dns"]["primary"] = "127.0.0.1"
    # the gate asks the proxy only: the zones' NS (the secondaries ns2/ns3) listen on 5399, not on the proxy's port,
    # and what this run proves is delivery under kills and SERVFAIL bursts (the secondaries have their own stack
    # tests: tests/integration/test_dns_topology_stack.py)
    doc["dns"]["servers"] = [f"127.0.0.1:{dns_port}"]
    p = doc["provider"]
    old = p["zone"]
    p["zone"] = provider
    p["protected_zones"] = [provider]
    for host in p["mx_hosts"]:
        host["name"] = host["name"].replace(old, provider)
    doc["mailcow"]["host"] = doc["mailcow"]["host"].replace(old, provider)
    # delivery under faults is what this run proves; the SOGo webmail step is off here: its shared restart record
    # (one hot S3 object, read and written by every new domain) made LocalStack answer ResponseStreamingError under
    # this load (437 parks with interval 0, a few with 1); the debounce has its own stack test
    doc["mailcow"]["sogo_restart"] = False
    for k, v in doc["policy"].items():
        if isinstance(v, str):
            doc["policy"][k] = v.replace(old, provider)
    return "# generated by tests/chaos/harness.py for one chaos run\n" + dump_toml(doc) + "\n"


# ---------------------------------------------------------------------------------------------- worker processes


class WorkerProc:
    """``python -m tests.chaos.worker_proc`` with hooks; ``CHAOS_RESPAWN=1`` makes it restart after a kill."""

    def __init__(self, sl: Slice, name: str, hooks: Mapping[str, str]) -> None:
        self.slice, self.name, self.hooks = sl, name, dict(hooks)
        self.dir = sl.workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pidfile = self.dir / "pid"
        self.stopped = False

    def start(self) -> WorkerProc:
        env = {
            **os.environ,
            **self.slice.env,
            "PYTHONPATH": f"{REPO}:{REPO / 'infra' / 'local'}",
            "CHAOS_PIDFILE": str(self.pidfile),
            "CHAOS_PIDS": str(self.dir / "pids"),
            "CHAOS_DEATHS": str(self.dir / "deaths"),
            "CHAOS_KILL_LOG": str(self.slice.workdir / "kills"),
            **self.hooks,
        }
        with open(self.dir / "stdout", "ab") as out, open(self.dir / "stderr", "ab") as err:
            self.proc = subprocess.Popen(
                [PY, "-m", "tests.chaos.worker_proc"], cwd=REPO, env=env, stdout=out, stderr=err
            )
        return self

    @property
    def pid(self) -> int | None:
        """The pid of the process running the Worker (the forked child when respawning)."""
        if self.hooks.get("CHAOS_RESPAWN") == "1":
            try:
                return int(self.pidfile.read_text())
            except (OSError, ValueError):
                return None
        return self.proc.pid if self.proc else None

    def ready_count(self) -> int:
        try:
            return (self.dir / "stderr").read_text(errors="replace").count(" ready\n")
        except OSError:
            return 0

    def wait_ready(self, timeout: float = 30, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_count() >= count and self._consuming():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready after {timeout} s: {self.tail()}")

    def _consuming(self) -> bool:
        try:
            return "consuming " in (self.dir / "stderr").read_text(errors="replace")
        except OSError:
            return False

    def sigkill(self) -> bool:
        pid = self.pid
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def check(self) -> None:
        """Raise when the worker exited although nobody stopped it (a crash the supervisor does not hide).

        Raises:
            AssertionError: with the end of its log.
        """
        if not self.stopped and self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            pid = self.pid
            if pid is not None and pid != self.proc.pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait()

    def deaths(self) -> int:
        try:
            return len((self.dir / "deaths").read_text().splitlines())
        except OSError:
            return 0

    def outcome_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in (self.dir / "stdout").read_text(errors="replace").splitlines():
            if raw.startswith("{"):
                try:
                    lines.append(json.loads(raw))
                except ValueError:
                    continue
        return lines

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join((self.dir / "stderr").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


# ---------------------------------------------------------------------------------------------- publishing


def publish_raw(
    pub: Publisher, exchange: str, routing_key: str, body: bytes, *, user_id: str | None, subject: str, mid: str
) -> None:
    props = event_properties({"id": mid, "subject": subject}, user_id or "")
    props.user_id = user_id
    pub.publish(exchange, routing_key, body, props)


class Ticker:
    """Run ``fn`` every ``interval`` seconds in a thread until stopped (for fault schedules and killers)."""

    def __init__(self, interval: float, fn: Any) -> None:
        self.interval, self.fn = interval, fn
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.fn()
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(exc)

    def __enter__(self) -> Ticker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


# ---------------------------------------------------------------------------------------------- Lambda (aws:rmq)


def _header_bytes(value: Any) -> Any:
    """How the event source mapping shows a header: strings as ``{"bytes": [...]}``, numbers as they are."""
    if isinstance(value, bytes):
        return {"bytes": list(value)}
    if isinstance(value, str):
        return {"bytes": list(value.encode())}
    if isinstance(value, dict):
        return {k: _header_bytes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_header_bytes(v) for v in value]
    return value


def esm_record(method: Any, props: Any, body: bytes) -> dict[str, Any]:
    """One ``aws:rmq`` record, as Amazon MQ's event source mapping builds it from a delivery (broker.md §13)."""
    import base64

    return {
        "basicProperties": {
            "contentType": props.content_type,
            "contentEncoding": props.content_encoding,
            "headers": {k: _header_bytes(v) for k, v in (props.headers or {}).items()},
            "deliveryMode": props.delivery_mode,
            "priority": props.priority,
            "correlationId": props.correlation_id,
            "replyTo": props.reply_to,
            "expiration": props.expiration,
            "messageId": props.message_id,
            "timestamp": "Nov 28, 2026, 12:00:00 AM",
            "type": props.type,
            "userId": props.user_id,
            "appId": props.app_id,
            "clusterId": None,
            "bodySize": len(body),
        },
        "redelivered": bool(method.redelivered),
        "data": base64.b64encode(body).decode(),
    }


def esm_batch(ch: Any, queue: str, vhost: str, limit: int = 100) -> tuple[dict[str, Any], list[int]]:
    """Take up to ``limit`` deliveries of ``queue`` unacked (the caller acks them, as the mapping does after a
    successful invocation) and wrap them in an ``aws:rmq`` event."""
    records, tags = [], []
    for _ in range(limit):
        method, props, body = ch.basic_get(queue, auto_ack=False)
        if method is None:
            break
        records.append(esm_record(method, props, body))
        tags.append(method.delivery_tag)
    arn = "arn:aws:mq:eu-central-1:000000000000:broker:mailplane:b-chaos"
    return {"eventSource": "aws:rmq", "eventSourceArn": arn, "rmqMessagesByQueue": {f"{queue}::{vhost}": records}}, tags


def wait_for(pred: Any, timeout: float, what: str, interval: float = 0.1) -> float:
    """Poll ``pred()`` until true; returns the seconds it took.

    Raises:
        AssertionError: still false after ``timeout`` seconds.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s")
