"""DANE for the MX hosts: ``_25._tcp.<mx host>`` TLSA 3 1 1 and the SMTP certificate lifecycle that never breaks it.

PMG's own ACME renews with a new key each time, which breaks a published TLSA 3 1 1; mailplane owns the lifecycle
instead (cert.renew, per node), persisted in the state store (``dane/<node>.json``, compare-and-set), ONE write per
step, so a crash after any write resumes to the same end state and a replay writes nothing:

    renewal (same key, TLSA unchanged):  IDLE -> ISSUED -> DEPLOYED -> IDLE
    rollover (new key):                  IDLE -> NEXT_KEY -> PUBLISHED -> (every authoritative server serves
                                         current+next and 2 x TTL passed) -> ISSUED -> DEPLOYED -> VERIFIED
                                         -> (2 x TTL) -> IDLE (old TLSA withdrawn)

- NEXT_KEY: the next private key, sealed (AES-GCM, the DKIM key-encryption key) in the state before anything uses it.
- PUBLISHED: TLSA RRset = {current, next} by CAS UPDATE (only our ``_25._tcp`` RRset; its other values are kept).
- ISSUED: the ACME certificate for the key by DNS-01 through our RFC 2136 channel (mtasts.Dns01).
- DEPLOYED: key + chain uploaded to the node (PMG ``POST /nodes/{node}/certificates/custom/smtp``).
- VERIFIED: a STARTTLS handshake shows the node presents the new certificate.
- IDLE: the old value withdrawn from the TLSA RRset.

Guards: a certificate is deployed only when its TLSA is served by every authoritative server; a TLSA value is
withdrawn only when the node no longer presents the certificate it matches; one node deploys at a time; a deploy
never leaves fewer than ``provider.min_mx_in_rotation`` other nodes presenting a valid, DANE-matching chain.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from functions._core.model import keys, mtasts
from functions._core.model.nodes import find_host, short
from functions._core.model.ports import DnsChange, Ports
from functions._core.model.records import RecordSet
from functions._core.platform.config import MxHost, Secret, Settings
from functions._core.platform.errors import (
    AutomationError,
    ConfigError,
    DnsConflict,
    NotPropagated,
    PermanentError,
    PreconditionFailed,
    TransientError,
)
from functions._core.platform.store import ObjectStore, put_over

log = logging.getLogger("mailplane.dane")
PHASES = ("IDLE", "NEXT_KEY", "PUBLISHED", "ISSUED", "DEPLOYED", "VERIFIED")
REASONS = ("scheduled", "rollover", "compromised", "nudge")


class DaneRefused(PermanentError):
    """A guard refused a step that would break DANE for a node (parked with the reason)."""


class DaneWait(TransientError):
    """A step must wait (another node deploying, quorum, 2 x TTL): retried by the broker."""


# ---------------------------------------------------------------- pure: certificates and TLSA


def spki_sha256(cert_pem: str) -> str:
    """SHA-256 of the leaf certificate's SubjectPublicKeyInfo (DER), lowercase hex: the TLSA 3 1 1 data."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def key_spki_sha256(key_pem: str) -> str:
    key = serialization.load_pem_private_key(key_pem.encode("ascii"), password=None)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def tlsa_value(spki_hex: str) -> str:
    return f"3 1 1 {spki_hex}"


def spki_of_value(value: str) -> str | None:
    """The hash of a ``3 1 1`` value (any spacing/case), None for other usages/selectors/types."""
    parts = value.split()
    if len(parts) < 4 or parts[:3] != ["3", "1", "1"]:
        return None
    return "".join(parts[3:]).lower()


def tlsa_name(host: MxHost) -> str:
    return f"_25._tcp.{host.name.rstrip('.').lower()}"


def tlsa_rrset(name: str, have: RecordSet | None, want: Iterable[str], ttl: int) -> RecordSet | None:
    """Our TLSA RRset at ``name``: ``have``'s values of other kinds kept, its 3 1 1 values replaced by the hashes
    ``want`` (None: nothing left)."""
    keep = [v for v in (have.values if have else ()) if spki_of_value(v) is None]
    values = keep + [tlsa_value(h) for h in sorted(set(want))]
    return RecordSet.of(name, "TLSA", ttl, values) if values else None


