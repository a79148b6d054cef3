"""Per-event reads touch only the event's own objects (issue 17, item 1): domain.created, key.rotate, domain.adopt and
domain.deleted make the same requests to PMG and Mailcow whatever the fleet's size, never list a whole PMG map or a
Mailcow ``.../all`` and list the store only under the domain's own prefix (the one exception: the re-touch after a
delete in a process that knows no live entry of ours lists that PMG map once, see pmg_maps.py). node.down/node.up
read the provider zone and the per-node relayhosts only: tests/test_bench_fleet_calls_smoke.py counts them on the
stack next to two fleet sizes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from functions import domain_adopt, domain_created, domain_deleted, key_rotate
from functions._core.model.ports import Ports
from functions._core.platform.envelope import parse
from tests.conftest import load_event
from tests.fakes.dns import FakeDns
from tests.fakes.mailcow import fake_mailcow
from tests.fakes.pmg import fake_gateway
from tests.fakes.settings import make_settings
from tests.fakes.store import MemoryStore
from tests.handmade import VARIANTS
from tests.unit import test_domain_adopt as adopt_world

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


# ---------------------------------------------------------------- every per-event path, the store included


class ListingStore(MemoryStore):
    """A memory store that notes the prefix of every listing."""

    def __init__(self) -> None:
        super().__init__()
        self.prefixes: list[str] = []

    def list(self, prefix: str) -> Iterator[str]:
        self.prefixes.append(prefix)
        return super().list(prefix)


def _lifecycle(fleet: int) -> dict[str, list[tuple[str, str]]]:
    """domain.created, key.rotate (scheduled), domain.adopt of a hand-made domain and domain.deleted, next to
    ``fleet`` other domains of ours on PMG and Mailcow; the requests per system (store: its listings' prefixes)."""
    dns = FakeDns()
    for zone in ("alpha.test", "beta.test"):
        dns.add_zone(zone)
    client, mailcow = fake_mailcow()
    base = make_settings()
    settings = replace(base, dkim=replace(base.dkim, propagation_seconds=0, revoke_hours=0))
    gw = fake_gateway(settings)
    gw.model.seed_domains(fleet, prefix="other", comment=MANAGED)
    mailcow.seed_domains(fleet, prefix="other")
    store = ListingStore()
    ports = Ports(client, gw.client, dns, store, MemoryStore(), settings, smtp=gw.smtp)
    operator = adopt_world._operator(mailcow, gw.model, dns)
    operator.build("handmade.test", VARIANTS[0], settings)
    client.get_domain("warm-up.test")  # the first requests log in; not part of any event's cost
    assert domain_created.handle(_created("beta.test"), ports).status == "provisioned"  # a warm worker
    pmg0, mc0 = len(gw.model.requests()), len(mailcow.request_log())
    assert domain_created.handle(_created("alpha.test"), ports).status == "provisioned"
    rotate = parse(json.dumps(_rotate("alpha.test")).encode(), publisher="scheduler")
    out = key_rotate.handle(rotate, ports)
    assert "~ dkim" in " ".join(out.changes["mailcow"]) and out.changes["dns"]  # to ACTIVE in one delivery
    assert domain_adopt.handle(adopt_world.adopt_event("handmade.test"), ports).status == "adopted"
    assert domain_deleted.handle(_deleted("alpha.test"), ports).status == "deleted"
    return {
        "pmg": [(r["method"], r["path"]) for r in gw.model.requests()[pmg0:]],
        "mailcow": [(str(r["method"]), str(r["path"])) for r in mailcow.request_log()[mc0:]],
        "store": [("LIST", p) for p in store.prefixes],
    }


def _rotate(domain: str) -> dict[str, Any]:
    raw: dict[str, Any] = load_event("key.rotate")
    raw["subject"] = raw["data"]["domain"] = domain
    raw["data"]["reason"] = "scheduled"
    raw["data"].pop("key_id", None)
    return raw


@pytest.fixture(scope="module")
def lifecycle_small() -> dict[str, list[tuple[str, str]]]:
    return _lifecycle(0)


def test_no_per_event_path_lists_what_grows_with_the_fleet(lifecycle_small: dict[str, list[tuple[str, str]]]) -> None:
    pmg_gets = {path for method, path in lifecycle_small["pmg"] if method == "GET"}
    assert not LISTINGS & pmg_gets
    assert ("GET", "/config/domains/handmade.test") in lifecycle_small["pmg"]  # adopt reads its own entries
    mailcow_all = [p for _, p in lifecycle_small["mailcow"] if p.split("/")[-1] == "all"]
    assert mailcow_all == [] and ("GET", "/api/v1/get/dkim/alpha.test") in lifecycle_small["mailcow"]
    # the store is listed only under one domain's own prefix (its keys, when it is deleted)
    assert all(p.count("/") >= 2 and not p.startswith("index/") for _, p in lifecycle_small["store"])


def test_every_per_event_path_makes_the_same_requests_next_to_a_larger_fleet(
    lifecycle_small: dict[str, list[tuple[str, str]]],
) -> None:
    assert _lifecycle(300) == lifecycle_small
