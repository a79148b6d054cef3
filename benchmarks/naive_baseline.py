"""The naive baseline: provision customer domains one after another, making the same Mailcow, PMG, DNS and S3 calls
as mailplane's domain.created, with plain httpx, requests, dnspython and boto3.

    python -m benchmarks.naive_baseline --config FILE --out REPORT.json DOMAIN [DOMAIN...]

No broker, no ports, no retries, no threads: one call after the other, in the order the handler makes them (ledger
claim, subject lock, state, PMG lists, Mailcow reads, zone reads, policy, sealed key, Mailcow domain, PMG entries, the
one DNS UPDATE, verification on every authoritative server with a DKIM probe, DKIM import, final state, lock release,
ledger completion). It is a fair baseline: connections are kept alive, the payloads are mailplane's own (record set,
MTA-STS policy, DKIM key generation, sealing and the probe come from mailplane's pure helpers in functions._core), and
it counts its calls per system, which the suite prints next to mailplane's. ``Naive.system_calls`` runs one
system's share of a domain, which the capacity probe (bench_capacity) uses to load one dependency at a time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.update
import dns.xfr
import dns.zone
import httpx
import requests

from functions._core.model import keys
from functions._core.model.mailset import desired_records, mta_sts_policy, policy_key
from functions._core.model.records import RecordSet, split_txt
from functions._core.platform.config import Settings

MANAGED = "managed-by mailplane"
SYSTEMS = ("mailcow", "pmg", "dns", "s3")
SOURCE = "urn:mailplane:billing"
SAMPLE = Path(__file__).resolve().parent.parent / "events/domain.created.json"


class Naive:
    """Plain clients for every system and the per-domain call sequence; counts calls per system."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        mc, pmg, st = settings.mailcow, settings.pmg, settings.store
        ca = ssl.create_default_context(cafile=mc.ca_file) if mc.ca_file else True
        self.mailcow = httpx.Client(
            base_url=mc.url.rstrip("/") + "/api/v1/",
            headers={"X-API-Key": mc.api_key.reveal(), "Accept": "application/json"},
            verify=ca,
            timeout=mc.timeout,
        )
        self.pmg_url = f"{settings.provider.mx_hosts[0].api_url.rstrip('/')}/api2/json"
        self.pmg = requests.Session()
        self.pmg_verify: str | bool = pmg.ca_file or True  # per request: REQUESTS_CA_BUNDLE would beat a session's
        self.s3 = boto3.session.Session().client(
            "s3",
            endpoint_url=st.endpoint_url or None,
            verify=st.ca_file or None,
            region_name=st.region,
            aws_access_key_id=st.access_key_id.reveal() or None,
            aws_secret_access_key=st.secret_access_key.reveal() or None,
            config=botocore.config.Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}),
        )
        d = settings.dns
        self.tsig = dns.tsig.Key(d.tsig_name, d.tsig_secret.reveal(), d.tsig_algorithm)
        self.plan = json.loads(SAMPLE.read_text())["data"]["plan"]
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._login()

    def _count(self, system: str) -> None:
        with self._lock:
            self.calls[system] += 1

    # -- one domain, the handler's order --------------------------------------------------------------------

    def provision(self, domain: str, customer: str) -> None:
        """Every call of one domain.created for a new, hosted ``domain``, one after another."""
        event_id = str(uuid.uuid4())
        idem, lock = self._s3_claim(event_id, domain)
        pair = keys.generate(
            keys.next_selector(self.s.dkim.selector_format, datetime.now(UTC), ()), self.s.dkim.key_size
        )
        networks = self._pmg_read(domain)
        self._mailcow_read(domain)
        self._dns_read(domain)
        self._s3_get(self.s.store.web_bucket, policy_key(domain))
        state = self._s3_key_and_state(domain, pair)
        self._mailcow_add(domain, customer)
        self._pmg_add(domain, customer, networks)
        self._s3_put(self.s.store.web_bucket, policy_key(domain), mta_sts_policy(self.s).encode(), ctype="text/plain")
        want = desired_records(domain, self.s, pair.selector, pair.public_b64)
        self._dns_update(domain, want)
        self._dns_verify(domain, want, pair)
        self._mailcow_import(domain, pair)
        self._s3_finish(domain, state, lock, idem)

    def system_calls(self, system: str, domain: str, pair: keys.KeyPair) -> None:
        """One system's share of ``provision`` for ``domain`` (``pair``: a pre-generated key)."""
        if system == "mailcow":
            self._mailcow_read(domain)
            self._mailcow_add(domain, "C-probe")
            self._mailcow_import(domain, pair)
        elif system == "pmg":
            self._pmg_add(domain, "C-probe", self._pmg_read(domain))
        elif system == "dns":
            self._dns_read(domain)
            want = desired_records(domain, self.s, pair.selector, pair.public_b64)
            self._dns_update(domain, want)
            self._dns_verify(domain, want, pair)
        else:
            idem, lock = self._s3_claim(str(uuid.uuid4()), domain)
            self._s3_get(self.s.store.web_bucket, policy_key(domain))
            state = self._s3_key_and_state(domain, pair)
            self._s3_put(
                self.s.store.web_bucket, policy_key(domain), mta_sts_policy(self.s).encode(), ctype="text/plain"
            )
            self._s3_finish(domain, state, lock, idem)

    # -- Mailcow (httpx) ------------------------------------------------------------------------------------

    def _mc(self, path: str, body: Any = None) -> Any:
        self._count("mailcow")
        resp = self.mailcow.get(path) if body is None else self.mailcow.post(path, json=body)
        resp.raise_for_status()
        data = resp.json()
        entries = data if isinstance(data, list) else [data]
        if body is not None and not any(e.get("type") == "success" for e in entries if isinstance(e, dict)):
            raise RuntimeError(f"mailcow {path}: {str(data)[:200]}")
        return data

    def _mailcow_read(self, domain: str) -> None:
        self._mc(f"get/domain/{domain}")
        self._mc(f"get/dkim/{domain}")

    def _mailcow_add(self, domain: str, customer: str) -> None:
        p = self.plan
        body = {
            "domain": domain,
            "description": f"{MANAGED} customer={customer}",
            "aliases": p["aliases"],
            "mailboxes": p["mailboxes"],
            "defquota": p["default_mailbox_quota_mib"],
            "maxquota": p["mailbox_quota_mib"],
            "quota": p["quota_mib"],
            "active": 1,
            "key_size": 0,
            "dkim_selector": "",
            "restart_sogo": 0,
        }
        self._mc("add/domain", body)

    def _mailcow_import(self, domain: str, pair: keys.KeyPair) -> None:
        body = {"domain": domain, "dkim_selector": pair.selector, "private_key_file": pair.private_pem.reveal()}
        self._mc("add/dkim_import", {**body, "overwrite_existing": 1})

    # -- PMG (requests) -------------------------------------------------------------------------------------

    def _login(self) -> None:
        self._count("pmg_login")  # once per run, not per domain
        resp = self.pmg.post(
            f"{self.pmg_url}/access/ticket",
            data={"username": self.s.pmg.user, "password": self.s.pmg.password.reveal()},
            timeout=self.s.pmg.timeout,
            verify=self.pmg_verify,
        )
        resp.raise_for_status()
        data = resp.json()["data"]
        self.pmg.headers.update({"Cookie": f"PMGAuthCookie={data['ticket']}"})
        self.pmg.headers.update({"CSRFPreventionToken": data["CSRFPreventionToken"]})

    def _pmg_call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        self._count("pmg")
        url, timeout = f"{self.pmg_url}{path}", self.s.pmg.timeout
        resp = self.pmg.request(method, url, data=body, timeout=timeout, verify=self.pmg_verify)
        resp.raise_for_status()
        return resp.json()["data"]

    def _pmg_read(self, domain: str) -> set[str]:
        self._pmg_call("GET", "/config/domains")
        self._pmg_call("GET", "/config/transport")
        return {row["cidr"] for row in self._pmg_call("GET", "/config/mynetworks")}

    def _pmg_add(self, domain: str, customer: str, networks: set[str]) -> None:
        mc = self.s.mailcow
        for cidr in (f"{mc.ipv4}/32", f"{mc.ipv6}/128"):
            if cidr not in networks:
                self._pmg_call("POST", "/config/mynetworks", {"cidr": cidr, "comment": MANAGED})
        self._pmg_call("POST", "/config/domains", {"domain": domain, "comment": f"{MANAGED} customer={customer}"})
        transport = {"domain": domain, "host": mc.host, "protocol": "smtp", "port": 25, "use_mx": 0}
        self._pmg_call("POST", "/config/transport", {**transport, "comment": MANAGED})

    # -- DNS (dnspython) ------------------------------------------------------------------------------------

    def _query(self, name: str, rtype: str) -> dns.message.Message:
        self._count("dns")
        q = dns.message.make_query(name, rtype, use_edns=0, payload=1232)
        q.flags &= ~dns.flags.RD
        return dns.query.udp(q, self.s.dns.primary, port=self.s.dns.port, timeout=self.s.dns.timeout)

    def _axfr(self, domain: str) -> dns.zone.Zone:
        self._count("dns")
        zone = dns.zone.Zone(dns.name.from_text(domain), relativize=False)
        request, _ = dns.xfr.make_query(zone, serial=None, keyring=self.tsig)
        d = self.s.dns
        dns.query.inbound_xfr(d.primary, zone, request, port=d.port, timeout=d.timeout, lifetime=d.timeout * 12)
        return zone

    def _dns_read(self, domain: str) -> None:
        self._query(domain, "SOA")
        self._axfr(domain)  # may the key transfer it?
        self._axfr(domain)  # the records to plan from

    def _dns_update(self, domain: str, want: dict[tuple[str, str], RecordSet]) -> None:
        update = dns.update.UpdateMessage(domain)
        for (name, rtype), rs in sorted(want.items()):
            owner = dns.name.from_text(name)
            update.absent(owner, rtype)
            if rtype == "CNAME":
                update.absent(owner)
            update.replace(owner, rs.ttl, *[_rdata(rtype, v) for v in rs.values])
        update.use_tsig(self.tsig)
        self._count("dns")
        response = dns.query.tcp(update, self.s.dns.primary, port=self.s.dns.port, timeout=self.s.dns.timeout)
        if response.rcode() != 0:
            raise RuntimeError(f"UPDATE {domain}: rcode {response.rcode()}")
        self._query(domain, "SOA")

    def _dns_verify(self, domain: str, want: dict[tuple[str, str], RecordSet], pair: keys.KeyPair) -> None:
        self._query(domain, "NS")
        self._query(f"ns1.{domain}", "A")
        self._query(domain, "SOA")
        for name, rtype in sorted(want):
            self._query(name, rtype)

        def lookup(name: str) -> bytes | None:
            answer = self._query(name.rstrip("."), "TXT").answer
            return b"".join(answer[0][0].strings) if answer else None

        if not keys.probe_verifies(domain, pair.selector, pair.private_pem, lookup):
            raise RuntimeError(f"DKIM probe for {domain} does not verify")

    # -- S3 (boto3) -----------------------------------------------------------------------------------------

    def _s3_put(self, bucket: str, key: str, body: bytes, *, ctype: str = "application/json", **cond: str) -> str:
        """put_object; ``cond`` is IfNoneMatch="*" or IfMatch=<etag>."""
        self._count("s3")
        args: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body, "ContentType": ctype, **cond}
        etag: str = self.s3.put_object(**args)["ETag"]
        return etag

    def _s3_get(self, bucket: str, key: str) -> str | None:
        self._count("s3")
        try:
            obj = self.s3.get_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        obj["Body"].read()
        etag: str = obj["ETag"]
        return etag

    def _s3_claim(self, event_id: str, domain: str) -> tuple[tuple[str, str], tuple[str, str]]:
        st = self.s.store.state_bucket
        idem = f"idem/domain_created/{hashlib.sha256(f'{SOURCE}/{event_id}'.encode()).hexdigest()}.json"
        lock = f"locks/{hashlib.sha256(domain.encode()).hexdigest()}.json"
        claim = json.dumps({"status": "IN_PROGRESS", "event_id": event_id}).encode()
        idem_etag = self._s3_put(st, idem, claim, IfNoneMatch="*")
        lock_etag = self._s3_put(st, lock, json.dumps({"subject": domain}).encode(), IfNoneMatch="*")
        self._s3_get(st, f"domains/{domain}.json")
        return (idem, idem_etag), (lock, lock_etag)

    def _s3_key_and_state(self, domain: str, pair: keys.KeyPair) -> str:
        st, kek = self.s.store.state_bucket, self.s.dkim.key_encryption_key
        blob = keys.seal(pair, kek, domain)
        self._s3_put(st, f"keys/{domain}/{pair.selector}.bin", blob, ctype="application/octet-stream", IfNoneMatch="*")
        body = {"domain": domain, "status": "new", "keys": [{"selector": pair.selector, "status": "GENERATED"}]}
        return self._s3_put(st, f"domains/{domain}.json", json.dumps(body).encode(), IfNoneMatch="*")

    def _s3_finish(self, domain: str, state: str, lock: tuple[str, str], idem: tuple[str, str]) -> None:
        st = self.s.store.state_bucket
        body = {"domain": domain, "status": "provisioned"}
        self._s3_put(st, f"domains/{domain}.json", json.dumps(body).encode(), IfMatch=state)
        self._s3_get(st, lock[0])
        self._count("s3")
        self.s3.delete_object(Bucket=st, Key=lock[0])
        self._s3_put(st, idem[0], json.dumps({"status": "COMPLETED"}).encode(), IfMatch=idem[1])


def _rdata(rtype: str, value: str) -> dns.rdata.Rdata:
    if rtype == "TXT":
        return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [c.encode() for c in split_txt(value)])
    return dns.rdata.from_text(dns.rdataclass.IN, rtype, value)


def run(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.naive_baseline", description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("domains", nargs="+")
    args = parser.parse_args(argv)
    naive = Naive(Settings.load(args.config))
    start = time.monotonic()
    for i, domain in enumerate(args.domains):
        naive.provision(domain, f"C-{i:06d}")
    elapsed = time.monotonic() - start
    report = {"domains": len(args.domains), "seconds": elapsed, "calls": dict(naive.calls)}
    args.out.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