def tlsa_hashes(rs: RecordSet | None) -> set[str]:
    """The 3 1 1 hashes of a TLSA RRset (other kinds ignored)."""
    return {h for h in (spki_of_value(v) for v in (rs.values if rs else ())) if h}


def not_after(cert_pem: str) -> dt.datetime:
    return x509.load_pem_x509_certificate(cert_pem.encode("ascii")).not_valid_after_utc


def subject(cert_pem: str) -> str:
    return x509.load_pem_x509_certificate(cert_pem.encode("ascii")).subject.rfc4514_string()


def leaf(chain_pem: str) -> str:
    end = "-----END CERTIFICATE-----"
    return chain_pem.split(end, 1)[0].strip() + "\n" + end + "\n"


def new_key() -> str:
    k = ec.generate_private_key(ec.SECP256R1())
    pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem.decode("ascii")


# ---------------------------------------------------------------- the persisted state


@dataclass(frozen=True)
class CertState:
    """One node's SMTP certificate lifecycle. Keys are sealed; chains and hashes are public."""

    node: str
    phase: str = "IDLE"
    current_spki: str = ""  # what the node presents (and the TLSA keeps) in IDLE
    current_key: str = ""  # sealed (base64) private key of the current certificate, "" = not ours (PMG's own)
    current_chain: str = ""
    next_spki: str = ""  # the key being rolled to (or, on a renewal, the current one)
    next_key: str = ""  # sealed (base64)
    next_chain: str = ""
    since: str = ""  # ISO time the phase was entered
    event: str = ""  # id of the event that started this run
    history: tuple[dict[str, str], ...] = field(default_factory=tuple)

    def to_json(self) -> bytes:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["history"] = list(self.history[-20:])
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_json(cls, body: bytes) -> CertState:
        d = json.loads(body)
        d["history"] = tuple(d.get("history", ()))
        return cls(**d)


def state_key(node: str) -> str:
    return f"dane/{node}.json"


def load(ports: Ports, node: str) -> tuple[CertState, str | None]:
    return read(ports.state, node)


def read(store: ObjectStore, node: str) -> tuple[CertState, str | None]:
    """The node's persisted state and its ETag (a fresh IDLE state and None when there is none)."""
    obj = store.get(state_key(node))
    if obj is None:
        return CertState(node), None
    return CertState.from_json(obj.body), obj.etag


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Request:
    event: str
    reason: str  # scheduled | rollover | compromised | nudge


@dataclass(frozen=True)
class Result:
    state: CertState
    status: str  # done | pending | idle
    reason: str
    until: dt.datetime | None
    steps: tuple[str, ...]  # "FROM->TO" per step taken by this call
    tlsa: str = ""  # the TLSA owner name of the node


# ---------------------------------------------------------------- reading the world


def served_everywhere(ports: Ports, host: MxHost, want: Iterable[str]) -> list[str]:
    """Authoritative servers of the provider zone that do NOT serve every value in ``want`` (empty = all do)."""
    need = {v for v in want if v}
    zone = ports.settings.provider.zone
    missing = []
    for server in ports.dns.servers(zone):
        rs = ports.dns.query(server, tlsa_name(host), "TLSA")
        have = {spki_of_value(v) for v in (rs.values if rs else ())}
        if not need <= have:
            missing.append(server)
    return missing


def presented_spki(ports: Ports, host: MxHost) -> str | None:
    tls = ports.node_tls
    if tls is None:
        raise ConfigError("DANE needs the nodes' TLS port (node_tls)")
    pem = tls.presented(short(host.name))
    return spki_sha256(pem) if pem else None


