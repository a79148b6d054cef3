"""`mailplane drift --all` at fleet size: the per-domain checks of `drift DOMAIN`, over read-once views
(functions/ops/snapshot.py) fetched ahead by a small thread pool, with progress lines on stderr.

Per run: one listing per system (Mailcow domains, PMG relay domains/transports/networks), and per domain its state
and policy objects once, its DKIM key in Mailcow, its zone's servers and ONE zone transfer per server, and 1/8 of an
SMTP session per PMG node. The comparison is ``drift.domain_drift`` itself, so a fleet run reports what per-domain
runs report. Reads for at most ``AHEAD`` domains are held at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from functions._core.model import state, webmail
from functions._core.model.mailset import delegated, policy_key
from functions._core.model.ports import Ports
from functions.ops.drift import DomainDrift, domain_drift
from functions.ops.snapshot import (
    RUN,
    SMTP_BATCH,
    ClosedError,
    DnsView,
    GatewayView,
    MailView,
    Memo,
    Scope,
    SmtpView,
    StoreView,
)

WORKERS = 8  # concurrent reads (the systems are I/O-bound; the comparison runs in the calling thread)
AHEAD = 64  # domains whose reads may be held at once


def views(ports: Ports, memo: Memo, scope: Scope) -> Ports:
    """``ports`` with every port the checks read replaced by its read-once view."""
    return replace(
        ports,
        mail=MailView(ports.mail, memo),
        gateway=GatewayView(ports.gateway, memo),
        dns=DnsView(ports.dns, memo, scope),
        state=StoreView(ports.state, "state", memo, scope),
        web=StoreView(ports.web, "web", memo, scope, listed=True),
        smtp=None if ports.smtp is None else SmtpView(ports.smtp, memo, scope),
    )


def _objects(domain: str) -> tuple[tuple[str, str], ...]:
    return (("state", state.state_key(domain)), ("web", policy_key(domain)))


def _listings(view: Ports) -> None:
    for read in (view.mail.list_domains, view.gateway.list_relay_domains, view.gateway.list_transports):
        try:
            read()
        except Exception:  # noqa: S110 - stored in the memo; the checks meet it in order
            pass


def _warm(view: Ports, domain: str) -> None:
    """Fetch what the checks of ``domain`` will read, in their order; failures are stored for the checks, and a
    read-ahead for a domain already done stops (ClosedError) without reading."""
    store, mail, dns = view.state, view.mail, view.dns
    assert isinstance(store, StoreView) and isinstance(mail, MailView) and isinstance(dns, DnsView)
    web = view.web
    assert isinstance(web, StoreView)
    try:
        obj = store.read(domain, state.state_key(domain))
        st = state.parse(domain, obj.body, obj.etag) if obj is not None else state.DomainState(domain)
        if st.status == "deleted" or not st.request or st.current is None:
            return
        web.read(domain, policy_key(domain))
        mail.get_dkim(domain)
        deleg = view.settings.dkim.delegation_zone
        if delegated(st.request) and deleg:
            for server in dns.servers(deleg, RUN):
                dns.served(deleg, server, RUN)
        if st.request["dns"]["hosted"]:
            for server in dns.servers(domain, domain):
                dns.served(domain, server, domain)
    except Exception:  # noqa: S110 - stored in the memo; the checks meet it in order
        pass


def _smtp(view: Ports, batch: tuple[str, ...]) -> None:
    smtp = view.smtp
    if not isinstance(smtp, SmtpView):
        return
    try:
        for host in view.settings.provider.mx_hosts:
            smtp.batch(host.smtp or f"{host.name}:25", batch[-1], batch)
    except ClosedError:
        pass


def drift_all(
    domains: Iterable[str],
    ports: Ports,
    on_done: Callable[[DomainDrift], None] | None = None,
    *,
    workers: int = WORKERS,
    ahead: int = AHEAD,
) -> list[DomainDrift]:
    """Check every domain (in the given order) from bulk reads; the result of each is ``drift.domain_drift``'s."""
    names = list(domains)
    memo, scope = Memo(), Scope()
    view = views(ports, memo, scope)
    scope.add(RUN, objects=(("state", webmail.RECORD),))
    if ports.settings.dkim.delegation_zone:
        scope.add(RUN, zones=(ports.settings.dkim.delegation_zone,))
    out: list[DomainDrift] = []
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="drift") as pool:
        pool.submit(_listings, view)
        scheduled = 0
        for i, domain in enumerate(names):
            while scheduled < min(len(names), i + max(ahead, SMTP_BATCH)):
                batch = tuple(names[scheduled : scheduled + SMTP_BATCH])
                for d in batch:
                    scope.add(d, objects=_objects(d), zones=(d,))
                    scope.smtp[d] = (batch[-1], batch)
                    pool.submit(_warm, view, d)
                pool.submit(_smtp, view, batch)
                scheduled += len(batch)
            out.append(domain_drift(domain, view))
            memo.drop(domain)
            scope.forget(domain, objects=_objects(domain), zones=(domain,))
            if on_done is not None:
                on_done(out[-1])
    return out
