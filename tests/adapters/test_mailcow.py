"""MailcowClient (the MailPort adapter): one contract suite, run against the in-process fake, the simulator over
HTTPS, and (marked ``live``) a real Mailcow from MAILCOW_URL / MAILCOW_API_KEY [/ MAILCOW_CA_FILE].
"""

from __future__ import annotations

import base64
import functools
import http.cookiejar
import os
import re
import ssl
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sim.common import ensure_certs
from sim.mailcow import MailcowModel
from sim.mailcow.app import serve_mailcow

from functions._core.model.plans import MailPlan, plan_mail
from functions._core.model.ports import DkimKey, MailDomain, MailPort
from functions._core.platform.errors import ConfigError, MailcowRejected, MailcowUnavailable
from functions.adapters.mailcow import MANAGED_MARK, MailcowClient
from tests.fakes.mailcow import fake_mailcow, fake_settings, no_wait

RW = "A1B2C3-D4E5F6-A7B8C9-D0E1F2-A3B4C5"
RO = "F0F0F0-E1E1E1-D2D2D2-C3C3C3-B4B4B4"
BAD_KEY = "BAD000-BAD111-BAD222-BAD333-BAD444"
RETRY_ATTEMPTS = 3  # functions._core.platform.retry: stop_after_attempt(3)
CTRL = "/inc/ajax/container_ctrl.php"


