"""`mailplane web6 sync` over the in-memory store and a real directory: install, unchanged, removal on
domain.deleted, refusals that leave the old file, names with path tricks, the removal guard, and nothing secret in
what it prints (the CLI over a dir store included)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from functions._core.model import keys, mtasts
from functions._core.platform.config import Secret
from functions._core.platform.errors import ConfigError, StoreUnavailable
from functions._core.platform.store import ObjectStore
from functions.adapters.webhost import CertDir, pem_file
from functions.ops import web6_sync
from functions.ops.cli import app
from tests.fakes.store import MemoryStore
from tests.fakes.tls import FakeCa

NOW = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)
KEK = Secret(base64.b64encode(b"k" * 32).decode())
A, B = "mta-sts.alpha.test", "mta-sts.beta.test"


class _Answered:
    kind = "dns-01"

    def present(self, name: str, token: str, value: str) -> None: ...
    def cleanup(self, name: str, token: str, value: str) -> None: ...


def issue(name: str, *, now: dt.datetime = NOW, days: int = 90) -> tuple[str, str]:
    """(chain, key) as the ACME CA issues them for ``name``."""
    key = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode("ascii")
    )
    return FakeCa(lambda: now, days=days).issue([name], key, _Answered()), key


def put(store: ObjectStore, name: str, chain: str, key: str, *, sealed_for: str | None = None) -> None:
    """The entry ``mtasts.ensure_cert`` writes: the chain and the key sealed for ``cert/<name>``."""
    sealed = keys.seal_blob(key, KEK, f"cert/{sealed_for or name}")
    cert = mtasts.StoredCert(name, chain, sealed, mtasts.not_after(chain), "dns-01")
    store.put(mtasts.cert_state_key(name), cert.to_json())


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def target(tmp_path: Path) -> CertDir:
    d = tmp_path / "certs"
    d.mkdir()
    return CertDir(d)


def snapshot(d: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every entry of ``d``: inode, mtime, mode and bytes (a rewrite with the same bytes still shows)."""
    out = {}
    for p in sorted(d.iterdir()):
        st = p.lstat()
        out[p.name] = (st.st_ino, st.st_mtime_ns, st.st_mode, b"" if p.is_dir() else p.read_bytes())
    return out


def run(store: MemoryStore, target: CertDir, **kw: int) -> web6_sync.Synced:
    return web6_sync.sync(store, KEK, target, NOW, **kw)


def test_installs_every_good_entry_in_the_format_nginx_reads(store: MemoryStore, target: CertDir) -> None:
    pairs = {n: issue(n) for n in (A, B)}
    for n, (chain, key) in pairs.items():
        put(store, n, chain, key)
    result = run(store, target)
    assert (result.installed, result.removed, result.unchanged, result.refused) == ((A, B), (), (), ())
    for n, (chain, key) in pairs.items():
        f = target.path / f"{n}.pem"
        assert f.read_text() == pem_file(chain, key) and f.stat().st_mode & 0o777 == 0o600
        assert target.installed(n) == chain.rstrip("\n") + "\n"
    assert sorted(p.name for p in target.path.iterdir()) == [f"{A}.pem", f"{B}.pem"]  # no temporary file left
    assert result.lines()[-1] == "web6 sync: 2 installed, 0 removed, 0 unchanged, 0 refused" and result.ok


def test_a_replay_writes_nothing(store: MemoryStore, target: CertDir) -> None:
    for n in (A, B):
        put(store, n, *issue(n))
    run(store, target)
    before = snapshot(target.path)
    again = run(store, target)
    assert (again.installed, again.removed, again.unchanged) == ((), (), (A, B))
    assert snapshot(target.path) == before  # same inodes and times: not rewritten
    assert again.lines() == ["web6 sync: 0 installed, 0 removed, 2 unchanged, 0 refused"]


def test_a_renewed_entry_or_a_file_with_another_mode_is_installed_again(store: MemoryStore, target: CertDir) -> None:
    put(store, A, *issue(A))
    put(store, B, *issue(B))
    run(store, target)
    renewed = issue(A, now=NOW - dt.timedelta(hours=1))  # renew-due's cert.renew: a new key and chain
    put(store, A, *renewed)
    (target.path / f"{B}.pem").chmod(0o644)
    result = run(store, target)
    assert result.installed == (A, B) and result.unchanged == ()
    assert (target.path / f"{A}.pem").read_text() == pem_file(*renewed)
    assert (target.path / f"{B}.pem").stat().st_mode & 0o777 == 0o600
    group = CertDir(target.path, mode=0o640)  # --group-read: nginx reads through the directory's group
    assert web6_sync.sync(store, KEK, group, NOW).installed == (A, B)
    assert {(p.stat().st_mode & 0o777) for p in target.path.iterdir()} == {0o640}
    with pytest.raises(ValueError, match="mode"):
        CertDir(target.path, mode=0o644)


