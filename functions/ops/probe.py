"""The health prober: checks every PMG node and publishes node.down / node.up as the ``monitoring`` publisher.

Each round checks, for every node in parallel, the SMTP banner (``MxHost.smtp``, default ``<name>:25``: a ``220``
greeting within ``nodes.probe_timeout``) and the PMG API (``GET <api_url>/api2/json/version``: any HTTP answer below
500 means pmgproxy is up; a 401 is an answer). SMTP decides; with ``nodes.require_api`` a dead API counts too.
After ``nodes.fail_after`` consecutive failed rounds a node that was up is reported down, after
``nodes.recover_after`` good rounds a node that was down is reported up. A round in which every node fails is not
counted: the prober's own network is the likelier culprit (logged as an ALERT).

Per node, ``probes/<host>.json`` in the state store keeps the reported status, the counters and the last sequence,
so ``--once`` runs (cron) count across invocations and sequences increase across restarts: a new sequence is
``max(last + 1, now in milliseconds)``, which also keeps it comparable with other observers (infra/wazuh).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import httpx

from functions._core.platform.config import MxHost, PmgSettings, Settings
from functions._core.platform.envelope import build
from functions._core.platform.errors import PreconditionFailed
from functions._core.platform.store import ObjectStore, put_over
from functions.ops.fingerprint import served_fingerprint

SOURCE = "urn:mailplane:monitoring"
PUBLISHER = "monitoring"

log = logging.getLogger("mailplane.probe")

Publish = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True)
class Check:
    smtp: bool
    api: bool | None  # None: no api_url configured
    reason: str = ""

    def healthy(self, require_api: bool) -> bool:
        return self.smtp and (self.api is not False or not require_api)


@dataclass(frozen=True)
class ProbeState:
    host: str
    status: str = "up"  # last reported status; a node is assumed up until proven otherwise
    fails: int = 0
    oks: int = 0
    sequence: int = 0
    etag: str | None = None

    def body(self) -> bytes:
        data = {"status": self.status, "fails": self.fails, "oks": self.oks, "sequence": self.sequence}
        return json.dumps(data, sort_keys=True).encode()


def split_hostport(value: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port``."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, int(port)
    return value, default_port


def smtp_banner(target: str, timeout: float) -> tuple[bool, str]:
    """Connect and read the greeting; healthy on ``220``. Sends QUIT; never raises."""
    host, port = split_hostport(target, 25)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            reader = sock.makefile("rb")
            line = reader.readline(1024)
            while line[3:4] == b"-":  # multi-line greeting "220-..."
                line = reader.readline(1024)
            try:
                sock.sendall(b"QUIT\r\n")
            except OSError:
                pass
    except (OSError, ValueError) as exc:
        return False, f"SMTP {target}: {type(exc).__name__}: {exc}"[:150]
    if not line.startswith(b"220"):
        shown = line[:60].decode("ascii", "replace").strip()
        return False, f"SMTP {target}: greeting {shown!r}"
    return True, ""


def api_alive(url: str, pmg: PmgSettings, timeout: float, fingerprint: str = "") -> tuple[bool, str]:
    """``GET <url>/api2/json/version`` answered below 500 (no credentials sent); never raises.

    With ``fingerprint`` the served certificate must have it (pinning; no CA chain is checked then).
    """
    verify: ssl.SSLContext | bool = pmg.verify_tls
    if pmg.ca_file:
        verify = ssl.create_default_context(cafile=pmg.ca_file)
    try:
        if fingerprint:
            parts = urllib.parse.urlsplit(url)
            served = served_fingerprint((parts.hostname or "", parts.port or 8006), timeout)
            if served != fingerprint:
                return False, f"API {url}: certificate fingerprint {served} is not the pinned one"
            verify = ssl.create_default_context()
            verify.check_hostname, verify.verify_mode = False, ssl.CERT_NONE
        resp = httpx.get(f"{url.rstrip('/')}/api2/json/version", verify=verify, timeout=timeout)
    except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
        return False, f"API {url}: {type(exc).__name__}"
    if resp.status_code >= 500:
        return False, f"API {url}: HTTP {resp.status_code}"
    return True, ""


def check_node(host: MxHost, settings: Settings) -> Check:
    timeout = settings.nodes.probe_timeout
    smtp_ok, smtp_why = smtp_banner(host.smtp or f"{host.name}:25", timeout)
    api: bool | None = None
    api_why = ""
    if host.api_url:
        api, api_why = api_alive(host.api_url, settings.pmg, timeout, host.api_fingerprint)
    return Check(smtp_ok, api, "; ".join(w for w in (smtp_why, api_why) if w))


def observer_name(settings: Settings) -> str:
    name = settings.nodes.observer or socket.gethostname()
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)[:64] or "prober"


def state_key(host: str) -> str:
    return f"probes/{host}.json"


def load(store: ObjectStore, host: str) -> ProbeState:
    obj = store.get(state_key(host))
    if obj is None:
        return ProbeState(host)
    raw = json.loads(obj.body)
    return ProbeState(host, raw["status"], raw["fails"], raw["oks"], raw["sequence"], obj.etag)


def save(store: ObjectStore, new: ProbeState, before: ProbeState) -> ProbeState:
    """Conditional write; a lost race (another prober) is logged and the other's state kept."""
    if new.body() == before.body() and before.etag is not None:
        return before
    try:
        etag = put_over(store, state_key(new.host), new.body(), before.etag)
    except PreconditionFailed:
        log.warning("probe: state of %s changed concurrently (another prober?); keeping theirs", new.host)
        return load(store, new.host)
    return replace(new, etag=etag)