def valid_nodes(ports: Ports, exclude: str) -> list[str]:
    """Other nodes that present an unexpired certificate that a DANE client accepts (the TLSA RRset on the primary
    holds its 3 1 1 hash, or the node has no TLSA yet)."""
    assert ports.node_tls is not None
    out = []
    for host in ports.settings.provider.mx_hosts:
        node = short(host.name)
        if node == exclude:
            continue
        pem = ports.node_tls.presented(node)
        if not pem or not_after(pem) <= ports.clock():
            continue
        rs = ports.dns.read_rrset(tlsa_name(host), "TLSA")  # none: DANE does not apply, any valid TLS is fine
        if rs is None or spki_sha256(pem) in {spki_of_value(v) for v in rs.values}:
            out.append(node)
    return out


def _ttl(ports: Ports) -> int:
    return ports.settings.dane.tlsa_ttl


def _hold(ports: Ports) -> dt.timedelta:
    return dt.timedelta(seconds=2 * _ttl(ports))


# ---------------------------------------------------------------- writes


def _set_tlsa(ports: Ports, host: MxHost, want: set[str]) -> None:
    """CAS-replace our TLSA RRset's 3 1 1 values by ``want`` (hashes); values of other kinds are kept."""
    zone, name = ports.settings.provider.zone, tlsa_name(host)
    for _ in range(5):
        have = ports.dns.read_rrset(name, "TLSA")
        after = tlsa_rrset(name, have, want, _ttl(ports))
        if have is not None and after is not None and set(have.values) == set(after.values):
            return
        if have is None and after is None:
            return
        try:
            ports.dns.apply(zone, [DnsChange(before=have, after=after)])
            return
        except DnsConflict:
            continue
    raise NotPropagated(f"{name} TLSA kept changing under us")


def _tlsa_hashes(ports: Ports, host: MxHost) -> set[str]:
    return tlsa_hashes(ports.dns.read_rrset(tlsa_name(host), "TLSA"))


def _kek(ports: Ports) -> Secret:
    return ports.settings.dkim.key_encryption_key


def _seal(ports: Ports, node: str, key_pem: str) -> str:
    blob = keys.seal_blob(key_pem, _kek(ports), f"dane/{node}")
    return base64.b64encode(blob).decode("ascii")


def _unseal(ports: Ports, node: str, sealed: str) -> str:
    return keys.unseal_blob(base64.b64decode(sealed), _kek(ports), f"dane/{node}").reveal()


# ---------------------------------------------------------------- the state machine


def key_since(st: CertState) -> dt.datetime | None:
    """When the current key became the one presented (the last completed rollover), None if never."""
    for h in reversed(st.history):
        if h.get("transition") == "VERIFIED->IDLE":
            return _parse(h["at"])
    return None


def due(st: CertState, settings: Settings, now: dt.datetime) -> str | None:
    """What a node needs now: "nudge" (a run in progress), "rollover" (a key we do not hold, or an old key),
    "scheduled" (renew with the same key before expiry); None when nothing is due."""
    d = settings.dane
    if st.phase != "IDLE":
        return "nudge"
    if not st.current_key:
        return "rollover"  # PMG's own certificate (or never seen): roll to a key mailplane holds
    since = key_since(st)
    if since is not None and now - since >= dt.timedelta(days=d.rollover_days):
        return "rollover"
    if not st.current_chain or not_after(st.current_chain) - now < dt.timedelta(days=d.renew_before_days):
        return "scheduled"
    return None


def advance(ports: Ports, node_name: str, req: Request, *, max_steps: int = 12) -> Result:
    """Take every step that can be taken now, one persisted write per step; see the module docstring.

    Raises:
        EventInvalid: not a configured node.
        DaneRefused: a guard refused (e.g. the certificate to deploy does not match its key).
        DaneWait / NotPropagated: a step must wait (retried).
    """
    if ports.node_tls is None or ports.certs is None:
        raise ConfigError("cert.renew needs [acme] directory and the nodes' TLS port")
    host = find_host(ports.settings, node_name)
    node = short(host.name)
    st, etag = load(ports, node)
    steps: list[str] = []
    for _ in range(max_steps):
        nxt, why, until = _step(ports, host, st, req)
        if nxt is None:
            status = "pending" if st.phase != "IDLE" else ("done" if steps else "idle")
            return Result(st, status, why, until, tuple(steps), tlsa_name(host))
        steps.append(f"{st.phase}->{nxt.phase}")
        st, etag = _save(ports, st, nxt, etag, req.event)
    return Result(st, "pending", "step limit", None, tuple(steps), tlsa_name(host))


