"""Hand-made domains, set up the way operators configured the platform before mailplane took over.

The operator used the systems' own interfaces, so this builder does too: the Mailcow API (``add/domain`` with
Mailcow generating the key under the selector ``dkim``, as the UI does), the PMG API (``POST /config/domains``,
``/config/transport``, ``/config/mynetworks`` with their own comments, logged in with a ticket), and the zone
(RFC 2136 UPDATEs signed with the stack's TSIG key, like ``nsupdate -k``; or a zone hosted elsewhere). Each
:class:`Variant` changes the seed records in one way and says which plan classes it must produce.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import requests

from functions._core.model.mailset import MARKER_NAME, desired_records
from functions._core.model.ports import DkimKey
from functions._core.model.records import RecordSet
from functions._core.platform.config import Settings

SPACED_DMARC = "v=DMARC1; p=reject; pct=100; rua={rua}; ruf={ruf}; fo=1;"


@dataclass(frozen=True)
class Variant:
    """One way a hand-made domain differs from mailplane's records; ``expect`` maps plan items (``{d}`` = the
    domain) to their class where it is not the default (see ``expected``)."""

    name: str
    key_bits: int = 2048
    dmarc: str | None = None  # the DMARC text typed (``{rua}``/``{ruf}`` filled in)
    spf: str | None = None
    omit: tuple[str, ...] = ()  # owner-name prefixes not typed at all
    apex_extra: tuple[str, ...] = ()  # customer strings in the apex TXT RRset
    extra: tuple[tuple[str, str, str], ...] = ()  # (relative name, type, value) customer records elsewhere
    autoconfig: str | None = None  # another autoconfig CNAME target
    pmg: bool = True  # PMG relay domain + transport configured
    hosted: bool = True  # the zone is on our primary (else hosted elsewhere)
    expect: dict[str, str] = field(default_factory=dict)
    refused: bool = False


VARIANTS = (
    Variant("exact"),
    Variant("spaced-dmarc", dmarc=SPACED_DMARC, expect={"TXT _dmarc.{d}": "equivalent"}),
    Variant("weak-key", key_bits=1024),
    Variant("hard-fail-spf", spf="v=spf1 include:{include} -all", expect={"TXT {d}": "different"}),
    Variant(
        "no-mta-sts-tlsrpt",
        omit=("mta-sts.", "_mta-sts.", "_smtp._tls."),
        expect={"CNAME mta-sts.{d}": "missing", "TXT _mta-sts.{d}": "missing", "TXT _smtp._tls.{d}": "missing"},
    ),
    Variant(
        "customer-txt",
        apex_extra=("google-site-verification=Xy12-handmade",),
        extra=(("_github-challenge", "TXT", "0123456789abcdef"),),
    ),
    Variant(
        "foreign-autoconfig",
        autoconfig="autoconfig.customer-isp.example.",
        expect={"CNAME autoconfig.{d}": "foreign"},
        refused=True,
    ),
    Variant("no-pmg-relay", pmg=False, expect={"relay domain": "missing", "transport": "missing"}),
    Variant("hosted-elsewhere", hosted=False),
)


def seed_records(domain: str, settings: Settings, key: DkimKey, v: Variant) -> list[RecordSet]:
    """The records the operator typed: mailplane's record set (no ownership marker), changed as ``v`` says."""
    p = settings.policy
    out = []
    for (name, rtype), rs in desired_records(domain, settings, key.selector, key.public_key_b64).items():
        if name.startswith(MARKER_NAME + ".") or any(name.startswith(o) for o in v.omit):
            continue
        if rtype == "TXT" and name == f"_dmarc.{domain}" and v.dmarc:
            rs = RecordSet.of(name, "TXT", rs.ttl, [v.dmarc.format(rua=p.dmarc_rua, ruf=p.dmarc_ruf)])
        if rtype == "TXT" and name == domain:
            spf = v.spf.format(include=p.spf_include) if v.spf else rs.values[0]
            rs = RecordSet.of(name, "TXT", rs.ttl, [spf, *v.apex_extra])
        if rtype == "CNAME" and name == f"autoconfig.{domain}" and v.autoconfig:
            rs = RecordSet.of(name, "CNAME", rs.ttl, [v.autoconfig])
        out.append(rs)
    out += [RecordSet.of(f"{n}.{domain}", t, 300, [val]) for n, t, val in v.extra]
    return out


