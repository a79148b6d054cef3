"""`mailplane tls-rpt ingest|summary` and the TLS report section of `mailplane status`: Maildir, directories and
files; one line per file; exit 1 when any report was refused; refused and duplicate reports change nothing;
unknown domains refused; hostile names never printed raw."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from functions._core.model import state, tlsrpt_store
from functions.ops import cli_tlsrpt, status, tlsrpt
from functions.runtime import main
from tests.fakes.settings import make_settings
from tests.fakes.store import MemoryStore

DATA = Path(__file__).resolve().parents[2] / "data" / "tlsrpt"
NOW = dt.datetime(2027, 12, 1, 12, 0, tzinfo=dt.UTC)
SETTINGS = make_settings()
GOOD = ("clean.json", "failures.json", "google-gzip.eml")
BAD = (
    "malformed.json",
    "deep.json",
    "huge-number.json",
    "control-chars.json",
    "wrong-type.json",
    "negative.json",
    "unknown-domain.json",
    "backwards-range.json",
)


def ours(store: MemoryStore, domain: str, *, status: str = "provisioned") -> None:
    st = state.DomainState(domain, request={"dns": {"hosted": True}}, status=status)
    state.save(store, st, state.DomainState(domain))


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    ours(s, "alpha.test")
    ours(s, "gone.test", status="deleted")
    return s


@pytest.fixture
def cli(store: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr(main, "load_settings", lambda path=None: SETTINGS)
    monkeypatch.setattr(main, "build_store", lambda settings, bucket, probe=True: store)
    monkeypatch.setattr(cli_tlsrpt, "_now", lambda: NOW)
    return CliRunner()


def run(cli: CliRunner, *args: str) -> typer.testing.Result:  # type: ignore[name-defined]
    app = typer.Typer()
    cli_tlsrpt.register(app)
    app.command("noop")(lambda: None)
    return cli.invoke(app, list(args))


def maildir(tmp_path: Path, names: tuple[str, ...]) -> Path:
    md = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    for i, name in enumerate(names):
        shutil.copy(DATA / name, md / ("new" if i % 2 else "cur") / f"1700000{i}.M1P1.host:2,{name}")
    (md / "tmp" / "partial").write_bytes(b"half a deliv")  # a delivery in progress is not read
    return md


def test_a_maildir_of_good_reports_is_ingested_and_a_second_run_changes_nothing(
    cli: CliRunner, store: MemoryStore, tmp_path: Path
) -> None:
    md = maildir(tmp_path, GOOD)
    first = run(cli, "tls-rpt", "ingest", str(md))
    assert first.exit_code == 0, first.output
    assert first.stdout.count("accepted ") == 3 and "3 file(s): 3 accepted, 0 duplicate, 0 refused" in first.stdout
    objects = dict(store.objects)
    again = run(cli, "tls-rpt", "ingest", str(md))
    assert again.exit_code == 0 and "0 accepted, 3 duplicate" in again.stdout
    assert store.objects == objects


def test_each_bad_sample_is_refused_with_its_reason_and_changes_nothing(
    cli: CliRunner, store: MemoryStore, tmp_path: Path
) -> None:
    d = tmp_path / "reports"
    d.mkdir()
    for name in BAD:
        shutil.copy(DATA / name, d / name)
    (d / ".hidden").write_bytes(b"skipped")
    objects = dict(store.objects)
    got = run(cli, "tls-rpt", "ingest", str(d), str(tmp_path / "missing.json"))
    assert got.exit_code == 1
    assert store.objects == objects
    lines = got.stderr.splitlines()
    assert len(lines) == len(BAD) + 1 and all(ln.startswith("refused ") for ln in lines)
    by_file = {ln.split("'")[1].rsplit("/", 1)[-1]: ln for ln in lines}
    assert "not a domain of ours" in by_file["unknown-domain.json"]
    assert "No such file" in by_file["missing.json"]
    assert "Traceback" not in got.output and "\x1b" not in got.output
    assert not any(ln.startswith("FAKE") for ln in got.output.splitlines())  # the injected newline stays escaped
    assert f"{len(BAD) + 1} file(s): 0 accepted, 0 duplicate, {len(BAD) + 1} refused" in got.stdout


def test_a_deleted_domain_is_not_ours(store: MemoryStore) -> None:
    raw = (DATA / "clean.json").read_bytes().replace(b'"alpha.test"', b'"gone.test"')
    with pytest.raises(tlsrpt.ReportRefused, match="not a domain of ours"):
        tlsrpt.ingest_one(raw, store, SETTINGS, NOW, tlsrpt.Ours(store))


def test_oversized_files_are_refused_reading_only_their_bound(store: MemoryStore, tmp_path: Path) -> None:
    small = dataclasses.replace(SETTINGS, mta_sts=dataclasses.replace(SETTINGS.mta_sts, tlsrpt_max_bytes=65536))
    big = tmp_path / "big.json"
    big.write_bytes(b"{" + b" " * (3 * 1024 * 1024) + b"}")
    bomb = tmp_path / "bomb.json.gz"
    bomb.write_bytes(gzip.compress(b"{" + b" " * (32 * 1024 * 1024) + b"}", compresslevel=9))  # ~32 KiB
    assert bomb.stat().st_size < 65536
    got = tlsrpt.ingest([str(big), str(bomb)], store, small, NOW)
    assert [r.verdict for r in got] == ["refused", "refused"]
    assert "file larger than 196608 bytes" in got[0].detail and "decompresses to more than 65536" in got[1].detail


def test_a_symlink_is_not_followed(store: MemoryStore, tmp_path: Path) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(DATA / "clean.json")
    (r,) = tlsrpt.ingest([str(link)], store, SETTINGS, NOW)
    assert r.verdict == "refused" and "cannot open" in r.detail


def test_summary_command_text_and_json(cli: CliRunner, tmp_path: Path) -> None:
    assert run(cli, "tls-rpt", "ingest", str(maildir(tmp_path, GOOD))).exit_code == 0
    text = run(cli, "tls-rpt", "summary", "alpha.test")
    assert text.exit_code == 0, text.output
    assert "alpha.test 2027-11-25..2027-12-01 (7 days, reports on 2)" in text.stdout
    assert "3 report(s), 2300 successful, 7 failed sessions (0.30% failed)" in text.stdout
    assert "failure types: 'certificate-expired' 5, 'sts-policy-fetch-error' 2" in text.stdout
    assert "reporting organisations: 'google.com' (2), 'microsoft.com' (1)" in text.stdout
    data = json.loads(run(cli, "tls-rpt", "summary", "--json", "--days", "1").stdout)
    assert data == [
        {
            "domain": "alpha.test",
            "from": "2027-12-01",
            "to": "2027-12-01",
            "days": 1,
            "days_with_reports": 0,
            "reports": 0,
            "successful_sessions": 0,
            "failed_sessions": 0,
            "failure_types": {},
            "failing_mx_hosts": {},
            "organisations": {},
        }
    ]
    assert run(cli, "tls-rpt", "summary", "bad domain").exit_code == 2


def test_status_shows_the_last_period_in_text_and_json(store: MemoryStore) -> None:
    for name in GOOD:
        tlsrpt.ingest_one((DATA / name).read_bytes(), store, SETTINGS, NOW, tlsrpt.Ours(store))
    ports = dataclasses.replace(_ports(store), clock=lambda: NOW)
    s = status.tls_reports("alpha.test", ports)
    assert (s.reports, s.successful, s.failed, s.first) == (3, 2300, 7, dt.date(2027, 11, 25))
    out = status.as_json("alpha.test", "provisioned", [], s)
    assert out["tls_reports"]["failure_types"] == {"certificate-expired": 5, "sts-policy-fetch-error": 2}
    assert list(out) == ["domain", "status", "checks", "tls_reports", "notes"]
    assert status.tls_reports("alpha.test", ports, days=1).reports == 0
    assert tlsrpt.summary_lines(status.tls_reports("other.test", ports))[-1] == "  no TLS reports in this period"


def _ports(store: MemoryStore):  # type: ignore[no-untyped-def]
    from tests.unit.test_node_down import build_world

    w = build_world()
    return dataclasses.replace(w.ports, state=store)


def test_day_objects_are_a_retention_class(store: MemoryStore) -> None:
    from functions._core.model import retention

    tlsrpt.ingest_one((DATA / "clean.json").read_bytes(), store, SETTINGS, NOW, tlsrpt.Ours(store))
    later = NOW + dt.timedelta(days=SETTINGS.retention.tlsrpt_days + 3)
    swept = retention.sweep(store, SETTINGS, later, apply=True, only="tlsrpt")
    assert swept["tlsrpt"].expired == 1 and not list(store.list(tlsrpt_store.PREFIX))