def test_domain_deleted_removes_its_file_and_nothing_else(store: MemoryStore, target: CertDir) -> None:
    put(store, A, *issue(A))
    put(store, B, *issue(B))
    run(store, target)
    others = ["notes.txt", ".tmp-abc", "MTA-STS.Alpha.test.pem", "www.alpha.test.pem", f"{A}.pem.bak", ".x.pem"]
    for o in others:
        (target.path / o).write_text("not ours")
    (target.path / "mta-sts.dir.test.pem").mkdir()
    store.delete(mtasts.cert_state_key(B))  # domain.deleted: mtasts.remove_cert
    result = run(store, target)
    assert (result.installed, result.removed, result.unchanged) == ((), (B,), (A,))
    assert sorted(p.name for p in target.path.iterdir()) == sorted([f"{A}.pem", "mta-sts.dir.test.pem", *others])
    assert all((target.path / o).read_text() == "not ours" for o in others)
    assert run(store, target).removed == ()  # and a replay removes nothing more


def _corrupt(store: MemoryStore, how: str) -> None:
    key = mtasts.cert_state_key(A)
    obj = store.objects[key]
    d = json.loads(obj.body)
    if how == "not json":
        store.put(key, b"{not json")
    elif how == "field missing":
        del d["chain"]
        store.put(key, json.dumps(d).encode())
    elif how == "another name inside":
        d["name"] = B
        store.put(key, json.dumps(d).encode())
    elif how == "key of another certificate":
        put(store, A, issue(A)[0], issue(A)[1])  # a chain and a key that were never a pair
    elif how == "expired":
        put(store, A, *issue(A, now=NOW - dt.timedelta(days=100)))
    elif how == "chain for another name":
        chain, k = issue(B)
        put(store, A, chain, k)
    elif how == "key sealed for another name":
        chain, k = issue(A)
        put(store, A, chain, k, sealed_for=B)
    elif how == "a key in the chain":
        chain, k = issue(A)
        put(store, A, chain + k, k)


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("not json", "is malformed"),
        ("field missing", "is malformed"),
        ("another name inside", "names another certificate"),
        ("key of another certificate", "the private key does not match the certificate"),
        ("expired", "the certificate expired"),
        ("chain for another name", f"the certificate is for '{B}', not {A}"),
        ("key sealed for another name", "cannot be unsealed"),
        ("a key in the chain", "not a list of PEM certificates"),
    ],
)
def test_a_bad_entry_is_refused_and_the_old_file_stays(
    store: MemoryStore, target: CertDir, how: str, reason: str
) -> None:
    put(store, A, *issue(A))
    put(store, B, *issue(B))
    run(store, target)
    before = snapshot(target.path)
    _corrupt(store, how)
    result = run(store, target)
    assert [e for e, _ in result.refused] == [A] and reason in result.refused[0][1], result.refused
    assert (result.installed, result.removed, result.unchanged) == ((), (), (B,))
    assert snapshot(target.path) == before and not result.ok
    assert f"refused {A}: " in "\n".join(result.lines())


def test_a_bad_entry_for_a_new_name_installs_nothing(store: MemoryStore, target: CertDir) -> None:
    chain, key = issue(A)
    put(store, A, chain, issue(A)[1])  # mismatched from the start
    result = run(store, target)
    assert result.installed == () and [e for e, _ in result.refused] == [A]
    assert list(target.path.iterdir()) == []


@pytest.mark.parametrize(
    "key",
    [
        "certs/../escape.json",
        "certs/../../etc/mta-sts.alpha.test.json",
        "certs/sub/mta-sts.alpha.test.json",
        "certs/mta-sts.alpha.test/../../x.json",
        "certs/.mta-sts.alpha.test.json",
        "certs/mta-sts.ALPHA.test.json",
        "certs/alpha.test.json",
        "certs/mta-sts.alpha.test\nrefused mta-sts.beta.test.json",
        "certs/mta-sts.alpha.test",
        "certs/mta-sts.alpha.test.JSON",
        "certs/mta-sts.alpha.test.json/x.json",
    ],
)
def test_a_key_with_path_tricks_is_refused_and_writes_nowhere(store: MemoryStore, tmp_path: Path, key: str) -> None:
    target = CertDir(tmp_path / "certs")
    target.path.mkdir()
    chain, k = issue(A)
    body = mtasts.StoredCert(A, chain, keys.seal_blob(k, KEK, f"cert/{A}"), mtasts.not_after(chain), "dns-01")
    store.put(key, body.to_json())
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = run(store, target)
    assert result.installed == () and len(result.refused) == 1 and "not the entry of an mta-sts" in result.refused[0][1]
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert all("\n" not in line for line in result.lines())  # an untrusted key cannot forge a report line