def _save(ports: Ports, st: CertState, nxt: CertState, etag: str | None, event: str) -> tuple[CertState, str]:
    """Persist the step ``st`` -> ``nxt`` (compare-and-set on ``etag``), with its history entry.

    Raises:
        DaneWait: the state changed since it was read (retried).
    """
    at = iso(ports.clock())
    nxt = replace(
        nxt, since=at, history=(*st.history, {"at": at, "event": event, "transition": f"{st.phase}->{nxt.phase}"})
    )
    try:
        return nxt, put_over(ports.state, state_key(st.node), nxt.to_json(), etag)
    except PreconditionFailed:
        raise DaneWait(f"{st.node}: the certificate state changed under us; retried") from None


def _first_sight(ports: Ports, host: MxHost, st: CertState, *, keep: bool = True) -> CertState:
    """Adopt what the node presents: its TLSA published (CAS; the RRset's other hashes kept unless ``keep`` is
    False) and recorded as the current key.

    Raises:
        DaneWait: the node presents no certificate over STARTTLS.
    """
    seen = presented_spki(ports, host)
    if seen is None:
        raise DaneWait(f"{st.node} presents no certificate over STARTTLS")
    _set_tlsa(ports, host, (_tlsa_hashes(ports, host) if keep else set()) | {seen})
    return replace(st, current_spki=seen)


def owned(ports: Ports, host: MxHost) -> bool:
    """Whether the lifecycle already owns the node's TLSA (it has adopted the node, or a run is under way)."""
    st, _ = load(ports, short(host.name))
    return bool(st.current_spki) or st.phase != "IDLE"


def adopt(ports: Ports, host: MxHost, event: str, *, keep: bool = True) -> CertState:
    """First sight of a node outside a cert.renew run (node.add's provider phase): the lifecycle's own first step
    (``_first_sight``), persisted, so cert.renew owns the node's TLSA from now on. A node already adopted is left
    alone (a replay writes nothing).

    Raises:
        DaneWait: the node presents no certificate, or its state changed under us.
        DnsConflict, NotPropagated: the TLSA could not be written.
    """
    st, etag = load(ports, short(host.name))
    if st.current_spki or st.phase != "IDLE":
        return st
    return _save(ports, st, _first_sight(ports, host, st, keep=keep), etag, event)[0]


def release(ports: Ports, name: str, event: str) -> None:
    """Node ``name`` left the provider zone (node.retire's last UPDATE withdrew its TLSA with its A/AAAA): its state
    goes back to "never seen" (history kept), so a node added again under the name is adopted afresh. Idempotent.

    Raises:
        DaneRefused: a certificate run is in progress for the node.
        DaneWait: the state changed under us.
    """
    st, etag = load(ports, short(name))
    if st.phase != "IDLE":
        raise DaneRefused(f"{st.node}: a certificate run is in progress ({st.phase}); retire it after the run")
    if etag is not None and (st.current_spki or st.current_key or st.current_chain):
        _save(ports, st, CertState(st.node, event=st.event), etag, event)


def require_served(ports: Ports, host: MxHost) -> str:
    """What a DANE client needs before any MX names the node: the SPKI hash it presents now (a STARTTLS handshake),
    served in a TLSA 3 1 1 by every authoritative server of the provider zone. Returns the hash.

    Raises:
        DaneWait: the node presents no certificate over STARTTLS.
        NotPropagated: servers that serve no TLSA matching it (listed).
    """
    seen = presented_spki(ports, host)
    if seen is None:
        raise DaneWait(f"{host.name} presents no certificate over STARTTLS")
    missing = served_everywhere(ports, host, [seen])
    if missing:
        raise NotPropagated(
            f"{tlsa_name(host)}: no TLSA 3 1 1 matching the certificate {host.name} presents ({seen}) on "
            + ", ".join(missing)
        )
    return seen


