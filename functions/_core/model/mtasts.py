"""MTA-STS that senders can fetch: a certificate per ``mta-sts.<domain>`` and the RFC 8461 order of publication.

- **Certificate** (``ensure_cert``): issued by ACME (``ports.certs``) for ``mta-sts.<domain>``, by DNS-01 through
  our own RFC 2136 channel for zones we host (the challenge TXT added and removed by compare-and-set, waited for
  on every authoritative server), by HTTP-01 for zones hosted elsewhere (the key authorization written to the web
  bucket, which the web host serves at ``/.well-known/acme-challenge/``, reached through the customer's
  ``mta-sts`` CNAME). The private key is sealed in the state store (``certs/<name>.json``, like DKIM keys) BEFORE
  the certificate is delivered to the web host (``ports.web_host``); renewed ``mta_sts.renew_before_days`` before
  expiry; removed on domain.deleted (``remove_cert``). Replays change nothing.
- **Order** (``served``/``wait_served``): ``_mta-sts`` TXT (and a changed ``id``) is published only after the policy
  it announces is fetched as a sender fetches it (``ports.web_host.fetch``: resolved through the public DNS,
  certificate verified against the CA root, 200, text/plain, body equal to the desired policy).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import time
from dataclasses import dataclass

from cryptography import x509

from functions._core.model import keys, state
from functions._core.model.ports import DnsChange, Fetched, Ports
from functions._core.model.records import RecordSet
from functions._core.platform.config import Secret
from functions._core.platform.errors import ConfigError, DnsConflict, EventInvalid, NotPropagated
from functions._core.platform.names import normalize_domain
from functions._core.platform.store import ObjectStore

log = logging.getLogger("mailplane.mta_sts")
CHALLENGE_TTL = 60
CHALLENGE_PREFIX = ".well-known/acme-challenge/"


def enabled(ports: Ports) -> bool:
    """Serving MTA-STS is configured: a CA, a web host and ``mta_sts.serve``."""
    return ports.settings.mta_sts.serve and ports.certs is not None and ports.web_host is not None


def cert_name(domain: str) -> str:
    return f"mta-sts.{domain}"


def policy_url(domain: str) -> str:
    return f"https://mta-sts.{domain}/.well-known/mta-sts.txt"


CERT_PREFIX = "certs/"


def cert_state_key(name: str) -> str:
    return f"{CERT_PREFIX}{name}.json"


def is_cert_name(name: str) -> bool:
    """``name`` is ``mta-sts.<domain>`` with the domain in its normal form (``names.normalize_domain``) and short
    enough for the web host's file name ``<name>.pem``: the only names a certificate of ours has."""
    domain = name.removeprefix("mta-sts.")
    if domain == name or len(name) > 251:
        return False
    try:
        return normalize_domain(domain) == domain
    except EventInvalid:
        return False


RENEW_PREFIX = "certs-due/"


def renew_key(day: dt.date, name: str) -> str:
    """The renewal index entry: an empty object per certificate at the day it becomes due (``renew_due`` lists
    ``certs-due/`` up to today instead of reading every certificate)."""
    return f"{RENEW_PREFIX}{day:%Y-%m-%d}/{name}"


def renew_day(cert: StoredCert, ports: Ports) -> dt.date:
    return (cert.not_after - dt.timedelta(days=ports.settings.mta_sts.renew_before_days)).date()


def challenge_key(name: str, token: str) -> str:
    """Web-bucket object the web host serves at http://<name>/.well-known/acme-challenge/<token> (HTTP-01)."""
    return f"{name}/{CHALLENGE_PREFIX}{token}"


# ---------------------------------------------------------------- challenges