class Prober:
    """One round = check every node, update its counters, publish on a transition."""

    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        publish: Publish,
        *,
        check: Callable[[MxHost], Check] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings, self.store, self.publish, self.clock = settings, store, publish, clock
        self.check = check if check is not None else (lambda host: check_node(host, settings))
        self.observer = observer_name(settings)
        self.pool = ThreadPoolExecutor(max_workers=max(1, len(settings.provider.mx_hosts)), thread_name_prefix="probe")

    def round(self) -> list[Mapping[str, Any]]:
        """Check every node once; return the events published."""
        hosts = self.settings.provider.mx_hosts
        checks = list(self.pool.map(self.check, hosts))
        if len(hosts) > 1 and not any(c.healthy(self.settings.nodes.require_api) for c in checks):
            log.critical("ALERT probe: every node failed this round; assuming the prober's own network, not counting")
            return []
        published = []
        for host, check in zip(hosts, checks, strict=True):
            event = self._step(host, check)
            if event is not None:
                published.append(event)
        return published

    def _step(self, host: MxHost, check: Check) -> Mapping[str, Any] | None:
        nodes = self.settings.nodes
        before = load(self.store, host.name)
        if check.healthy(nodes.require_api):
            st = replace(before, fails=0, oks=min(before.oks + 1, nodes.recover_after))
        else:
            st = replace(before, oks=0, fails=min(before.fails + 1, nodes.fail_after))
            log.info("probe: %s failed (%d/%d): %s", host.name, st.fails, nodes.fail_after, check.reason)
        if st.status == "down":
            new_status, due = "up", st.oks >= nodes.recover_after
        else:
            new_status, due = "down", st.fails >= nodes.fail_after
        event = None
        if due:
            sequence = max(before.sequence + 1, int(self.clock() * 1000))
            event = self._event(host, new_status, sequence, check, st)
            try:
                self.publish(event)
            except Exception as exc:  # the broker is down: keep the counters, try again next round
                log.error("probe: cannot publish node.%s for %s (%s)", new_status, host.name, type(exc).__name__)
                save(self.store, st, before)
                return None
            log.warning("probe: published node.%s %s sequence %d", new_status, host.name, sequence)
            st = replace(st, status=new_status, sequence=sequence)
        save(self.store, st, before)
        return event

    def _event(self, host: MxHost, status: str, sequence: int, check: Check, st: ProbeState) -> dict[str, Any]:
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        checks: dict[str, bool] = {"smtp": check.smtp} | ({} if check.api is None else {"api": check.api})
        data: dict[str, Any] = {
            "node": host.name,
            "observer": self.observer,
            "observed_at": now.isoformat(timespec="seconds"),
            "sequence": sequence,
            "checks": checks,
        }
        if status == "down":
            data["reason"] = f"{check.reason[:150] or 'failed'} ({st.fails} consecutive failed rounds)"
        event_id = f"{self.observer}-{host.name}-{sequence}"
        return build(f"node.{status}", host.name, data, source=SOURCE, id=event_id, time=now)

    def run(self, interval: float, stop: threading.Event) -> None:
        """Rounds every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.round()
            except Exception:  # a store outage must not end the prober
                log.exception("probe: round failed")
            stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
