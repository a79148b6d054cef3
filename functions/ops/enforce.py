"""`mailplane mta-sts enforce DOMAIN... | --all-clean [--days N] [--apply --yes]`: promote MTA-STS testing -> enforce.

**Selection** (``judge``): a domain is *clean* when the senders' TLS reports (functions/_core/model/tlsrpt_store.py)
cover every one of the last N complete UTC days (``--days``, default ``mta_sts.enforce_after_days``; today is not
counted: its reports arrive tomorrow) and count zero failed sessions in them. A domain without reports, or with a day
missing, is not clean: silence proves nothing. ``--all-clean`` judges every domain with reports; named domains are
judged the same (``--force`` promotes a named domain that is not clean, e.g. one too quiet to be reported on).
Only a domain whose zone we host is promoted: for a zone hosted elsewhere the customer publishes ``_mta-sts``.

**Promotion** (``plan``/``apply``), in RFC 8461's order, each step conditional so a crash or a concurrent writer
never loses one and a second run finishes what the first began: (1) the domain's own mode ``enforce`` in its state
(compare-and-set; from then on domain.created, status, node.add and domain.deleted all use it), (2) the policy object
with ``mode: enforce`` (conditional on the ETag read), (3) with ``mta_sts.serve`` the policy fetched as a sender
fetches it, (4) only then the ``_mta-sts`` TXT with the new id (compare-and-set UPDATE, verified on every
authoritative server). Senders that cached the testing policy switch when they see the new id.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from functions._core.model import mtasts, nodes, state, tlsrpt_store
from functions._core.model.mailset import mta_sts_policy, policy_id, policy_key
from functions._core.model.ports import DnsChange, Ports
from functions._core.model.records import RecordSet
from functions._core.model.tlsrpt_store import Summary
from functions._core.platform.errors import AutomationError

log = logging.getLogger("mailplane.enforce")
ENFORCE = "enforce"


@dataclass(frozen=True)
class Verdict:
    domain: str
    mode: str  # the domain's mode now
    clean: bool
    reason: str
    summary: Summary | None = None
    hosted: bool = True

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"domain": self.domain, "mode": self.mode, "clean": self.clean, "reason": self.reason}
        if self.summary is not None:
            out["tls_reports"] = self.summary.as_json()
        return out


def judge(ports: Ports, domain: str, days: int) -> Verdict:
    """Whether ``domain``'s TLS reports of the last ``days`` complete days are clean (see the module docstring)."""
    st = state.load(ports.state, domain)
    mode = st.mta_sts_mode(ports.settings)
    if not st.request or st.status == "deleted":
        return Verdict(domain, mode, False, "not a domain of ours (no state)", hosted=False)
    hosted = st.request.get("dns", {}).get("hosted") is True
    first, last = tlsrpt_store.period(ports.clock().date(), days, include_today=False)
    s = tlsrpt_store.summarise(ports.state, domain, first, last)
    if not s.reports:
        return Verdict(domain, mode, False, f"no TLS reports {first}..{last}: not clean", s, hosted)
    if s.missing:
        gap = s.missing[0]
        why = f"reports on {len(s.days)} of {s.period} days {first}..{last} (none on {gap}): not clean"
        return Verdict(domain, mode, False, why, s, hosted)
    if s.failed:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(s.failures.items())) or "no details"
        why = f"{s.failed} failed session(s) {first}..{last} ({kinds}): not clean"
        return Verdict(domain, mode, False, why, s, hosted)
    why = f"clean: {s.period} days {first}..{last}, {s.reports} report(s), {s.successful} sessions, 0 failed"
    return Verdict(domain, mode, True, why, s, hosted)


def select(ports: Ports, domains: Sequence[str], days: int) -> list[Verdict]:
    """The verdict for each named domain, or (none named) for every domain with TLS reports."""
    names = list(domains) or tlsrpt_store.reported_domains(ports.state)
    return [judge(ports, d, days) for d in names]


# ---------------------------------------------------------------- the promotion


