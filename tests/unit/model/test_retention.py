"""`mailplane sweep` per retention class: exactly what is expired goes, nothing else (never the signing key, a key
on its way, or the previous key within its window); a dry run changes nothing; a second run deletes nothing more."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest
import typer
from typer.testing import CliRunner

from functions._core.model import keys, retention, state, tlsrpt_store
from functions._core.model.state import DomainState, KeyRecord
from functions._core.platform.envelope import parse
from functions._core.platform.idempotency import Ledger
from functions._core.platform.store import StoredObject
from functions.ops import cli_sweep
from functions.runtime import main
from tests.conftest import load_event
from tests.fakes.settings import make_settings
from tests.fakes.store import MemoryStore

NOW = dt.datetime(2027, 12, 1, 12, 0, tzinfo=dt.UTC)
SETTINGS = make_settings()  # dkim.keep_days 30; retention: ledger 14 days, audit 730 days
PAIR = keys.generate("k", 2048)  # one RSA key, sealed under every selector (the sweep compares public keys)
OTHER = keys.generate("o", 2048)


def ago(days: float) -> str:
    return (NOW - dt.timedelta(days=days)).isoformat(timespec="seconds")


def blob(store: MemoryStore, domain: str, selector: str, pair: keys.KeyPair = PAIR) -> str:
    state.persist_key(store, domain, dataclasses.replace(pair, selector=selector), SETTINGS)
    return state.key_blob_key(domain, selector)


# selector -> (status, days since the last change, expired?)
KEYS = {
    "destroyed": ("DESTROYED", 5, True),  # its destroy step deleted the blob, then the store kept it: a leftover
    "withdrawn-old": ("WITHDRAWN", 31, True),  # keep_days (30) passed: the destroy step is due and did not run
    "withdrawn-new": ("WITHDRAWN", 29, False),
    "retiring": ("RETIRING", 300, False),  # the previous key within its window: never, however old
    "revoked": ("REVOKED", 300, False),
    "active": ("ACTIVE", 500, False),  # the key Mailcow signs with
    "generated": ("GENERATED", 400, False),  # on its way
    "published": ("PUBLISHED", 400, False),
}


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    recs = [
        KeyRecord(sel, PAIR.public_b64, status, ago(days + 10), changed_at=ago(days))
        for sel, (status, days, _) in KEYS.items()
    ]
    recs.append(KeyRecord("reused", PAIR.public_b64, "DESTROYED", ago(90), changed_at=ago(60)))
    s.put(state.state_key("a.test"), DomainState("a.test", {"domain": "a.test"}, tuple(recs), "provisioned").body())
    for sel in KEYS:
        blob(s, "a.test", sel)
    blob(s, "a.test", "reused", OTHER)  # a delegation slot's NEW key, stored just before the state names it
    blob(s, "a.test", "unnamed")  # no record names it: a domain.created in progress
    blob(s, "nostate.test", "k1")  # no state at all
    s.put("keys/garbage", b"x")
    for name, days in (("old", 731), ("young", 729)):
        body = {"domain": "a.test", "selector": "s", "action": name, "at": ago(days)}
        s.put(f"audit/a.test/s/{name}.json", json.dumps(body).encode())
    s.put("audit/a.test/s/broken.json", b"not json")
    for days in (90, 89):  # TLS report day objects: retention.tlsrpt_days (90) by the day in the key
        s.put(tlsrpt_store.day_key("a.test", NOW.date() - dt.timedelta(days=days)), b'{"reports": {}}')
    s.put("tlsrpt/a.test/notaday.json", b"{}")
    for when, ident in ((NOW - dt.timedelta(days=15), "e-old"), (NOW - dt.timedelta(days=13), "e-new")):
        raw = load_event("domain.created")
        raw["id"] = ident
        led = Ledger(s, owner="w", clock=lambda when=when: when, lease=dt.timedelta(minutes=5), keep=dt.timedelta(14))
        with led.claim("domain_created", parse(json.dumps(raw).encode(), publisher="billing")) as claim:
            claim.complete({"status": "provisioned"})
    s.put(state.state_key("b.test"), DomainState("b.test").body())
    return s


def snapshot(store: MemoryStore) -> dict[str, StoredObject]:
    return dict(store.objects)


def test_dry_run_counts_per_class_and_changes_nothing(store: MemoryStore) -> None:
    before, puts = snapshot(store), store.puts
    found = retention.sweep(store, SETTINGS, NOW, apply=False)
    assert snapshot(store) == before and store.puts == puts
    assert {k: (v.expired, v.kept, v.unreadable) for k, v in found.items()} == {
        "ledger": (1, 1, 0),
        "audit": (1, 1, 1),
        "keys": (2, 6, 4),  # left alone: the reused slot, the unnamed blob, the one without state, keys/garbage
        "tlsrpt": (1, 1, 1),
    }


def test_apply_deletes_exactly_the_expired_objects_and_is_idempotent(store: MemoryStore) -> None:
    before = snapshot(store)
    retention.sweep(store, SETTINGS, NOW, apply=True)
    gone = set(before) - set(store.objects)
    expired_keys = {state.key_blob_key("a.test", s) for s, (_, _, exp) in KEYS.items() if exp}
    old_ledger = {k for k in before if k.startswith("idem/") and b"e-old" in before[k].body}
    assert len(old_ledger) == 1
    old_report = tlsrpt_store.day_key("a.test", NOW.date() - dt.timedelta(days=90))
    assert gone == expired_keys | {"audit/a.test/s/old.json", old_report} | old_ledger
    assert all(store.objects[k] == before[k] for k in store.objects)  # nothing else rewritten
    after = snapshot(store)
    again = retention.sweep(store, SETTINGS, NOW, apply=True)
    assert snapshot(store) == after and all(r.expired == 0 for r in again.values())


def test_audit_kept_for_good_with_zero_days_and_a_later_now_expires_more(store: MemoryStore) -> None:
    forever = dataclasses.replace(SETTINGS, retention=dataclasses.replace(SETTINGS.retention, audit_days=0))
    assert retention.sweep(store, forever, NOW, apply=True, only="audit")["audit"].expired == 0
    assert "audit/a.test/s/old.json" in store.objects
    later = retention.sweep(store, SETTINGS, NOW + dt.timedelta(days=2), apply=False)
    assert (later["audit"].expired, later["keys"].expired) == (2, 3)  # withdrawn-new passed keep_days too
    with pytest.raises(ValueError, match="no retention class"):
        retention.sweep(store, SETTINGS, NOW, apply=False, only="states")


def test_sweep_command_is_a_dry_run_by_default(store: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main, "load_settings", lambda path=None: SETTINGS)
    monkeypatch.setattr(main, "build_store", lambda settings, bucket, probe=True: store)
    monkeypatch.setattr(retention, "sweep", _at_now(retention.sweep))
    app = typer.Typer()
    cli_sweep.register(app)
    app.command("noop")(lambda: None)
    before = snapshot(store)
    dry = CliRunner().invoke(app, ["sweep"])
    assert dry.exit_code == 0, dry.output
    assert "keys: 2 expired (dry run" in dry.stdout and "audit: 1 expired" in dry.stdout
    assert snapshot(store) == before
    done = CliRunner().invoke(app, ["sweep", "--apply", "--only", "keys"])
    assert done.exit_code == 0 and "keys: 2 deleted" in done.stdout and "ledger" not in done.stdout
    assert CliRunner().invoke(app, ["sweep", "--only", "nope"]).exit_code == 2


def _at_now(fn: object) -> object:
    def call(store: MemoryStore, settings: object, now: dt.datetime, **kw: object) -> object:
        return fn(store, settings, NOW, **kw)  # type: ignore[operator]

    return call


def test_terraform_lifecycle_defaults_are_the_settings_defaults() -> None:
    import re
    from pathlib import Path

    from functions._core.platform.config import RetentionSettings

    text = (Path(__file__).resolve().parents[3] / "infra/terraform/variables.tf").read_text()

    def default(name: str) -> int:
        found = re.search(rf'variable "{name}" \{{.*?default\s*=\s*(\d+)', text, re.S)
        assert found, name
        return int(found.group(1))

    want = RetentionSettings()
    assert (default("ledger_retention_days"), default("audit_retention_days")) == (want.ledger_days, want.audit_days)
    storage = (Path(__file__).resolve().parents[3] / "infra/terraform/storage.tf").read_text()
    assert "var.ledger_retention_days" in storage and "var.audit_retention_days" in storage
    assert default("tlsrpt_retention_days") == want.tlsrpt_days and "var.tlsrpt_retention_days" in storage