def _step(  # noqa: PLR0911, PLR0912 -- one branch per phase reads best
    ports: Ports, host: MxHost, st: CertState, req: Request
) -> tuple[CertState | None, str, dt.datetime | None]:
    """The next state (None = nothing to do now), why not, and when to look again."""
    node, now = st.node, ports.clock()
    since = _parse(st.since) if st.since else now
    if st.phase == "IDLE":
        if not st.current_spki:  # first sight of the node: publish the TLSA of what it presents, adopt it
            return _first_sight(ports, host, st), "", None
        if st.event == req.event:  # this event's run is complete (a replay writes nothing)
            return None, "complete", None
        want = req.reason  # a nudge only continues a run (and adopts); renew-due starts them
        if want in ("rollover", "compromised") or (want == "scheduled" and not st.current_key):
            key = new_key()
            spki = key_spki_sha256(key)
            return (
                replace(st, phase="NEXT_KEY", next_key=_seal(ports, node, key), next_spki=spki, event=req.event),
                "",
                None,
            )
        if want == "scheduled":  # renewal: same key, TLSA unchanged
            return (
                replace(st, phase="PUBLISHED", next_key=st.current_key, next_spki=st.current_spki, event=req.event),
                "",
                None,
            )
        return None, "nothing running", None
    if st.phase == "NEXT_KEY":
        _set_tlsa(ports, host, _tlsa_hashes(ports, host) | {st.current_spki, st.next_spki})
        return replace(st, phase="PUBLISHED"), "", None
    if st.phase == "PUBLISHED":
        missing = served_everywhere(ports, host, [st.current_spki, st.next_spki])
        if missing:
            raise NotPropagated(f"{tlsa_name(host)} TLSA (current+next) not served by {', '.join(missing)} yet")
        rolling = st.next_spki != st.current_spki
        if rolling and now < since + _hold(ports):
            return None, "waiting 2 x TTL for caches to hold current+next", since + _hold(ports)
        assert ports.certs is not None
        key = _unseal(ports, node, st.next_key)
        chain = ports.certs.issue([host.name.rstrip(".")], key, mtasts.Dns01(ports, ports.settings.provider.zone))
        if spki_sha256(leaf(chain)) != st.next_spki:
            raise DaneRefused(f"{node}: the CA's certificate does not carry the next key")
        return replace(st, phase="ISSUED", next_chain=chain), "", None
    if st.phase == "ISSUED":
        return _deploy(ports, host, st), "", None
    if st.phase == "DEPLOYED":
        seen = presented_spki(ports, host)
        assert ports.node_tls is not None
        pem = ports.node_tls.presented(node)
        if seen != st.next_spki or pem is None or leaf(pem) != leaf(st.next_chain):
            raise DaneWait(f"{node} does not present the new certificate over STARTTLS yet")
        if st.next_spki == st.current_spki:  # renewal: done at once
            return _finish(st), "", None
        return replace(st, phase="VERIFIED"), "", None
    if st.phase == "VERIFIED":
        if now < since + _hold(ports):
            return None, "waiting 2 x TTL before the old TLSA is withdrawn", since + _hold(ports)
        if presented_spki(ports, host) == st.current_spki:
            raise DaneRefused(f"{node} still presents the certificate the old TLSA matches; not withdrawn")
        _set_tlsa(ports, host, (_tlsa_hashes(ports, host) - {st.current_spki}) | {st.next_spki})
        return _finish(st), "", None
    raise PermanentError(f"{node}: unknown certificate phase {st.phase!r}")


def _finish(st: CertState) -> CertState:
    return replace(
        st,
        phase="IDLE",
        current_spki=st.next_spki,
        current_key=st.next_key,
        current_chain=st.next_chain,
        next_spki="",
        next_key="",
        next_chain="",
    )