def test_many_files_without_an_entry_are_held_not_removed(store: MemoryStore, target: CertDir) -> None:
    for n in (A, B, "mta-sts.gamma.test"):
        put(store, n, *issue(n))
    run(store, target)
    before = snapshot(target.path)
    empty = MemoryStore()  # a store (or bucket) that lists nothing: a mistake, not three deletions
    held = run(empty, target, max_removals=2)
    assert held.removed == () and held.held == (A, B, "mta-sts.gamma.test") and not held.ok
    assert snapshot(target.path) == before and "none removed" in held.lines()[-2]
    assert run(empty, target, max_removals=3).removed == (A, B, "mta-sts.gamma.test")


def test_a_store_error_or_a_bad_key_changes_nothing(store: MemoryStore, target: CertDir) -> None:
    put(store, A, *issue(A))
    run(store, target)
    before = snapshot(target.path)
    store.faults.append(StoreUnavailable("list certs/: timeout"))
    with pytest.raises(StoreUnavailable):
        run(store, target)
    with pytest.raises(ConfigError, match="key_encryption_key"):
        web6_sync.sync(MemoryStore(), Secret("short"), target, NOW)
    assert snapshot(target.path) == before
    wrong = Secret(base64.b64encode(b"w" * 32).decode())  # a valid key, but not the one that sealed
    result = web6_sync.sync(store, wrong, target, NOW)
    assert result.refused == ((A, result.refused[0][1]),) and "cannot be unsealed" in result.refused[0][1]
    assert snapshot(target.path) == before


# ---------------------------------------------------------------- the command


def settings_file(tmp_path: Path) -> Path:
    """web6's settings (infra/web6/sync.toml's shape) over a dir store."""
    f = tmp_path / "sync.toml"
    f.write_text(
        f'[store]\nkind = "dir"\npath = "{tmp_path / "store"}"\n\n'
        '[dkim]\nkey_encryption_key = { env = "WEB6_TEST_KEK" }\n'
    )
    return f


def test_the_command_reports_counts_on_stderr_and_nothing_secret(tmp_path: Path) -> None:
    from functions.adapters.dirstore import DirStore

    state = DirStore(tmp_path / "store" / "mailplane-state")
    now = dt.datetime.now(dt.UTC)  # the command checks validity against the real clock
    chain, key = issue(A, now=now)
    put(state, A, chain, key)
    put(state, B, issue(B, now=now)[0], issue(B, now=now)[1])  # refused: the key is not the leaf's
    certs = tmp_path / "certs"
    certs.mkdir()
    args = ["web6", "sync", "--once", "--cert-dir", str(certs), "--config", str(settings_file(tmp_path))]
    env = {"WEB6_TEST_KEK": KEK.reveal()}
    first = CliRunner().invoke(app, args, env=env)
    assert first.exit_code == 1, first.output  # B refused
    assert first.stdout == ""
    assert "installed mta-sts.alpha.test" in first.stderr
    assert "web6 sync: 1 installed, 0 removed, 0 unchanged, 1 refused" in first.stderr
    state.delete(mtasts.cert_state_key(B))
    second = CliRunner().invoke(app, args, env=env)
    assert (
        second.exit_code == 0 and second.stderr.strip() == "web6 sync: 0 installed, 0 removed, 1 unchanged, 0 refused"
    )
    body = key.split("-----")[2].strip().splitlines()
    for out in (first.stderr, second.stderr):
        assert "PRIVATE KEY" not in out and KEK.reveal() not in out
        assert not any(line in out for line in body)  # not a line of the key's base64
    missing = CliRunner().invoke(app, [*args[:4], str(tmp_path / "nope"), *args[5:]], env=env)
    assert missing.exit_code == 2 and "is not a directory" in missing.stderr
    no_kek = CliRunner().invoke(app, args, env={})
    assert no_kek.exit_code == 2 and "WEB6_TEST_KEK is not set" in no_kek.stderr
    assert os.listdir(certs) == [f"{A}.pem"]


def test_a_file_is_fsynced_before_it_replaces_the_old_one(target: CertDir, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd: int) -> None:
        calls.append("fsync dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        fsync(fd)

    def record_replace(src: str, dst: str) -> None:
        calls.append("rename")
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    target.install(A, *issue(A))
    assert calls == ["fsync file", "rename", "fsync dir"]