class Dns01:
    """DNS-01 through our RFC 2136 channel: the TXT at ``_acme-challenge.<name>`` added and removed by CAS."""

    kind = "dns-01"

    def __init__(self, ports: Ports, zone: str) -> None:
        self._ports, self._zone = ports, zone

    def _change(self, name: str, value: str, *, add: bool) -> None:
        """``add``: the RRset becomes exactly ``value`` (a value an attempt that died before its cleanup left is
        dropped: one order per name at a time, under the subject's lease; leftovers would pile up until the CA's
        UDP answer is truncated and it sees no TXT at all); else ``value`` is removed (the RRset with it)."""
        dns = self._ports.dns
        rr = f"_acme-challenge.{name}"
        for _ in range(5):  # a concurrent writer changed the RRset: re-read and try again
            have = dns.read_rrset(rr, "TXT")
            values = [value] if add else [v for v in (have.values if have else ()) if v != value]
            after = RecordSet.of(rr, "TXT", CHALLENGE_TTL, values) if values else None
            if have == after:
                return
            try:
                dns.apply(self._zone, [DnsChange(before=have, after=after)])
                return
            except DnsConflict:
                continue
        raise NotPropagated(f"{rr} TXT kept changing under us")

    def present(self, name: str, token: str, value: str) -> None:
        self._change(name, value, add=True)
        rr = f"_acme-challenge.{name}"
        deadline = time.monotonic() + max(self._ports.settings.mta_sts.fetch_wait_seconds, 1)
        servers = self._ports.dns.servers(self._zone)
        while True:  # the CA asks some authoritative server: every one must serve the value first
            missing = [s for s in servers if value not in (self._ports.dns.query(s, rr, "TXT") or _EMPTY).values]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise NotPropagated(f"{rr} TXT not served by {', '.join(missing)} yet")
            time.sleep(0.2)

    def cleanup(self, name: str, token: str, value: str) -> None:
        self._change(name, value, add=False)


_EMPTY = RecordSet.of("x.invalid", "TXT", 1, [])


class Http01:
    """HTTP-01 through the web host: the key authorization in the web bucket, under the name's prefix."""

    kind = "http-01"

    def __init__(self, ports: Ports) -> None:
        self._ports = ports

    def present(self, name: str, token: str, value: str) -> None:
        self._ports.web.put(challenge_key(name, token), value.encode("ascii"), content_type="text/plain")

    def cleanup(self, name: str, token: str, value: str) -> None:
        self._ports.web.delete(challenge_key(name, token))


# ---------------------------------------------------------------- the certificate


@dataclass(frozen=True)
class StoredCert:
    name: str
    chain: str
    sealed_key: bytes
    not_after: dt.datetime
    challenge: str

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "name": self.name,
                "chain": self.chain,
                "key": base64.b64encode(self.sealed_key).decode("ascii"),
                "not_after": self.not_after.isoformat(),
                "challenge": self.challenge,
            }
        ).encode()


def load_cert(ports: Ports, name: str) -> StoredCert | None:
    return read_cert(ports.state, name)