def expected(domain: str, v: Variant, settings: Settings) -> dict[str, str]:
    """Every plan item's class for ``v``: same unless ``v.expect`` says otherwise; the ownership marker and the
    MTA-STS policy object are always missing on a hand-made domain (the marker only in a zone we serve)."""
    mc = settings.mailcow
    items = ["domain", "dkim key", "relay domain", "transport", f"trusted network {mc.ipv4}/32"]
    items += [f"trusted network {mc.ipv6}/128", "mta-sts policy"]
    records = desired_records(domain, settings, "dkim", "AAAA")
    items += [f"{t} {n}" for n, t in sorted(records) if v.hosted or not n.startswith(MARKER_NAME + ".")]
    out = {i: "same" for i in items}
    out["mta-sts policy"] = "missing"
    if v.hosted:
        out[f"TXT {MARKER_NAME}.{domain}"] = "missing"
    out.update({k.format(d=domain): c for k, c in v.expect.items()})
    return out


class Operator:
    """An operator at the Mailcow and PMG APIs (the UIs post the same), and at the zone with ``write_zone``."""

    def __init__(
        self,
        mailcow: httpx.Client,
        pmg: requests.Session,
        pmg_url: str,
        pmg_login: tuple[str, str],
        write_zone: Callable[[str, list[RecordSet], bool], None],
        *,
        pmg_verify: str | bool = True,
    ) -> None:
        self.mailcow, self.pmg, self.pmg_url = mailcow, pmg, pmg_url.rstrip("/") + "/api2/json"
        self.pmg_verify = pmg_verify  # per request: requests lets REQUESTS_CA_BUNDLE override Session.verify
        self.pmg_login, self.write_zone = pmg_login, write_zone
        self._ticket: tuple[str, str] | None = None

    def mailcow_post(self, path: str, body: dict[str, Any]) -> Any:
        resp = self.mailcow.post(f"/api/v1/{path}", json=body)
        resp.raise_for_status()
        data = resp.json()
        assert all(m.get("type") == "success" for m in (data if isinstance(data, list) else [data])), data
        return data

    def mailcow_domain(self, domain: str, bits: int, description: str) -> DkimKey:
        """``add/domain`` with Mailcow generating the DKIM key (selector ``dkim``), as the UI's defaults do."""
        body = {"domain": domain, "description": description, "aliases": 40, "mailboxes": 8, "defquota": 2048}
        body |= {"maxquota": 8192, "quota": 40960, "active": 1, "key_size": bits, "dkim_selector": "dkim"}
        self.mailcow_post("add/domain", body)
        resp = self.mailcow.get(f"/api/v1/get/dkim/{domain}")
        resp.raise_for_status()
        data = resp.json()
        return DkimKey(data["dkim_selector"], data["pubkey"])

    def _pmg_auth(self) -> tuple[str, str]:
        if self._ticket is None:
            user, password = self.pmg_login
            body = {"username": user, "password": password}
            resp = self.pmg.post(f"{self.pmg_url}/access/ticket", data=body, verify=self.pmg_verify)
            resp.raise_for_status()
            data = resp.json()["data"]
            self._ticket = (data["ticket"], data["CSRFPreventionToken"])
        return self._ticket

    def pmg_post(self, path: str, body: dict[str, Any], *, exists_ok: bool = False) -> None:
        ticket, csrf = self._pmg_auth()
        resp = self.pmg.post(
            f"{self.pmg_url}{path}",
            data=body,
            headers={"CSRFPreventionToken": csrf},
            cookies={"PMGAuthCookie": ticket},
            verify=self.pmg_verify,
        )
        if exists_ok and resp.status_code != 200 and "already" in resp.text:
            return
        assert resp.status_code == 200, (path, resp.status_code, resp.text[:200])

    def pmg_relay(self, domain: str, host: str) -> None:
        self.pmg_post("/config/domains", {"domain": domain, "comment": "customer since 2019"})
        body = {"domain": domain, "host": host, "port": 25, "protocol": "smtp", "use_mx": 0, "comment": "to mailcow"}
        self.pmg_post("/config/transport", body)

    def pmg_networks(self, cidrs: list[str]) -> None:
        for cidr in cidrs:
            self.pmg_post("/config/mynetworks", {"cidr": cidr, "comment": "mailcow"}, exists_ok=True)

    def build(self, domain: str, v: Variant, settings: Settings) -> DkimKey:
        """The hand-made domain ``domain`` in every system; returns the key Mailcow generated."""
        key = self.mailcow_domain(domain, v.key_bits, f"handmade {v.name}")
        mc = settings.mailcow
        self.pmg_networks([f"{mc.ipv4}/32", f"{mc.ipv6}/128"])
        if v.pmg:
            self.pmg_relay(domain, mc.host)
        self.write_zone(domain, seed_records(domain, settings, key, v), v.hosted)
        return key
