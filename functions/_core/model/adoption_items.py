"""The adoption plan's vocabulary and its pure classification of each published record (no I/O).

Every record mailplane manages is classed against what the zone (or, for a zone hosted elsewhere, the public DNS)
serves: **same** (exactly mailplane's data and TTL), **equivalent** (the same meaning under
functions/_core/model/equivalence.py RULES), **missing**, **different** (the same kind of record with another
meaning: ``-all`` for ``~all``, another MX, another DMARC policy, another DKIM key) or **foreign** (data of another
kind at a managed name: a CNAME where a record must be, a CNAME elsewhere, a TXT of another protocol).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from functions._core.model.equivalence import compare
from functions._core.model.mailset import MARKER_NAME, SPF_PREFIX
from functions._core.model.records import Key, RecordSet

CLASSES = ("same", "equivalent", "missing", "different", "foreign")
PROTOCOLS = ("v=spf1", "v=DKIM1", "v=DMARC1", "v=STSv1", "v=TLSRPTv1", "v=mp1")  # TXT kinds at managed names
IGNORED_TYPES = ("RRSIG", "NSEC", "NSEC3")


@dataclass(frozen=True)
class Item:
    """One line of the plan: what a system holds, its class, what adoption does about it, the risk for mail."""

    system: str  # mailcow | pmg | dns | store
    item: str  # "domain", "dkim key", "relay domain", "TXT _dmarc.alpha.test", ...
    cls: str  # one of CLASSES
    have: str
    want: str
    action: str
    risk: str = "none"
    fix: str = ""  # the --fix name of a different record ("_dmarc.alpha.test/TXT"), else ""


def fix_name(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


def _values(rs: RecordSet | None) -> str:
    return " | ".join(rs.values) if rs else "absent"


def _kind(text: str) -> str:
    return next((p for p in PROTOCOLS if text.startswith(p)), "")


def classify(key: Key, want: RecordSet, have: Mapping[Key, RecordSet], zone: str) -> tuple[str, RecordSet | None]:
    """The class of the managed RRset ``key`` and the published RRset it was judged on (None: nothing there).

    The apex TXT is judged by its SPF string alone (the customer's other strings stay, whatever adoption does).
    """
    name, rtype = key
    cur = have.get(key)
    others = [t for (n, t) in have if n == name and t != rtype and t not in IGNORED_TYPES]
    if rtype == "CNAME" and others:
        return "foreign", have[(name, others[0])]
    if rtype != "CNAME" and (name, "CNAME") in have:
        return "foreign", have[(name, "CNAME")]
    if cur is None:
        return "missing", None
    if key == (zone, "TXT"):
        spf = [v for v in cur.values if v.startswith(SPF_PREFIX)]
        if not spf:
            return "missing", None
        cur = RecordSet.of(name, "TXT", cur.ttl, spf)
    found = compare(want, cur)
    if found is not None:
        return found, cur
    if rtype == "CNAME" or (rtype == "TXT" and {_kind(v) for v in cur.values} != {_kind(want.values[0])}):
        return "foreign", cur  # a CNAME elsewhere; a TXT of another protocol (or none) at a managed name
    return "different", cur


ACTIONS = {
    "same": "leave as is",
    "equivalent": "leave as is (no change, no serial bump)",
    "missing": "add (in the one compare-and-set UPDATE)",
    "different": "leave as is; replaced only with --fix {fix}",
    "foreign": "refuse the adoption (nothing is changed anywhere)",
}


def risk(key: Key, cls: str, zone: str) -> str:
    """What the class means for mail flowing to and from the domain."""
    name, rtype = key
    if cls in ("same", "equivalent"):
        return "none"
    if cls == "foreign":
        return "mailplane cannot manage this name without removing the customer's data"
    if name.startswith(("_mta-sts.", "mta-sts.")):
        return "MTA-STS starts applying: senders that support it require TLS to the MX hosts"
    if name.startswith("_smtp._tls."):
        return "none: senders start sending TLS reports"
    if name.startswith(MARKER_NAME + "."):
        return "none: the ownership marker"
    if "._domainkey." in name:
        return (
            "DKIM of mail signed today fails until the key is published"
            if cls == "missing"
            else (
                "the published key is not the one Mailcow signs with: DKIM fails today; --fix publishes Mailcow's key"
            )
        )
    if key == (zone, "MX"):
        return "inbound mail goes to other hosts today; --fix moves it to the PMG cluster"
    if key == (zone, "TXT"):
        return "SPF changes for every receiver (e.g. -all vs ~all decides hard or soft failure)"
    if name.startswith("_dmarc."):
        return "DMARC policy changes how receivers treat mail that fails SPF and DKIM"
    return "mail clients' autoconfiguration changes" if rtype in ("CNAME", "SRV") else "review before --fix"


def dns_item(key: Key, want: RecordSet, cls: str, have: RecordSet | None, zone: str, *, hosted: bool) -> Item:
    fix = fix_name(key) if cls == "different" else ""
    action = ACTIONS[cls].format(fix=fix)
    if not hosted and cls in ("missing", "different"):
        action = "the customer publishes it (zone hosted elsewhere)" + ("" if cls == "missing" else f"; --fix {fix}")
    extra = ""
    if key == (zone, "TXT") and have is not None:
        extra = " (the customer's other strings stay)"
    return Item(
        "dns", f"{key[1]} {key[0]}", cls, _values(have), _values(want), action + extra, risk(key, cls, zone), fix
    )
