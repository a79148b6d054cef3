"""The Mailcow simulator against reference/mailcow.md: each documented quirk, in-process and (a few) over HTTPS."""

from __future__ import annotations

import base64
import functools
import http.cookiejar
import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sim.common import ensure_certs
from sim.mailcow import MailcowApp, MailcowModel
from sim.mailcow.app import serve_mailcow
from sim.mailcow.model import MIB, dkim_length
from sim.transports import httpx_transport

from tests.stackenv import REPO

RW = "A1B2C3-D4E5F6-A7B8C9-D0E1F2-A3B4C5"
RO = "F0F0F0-E1E1E1-D2D2D2-C3C3C3-B4B4B4"
UNSET: Any = object()


def no_cookies() -> http.cookiejar.CookieJar:
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


class Sim:
    """Raw access to the simulator's /api/v1 (no cookie persistence) and its control plane."""

    def __init__(self, model: MailcowModel, http: httpx.Client) -> None:
        self.model = model
        self.http = http

    def request(
        self,
        method: str,
        path: str,
        body: Any = UNSET,
        *,
        key: str | None = RW,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        h = {"X-API-Key": key} if key is not None else {}
        if body is not UNSET:
            content = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        return self.http.request(method, f"/api/v1/{path}", content=content, headers=h)

    def post(self, path: str, body: Any, **kw: Any) -> Any:
        resp = self.request("POST", path, body, **kw)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def get(self, path: str, **kw: Any) -> Any:
        resp = self.request("GET", path, **kw)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def control(self, method: str, path: str, body: Any = None) -> Any:
        resp = self.http.request(method, f"/_sim/{path}", json=body)
        assert resp.status_code == 200, resp.text
        return resp.json()


def msgs(answer: Any) -> list[tuple[str, str]]:
    """(type, message key) of each entry of a mutation answer."""
    entries = answer if isinstance(answer, list) else [answer]
    return [(e["type"], e["msg"][0] if isinstance(e["msg"], list) else e["msg"]) for e in entries]


@functools.cache
def rsa_pem(n: int, bits: int = 2048) -> tuple[str, str]:
    """(PKCS#8 PEM, base64 SPKI) of test key number ``n``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem.decode(), base64.b64encode(der).decode()


@pytest.fixture
def sim() -> Iterator[Sim]:
    model = MailcowModel(rw_key=RW, ro_key=RO, seed=7)
    http = httpx.Client(
        transport=httpx_transport(MailcowApp(model)), base_url="https://mailcow.sim.invalid", cookies=no_cookies()
    )
    yield Sim(model, http)
    http.close()


def add_domain(sim: Sim, name: str, **attr: Any) -> Any:
    return sim.post("add/domain", {"domain": name, "key_size": 0, **attr})


# ---------------------------------------------------------------- §1 routing and encoding


def test_unknown_action_is_404_route_not_found(sim: Sim) -> None:
    resp = sim.request("GET", "fetch/domain/all")
    assert resp.status_code == 404
    assert resp.json() == {"type": "error", "msg": "route not found"}


def test_wrong_method_is_405(sim: Sim) -> None:
    resp = sim.request("POST", "get/domain/all", {"x": 1})
    assert (resp.status_code, resp.json()["msg"]) == (405, "only GET method is allowed")
    resp = sim.request("PUT", "add/domain", {"domain": "a.test"})
    assert (resp.status_code, resp.json()["msg"]) == (405, "only POST method is allowed")


def test_get_on_a_write_route_without_body_is_200_cannot_find_attributes(sim: Sim) -> None:
    resp = sim.request("GET", "add/domain")
    assert resp.status_code == 200
    assert resp.json() == {"type": "error", "msg": "Cannot find attributes in post data"}


def test_invalid_json_is_400(sim: Sim) -> None:
    resp = sim.request("POST", "add/domain", content=b"{nope", headers={"Content-Type": "application/json"})
    assert (resp.status_code, resp.json()["msg"]) == (400, "Request body doesn't contain valid json!")


def test_json_without_json_content_type_is_not_read(sim: Sim) -> None:
    resp = sim.request("POST", "add/domain", content=b'{"domain": "a.test"}', headers={"Content-Type": "text/plain"})
    assert resp.json() == {"type": "error", "msg": "Cannot find attributes in post data"}
    assert sim.model.domains == {}


def test_legacy_form_fields_are_read(sim: Sim) -> None:
    form = "attr=" + json.dumps({"domain": "form.test", "key_size": 0})
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    answer = sim.request("POST", "add/domain", content=form.encode(), headers=headers).json()
    assert msgs(answer) == [("success", "domain_added")]


def test_edit_with_misspelled_items_is_a_task_completed_false_positive(sim: Sim) -> None:
    add_domain(sim, "ex.test")
    answer = sim.post("edit/domain", {"item": ["ex.test"], "attr": {"active": 0}})
    assert answer == {"type": "success", "msg": "Task completed"}
    assert sim.model.domains["ex.test"].active == 1  # nothing happened


def test_edit_with_empty_items_is_task_completed(sim: Sim) -> None:
    assert sim.post("edit/domain", {"items": [], "attr": {"active": 0}}) == {"type": "success", "msg": "Task completed"}


def test_delete_takes_a_bare_array_or_a_bare_string(sim: Sim) -> None:
    add_domain(sim, "a.test")
    add_domain(sim, "b.test")
    assert msgs(sim.post("delete/domain", ["a.test"])) == [("success", "domain_removed")]
    assert msgs(sim.post("delete/domain", "b.test")) == [("success", "domain_removed")]
    assert sim.model.domains == {}


def test_delete_with_an_items_object_is_not_unwrapped_and_fatals(sim: Sim) -> None:
    add_domain(sim, "a.test")
    resp = sim.request("POST", "delete/domain", {"items": ["a.test"]})
    assert (resp.status_code, resp.content) == (500, b"")
    assert "a.test" in sim.model.domains


def test_true_as_a_string_is_intval_0(sim: Sim) -> None:
    add_domain(sim, "ex.test")
    assert msgs(sim.post("edit/domain", {"items": ["ex.test"], "attr": {"active": "true"}})) == [
        ("success", "domain_modified")
    ]
    assert sim.get("get/domain/ex.test")["active"] == 0
    sim.post("edit/domain", {"items": ["ex.test"], "attr": {"active": True}})
    assert sim.get("get/domain/ex.test")["active"] == 1


# ---------------------------------------------------------------- §2 authentication


def test_unknown_key_is_401_and_counted_for_fail2ban(sim: Sim) -> None:
    resp = sim.request("GET", "get/domain/all", key="NOPE-NOPE")
    assert (resp.status_code, resp.json()) == (401, {"type": "error", "msg": "authentication failed"})
    assert sim.control("GET", "state")["auth_failures"] == {"127.0.0.1": 1}


def test_key_characters_outside_the_alphabet_are_stripped(sim: Sim) -> None:
    assert sim.request("GET", "get/domain/all", key=f" {RW}!").status_code == 200


def test_ro_key_reads_but_gets_403_on_writes(sim: Sim) -> None:
    assert sim.request("GET", "get/domain/all", key=RO).status_code == 200
    for path, body in [
        ("add/domain", {"domain": "a.test"}),
        ("edit/domain", {"items": ["a.test"], "attr": {}}),
        ("delete/domain", ["a.test"]),
    ]:
        resp = sim.request("POST", path, body, key=RO)
        assert (resp.status_code, resp.json()["msg"]) == (403, "API read/write access denied")
    assert sim.model.domains == {}


def test_no_key_get_is_200_empty_edit_delete_403_add_access_denied(sim: Sim) -> None:
    add_domain(sim, "a.test")
    resp = sim.request("GET", "get/domain/all", key=None)
    assert (resp.status_code, resp.content) == (200, b"")
    assert sim.request("POST", "edit/domain", {"items": ["a.test"], "attr": {}}, key=None).status_code == 403
    assert sim.request("POST", "delete/domain", ["a.test"], key=None).status_code == 403
    answer = sim.post("add/domain", {"domain": "b.test"}, key=None)
    assert msgs(answer) == [("danger", "access_denied")]
    assert set(sim.model.domains) == {"a.test"}


def test_ip_allow_list_gives_401_api_access_denied(sim: Sim) -> None:
    from sim.mailcow.model import ApiKey

    sim.model.api_keys["LIMITED-KEY"] = ApiKey("LIMITED-KEY", "rw", allow_from=("192.0.2.0/24",), skip_ip_check=False)
    resp = sim.request("GET", "get/domain/all", key="LIMITED-KEY")
    assert (resp.status_code, resp.json()["msg"]) == (401, "api access denied for ip 127.0.0.1")


def test_session_cookie_authenticates_without_key(sim: Sim) -> None:
    add_domain(sim, "a.test")
    resp = sim.request("GET", "get/domain/a.test")
    cookie = resp.headers["set-cookie"].split(";")[0]
    assert cookie.startswith("MCSESSID=")
    again = sim.request("GET", "get/domain/a.test", key=None, headers={"Cookie": cookie})
    assert again.json()["domain_name"] == "a.test"  # logged in by the cookie alone
    anonymous = sim.request("GET", "get/domain/a.test", key=None, headers={"Cookie": "MCSESSID=unknown"})
    assert anonymous.content == b""


def test_fail2ban_refuses_the_client_after_max_attempts(sim: Sim) -> None:
    from sim.mailcow import HangupError

    sim.model.fail2ban, sim.model.f2b_max_attempts = True, 3
    for _ in range(3):
        assert sim.request("GET", "get/domain/all", key="BAD").status_code == 401
    with pytest.raises(httpx.ConnectError):  # in-process: HangupError is a ConnectionError
        sim.request("GET", "get/domain/all")
    assert issubclass(HangupError, ConnectionError)


# ---------------------------------------------------------------- §3 response conventions and §4 domains


def test_add_domain_generates_dkim_2048_dkim_by_default(sim: Sim) -> None:
    answer = sim.post("add/domain", {"domain": "Example.TEST "})
    assert msgs(answer) == [("success", "dkim_added"), ("success", "domain_added")]
    assert answer[1]["msg"] == ["domain_added", "example.test"]
    redis = sim.control("GET", "state")["redis"]
    assert redis["DKIM_SELECTORS"] == {"example.test": "dkim"}
    assert redis["DKIM_PRIV_KEYS"] == ["dkim.example.test"]
    dkim = sim.get("get/dkim/example.test")
    assert list(dkim) == ["pubkey", "length", "dkim_txt", "dkim_selector", "privkey"]
    assert (dkim["length"], dkim["dkim_selector"], dkim["privkey"]) == ("2048", "dkim", "")
    assert dkim["dkim_txt"] == "v=DKIM1;k=rsa;t=s;s=email;p=" + dkim["pubkey"]


@pytest.mark.parametrize("attr", [{"key_size": 0}, {"key_size": "0"}, {"dkim_selector": ""}])
def test_add_domain_without_dkim(sim: Sim, attr: dict[str, Any]) -> None:
    assert msgs(sim.post("add/domain", {"domain": "a.test", **attr})) == [("success", "domain_added")]
    assert sim.get("get/dkim/a.test") == {}


def test_second_add_domain_is_http_200_with_danger_domain_exists(sim: Sim) -> None:
    add_domain(sim, "a.test")
    resp = sim.request("POST", "add/domain", {"domain": "a.test", "key_size": 0})
    assert resp.status_code == 200
    assert resp.json()[0]["type"] == "danger" and resp.json()[0]["msg"] == ["domain_exists", "a.test"]


def test_add_domain_checks_in_documented_order(sim: Sim) -> None:
    def first(**attr: Any) -> Any:
        return sim.post("add/domain", {"key_size": 0, **attr})[0]["msg"]

    assert first(domain="bad..name", defquota=20000) == "mailbox_defquota_exceeds_mailbox_maxquota"
    assert first(domain="a.test", maxquota=20000) == "mailbox_quota_exceeds_domain_quota"
    assert first(domain="a.test", defquota=0, maxquota=0, quota=0) == "defquota_empty"
    assert first(domain="bad..name") == "domain_invalid"
    assert first(domain="a.test", mailboxes="ten") == ["object_is_not_numeric", "ten"]
    assert first(domain=sim.model.hostname) == "domain_cannot_match_hostname"


def test_get_domain_types_and_byte_quotas(sim: Sim) -> None:
    add_domain(sim, "a.test", quota=2048, maxquota=1024, defquota=512, mailboxes=5, aliases=7)
    data = sim.get("get/domain/a.test")
    assert data["relayhost"] == "0"  # VARCHAR
    assert isinstance(data["active"], int) and data["active"] == data["active_int"] == 1
    assert (data["max_num_mboxes_for_domain"], data["max_num_aliases_for_domain"]) == (5, 7)
    assert data["max_quota_for_domain"] == 2048 * MIB
    assert data["max_quota_for_mbox"] == 1024 * MIB
    assert data["def_quota_for_mbox"] == 512 * MIB
    assert data["quota_used_in_domain"] == "0"
    assert data["description"] == "a.test"  # defaults to the domain
    assert data["rl"] is False and "tags" not in data


def test_get_domain_unknown_and_empty_collections_are_empty_objects(sim: Sim) -> None:
    assert sim.get("get/domain/nope.test") == {}
    assert sim.get("get/domain/all") == {}
    assert sim.get("get/relayhost/all") == {}
    assert sim.get("get/transport/all") == {}
    assert sim.get("get/alias-domain/all") == {}
    assert sim.get("get/dkim/all") == {}  # looks up a domain named "all"


def test_get_domain_by_alias_domain_name_returns_the_target(sim: Sim) -> None:
    add_domain(sim, "target.test")
    sim.post("add/alias-domain", {"alias_domain": "alias.test", "target_domain": "target.test"})
    assert sim.get("get/domain/alias.test")["domain_name"] == "target.test"


def test_edit_domain_unknown_is_domain_invalid_with_http_200(sim: Sim) -> None:
    resp = sim.request("POST", "edit/domain", {"items": ["nope.test"], "attr": {"active": 0}})
    assert resp.status_code == 200
    assert msgs(resp.json()) == [("danger", "domain_invalid")]


def test_edit_domain_zero_or_empty_means_unchanged_for_some_fields(sim: Sim) -> None:
    add_domain(sim, "a.test", description="keep me")
    answer = sim.post("edit/domain", {"items": ["a.test"], "attr": {"quota": 0, "aliases": 0, "description": ""}})
    assert msgs(answer) == [("success", "domain_modified")]
    row = sim.model.domains["a.test"]
    assert (row.quota, row.aliases, row.description) == (10240, 400, "keep me")


def test_edit_domain_relayhost_is_not_validated(sim: Sim) -> None:
    add_domain(sim, "a.test")
    sim.post("edit/domain", {"items": ["a.test"], "attr": {"relayhost": 999}})
    assert sim.get("get/domain/a.test")["relayhost"] == "999"


def test_tags_are_appended_and_a_repeat_is_an_empty_200(sim: Sim) -> None:
    add_domain(sim, "a.test", tags=["t1"])
    sim.post("edit/domain", {"items": ["a.test"], "attr": {"tags": ["t2"]}})
    assert sim.get("get/domain/a.test")["tags"] == ["t1", "t2"]
    resp = sim.request("POST", "edit/domain", {"items": ["a.test"], "attr": {"tags": ["t3", "t1", "t4"]}})
    assert (resp.status_code, resp.content) == (200, b"")
    assert sim.model.domains["a.test"].tags == ["t1", "t2", "t3"]  # t4 lost
    sim.post("delete/domain/tag/a.test", ["t2"])
    assert sim.model.domains["a.test"].tags == ["t1", "t3"]


def test_edit_domain_limits_in_use(sim: Sim) -> None:
    add_domain(sim, "a.test")
    box = {"local_part": "info", "domain": "a.test", "password": "pw-123456", "password2": "pw-123456", "quota": 3072}
    assert msgs(sim.post("add/mailbox", box)) == [("success", "rl_saved"), ("success", "mailbox_added")]
    answer = sim.post("edit/domain", {"items": ["a.test"], "attr": {"maxquota": 2048, "defquota": 1024}})
    assert answer[0]["msg"] == ["max_quota_in_use", 3072]
    assert sim.post("edit/domain", {"items": ["a.test"], "attr": {"mailboxes": 0}})[0]["msg"] == [
        "mailboxes_in_use",
        1,
    ]


def test_delete_domain_absent_is_removed_and_non_empty_is_refused(sim: Sim) -> None:
    assert msgs(sim.post("delete/domain", ["never.test"])) == [("success", "domain_removed")]
    add_domain(sim, "a.test")
    sim.post("add/mailbox", {"local_part": "x", "domain": "a.test", "password": "p", "password2": "p"})
    assert sim.post("delete/domain", ["a.test"])[0]["msg"] == ["domain_not_empty", "a.test"]


def test_delete_domain_keeps_dkim_and_re_add_reuses_key_and_selector(sim: Sim) -> None:
    sim.post("add/domain", {"domain": "a.test", "dkim_selector": "first"})
    pubkey = sim.get("get/dkim/a.test")["pubkey"]
    sim.post("delete/domain", ["a.test"])
    assert sim.get("get/dkim/a.test")["pubkey"] == pubkey  # blind key
    answer = sim.post("add/domain", {"domain": "a.test", "dkim_selector": "second"})
    assert msgs(answer) == [("success", "domain_add_dkim_available"), ("success", "domain_added")]
    dkim = sim.get("get/dkim/a.test")
    assert (dkim["pubkey"], dkim["dkim_selector"]) == (pubkey, "first")


# ---------------------------------------------------------------- §5 DKIM


def test_add_dkim_needs_the_plural_domains_field(sim: Sim) -> None:
    add_domain(sim, "a.test")
    answer = sim.post("add/dkim", {"domain": "a.test", "dkim_selector": "s1", "key_size": 1024})
    assert answer == {"type": "success", "msg": "Task completed"}
    assert sim.get("get/dkim/a.test") == {}
    answer = sim.post("add/dkim", {"domains": "a.test", "dkim_selector": "s1", "key_size": 1024})
    assert msgs(answer) == [("success", "dkim_added")]
    assert sim.get("get/dkim/a.test")["length"] == "1024"


def test_add_dkim_on_a_keyed_domain_is_invalid_not_exists(sim: Sim) -> None:
    add_domain(sim, "a.test")
    sim.post("add/dkim", {"domains": "a.test", "dkim_selector": "s1", "key_size": 1024})
    answer = sim.post("add/dkim", {"domains": "a.test", "dkim_selector": "s2", "key_size": 1024})
    assert answer[0]["msg"] == ["dkim_domain_or_sel_invalid", "a.test"]


def test_add_dkim_unknown_domain_bad_selector_missing_key_size(sim: Sim) -> None:
    add_domain(sim, "a.test")
    assert sim.post("add/dkim", {"domains": "nope.test", "key_size": 1024})[0]["msg"] == ["access_denied", "nope.test"]
    bad_selector = {"domains": "a.test", "dkim_selector": "no/slash", "key_size": 1024}
    assert msgs(sim.post("add/dkim", bad_selector)) == [("danger", "dkim_domain_or_sel_invalid")]
    assert msgs(sim.post("add/dkim", {"domains": "a.test"})) == [("danger", "dkim_domain_or_sel_invalid")]


def test_add_dkim_does_not_lower_case_the_domain(sim: Sim) -> None:
    add_domain(sim, "a.test")
    assert msgs(sim.post("add/dkim", {"domains": "A.Test", "key_size": 1024})) == [("success", "dkim_added")]
    assert sim.get("get/dkim/a.test") == {}
    assert sim.get("get/dkim/A.Test")["dkim_selector"] == "dkim"


def test_add_dkim_with_a_json_list_is_a_php_type_error(sim: Sim) -> None:
    add_domain(sim, "a.test")
    resp = sim.request("POST", "add/dkim", {"domains": ["a.test"], "key_size": 1024})
    assert (resp.status_code, resp.content) == (500, b"")


def test_dkim_length_is_guessed_from_the_pubkey_length() -> None:
    assert [dkim_length("x" * n) for n in (216, 392, 564, 736, 1416)] == ["1024", "2048", "3072", "4096", ">= 8192"]


def test_dkim_import_overwrite_answers_removed_then_added_and_swaps(sim: Sim) -> None:
    add_domain(sim, "a.test")
    sim.post("add/dkim", {"domains": "a.test", "dkim_selector": "old", "key_size": 1024})
    pem, pub = rsa_pem(1)
    body = {"domain": "a.test", "dkim_selector": "s202608", "private_key_file": pem.replace("\n", "\r\n")}
    answer = sim.post("add/dkim_import", {**body, "overwrite_existing": 1})
    assert msgs(answer) == [("success", "dkim_removed"), ("success", "dkim_added")]
    dkim = sim.get("get/dkim/a.test")
    assert (dkim["dkim_selector"], dkim["pubkey"]) == ("s202608", pub)
    assert sim.control("GET", "state")["redis"]["DKIM_PRIV_KEYS"] == ["s202608.a.test"]
    # like the real one (functions.dkim.inc.php logs $_data): the answer's log echoes the key as sent; the internal
    # delete logs "domains" as a string
    assert answer[1]["log"] == ["dkim", "import", {**body, "overwrite_existing": 1}]
    assert answer[0]["log"] == ["dkim", "delete", {"domains": "a.test"}]


def test_dkim_import_without_overwrite_on_a_keyed_domain_is_exists(sim: Sim) -> None:
    pem, _ = rsa_pem(1)
    body = {"domain": "nodomain.test", "private_key_file": pem}
    assert msgs(sim.post("add/dkim_import", body)) == [("success", "dkim_removed"), ("success", "dkim_added")]
    assert sim.get("get/dkim/nodomain.test")["dkim_selector"] == "dkim"  # no domain-existence check
    assert sim.post("add/dkim_import", body)[0]["msg"] == ["dkim_domain_or_sel_exists", "nodomain.test"]


def test_dkim_import_bad_pem_is_private_key_error(sim: Sim) -> None:
    answer = sim.post("add/dkim_import", {"domain": "a.test", "private_key_file": "-----BEGIN PRIVATE KEY-----\nxx"})
    assert msgs(answer) == [("danger", "private_key_error")]


def test_dkim_import_accepts_pkcs1(sim: Sim) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pkcs1 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    assert pkcs1.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert msgs(sim.post("add/dkim_import", {"domain": "a.test", "private_key_file": pkcs1}))[-1] == (
        "success",
        "dkim_added",
    )


def test_dkim_duplicate_overwrites_and_orphans_the_old_private_key(sim: Sim) -> None:
    for name, selector in (("a.test", "sa"), ("b.test", "sb")):
        add_domain(sim, name)
        sim.post("add/dkim", {"domains": name, "dkim_selector": selector, "key_size": 1024})
    answer = sim.post("add/dkim_duplicate", {"from_domain": "a.test", "to_domain": "b.test"})
    assert answer[0]["msg"] == ["dkim_duplicated", "a.test", "b.test"]
    assert sim.get("get/dkim/b.test")["pubkey"] == sim.get("get/dkim/a.test")["pubkey"]
    assert sim.control("GET", "state")["redis"]["DKIM_PRIV_KEYS"] == ["sa.a.test", "sa.b.test", "sb.b.test"]
    no_source = sim.post("add/dkim_duplicate", {"from_domain": "c.test", "to_domain": "b.test"})
    assert no_source[0]["msg"] == ["dkim_domain_or_sel_invalid", "c.test"]


def test_delete_dkim_is_removed_even_without_a_key(sim: Sim) -> None:
    assert msgs(sim.post("delete/dkim", ["never.test"])) == [("success", "dkim_removed")]


# ---------------------------------------------------------------- §6 alias domains, §8 mailboxes and aliases


def test_alias_domain_defaults_inactive_and_delete_absent_is_access_denied(sim: Sim) -> None:
    add_domain(sim, "t.test")
    assert sim.post("add/alias-domain", {"alias_domain": "a.test", "target_domain": "t.test"})[0]["msg"] == [
        "aliasd_added",
        "a.test",
    ]
    assert sim.get("get/alias-domain/a.test")["active"] == 0
    again = sim.post("add/alias-domain", {"alias_domain": "a.test", "target_domain": "t.test"})
    assert again[0]["msg"] == ["alias_domain_invalid", "a.test"]
    assert add_domain(sim, "a.test")[0]["msg"] == ["domain_exists", "a.test"]  # exists as alias domain
    assert msgs(sim.post("delete/alias-domain", ["a.test"])) == [("success", "alias_domain_removed")]
    assert msgs(sim.post("delete/alias-domain", ["a.test"])) == [("danger", "access_denied")]


def test_alias_domain_target_errors(sim: Sim) -> None:
    add_domain(sim, "t.test")
    assert msgs(sim.post("add/alias-domain", {"alias_domain": "a.test", "target_domain": "x.test"})) == [
        ("danger", "access_denied")
    ]
    same = sim.post("add/alias-domain", {"alias_domain": "t.test", "target_domain": "t.test"})
    assert same[0]["msg"] == ["aliasd_targetd_identical", "t.test"]


def test_mailbox_and_alias_basics(sim: Sim) -> None:
    box = {"local_part": "Info", "domain": "a.test", "password": "p", "password2": "p"}
    assert msgs(sim.post("add/mailbox", box)) == [("danger", "access_denied")]  # unknown domain
    add_domain(sim, "a.test")
    assert msgs(sim.post("add/mailbox", {**box, "password2": ""})) == [("danger", "password_complexity")]
    added = sim.post("add/mailbox", box)  # rl_saved before mailbox_added (functions.mailbox.inc.php -> ratelimit)
    assert [e["msg"] for e in added] == [["rl_saved", "info@a.test"], ["mailbox_added", "info@a.test"]]
    rate = {"object": "info@a.test", "rl_frame": "s", "rl_value": ""}
    assert added[0]["log"] == ["ratelimit", "edit", "mailbox", rate]
    assert sim.post("add/mailbox", box)[0]["msg"] == ["object_exists", "info@a.test"]
    alias = sim.post("add/alias", {"address": "sales@a.test", "goto": "info@a.test"})
    assert alias[0]["msg"][:2] == ["alias_added", "sales@a.test"] and isinstance(alias[0]["msg"][2], int)
    assert sim.get(f"get/alias/{alias[0]['msg'][2]}")["active"] == 0
    assert sim.get("get/domain/a.test")["aliases_in_domain"] == 1
    assert msgs(sim.post("delete/mailbox", ["nobody@a.test"])) == [("danger", "access_denied")]


# ---------------------------------------------------------------- §7 relayhosts and transports


def test_relayhost_duplicates_no_id_and_password_echoed_in_log(sim: Sim) -> None:
    body = {"hostname": "[smtp.relay.test]:587", "username": "u", "password": "s3cret:pw"}
    first = sim.post("add/relayhost", body)
    assert first[0]["msg"] == ["relayhost_added", ""]  # no id
    assert "s3cret:pw" in json.dumps(first[0]["log"])  # why clients never copy bodies into errors
    sim.post("add/relayhost", body)
    rows = sim.get("get/relayhost/all")
    assert [(r["id"], r["hostname"]) for r in rows] == [(1, body["hostname"]), (2, body["hostname"])]
    assert rows[0]["password"] == "s3cret\\\\:pw"  # ':' escaped twice on add
    assert isinstance(rows[0]["active"], int) and rows[0]["active"] == 1
    assert sim.get("get/relayhost/99") == {}


def test_relayhost_invalid_host_edit_unknown_and_delete(sim: Sim) -> None:
    assert sim.post("add/relayhost", {"hostname": " "})[0]["msg"] == ["invalid_host", ""]
    assert sim.post("edit/relayhost", {"items": ["7"], "attr": {"active": 0}})[0]["msg"] == ["relayhost_invalid", "7"]
    sim.post("add/relayhost", {"hostname": "[r.test]:25"})
    add_domain(sim, "a.test")
    sim.post("edit/domain", {"items": ["a.test"], "attr": {"relayhost": 1}})
    assert sim.get("get/relayhost/1")["used_by_domains"] == "a.test"
    assert sim.post("edit/relayhost", {"items": ["1"], "attr": {"active": 0}})[0]["msg"] == ["object_modified", ""]
    assert sim.post("delete/relayhost", ["1"])[0]["msg"] == ["relayhost_removed", "1"]
    assert sim.get("get/domain/a.test")["relayhost"] == "0"
    assert msgs(sim.post("delete/relayhost", ["1"])) == [("success", "relayhost_removed")]


def test_transport_defaults_inactive_and_rejects_duplicate_destinations(sim: Sim) -> None:
    body = {"destination": "example.org", "nexthop": "[mx.example.net]:25"}
    assert sim.post("add/transport", body)[0]["msg"] == ["relayhost_added", ""]
    row = sim.get("get/transport/all")[0]
    assert (row["id"], row["active"], row["is_mx_based"]) == (1, 0, 0)
    assert sim.post("add/transport", body)[0]["msg"] == ["transport_dest_exists", "example.org"]
    assert sim.post("add/transport", {**body, "destination": "..bad"})[0]["msg"] == ["invalid_destination", "..bad"]
    second = sim.post("add/transport", {"destination": "b.org", "nexthop": "[mx.example.net]:25", "username": "u"})
    assert msgs(second) == [("danger", "invalid_nexthop_authenticated")]


def test_transport_destination_is_not_validated_when_no_transport_exists(sim: Sim) -> None:
    assert msgs(sim.post("add/transport", {"destination": "..bad", "nexthop": "192.0.2.1"})) == [
        ("success", "relayhost_added")
    ]
    assert sim.get("get/transport/1")["nexthop"] == "[192.0.2.1]"  # bare IP bracketed


def test_transport_next_hop_interference(sim: Sim) -> None:
    sim.post("add/transport", {"destination": "a.org", "nexthop": "mx.example.net"})
    answer = sim.post("add/transport", {"destination": "b.org", "nexthop": "[mx.example.net]:25"})
    assert answer[0]["msg"][0] == "next_hop_interferes"


def test_transport_edit_and_delete(sim: Sim) -> None:
    sim.post("add/transport", {"destination": "a.org", "nexthop": "[h1.test]:25", "active": 1})
    sim.post("add/transport", {"destination": "b.org", "nexthop": "[h1.test]:25", "active": 1})
    assert sim.post("edit/transport", {"items": ["9"], "attr": {"active": 0}})[0]["msg"] == ["relayhost_invalid", "9"]
    assert msgs(sim.post("edit/transport", {"items": ["2"], "attr": {"destination": "a.org"}})) == [
        ("danger", "transport_dest_exists")
    ]
    sim.post("edit/transport", {"items": ["2"], "attr": {"nexthop": "[h2.test]:25", "active": 0}})
    assert (sim.get("get/transport/2")["nexthop"], sim.get("get/transport/2")["active"]) == ("[h2.test]:25", 0)
    assert msgs(sim.post("delete/transport", ["2", "77"])) == [("success", "relayhost_removed")] * 2


def test_version_and_mta_sts_task_completed(sim: Sim) -> None:
    assert sim.get("get/status/version") == {"version": "2026-07a"}
    add_domain(sim, "a.test")
    body = {"domain": "a.test", "version": "stsv1", "mode": "enforce", "mx": "mx1", "max_age": 86400, "active": 1}
    assert sim.post("add/mta-sts", body) == {"type": "success", "msg": "Task completed"}


# ---------------------------------------------------------------- control plane and faults


def test_state_has_no_private_keys_or_passwords(sim: Sim) -> None:
    sim.post("add/domain", {"domain": "a.test"})
    sim.post("add/relayhost", {"hostname": "[r.test]:25", "password": "hunter2"})
    text = json.dumps(sim.control("GET", "state"))
    assert "PRIVATE KEY" not in text and "hunter2" not in text
    assert "a.test" in text


def test_request_log_counts_writes_and_reset_clears(sim: Sim) -> None:
    add_domain(sim, "a.test")
    sim.get("get/domain/a.test")
    log = sim.control("GET", "requests")
    assert [(r["method"], r["path"], r["write"], r["status"]) for r in log] == [
        ("POST", "/api/v1/add/domain", True, 200),
        ("GET", "/api/v1/get/domain/a.test", False, 200),
    ]
    sim.control("POST", "reset")
    assert sim.control("GET", "requests") == [] and sim.get("get/domain/all") == {}


def test_fail_next_answers_the_status_count_times(sim: Sim) -> None:
    sim.control("POST", "faults", {"fail_next": [{"path_prefix": "/api/v1/get/", "status": 503, "count": 2}]})
    assert [sim.request("GET", "get/domain/all").status_code for _ in range(3)] == [503, 503, 200]
    sim.control("POST", "faults", {"fail_next": [{"path_prefix": "/api/v1/get/", "status": 200}]})
    assert sim.request("GET", "get/domain/all").content == b""  # PHP-fatal shape


def test_fail_next_apply_runs_the_request_and_loses_the_answer(sim: Sim) -> None:
    sim.control("POST", "faults", {"fail_next": [{"path_prefix": "/api/v1/add/", "status": 502, "apply": True}]})
    assert sim.request("POST", "add/domain", {"domain": "a.test", "key_size": 0}).status_code == 502
    assert "a.test" in sim.model.domains


def test_hang_fault_closes_without_answer(sim: Sim) -> None:
    sim.control("POST", "faults", {"hang_ms": 10, "fail_next": [{"path_prefix": "/api/v1/", "status": 0}]})
    with pytest.raises(httpx.ConnectError):
        sim.request("GET", "get/domain/all")


def test_error_rate_is_deterministic_for_a_seed(sim: Sim) -> None:
    def run() -> list[int]:
        sim.control("POST", "faults", {"error_rate": 0.5, "hang_ms": 0, "seed": 42})
        out = []
        for _ in range(20):
            try:
                out.append(sim.request("GET", "get/domain/all").status_code)
            except httpx.ConnectError:
                out.append(0)
        return out

    first, second = run(), run()
    assert first == second
    assert {200} < set(first) and set(first) <= {0, 200, 500, 503}


def test_bad_faults_are_400_and_non_loopback_is_403(sim: Sim) -> None:
    assert sim.http.post("/_sim/faults", json={"error_rate": 2}).status_code == 400
    assert sim.http.post("/_sim/faults", json={"nope": 1}).status_code == 400
    from sim.common import Request

    app = MailcowApp(sim.model)
    assert app.handle(Request("GET", "/_sim/state", {}, {}, b"", client="192.0.2.7")).status == 403


# ---------------------------------------------------------------- over real HTTPS


@pytest.fixture(scope="module")
def https_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    ca, cert, key = ensure_certs(tmp_path_factory.mktemp("tls"))
    model = MailcowModel(rw_key=RW, ro_key=RO, seed=7)
    server = serve_mailcow(model, 0, (cert, key))
    port = server.server_address[1]
    http = httpx.Client(
        base_url=f"https://127.0.0.1:{port}", verify=ssl.create_default_context(cafile=str(ca)), cookies=no_cookies()
    )
    yield Sim(model, http)
    http.close()
    server.shutdown()
    server.server_close()


@pytest.fixture
def https(https_sim: Sim) -> Sim:
    https_sim.control("POST", "reset")
    return https_sim


def test_https_add_get_and_set_cookie(https: Sim) -> None:
    resp = https.request("POST", "add/domain", {"domain": "a.test", "key_size": 0})
    assert msgs(resp.json()) == [("success", "domain_added")]
    assert resp.headers["set-cookie"].startswith("MCSESSID=")
    assert https.get("get/domain/a.test")["max_quota_for_domain"] == 10240 * MIB
    assert [r["write"] for r in https.control("GET", "requests")] == [True, False]


def test_https_auth_errors(https: Sim) -> None:
    assert https.request("GET", "get/domain/all", key="WRONG").status_code == 401
    assert https.request("POST", "delete/domain", ["a.test"], key=RO).status_code == 403
    assert https.request("GET", "get/domain/all", key=None).content == b""


def test_https_hang_drops_the_connection(https: Sim) -> None:
    https.control("POST", "faults", {"hang_ms": 10, "fail_next": [{"path_prefix": "/api/v1/get/", "status": 0}]})
    with pytest.raises(httpx.RemoteProtocolError):
        https.request("GET", "get/domain/all")
    assert https.get("get/domain/all") == {}  # the next request is answered


def test_https_refuses_plain_http(https: Sim) -> None:
    url = str(https.http.base_url).replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/api/v1/get/domain/all", headers={"X-API-Key": RW}, timeout=2)


# ---------------------------------------------------------------- python -m sim.serve


def _serve(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    full_env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO / "infra" / "local"), **env}
    return subprocess.Popen(
        [sys.executable, "-m", "sim.serve", *args],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_serve_mailcow_runs_until_sigterm_and_exits_0(tmp_path: Path) -> None:
    proc = _serve(["mailcow", "--port", "0", "--tls-dir", str(tmp_path)], {"SIM_MAILCOW_API_KEY": RW})
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        assert proc.stdout.readline().strip() == "ready"
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        resp = httpx.get(f"https://127.0.0.1:{port}/api/v1/get/status/version", headers={"X-API-Key": RW}, verify=ctx)
        assert resp.json() == {"version": "2026-07a"}
        denied = httpx.get(f"https://127.0.0.1:{port}/api/v1/get/domain/all", headers={"X-API-Key": RO}, verify=ctx)
        assert denied.status_code == 401  # no read-only key configured
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_serve_without_credentials_exits_2(tmp_path: Path) -> None:
    proc = _serve(["mailcow", "--port", "0", "--tls-dir", str(tmp_path)], {})
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "SIM_MAILCOW_API_KEY" in err


def test_serve_pmg_cluster(tmp_path: Path) -> None:
    env = {"SIM_PMG_USER": "automation@pmg", "SIM_PMG_PASSWORD": "pw-test-123"}
    proc = _serve(["pmg", "--ports", "0,0,0", "--tls-dir", str(tmp_path)], env)
    try:
        assert proc.stdout is not None
        ports = [int(proc.stdout.readline().split()[1]) for _ in range(3)]
        assert proc.stdout.readline().strip() == "ready"
        assert len(set(ports)) == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


# ---------------------------------------------------------------- the data plane: the signer


def test_sim_sign_uses_the_domains_key_and_never_returns_it(sim: Sim) -> None:
    add_domain(sim, "signed.test", key_size=1024, dkim_selector="dkim")
    key = sim.get("get/dkim/signed.test")
    msg = "From: a@signed.test\r\nTo: b@example.net\r\nSubject: s\r\n\r\nbody\r\n"
    resp = sim.http.post("/_sim/sign", json={"domain": "signed.test", "message": msg})
    assert resp.status_code == 200 and "PRIVATE" not in resp.text
    signed = resp.json()["signed"].encode()
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: key["dkim_txt"].encode())
    missing = sim.http.post("/_sim/sign", json={"domain": "nokey.test", "message": msg})
    assert missing.status_code == 404


# ---------------------------------------------------------------- SOGo's view of domains, container_ctrl.php

CTRL = "/inc/ajax/container_ctrl.php"
OK_MARK = '<b><span class="pull-right text-success">OK</span></b>'


def ctrl(sim: Sim, service: str = "sogo-mailcow", action: str = "restart", **kw: Any) -> httpx.Response:
    key = kw.pop("key", RW)
    headers = {"X-API-Key": key} if key is not None else {}
    headers.update(kw.pop("headers", {}))
    return sim.http.get(CTRL, params={"service": service, "action": action}, headers=headers)


def sogo(sim: Sim) -> dict[str, Any]:
    state: dict[str, Any] = sim.control("GET", "state")["sogo"]
    return state


def test_sogo_learns_domains_only_when_restarted(sim: Sim) -> None:
    add_domain(sim, "a.test")
    assert sogo(sim)["domains"] == [] and sogo(sim)["restarts"] == 0  # restart_sogo 0: SOGo does not know it
    resp = ctrl(sim)
    assert (resp.status_code, resp.text) == (200, OK_MARK)
    assert resp.headers["content-type"].startswith("text/html")
    assert sogo(sim)["domains"] == ["a.test"] and sogo(sim)["restarts"] == 1
    add_domain(sim, "b.test")
    assert sogo(sim)["domains"] == ["a.test"]  # added after the restart: unknown until the next one
    assert add_domain(sim, "c.test", restart_sogo=1)[-1]["msg"] == ["domain_added", "c.test"]
    assert sogo(sim) | {"started": None} == {
        "domains": ["a.test", "b.test", "c.test"],
        "restarts": 2,
        "restart_failures": 0,
        "started": None,
    }


def test_container_ctrl_access_rules(sim: Sim) -> None:
    assert ctrl(sim, key=RO).text == OK_MARK  # any API key makes an admin session, a read-only one too
    assert ctrl(sim, headers={"Sec-Fetch-Dest": "document"}).status_code == 403
    assert ctrl(sim, headers={"Sec-Fetch-Dest": "empty"}).text == OK_MARK
    assert ctrl(sim, key="WRONG").status_code == 401
    anonymous = ctrl(sim, key=None)
    assert (anonymous.status_code, anonymous.content) == (200, b"")  # not an admin: exit()
    assert ctrl(sim, service="sogo").content == b""  # not a *-mailcow service name
    assert ctrl(sim, action="reboot").content == b""
    assert ctrl(sim, service="nosuch-mailcow").text == '<b><span class="pull-right text-danger">Error: </span></b>'
    assert ctrl(sim).headers["set-cookie"].startswith("MCSESSID=")
    assert sogo(sim)["restarts"] == 3


def test_sogo_restart_failure_keeps_the_old_view(sim: Sim) -> None:
    add_domain(sim, "a.test")
    sim.control("POST", "faults", {"sogo_restart_fail": 1})
    failed = ctrl(sim).text
    assert "text-danger" in failed and failed.startswith('<b><span class="pull-right text-danger">Error: ')
    assert sogo(sim)["domains"] == [] and sogo(sim)["restart_failures"] == 1
    assert ctrl(sim).text == OK_MARK and sogo(sim)["domains"] == ["a.test"]


def test_add_domain_with_restart_sogo_failing_is_a_bare_warning_and_false(sim: Sim) -> None:
    sim.control("POST", "faults", {"sogo_restart_fail": 1})
    answer = add_domain(sim, "a.test", restart_sogo=1)
    assert [(e["type"], e["msg"]) for e in answer] == [("warning", "domain_added_sogo_failed")]
    assert "a.test" in sim.model.domains and sogo(sim)["domains"] == []


def test_bad_sogo_faults_are_400(sim: Sim) -> None:
    assert sim.http.post("/_sim/faults", json={"sogo_restart_ms": -1}).status_code == 400
    assert sim.http.post("/_sim/faults", json={"sogo_restart_fail": "x"}).status_code == 400


# ---------------------------------------------------------------- the API log (Redis API_LOG)


def logged_attr(entry: dict[str, Any]) -> Any:
    """The JSON of ``attr='...'`` in an API log line."""
    data = entry["data"]
    assert data.startswith("attr='") and data.endswith("'"), data
    return json.loads(data[len("attr='") : -1])


def test_api_log_keeps_the_dkim_private_key_and_masks_only_pass_keys(sim: Sim) -> None:
    add_domain(sim, "a.test")
    pem, _ = rsa_pem(1)
    answer = sim.post("add/dkim_import", {"domain": "a.test", "dkim_selector": "s1", "private_key_file": pem})
    assert answer[-1]["log"][2]["private_key_file"] == pem  # the answer's log echoes the key too
    sim.post("add/relayhost", {"hostname": "[r.test]:25", "username": "u", "password": "hunter2"})
    logs = sim.get("get/logs/api", key=RO)  # a read-only key reads it
    assert [(e["method"], e["uri"]) for e in logs] == [
        ("GET", "/api/v1/get/logs/api"),  # the read itself is logged first
        ("POST", "/api/v1/add/relayhost"),
        ("POST", "/api/v1/add/dkim_import"),
        ("POST", "/api/v1/add/domain"),
    ]
    assert logs[0]["data"] == "" and logs[0]["remote"] == "127.0.0.1" and isinstance(logs[0]["time"], int)
    assert logged_attr(logs[1]) == {"hostname": "[r.test]:25", "username": "u", "password": "*"}
    assert logged_attr(logs[2])["private_key_file"] == pem
    assert "BEGIN PRIVATE KEY" in logs[2]["data"] and "\\/" in logs[2]["data"]  # PHP json_encode escapes slashes


def test_api_log_counts_ranges_and_length(sim: Sim) -> None:
    sim.model.api_log = __import__("collections").deque(maxlen=5)  # LOG_LINES 5
    for n in range(7):
        add_domain(sim, f"d{n}.test")
    assert [logged_attr(e)["domain"] for e in sim.get("get/logs/api/3")[1:]] == ["d6.test", "d5.test"]
    ranged = sim.get("get/logs/api/2-3")
    assert [e["uri"] for e in ranged] == ["/api/v1/get/logs/api/3", "/api/v1/add/domain"]
    assert len(sim.get("get/logs/api")) == 5  # trimmed to LOG_LINES, newest first
    assert sim.get("get/logs/api/0") == {} and sim.get("get/logs/api/3-2") == {}


def test_api_log_skips_refused_keys_and_edit_is_re_encoded(sim: Sim) -> None:
    sim.request("GET", "get/domain/all", key="WRONG")
    sim.request("POST", "add/domain", content=b"{", headers={"Content-Type": "application/json"})  # 400, not logged
    add_domain(sim, "a.test")
    sim.post("edit/domain", {"items": ["a.test"], "attr": {"description": "x/y"}})
    newest = sim.get("get/logs/api/2")[1]
    assert newest["data"] == 'attr=\'{"description":"x\\/y"}\', items=\'["a.test"]\''
    assert len(sim.get("get/logs/api")) == 4


def test_https_sogo_restart_and_api_log(https: Sim) -> None:
    https.request("POST", "add/domain", {"domain": "a.test", "key_size": 0})
    https.control("POST", "faults", {"sogo_restart_ms": 50})
    assert ctrl(https).text == OK_MARK  # the request waits for the restart
    assert sogo(https)["domains"] == ["a.test"] and sogo(https)["restarts"] == 1
    pem, _ = rsa_pem(2)
    https.post("add/dkim_import", {"domain": "a.test", "dkim_selector": "s1", "private_key_file": pem})
    assert logged_attr(https.get("get/logs/api/2", key=RO)[1])["private_key_file"] == pem


def test_relayhost_and_transport_logs_have_3_elements_and_password_short_dots(sim: Sim) -> None:
    body = {"hostname": "[r.test]:25", "username": "", "password": ""}
    assert sim.post("add/relayhost", body)[0]["log"] == ["relayhost", "add", body]
    assert sim.get("get/relayhost/1")["password_short"] == "..."  # CONCAT(LEFT('', 3), '...')
    hop = {"destination": "t.test", "nexthop": "[h.test]:25", "username": "", "password": "", "active": 1}
    assert sim.post("add/transport", hop)[0]["log"] == ["transport", "add", hop]
    assert sim.get("get/transport/all")[0]["password_short"] == "..."
    assert sim.post("delete/transport", ["1"])[0]["log"] == ["transport", "delete", {"id": ["1"]}]


def test_seed_adds_domains_with_keys_without_api_requests(sim: Sim) -> None:
    _, pub = rsa_pem(1)
    before = len(sim.model.request_log())
    assert sim.control("POST", "seed", {"count": 50, "prefix": "s", "pubkey": pub}) == {"added": 50}
    assert len(sim.model.request_log()) == before
    assert sim.get("get/domain/s49.test")["domain_name"] == "s49.test"
    assert sim.get("get/dkim/s49.test")["pubkey"] == pub
    assert len(sim.get("get/domain/all")) == 50
    resp = sim.http.post("/_sim/seed", json={"count": 1, "prefix": "Bad_prefix"})
    assert resp.status_code == 400


def test_request_log_counts_the_bytes_of_url_and_bodies(sim: Sim) -> None:
    """The benchmark's bytes per event (benchmarks/bench_fleet_calls.py); a missing item is ``{}``, 2 bytes."""
    sim.control("POST", "seed", {"count": 30, "prefix": "s"})
    sim.get("get/domain/nope.test")
    sim.get("get/domain/all")
    missing, everything = sim.model.request_log()[-2:]
    assert (missing["bytes_in"], missing["bytes_out"]) == (len("/api/v1/get/domain/nope.test"), 2)
    assert everything["bytes_out"] > 30 * 100