@functools.cache
def key_pair(n: int) -> tuple[str, str]:
    """(PKCS#8 PEM, base64 SPKI) of test key number ``n`` (2048 bits)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem.decode(), base64.b64encode(der).decode()


@dataclass
class Harness:
    """One Mailcow behind the port, plus what the test needs to observe or steer it."""

    port: MailcowClient
    with_key: Callable[[str], MailcowClient]  # another client for the same Mailcow with another API key
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    requests: Callable[[], list[dict[str, Any]]] | None = None  # the simulator's request log
    faults: Callable[[dict[str, Any]], object] | None = None  # the simulator's POST /_sim/faults
    ro_key: str | None = RO

    def name(self, label: str) -> str:
        return f"{label}-{self.token}.mailplane.test"

    def count(self, prefix: str) -> int:
        assert self.requests is not None
        return sum(1 for r in self.requests() if r["path"].startswith(prefix))

    def writes(self) -> int:
        assert self.requests is not None
        return sum(1 for r in self.requests() if r["write"])

    def need_sim(self) -> None:
        if self.requests is None or self.faults is None:
            pytest.skip("needs the simulator's request log and faults")


def want_domain(name: str, **changes: Any) -> MailDomain:
    base = MailDomain(
        domain=name,
        description=f"{MANAGED_MARK} customer=c-test",
        mailboxes=5,
        aliases=50,
        quota_mib=4096,
        maxquota_mib=2048,
        defquota_mib=1024,
    )
    return replace(base, **changes)


def converge(port: MailPort, want: MailDomain, key: DkimKey, pem: str) -> MailPlan:
    """Read, plan, apply (as domain_created does for Mailcow); returns the plan that was applied."""
    plan = plan_mail(want, port.get_domain(want.domain), key, port.get_dkim(want.domain))
    if plan.add is not None:
        port.add_domain(plan.add)
    elif plan.edit:
        port.edit_domain(want.domain, plan.edit)
    if plan.dkim_import is not None:
        port.import_dkim(want.domain, key.selector, pem, overwrite=True)
    return plan


def no_secrets(exc: BaseException, *secrets: str) -> None:
    for text in (str(exc), repr(exc), *(str(a) for a in exc.args)):
        for secret in secrets:
            assert secret not in text


class MailPortContract:
    """Behaviour every MailPort implementation shows; subclasses provide the ``h`` fixture."""

    # -- domains ---------------------------------------------------------------------------

    def test_get_unknown_domain_is_none(self, h: Harness) -> None:
        assert h.port.get_domain(h.name("unknown")) is None

    def test_add_then_get_maps_quotas_counts_and_flags(self, h: Harness) -> None:
        want = want_domain(h.name("rt").upper(), active=False)
        h.port.add_domain(want)
        assert h.port.get_domain(want.domain) == replace(want, domain=want.domain.lower())
        assert h.port.get_dkim(want.domain) is None  # add_domain never generates a key

    def test_add_marks_the_description_as_managed(self, h: Harness) -> None:
        name = h.name("mark")
        h.port.add_domain(want_domain(name, description="Customer X"))
        have = h.port.get_domain(name)
        assert have is not None and have.description == f"Customer X ({MANAGED_MARK})"

    def test_second_apply_plans_nothing(self, h: Harness) -> None:
        pem, pub = key_pair(1)
        key, want = DkimKey("mp20260801", pub), want_domain(h.name("conv"))
        first = converge(h.port, want, key, pem)
        assert first.add is not None and first.dkim_import == key
        writes = h.writes() if h.requests is not None else 0
        second = converge(h.port, want, key, pem)
        assert second == MailPlan()
        if h.requests is not None:
            assert h.writes() == writes  # nothing written the second time
        edited = replace(want, quota_mib=8192, mailboxes=9, active=False)
        assert converge(h.port, edited, key, pem).edit == {"quota": 8192, "mailboxes": 9, "active": 0}
        assert converge(h.port, edited, key, pem) == MailPlan()

    def test_add_existing_domain_is_rejected(self, h: Harness) -> None:
        want = want_domain(h.name("dup"))
        h.port.add_domain(want)
        with pytest.raises(MailcowRejected, match="domain_exists"):
            h.port.add_domain(want)

    def test_alias_domain_name_is_not_a_domain(self, h: Harness) -> None:
        target, alias = h.name("target"), h.name("alias")
        h.port.add_domain(want_domain(target))
        h.port._write("add/alias-domain", {"alias_domain": alias, "target_domain": target}, "aliasd_added")
        assert h.port.get_domain(alias) is None  # Mailcow answers with the target's object
        with pytest.raises(MailcowRejected, match="domain_exists"):
            h.port.add_domain(want_domain(alias))

    def test_edit_domain(self, h: Harness) -> None:
        name = h.name("edit")
        h.port.add_domain(want_domain(name))
        h.port.edit_domain(name, {"description": f"{MANAGED_MARK} v2", "aliases": 60, "defquota_mib": 512})
        have = h.port.get_domain(name)
        assert have is not None and (have.description, have.aliases, have.defquota_mib) == (
            f"{MANAGED_MARK} v2",
            60,
            512,
        )

    def test_edit_unknown_domain_is_rejected(self, h: Harness) -> None:
        with pytest.raises(MailcowRejected, match="domain_invalid"):
            h.port.edit_domain(h.name("ghost"), {"mailboxes": 3})

    @pytest.mark.parametrize("changes", [{"quota": 0}, {"aliases": 0}, {"description": ""}, {"colour": 1}])
    def test_edit_refuses_what_mailcow_would_silently_ignore(self, h: Harness, changes: dict[str, Any]) -> None:
        name = h.name("ign")
        h.port.add_domain(want_domain(name))
        writes = h.writes() if h.requests is not None else 0
        with pytest.raises(MailcowRejected):
            h.port.edit_domain(name, changes)
        if h.requests is not None:
            assert h.writes() == writes

    def test_edit_refuses_an_unknown_relayhost(self, h: Harness) -> None:
        name = h.name("rh")
        h.port.add_domain(want_domain(name))
        with pytest.raises(MailcowRejected, match="relayhost_invalid"):
            h.port.edit_domain(name, {"relayhost": 987654})

    def test_add_domain_binds_its_relayhost(self, h: Harness) -> None:
        rid = h.port.add_relayhost(f"[relay-{h.token}.mailplane.test]:25")
        name = h.name("bound")
        h.port.add_domain(want_domain(name, relayhost=rid))
        have = h.port.get_domain(name)
        assert have is not None and have.relayhost == rid
        h.port.delete_relayhost(rid)
        have = h.port.get_domain(name)
        assert have is not None and have.relayhost == 0

    def test_delete_domain_is_idempotent_and_keeps_the_dkim_key(self, h: Harness) -> None:
        pem, pub = key_pair(2)
        name = h.name("del")
        h.port.add_domain(want_domain(name))
        h.port.import_dkim(name, "s1", pem, overwrite=False)
        h.port.delete_domain(name)
        h.port.delete_domain(name)
        assert h.port.get_domain(name) is None
        assert h.port.get_dkim(name) == DkimKey("s1", pub)  # blind key: comes back with the domain

    # -- DKIM ------------------------------------------------------------------------------

    def test_import_dkim_swaps_keys(self, h: Harness) -> None:
        (pem_a, pub_a), (pem_b, pub_b) = key_pair(3), key_pair(4)
        name = h.name("dkim")
        h.port.add_domain(want_domain(name))
        h.port.import_dkim(name, "sa", pem_a, overwrite=False)
        assert h.port.get_dkim(name) == DkimKey("sa", pub_a)
        with pytest.raises(MailcowRejected, match="dkim_domain_or_sel_exists"):
            h.port.import_dkim(name, "sb", pem_b, overwrite=False)
        h.port.import_dkim(name, "sb", pem_b, overwrite=True)
        assert h.port.get_dkim(name) == DkimKey("sb", pub_b)

    def test_import_bad_pem_is_rejected_without_key_material(self, h: Harness) -> None:
        pem, _ = key_pair(5)
        broken = pem[:200] + "!!" + pem[200:]
        with pytest.raises(MailcowRejected, match="private_key_error") as info:
            h.port.import_dkim(h.name("badpem"), "s1", broken, overwrite=True)
        no_secrets(info.value, pem[40:100], "PRIVATE KEY")

    def test_get_dkim_unknown_is_none(self, h: Harness) -> None:
        assert h.port.get_dkim(h.name("nokey")) is None

    # -- relayhosts and transports ---------------------------------------------------------

    def test_relayhost_lifecycle(self, h: Harness) -> None:
        host = f"[relay-{h.token}.mailplane.test]:587"
        first, second = h.port.add_relayhost(host), h.port.add_relayhost(host)
        assert first != second  # Mailcow allows duplicates; each add returns its own new id
        mine = {r.id: r for r in h.port.list_relayhosts() if r.hostname == host}
        assert set(mine) == {first, second} and all(r.active for r in mine.values())
        h.port.edit_relayhost(first, active=False, hostname=f"[relay2-{h.token}.mailplane.test]:25")
        edited = next(r for r in h.port.list_relayhosts() if r.id == first)
        assert (edited.hostname, edited.active) == (f"[relay2-{h.token}.mailplane.test]:25", False)
        h.port.delete_relayhost(first)
        h.port.delete_relayhost(first)  # absent: still success
        assert first not in {r.id for r in h.port.list_relayhosts()}
        h.port.delete_relayhost(second)
        with pytest.raises(MailcowRejected, match="relayhost_invalid"):
            h.port.edit_relayhost(second, active=True)

    def test_transport_lifecycle(self, h: Harness) -> None:
        dest = h.name("tr")
        tid = h.port.add_transport(dest.upper(), "[mx.example.test]:25")
        mine = [t for t in h.port.list_transports() if t.id == tid]
        assert [(t.destination, t.nexthop, t.active) for t in mine] == [(dest, "[mx.example.test]:25", True)]
        with pytest.raises(MailcowRejected, match="transport_dest_exists"):
            h.port.add_transport(dest, "[mx.example.test]:25")
        h.port.edit_transport(tid, nexthop="[mx2.example.test]:25", active=False)
        t = next(t for t in h.port.list_transports() if t.id == tid)
        assert (t.nexthop, t.active) == ("[mx2.example.test]:25", False)
        h.port.delete_transport(tid)
        h.port.delete_transport(tid)
        assert tid not in {t.id for t in h.port.list_transports()}

    # -- the client algorithm --------------------------------------------------------------

    def test_task_completed_false_positive_is_rejected(self, h: Harness) -> None:
        name = h.name("fp")
        h.port.add_domain(want_domain(name))
        with pytest.raises(MailcowRejected, match="no domain_modified"):
            h.port._write("edit/domain", {"item": [name], "attr": {"active": 0}}, "domain_modified")
        have = h.port.get_domain(name)
        assert have is not None and have.active

    def test_401_is_rejected_and_never_retried(self, h: Harness) -> None:
        bad = h.with_key(BAD_KEY)
        before = h.count("/api/v1/") if h.requests is not None else 0
        with pytest.raises(MailcowRejected, match="401") as info:
            bad.get_domain(h.name("x"))
        no_secrets(info.value, BAD_KEY, RW)
        if h.requests is not None:
            assert h.count("/api/v1/") == before + 1

    def test_ro_key_cannot_write(self, h: Harness) -> None:
        if h.ro_key is None:
            pytest.skip("no read-only key")
        ro = h.with_key(h.ro_key)
        assert ro.get_domain(h.name("ro")) is None
        with pytest.raises(MailcowRejected, match="403"):
            ro.add_domain(want_domain(h.name("ro")))

    def test_5xx_is_retried_then_unavailable(self, h: Harness) -> None:
        h.need_sim()
        assert h.faults is not None
        h.faults({"fail_next": [{"path_prefix": "/api/v1/get/domain/", "status": 503, "count": 50}]})
        with pytest.raises(MailcowUnavailable, match="503"):
            h.port.get_domain(h.name("down"))
        assert h.count("/api/v1/get/domain/") == RETRY_ATTEMPTS

    def test_one_5xx_is_absorbed_by_the_retry(self, h: Harness) -> None:
        h.need_sim()
        assert h.faults is not None
        name = h.name("blip")
        h.port.add_domain(want_domain(name))
        h.faults({"fail_next": [{"path_prefix": "/api/v1/edit/domain", "status": 500}]})
        h.port.edit_domain(name, {"mailboxes": 7})
        assert h.count("/api/v1/edit/domain") == 2
        have = h.port.get_domain(name)
        assert have is not None and have.mailboxes == 7

    def test_hang_is_unavailable(self, h: Harness) -> None:
        h.need_sim()
        assert h.faults is not None
        h.faults({"hang_ms": 5, "fail_next": [{"path_prefix": "/api/v1/get/", "status": 0, "count": 50}]})
        with pytest.raises(MailcowUnavailable):
            h.port.list_relayhosts()
        assert h.count("/api/v1/get/relayhost/all") == RETRY_ATTEMPTS

    def test_empty_200_body_is_rejected_and_not_retried(self, h: Harness) -> None:
        h.need_sim()
        assert h.faults is not None
        h.faults({"fail_next": [{"path_prefix": "/api/v1/get/", "status": 200}]})
        with pytest.raises(MailcowRejected, match="empty or non-JSON"):
            h.port.list_transports()
        assert h.count("/api/v1/get/transport/all") == 1

    def test_add_whose_answer_is_lost_is_not_sent_twice(self, h: Harness) -> None:
        h.need_sim()
        assert h.faults is not None
        lost = [
            {"path_prefix": f"/api/v1/add/{what}", "status": 502, "apply": True} for what in ("relayhost", "domain")
        ]
        h.faults({"fail_next": [*lost, {"path_prefix": "/api/v1/add/transport", "status": 504, "apply": True}]})
        host = f"[lost-{h.token}.mailplane.test]:25"
        rid = h.port.add_relayhost(host)
        assert [r.id for r in h.port.list_relayhosts() if r.hostname == host] == [rid]
        name = h.name("lost")
        h.port.add_domain(want_domain(name))
        assert h.port.get_domain(name) == want_domain(name)
        tid = h.port.add_transport(h.name("lost-tr"), "[mx.example.test]:25")
        assert [t.id for t in h.port.list_transports() if t.destination == h.name("lost-tr")] == [tid]
        assert [h.count(f"/api/v1/add/{w}") for w in ("relayhost", "domain", "transport")] == [1, 1, 1]

    def test_add_that_failed_before_landing_is_sent_again(self, h: Harness) -> None:
        h.need_sim()
        assert h.faults is not None
        h.faults({"fail_next": [{"path_prefix": "/api/v1/add/domain", "status": 503}]})
        name = h.name("again")
        h.port.add_domain(want_domain(name))
        assert h.port.get_domain(name) == want_domain(name)
        assert h.count("/api/v1/add/domain") == 2

    def test_lost_add_of_another_domain_is_rejected(self, h: Harness) -> None:
        h.need_sim()
        assert h.faults is not None
        name = h.name("race")
        h.port.add_domain(want_domain(name, mailboxes=1))  # "someone else" created it with other settings
        h.faults({"fail_next": [{"path_prefix": "/api/v1/add/domain", "status": 503}]})
        with pytest.raises(MailcowRejected, match="domain_exists"):
            h.port.add_domain(want_domain(name))

    def test_no_secret_in_any_error(self, h: Harness) -> None:
        secret = f"pw-{h.token}-hunter2"
        pem, _ = key_pair(6)
        errors: list[BaseException] = []
        calls: list[Callable[[], object]] = [
            lambda: h.with_key(BAD_KEY).list_relayhosts(),
            lambda: h.port._write("add/relayhost", {"hostname": "", "password": secret}, "relayhost_added"),
            lambda: h.port.import_dkim(h.name("sel"), "bad selector!", pem, overwrite=True),
            lambda: h.port._write("edit/relayhost", {"items": ["0"], "attr": {"password": secret}}, "object_modified"),
        ]
        for call in calls:
            with pytest.raises((MailcowRejected, MailcowUnavailable)) as info:
                call()
            errors.append(info.value)
        for exc in errors:
            no_secrets(exc, secret, pem[40:100], BAD_KEY, RW)
        assert RW not in repr(h.port)

    def test_no_cookie_is_ever_sent_back(self, h: Harness) -> None:
        if h.requests is None:
            pytest.skip("needs the simulator's request log")
        name = h.name("cookie")
        h.port.add_domain(want_domain(name))
        h.port.get_domain(name)
        h.port.list_relayhosts()
        assert not any(r["cookie"] for r in h.requests())

    # -- SOGo restart (container_ctrl.php) --------------------------------------------------

    def test_restart_sogo_succeeds_once(self, h: Harness) -> None:
        before = h.count(CTRL) if h.requests is not None else 0
        h.port.restart_sogo()
        if h.requests is not None:
            assert h.count(CTRL) == before + 1

    def test_restart_sogo_works_with_a_read_only_key_too(self, h: Harness) -> None:
        if h.ro_key is None:
            pytest.skip("no read-only key")
        h.with_key(h.ro_key).restart_sogo()  # container_ctrl.php needs only an admin session: any API key

    def test_restart_sogo_with_a_bad_key_is_rejected(self, h: Harness) -> None:
        with pytest.raises(MailcowRejected, match="401") as info:
            h.with_key(BAD_KEY).restart_sogo()
        no_secrets(info.value, BAD_KEY, RW)

    def test_restart_sogo_error_is_unavailable_and_not_retried(self, h: Harness) -> None:
        h.need_sim()
        assert h.faults is not None
        h.faults({"sogo_restart_fail": 1})
        before = h.count(CTRL)
        with pytest.raises(MailcowUnavailable, match="Mailcow answered Error: .*restart failed"):
            h.port.restart_sogo()
        assert h.count(CTRL) == before + 1

    @pytest.mark.parametrize(("status", "error"), [(503, MailcowUnavailable), (200, MailcowRejected)])
    def test_restart_sogo_5xx_and_empty_answers(self, h: Harness, status: int, error: type[Exception]) -> None:
        h.need_sim()
        assert h.faults is not None
        h.faults({"fail_next": [{"path_prefix": CTRL, "status": status}]})
        before = h.count(CTRL)
        with pytest.raises(error, match="503" if status == 503 else "empty answer"):
            h.port.restart_sogo()
        assert h.count(CTRL) == before + 1


# ---------------------------------------------------------------- (a) the in-process fake


class TestFakeMailcow(MailPortContract):
    @pytest.fixture
    def h(self) -> Harness:
        model = MailcowModel(rw_key=RW, ro_key=RO)
        port, _ = fake_mailcow(model)
        return Harness(
            port=port,
            with_key=lambda key: fake_mailcow(model, api_key=key)[0],
            requests=model.request_log,
            faults=model.set_faults,
        )


def test_fake_mailcow_builds_a_fresh_model_and_uses_its_rw_key() -> None:
    port, model = fake_mailcow()
    port.add_domain(want_domain("fresh.test"))
    assert [d["domain"] for d in model.snapshot()["tables"]["domain"]] == ["fresh.test"]
    assert re.fullmatch(r"([0-9A-F]{6}-){4}[0-9A-F]{6}", model.rw_key)  # the UI's key format


# ---------------------------------------------------------------- (b) the simulator over HTTPS


@pytest.fixture(scope="module")
def https_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    ca, cert, key = ensure_certs(tmp_path_factory.mktemp("tls"))
    server = serve_mailcow(MailcowModel(rw_key=RW, ro_key=RO), 0, (cert, key))
    yield f"https://127.0.0.1:{server.server_address[1]}", ca
    server.shutdown()
    server.server_close()


class TestSimulatorHttps(MailPortContract):
    @pytest.fixture
    def h(self, https_sim: tuple[str, Path]) -> Iterator[Harness]:
        url, ca = https_sim
        jar = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        control = httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(ca)), cookies=jar)
        control.post("/_sim/reset").raise_for_status()

        def client(key: str) -> MailcowClient:
            return MailcowClient(fake_settings(key, url=url, ca_file=str(ca)), retry=no_wait)

        def faults(body: dict[str, Any]) -> None:
            control.post("/_sim/faults", json=body).raise_for_status()

        def requests() -> list[dict[str, Any]]:
            log: list[dict[str, Any]] = control.get("/_sim/requests").json()
            return log

        port = client(RW)
        yield Harness(port=port, with_key=client, requests=requests, faults=faults)
        port.close()
        control.close()

    def test_tls_is_verified(self, https_sim: tuple[str, Path], tmp_path: Path) -> None:
        url, _ = https_sim
        other_ca, _, _ = ensure_certs(tmp_path)  # a CA that did not sign the server's certificate
        client = MailcowClient(fake_settings(RW, url=url, ca_file=str(other_ca)), retry=no_wait)
        with pytest.raises(MailcowUnavailable, match="ConnectError"):
            client.get_domain("a.test")

    def test_timeout_is_unavailable_and_retried(self, h: Harness, https_sim: tuple[str, Path]) -> None:
        url, ca = https_sim
        slow = MailcowClient(fake_settings(RW, url=url, ca_file=str(ca), timeout=0.2), retry=no_wait)
        assert h.faults is not None
        h.faults({"latency_ms": 400})
        with pytest.raises(MailcowUnavailable, match="timeout"):
            slow.list_transports()
        assert h.count("/api/v1/get/transport/all") == RETRY_ATTEMPTS
        slow.close()

    def test_unreadable_ca_file_is_a_config_error(self, https_sim: tuple[str, Path], tmp_path: Path) -> None:
        url, _ = https_sim
        with pytest.raises(ConfigError, match="ca_file"):
            MailcowClient(fake_settings(RW, url=url, ca_file=str(tmp_path / "missing.pem")))


# ---------------------------------------------------------------- (c) a real Mailcow (opt-in)


@pytest.mark.live
class TestLiveMailcow(MailPortContract):
    @pytest.fixture
    def h(self) -> Iterator[Harness]:
        url, key = os.environ.get("MAILCOW_URL"), os.environ.get("MAILCOW_API_KEY")
        if not url or not key:
            pytest.skip("set MAILCOW_URL and MAILCOW_API_KEY to run against a real Mailcow")
        ca = os.environ.get("MAILCOW_CA_FILE", "")

        def client(api_key: str) -> MailcowClient:
            return MailcowClient(fake_settings(api_key, url=url, ca_file=ca, timeout=30.0))

        harness = Harness(port=client(key), with_key=client, ro_key=os.environ.get("MAILCOW_API_KEY_RO"))
        yield harness
        _cleanup_live(harness)


def _cleanup_live(h: Harness) -> None:
    """Remove what the test created: every object whose name carries the test's token."""
    port = h.port
    for t in port.list_transports():
        if h.token in t.destination:
            port.delete_transport(t.id)
    for r in port.list_relayhosts():
        if h.token in r.hostname:
            port.delete_relayhost(r.id)
    domains = port._get_list("get/domain/all")
    for d in domains:
        name = str(d.get("domain_name", ""))
        if h.token in name:
            port.delete_domain(name)
    for label in ("dkim", "del", "conv", "badpem", "sel"):
        port._write("delete/dkim", [h.name(label)], "dkim_removed")
    port.close()
