"""Per-event reads touch only the event's own objects (issue 17, item 1): domain.created and domain.deleted make the
same requests to PMG and Mailcow whatever the fleet's size, and never list a whole PMG map (the one exception:
the re-touch after a delete in a process that knows no other entry of ours, once per process and map)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from functions import domain_created, domain_deleted
from functions._core.model.ports import Ports
from functions._core.platform.envelope import parse
from tests.conftest import load_event
from tests.fakes.dns import FakeDns
from tests.fakes.mailcow import fake_mailcow
from tests.fakes.pmg import fake_gateway
from tests.fakes.settings import make_settings
from tests.fakes.store import MemoryStore

LISTINGS = {"/config/domains", "/config/transport", "/config/mynetworks"}


MANAGED = "managed-by mailplane customer=C-1"


def _created(domain: str) -> Any:
    raw = load_event("domain.created")
    raw["subject"] = raw["data"]["domain"] = domain
    return parse(json.dumps(raw).encode(), publisher="billing")


def _deleted(domain: str) -> Any:
    raw: dict[str, Any] = load_event("domain.deleted.force")
    raw["subject"] = raw["data"]["domain"] = domain
    raw["data"]["customer_id"] = "C-10042"
    return parse(json.dumps(raw).encode(), publisher="billing")


def _requests(fleet: int, *, warm: bool = True, rounds: int = 1) -> dict[str, list[tuple[str, str]]]:
    """(method, path) per system for one domain.created, then its domain.deleted (grace 0), next to ``fleet``
    other domains of ours already on PMG and Mailcow; ``warm``: the worker handled one other event before."""
    dns = FakeDns()
    dns.add_zone("alpha.test")
    dns.add_zone("beta.test")
    dns.add_zone("gamma.test")
    client, mailcow = fake_mailcow()
    gw = fake_gateway(make_settings())
    gw.model.seed_domains(fleet, prefix="other", comment=MANAGED)
    mailcow.seed_domains(fleet, prefix="other")
    ports = Ports(client, gw.client, dns, MemoryStore(), MemoryStore(), make_settings(), smtp=gw.smtp)
    client.get_domain("warm-up.test")  # the first requests log in; not part of any event's cost
    gw.client.cluster_nodes()
    if warm:
        assert domain_created.handle(_created("beta.test"), ports).status == "provisioned"
    pmg0, mc0 = len(gw.model.requests()), len(mailcow.request_log())
    for domain in ("alpha.test", "gamma.test")[:rounds]:
        assert domain_created.handle(_created(domain), ports).status == "provisioned"
        assert domain_deleted.handle(_deleted(domain), ports).status == "deleted"
    return {
        "pmg": [(r["method"], r["path"]) for r in gw.model.requests()[pmg0:]],
        "mailcow": [(str(r["method"]), str(r["path"])) for r in mailcow.request_log()[mc0:]],
    }


@pytest.fixture(scope="module")
def small() -> dict[str, list[tuple[str, str]]]:
    return _requests(0)


def test_no_event_lists_a_pmg_map(small: dict[str, list[tuple[str, str]]]) -> None:
    gets = [path for method, path in small["pmg"] if method == "GET"]
    assert gets and not LISTINGS & set(gets)
    assert ("GET", "/config/domains/alpha.test") in small["pmg"]
    assert ("GET", "/config/transport/alpha.test") in small["pmg"]
    assert any(path.startswith("/config/mynetworks/") for _, path in small["pmg"])  # trusted networks per CIDR


def test_the_same_requests_next_to_a_larger_fleet(small: dict[str, list[tuple[str, str]]]) -> None:
    assert _requests(400) == small


def test_a_fresh_process_lists_a_map_once_for_its_first_delete_then_never() -> None:
    pmg = _requests(50, warm=False, rounds=2)["pmg"]
    listed = [path for method, path in pmg if method == "GET" and path in LISTINGS]
    assert sorted(listed) == ["/config/domains", "/config/transport"]  # the re-touch after the first delete only