def read_cert(store: ObjectStore, name: str) -> StoredCert | None:
    """The stored certificate of ``name``, None when there is none.

    Raises:
        ValueError: the entry is not a stored certificate of ``name`` (not JSON, a field missing or of the wrong
            type, another name inside); the message names the entry only.
    """
    key = cert_state_key(name)
    obj = store.get(key)
    if obj is None:
        return None
    try:
        d = json.loads(obj.body)
        texts = [d[k] for k in ("name", "chain", "key", "not_after", "challenge")]
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("a field is not a string")
        until = dt.datetime.fromisoformat(d["not_after"])
        if until.tzinfo is None:
            raise ValueError("not_after has no offset")
        sealed = base64.b64decode(d["key"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"stored certificate {key} is malformed ({type(exc).__name__})") from None
    if d["name"] != name:
        raise ValueError(f"stored certificate {key} names another certificate")
    return StoredCert(name, d["chain"], sealed, until, d["challenge"])


def unseal_key(cert: StoredCert, kek: Secret) -> Secret:
    """The private key of ``cert`` (sealed with associated data ``cert/<name>``: a key copied from another entry
    does not open).

    Raises:
        PermanentError: wrong key-encryption key, or the key belongs to another name.
    """
    return keys.unseal_blob(cert.sealed_key, kek, f"cert/{cert.name}")


def not_after(chain_pem: str) -> dt.datetime:
    return x509.load_pem_x509_certificate(chain_pem.encode("ascii")).not_valid_after_utc


def due(cert: StoredCert | None, ports: Ports) -> bool:
    """No certificate, or one within ``mta_sts.renew_before_days`` of its expiry."""
    if cert is None:
        return True
    return cert.not_after - ports.clock() < dt.timedelta(days=ports.settings.mta_sts.renew_before_days)


def ensure_cert(ports: Ports, domain: str, *, hosted: bool) -> list[str]:
    """Issue (or renew) the certificate of ``mta-sts.<domain>`` when due and deliver it; returns the changes.

    Raises:
        CaUnavailable: the CA failed (transient).
        NotPropagated: the DNS-01 record is not on every authoritative server yet (transient).
    """
    if ports.certs is None or ports.web_host is None:
        raise ConfigError('MTA-STS serving needs [acme] directory and [mta_sts] cert_dir or delivery = "store"')
    name, kek = cert_name(domain), ports.settings.dkim.key_encryption_key
    cert, changes = load_cert(ports, name), []
    old = cert
    if due(cert, ports):
        key_pem = _new_key()
        challenge = Dns01(ports, domain) if hosted else Http01(ports)
        chain = ports.certs.issue([name], key_pem, challenge)
        renewed = cert is not None
        cert = StoredCert(name, chain, keys.seal_blob(key_pem, kek, f"cert/{name}"), not_after(chain), challenge.kind)
        ports.state.put(cert_state_key(name), cert.to_json(), content_type="application/json")  # sealed, first
        _reindex(ports, name, old, cert)
        changes.append(f"{'~' if renewed else '+'} certificate {name} ({challenge.kind}, until {cert.not_after:%F})")
    assert cert is not None
    if ports.web_host.installed(name) != _norm(cert.chain):
        ports.web_host.install(name, cert.chain, unseal_key(cert, kek).reveal())
        changes.append(f"+ web host certificate {name}")
    return changes


def _reindex(ports: Ports, name: str, old: StoredCert | None, new: StoredCert) -> None:
    """The renewal entry of ``new`` written, then the one of ``old`` (if another day) removed."""
    ports.state.put(renew_key(renew_day(new, ports), name), b"", content_type="text/plain")
    if old is not None and renew_day(old, ports) != renew_day(new, ports):
        ports.state.delete(renew_key(renew_day(old, ports), name))


def renewals(store: ObjectStore, until: dt.date) -> list[str]:
    """The names whose renewal entry is due by ``until`` (oldest first), from the index alone."""
    out = []
    for key in store.list(RENEW_PREFIX):
        day, _, name = key.removeprefix(RENEW_PREFIX).partition("/")
        try:
            if dt.date.fromisoformat(day) <= until and name:
                out.append((day, name))
        except ValueError:
            continue  # not an entry of ours
    return [n for _, n in sorted(out)]


def renew(ports: Ports, domain: str) -> tuple[str, list[str], str]:
    """cert.renew for ``mta-sts.<domain>``: (status, changes, why skipped). ``renewed`` (issued when due, and/or
    delivered again), ``current`` (nothing to do: a duplicate), ``skipped`` (serving off, domain unknown, suspended
    or deleted: nothing written).

    Raises:
        CaUnavailable, NotPropagated: as ``ensure_cert`` (transient).
    """
    st = state.load(ports.state, domain)
    if not enabled(ports):
        return "skipped", [], "MTA-STS serving is off"
    if not st.request or st.status in ("suspended", "deleted"):
        return "skipped", [], f"domain {st.status or 'unknown'}"
    changes = ensure_cert(ports, domain, hosted=bool(st.request["dns"]["hosted"]))
    return ("renewed" if changes else "current"), changes, ""


def preview(ports: Ports, domain: str) -> dict[str, object]:
    """What cert.renew would do for ``mta-sts.<domain>``: whether it is due, and until when the current one runs."""
    cert = load_cert(ports, cert_name(domain))
    return {"due": due(cert, ports), "not_after": cert.not_after.isoformat() if cert else None}


def has_cert(ports: Ports, domain: str) -> bool:
    name = cert_name(domain)
    on_host = ports.web_host is not None and ports.web_host.installed(name) is not None
    return on_host or ports.state.get(cert_state_key(name)) is not None


def _norm(chain: str) -> str:
    return chain.rstrip("\n") + "\n"


def _new_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    k = ec.generate_private_key(ec.SECP256R1())
    return k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def remove_cert(ports: Ports, domain: str) -> list[str]:
    """domain.deleted: the web host's certificate first (senders then fail closed: no policy), then the stored key."""
    name, changes = cert_name(domain), []
    if ports.web_host is not None and ports.web_host.installed(name) is not None:
        ports.web_host.remove(name)
        changes.append(f"- web host certificate {name}")
    stored = load_cert(ports, name)
    if stored is not None:
        ports.state.delete(renew_key(renew_day(stored, ports), name))
        ports.state.delete(cert_state_key(name))
        changes.append(f"- certificate {name}")
    return changes


# ---------------------------------------------------------------- the sender's view


def check(fetched: Fetched, body: bytes, now: dt.datetime, *, min_days: int = 0) -> list[str]:
    """Why a sender would not accept ``fetched`` as the policy ``body`` (empty: it would)."""
    if fetched.error:
        return [fetched.error]
    out = []
    if fetched.status != 200:
        out.append(f"HTTP {fetched.status}")
    ctype = fetched.content_type.split(";")[0].strip().lower()
    if ctype != "text/plain":
        out.append(f"Content-Type {fetched.content_type or 'missing'}")
    if fetched.status == 200 and fetched.body != body:
        out.append("body differs from the desired policy")
    if min_days and fetched.not_after is not None and fetched.not_after - now < dt.timedelta(days=min_days):
        out.append(f"certificate expires {fetched.not_after:%F}")
    return out


def served(ports: Ports, domain: str, body: bytes) -> list[str]:
    """What stands between a sender and the policy ``body`` at ``mta-sts.<domain>`` now (empty: fetchable)."""
    assert ports.web_host is not None
    return check(ports.web_host.fetch(policy_url(domain)), body, ports.clock())


def wait_served(ports: Ports, domain: str, body: bytes) -> None:
    """Wait (``mta_sts.fetch_wait_seconds``) until a sender fetches ``body``.

    Raises:
        NotPropagated: not fetchable yet, with the reason a sender would see (retried by the broker).
    """
    deadline = time.monotonic() + ports.settings.mta_sts.fetch_wait_seconds
    while True:
        problems = served(ports, domain, body)
        if not problems:
            return
        if time.monotonic() > deadline:
            raise NotPropagated(f"{policy_url(domain)} not fetchable as a sender fetches it: {'; '.join(problems)}")
        time.sleep(0.25)


def txt_key(domain: str) -> tuple[str, str]:
    return (f"_mta-sts.{domain}", "TXT")


def held(
    want: dict[tuple[str, str], RecordSet], have: dict[tuple[str, str], RecordSet], domain: str
) -> dict[tuple[str, str], RecordSet]:
    """``want`` with the ``_mta-sts`` TXT held at what is published now (absent stays absent): the first UPDATE."""
    k, out = txt_key(domain), dict(want)
    if k in have:
        out[k] = have[k]
    else:
        out.pop(k, None)
    return out