@dataclass(frozen=True)
class Promotion:
    domain: str
    state: bool  # the state's mode changes
    policy: bytes | None  # the new policy body (None: already served)
    policy_etag: str | None
    txt: DnsChange | None  # the `_mta-sts` TXT with the new id (None: right already, or no TXT published)

    @property
    def empty(self) -> bool:
        return not (self.state or self.policy is not None or self.txt is not None)

    def lines(self) -> list[str]:
        out = ["~ state: mta_sts mode enforce"] if self.state else []
        out += ["~ mta-sts policy: mode enforce"] if self.policy is not None else []
        if self.txt is not None and self.txt.after is not None:
            out.append(f"~ TXT {self.txt.after.name}: {self.txt.after.values[0]} (after the policy is served)")
        return out


def plan(ports: Ports, domain: str) -> Promotion:
    """What promoting ``domain`` writes, read from the state, the web bucket and the ``_mta-sts`` TXT."""
    st, s = state.load(ports.state, domain), ports.settings
    text = mta_sts_policy(s, ENFORCE)
    obj = ports.web.get(policy_key(domain))
    key = mtasts.txt_key(domain)
    have = ports.dns.read_rrset(*key)
    want = f"v=STSv1; id={policy_id(text)};"
    txt = (
        None
        if have is None or have.values == (want,)
        else DnsChange(have, RecordSet.of(key[0], "TXT", have.ttl, [want]))
    )
    body = None if obj is not None and obj.body == text.encode() else text.encode()
    return Promotion(domain, st.mta_sts_mode(s) != ENFORCE, body, obj.etag if obj else None, txt)


def apply(ports: Ports, p: Promotion, reason: str) -> list[str]:
    """Write ``p`` in the order of the module docstring; returns what was done.

    Raises:
        DnsConflict: the state changed concurrently (run again).
        PreconditionFailed: the policy object changed since it was read (run again).
        NotPropagated: the policy is not fetchable yet, or a server does not serve the new id yet (run again).
        DnsRefused, OwnershipConflict: the UPDATE was refused.
    """
    done: list[str] = []
    if p.state:
        st = state.load(ports.state, p.domain)
        record = {"mode": ENFORCE, "since": nodes.iso(ports.clock()), "reason": reason[:200]}
        state.save(ports.state, replace(st, mta_sts=record), st)
        done.append("~ state: mta_sts mode enforce")
    body = mta_sts_policy(ports.settings, ENFORCE).encode()
    if p.policy is not None:
        key = policy_key(p.domain)
        if p.policy_etag is None:
            ports.web.put(key, p.policy, if_none_match=True, content_type="text/plain")
        else:
            ports.web.put(key, p.policy, if_match=p.policy_etag, content_type="text/plain")
        done.append("~ mta-sts policy: mode enforce")
    if mtasts.enabled(ports):
        mtasts.wait_served(ports, p.domain, body)  # RFC 8461: the id changes only once the policy is served
    if p.txt is not None and p.txt.after is not None:
        serial = ports.dns.apply(p.domain, [p.txt])
        nodes.verify_dns(ports, p.domain, [(p.txt.after.key, p.txt.after.values, True)], serial)
        done.append(f"~ TXT {p.txt.after.name}: {p.txt.after.values[0]}")
    log.info("mta-sts enforce: %s %s", p.domain, "; ".join(done) or "nothing to do")
    return done


@dataclass(frozen=True)
class Applied:
    domain: str
    done: tuple[str, ...] = ()
    error: str = ""


def promote(ports: Ports, verdicts: Sequence[Verdict], *, budget: int) -> list[Applied]:
    """Promote each verdict's domain in turn; stop after ``budget`` failures (each named with its reason)."""
    out: list[Applied] = []
    for v in verdicts:
        try:
            out.append(Applied(v.domain, tuple(apply(ports, plan(ports, v.domain), v.reason))))
        except AutomationError as exc:
            out.append(Applied(v.domain, error=exc.reason))
            if sum(1 for a in out if a.error) >= budget:
                log.error("ALERT mta-sts enforce halted after %d failures", budget)
                break
    return out


def promotable(v: Verdict, *, force: bool) -> str | None:
    """None when ``v``'s domain may be promoted, else why not."""
    if not v.hosted:
        return v.reason if v.reason.startswith("not a domain") else "zone hosted elsewhere: the customer publishes it"
    if v.mode == ENFORCE:
        return None  # already enforce: plan() finds what an interrupted run left to do, or nothing
    return None if v.clean or force else v.reason