def _deploy(ports: Ports, host: MxHost, st: CertState) -> CertState:
    """Upload key + chain to the node, behind the guards (TLSA everywhere, one node at a time, quorum)."""
    node = st.node
    missing = served_everywhere(ports, host, [st.next_spki])
    if missing:
        raise NotPropagated(f"{tlsa_name(host)} TLSA for the new key not served by {', '.join(missing)}; not deployed")
    for other in ports.settings.provider.mx_hosts:
        o = short(other.name)
        if o != node and load(ports, o)[0].phase == "DEPLOYED":
            raise DaneWait(f"{o} is deploying its certificate; {node} waits (one node at a time)")
    quorum = ports.settings.provider.min_mx_in_rotation
    others = valid_nodes(ports, node)
    if len(others) < quorum:
        raise DaneWait(f"only {len(others)} other node(s) present a valid chain (quorum {quorum}); {node} waits")
    key = _unseal(ports, node, st.next_key)
    assert ports.node_tls is not None
    ports.node_tls.upload(node, key, st.next_chain)
    return replace(st, phase="DEPLOYED")


def preview(ports: Ports, node_name: str) -> dict[str, str | None]:
    """The node's phase and what a cert.renew would start now (nothing is written)."""
    host = find_host(ports.settings, node_name)
    st, _ = load(ports, short(host.name))
    return {"phase": st.phase, "spki": st.current_spki, "due": due(st, ports.settings, ports.clock())}


# ---------------------------------------------------------------- status


@dataclass(frozen=True)
class NodeView:
    node: str
    host: str
    subject: str
    not_after: dt.datetime | None
    spki: str
    tlsa: dict[str, list[str]]  # server -> 3 1 1 hashes served
    # every authoritative server serves a TLSA that matches the presented certificate (not expired), and with
    # ``dns.dnssec`` the validating resolver answers it secure (AD) with a match: what a DANE client requires
    dane_ok: bool
    phase: str
    validation: str = ""  # the validating resolver's verdict on the TLSA (secure|insecure|bogus|error); "" = not asked


def view(ports: Ports) -> list[NodeView]:
    """Per node: the certificate presented over STARTTLS, the TLSA per authoritative server, DANE acceptance."""
    if ports.node_tls is None:
        raise ConfigError("DANE status needs the nodes' TLS port")
    out = []
    servers = ports.dns.servers(ports.settings.provider.zone)
    for host in ports.settings.provider.mx_hosts:
        node = short(host.name)
        pem = ports.node_tls.presented(node)
        spki = spki_sha256(pem) if pem else ""
        tl: dict[str, list[str]] = {}
        for s in servers:
            rs = ports.dns.query(s, tlsa_name(host), "TLSA")
            tl[s] = sorted(h for h in (spki_of_value(v) for v in (rs.values if rs else ())) if h)
        ok = bool(pem) and all(spki in hs for hs in tl.values()) and bool(tl)
        if pem and not_after(pem) <= ports.clock():
            ok = False
        verdict = _validated(ports, host, spki) if ports.settings.dns.dnssec else ""
        ok = ok and verdict in ("", "secure")
        out.append(
            NodeView(
                node,
                host.name,
                subject(pem) if pem else "",
                not_after(pem) if pem else None,
                spki,
                tl,
                ok,
                load(ports, node)[0].phase,
                verdict,
            )
        )
    return out


def _validated(ports: Ports, host: MxHost, spki: str) -> str:
    """The TLSA as a DANE client gets it from the validating resolver: ``secure`` only with the AD bit and a 3 1 1
    value matching ``spki``; ``insecure`` (no AD: a DANE client ignores the TLSA), ``bogus``, ``no match``, or
    ``error`` (the resolver failed)."""
    try:
        verdict, rs = ports.dns.resolve_validated(tlsa_name(host), "TLSA")
    except AutomationError as exc:
        log.warning("dane: validating resolver for %s: %s", tlsa_name(host), exc.reason)
        return "error"
    if verdict == "secure" and spki not in tlsa_hashes(rs):
        return "no match"
    return verdict


def expiring(ports: Ports, views: Iterable[NodeView]) -> list[str]:
    """Nodes whose presented certificate expires within ``dane.alarm_before_days`` (or presents none)."""
    limit = ports.clock() + dt.timedelta(days=ports.settings.dane.alarm_before_days)
    return [v.node for v in views if v.not_after is None or v.not_after < limit]
