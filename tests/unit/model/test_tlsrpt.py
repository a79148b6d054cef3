"""TLS reports (RFC 8460): the strict parser (mail, gzip, JSON; sizes, gzip bomb, hostile JSON) and the per-day
store (summaries, duplicates, compare-and-set with a concurrent writer, nothing written for a refused report)."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from functions._core.model import tlsrpt, tlsrpt_store
from functions._core.model.tlsrpt import ReportRefused
from functions._core.platform.errors import PreconditionFailed
from tests.fakes.store import MemoryStore

DATA = Path(__file__).resolve().parents[2] / "data" / "tlsrpt"
NOW = dt.datetime(2027, 12, 1, 12, 0, tzinfo=dt.UTC)
LIMIT = 1048576


def sample(name: str) -> bytes:
    return (DATA / name).read_bytes()


def doc(name: str = "clean.json") -> dict[str, Any]:
    data: dict[str, Any] = json.loads(sample(name))
    return data


def read(raw: bytes, limit: int = LIMIT) -> tlsrpt.Report:
    return tlsrpt.read(raw, limit, NOW)


def refused(raw: bytes, match: str, limit: int = LIMIT) -> str:
    with pytest.raises(ReportRefused, match=match) as info:
        read(raw, limit)
    return str(info.value)


# ---------------------------------------------------------------- accepted forms


def test_a_json_report_is_read_into_counts_and_names() -> None:
    r = read(sample("failures.json"))
    assert (r.organisation, r.report_id, r.day) == ("microsoft.com", "133776-alpha-2027-11-29", dt.date(2027, 11, 29))
    (p,) = r.policies
    assert (p.domain, p.policy_type, p.successful, p.failed) == ("alpha.test", "sts", 300, 7)
    assert p.failures == (("certificate-expired", 5), ("sts-policy-fetch-error", 2))
    assert p.mx == (("pmg2.faster.test", 5),)  # trailing dot and case normalised


def test_a_mail_message_with_a_gzip_attachment_and_the_gzip_file_give_the_same_report() -> None:
    mail = read(sample("google-gzip.eml"))
    gz = read(sample("google.com!alpha.test!1859241600!1859327999!001.json.gz"))
    assert mail == gz and mail.organisation == "google.com" and mail.policies[0].successful == 800


def test_a_mail_message_with_a_json_part_is_read() -> None:
    body = sample("clean.json")
    msg = (
        b"From: r@example.net\r\nTLS-Report-Domain: alpha.test\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type="tlsrpt"; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b"--b\r\nContent-Type: application/tlsrpt+json\r\n\r\n" + body + b"\r\n--b--\r\n"
    )
    assert read(msg) == read(body)


# ---------------------------------------------------------------- refused, with the reason


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("malformed.json", "malformed JSON"),
        ("deep.json", "nested deeper than 10"),
        ("huge-number.json", "more than 15 digits"),
        ("control-chars.json", "organization-name contains control characters"),
        ("wrong-type.json", "total-successful-session-count must be an integer, not str"),
        ("negative.json", "outside 0"),
        ("backwards-range.json", "ends .* before it starts"),
    ],
)
def test_hostile_and_malformed_samples_are_refused_with_a_reason(name: str, match: str) -> None:
    reason = refused(sample(name), match)
    assert "\n" not in reason and "\x1b" not in reason  # hostile strings are escaped in the reason


def test_the_reason_escapes_and_bounds_hostile_strings() -> None:
    reason = refused(sample("control-chars.json"), "control characters")
    assert "\\x1b[31m\\nFAKE" in reason
    d = doc()
    d["organization-name"] = "A" * 10_000
    assert len(refused(json.dumps(d).encode(), "longer than 255")) < 300


def mutate(**changes: Any) -> bytes:
    d = doc()
    for path, value in changes.items():
        target: Any = d
        *parents, last = path.split("__")
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p.replace("_", "-")]
        target[last.replace("_", "-")] = value
    return json.dumps(d).encode()


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"[1, 2]", "must be a JSON object, not list"),
        (b'{"a": 1, "a": 2}', "appears twice"),
        (b'{"n": NaN}', "NaN is not JSON"),
        (b'{"n": 1e999999999999999999999999999999999}', "longer than 32"),
        (b"\xff{}", "neither a mail message"),
        (b"{\xff}", "not UTF-8"),
        (mutate(policies=[]), "policies must hold 1 to 100"),
        (mutate(policies=["x"]), r"policies\[0\] must be an object"),
        (mutate(report_id=7), "report-id must be a string, not int"),
        (mutate(policies__0__summary__total_failure_session_count=True), "must be an integer, not bool"),
        (mutate(policies__0__summary__total_failure_session_count=10**13), "outside 0"),
        (mutate(policies__0__policy__policy_type="dane"), "policy-type 'dane' is not one of"),
        (mutate(policies__0__policy__policy_domain="bad domain\n"), "policy-domain"),
        (mutate(policies__0__policy__policy_domain="co.uk"), "public suffix"),
        (mutate(policies__0__failure_details=[{"result-type": "x", "failed-session-count": 1}]), "count more failed"),
        (mutate(policies__0__failure_details=[{"result-type": "Bad Type", "failed-session-count": 0}]), "result-type"),
        (mutate(date_range={"start-datetime": "yesterday", "end-datetime": "today"}), "not an RFC 3339"),
        (
            mutate(date_range={"start-datetime": "2027-11-01T00:00:00", "end-datetime": "2027-11-02T00:00:00"}),
            "time zone",
        ),
        (
            mutate(date_range={"start-datetime": "2027-11-01T00:00:00Z", "end-datetime": "2027-11-20T00:00:00Z"}),
            "more than 7",
        ),
        (
            mutate(date_range={"start-datetime": "2028-01-01T00:00:00Z", "end-datetime": "2028-01-02T00:00:00Z"}),
            "future",
        ),
    ],
)
def test_every_rule_refuses_with_its_reason(raw: bytes, match: str) -> None:
    refused(raw, match)


def test_oversized_input_is_refused_at_every_layer() -> None:
    big = json.dumps({**doc(), "padding": "x" * 5000}).encode()
    refused(big, "JSON report of .* larger than 4096", limit=4096)
    refused(b" " * (2 * 4096 + 65537), "larger than", limit=4096)
    refused(gzip.compress(b"{" + b" " * 10_000 + b"}"), "decompresses to more than 4096", limit=4096)


def test_a_gzip_bomb_is_refused_without_being_inflated() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB of zeros in ~64 KiB
    assert len(bomb) < 100_000
    refused(bomb, "decompresses to more than .* gzip bomb")


def test_broken_gzip_is_refused() -> None:
    good = gzip.compress(sample("clean.json"))
    refused(good[:-12], "truncated")
    refused(good + b"junk", "after the end of the gzip stream")
    refused(b"\x1f\x8b" + b"\0" * 40, "corrupt gzip")


def test_messages_without_or_with_several_reports_and_a_wrong_header_are_refused() -> None:
    plain = b"From: a@b.example\r\nSubject: hi\r\nContent-Type: text/plain\r\n\r\nno report here\r\n"
    refused(plain, "without a report part")
    eml = sample("google-gzip.eml")
    refused(eml.replace(b"TLS-Report-Domain: alpha.test", b"TLS-Report-Domain: beta.test"), "not the report's")
    part = eml.split(b"Content-Type: application/tlsrpt+gzip", 1)
    assert len(part) == 2
    boundary = eml.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    attachment = b"--" + boundary + b"\nContent-Type: application/tlsrpt+gzip" + part[1].split(b"--" + boundary)[0]
    doubled = eml.replace(b"--" + boundary + b"--", attachment + b"--" + boundary + b"--")
    refused(doubled, "2 report parts")


# ---------------------------------------------------------------- the store


def report(name: str = "clean.json", **changes: Any) -> tlsrpt.Report:
    return tlsrpt.parse(mutate(**changes) if changes else sample(name), NOW)


def test_reports_are_summed_per_domain_and_day_and_a_duplicate_writes_nothing() -> None:
    store = MemoryStore()
    assert tlsrpt_store.record(store, report(), NOW) == {"alpha.test": "added"}
    assert tlsrpt_store.record(store, report("failures.json"), NOW) == {"alpha.test": "added"}
    puts, objects = store.puts, dict(store.objects)
    assert tlsrpt_store.record(store, report(), NOW) == {"alpha.test": "duplicate"}
    assert store.puts == puts and store.objects == objects
    assert sorted(store.objects) == ["tlsrpt/alpha.test/2027-11-28.json", "tlsrpt/alpha.test/2027-11-29.json"]
    s = tlsrpt_store.summarise(store, "alpha.test", dt.date(2027, 11, 25), dt.date(2027, 12, 1))
    assert (s.reports, s.successful, s.failed, s.period) == (2, 1500, 7, 7)
    assert s.failures == {"certificate-expired": 5, "sts-policy-fetch-error": 2}
    assert s.mx == {"pmg2.faster.test": 5}
    assert s.organisations == {"google.com": 1, "microsoft.com": 1}
    assert s.days == (dt.date(2027, 11, 28), dt.date(2027, 11, 29)) and len(s.missing) == 5
    stored = store.objects["tlsrpt/alpha.test/2027-11-29.json"].body
    assert b"policy-string" not in stored and b"198.51.100.7" not in stored  # the raw report is not kept


def test_the_same_report_id_with_other_content_is_refused_and_changes_nothing() -> None:
    store = MemoryStore()
    tlsrpt_store.record(store, report(), NOW)
    objects = dict(store.objects)
    other = report(policies__0__summary__total_failure_session_count=3)
    with pytest.raises(ReportRefused, match="already ingested with other content"):
        tlsrpt_store.record(store, other, NOW)
    assert store.objects == objects


def test_a_report_for_two_domains_is_checked_for_both_before_either_is_written() -> None:
    store = MemoryStore()
    beta = doc()["policies"][0] | {"policy": {**doc()["policies"][0]["policy"], "policy-domain": "beta.test"}}
    tlsrpt_store.record(
        store, tlsrpt.parse(json.dumps({**doc(), "report-id": "x", "policies": [beta]}).encode(), NOW), NOW
    )
    objects = dict(store.objects)
    both = json.dumps({**doc(), "report-id": "x", "policies": [doc()["policies"][0], beta]}).encode()
    with pytest.raises(ReportRefused, match="other content"):  # beta.test has "x" with other content
        tlsrpt_store.record(store, tlsrpt.parse(both, NOW), NOW)
    assert store.objects == objects  # alpha.test was not written either


def test_a_concurrent_writer_is_merged_by_compare_and_set() -> None:
    store = MemoryStore()
    first, second = report(), report(report_id="another")
    real_put = store.put
    raced = []

    def put(key: str, body: bytes, **kw: Any) -> str:
        if not raced:  # another ingest files its report between our read and our write
            raced.append(key)
            tlsrpt_store.record(store, second, NOW)
        return real_put(key, body, **kw)

    store.put = put  # type: ignore[method-assign]
    assert tlsrpt_store.record(store, first, NOW) == {"alpha.test": "added"}
    s = tlsrpt_store.summarise(store, "alpha.test", first.day, first.day)
    assert s.reports == 2 and s.successful == 2400


def test_cas_gives_up_after_bounded_attempts() -> None:
    store = MemoryStore()

    def put(key: str, body: bytes, **kw: Any) -> str:
        raise PreconditionFailed("always changed")

    store.put = put  # type: ignore[method-assign]
    with pytest.raises(Exception, match="kept changing"):
        tlsrpt_store.record(store, report(), NOW)


def test_a_day_is_bounded() -> None:
    store = MemoryStore()
    for i in range(tlsrpt_store.MAX_REPORTS_PER_DAY):
        day = tlsrpt_store.load_day(store, "alpha.test", dt.date(2027, 11, 28))
        entries = {**day.reports, f"k{i}": {"fp": "x"}}
        store.put(
            tlsrpt_store.day_key("alpha.test", day.day),
            tlsrpt_store.Day("alpha.test", day.day, entries).body(),
        )
    with pytest.raises(ReportRefused, match="already has 500 reports"):
        tlsrpt_store.record(store, report(), NOW)


def test_an_unreadable_day_object_is_not_overwritten() -> None:
    store = MemoryStore()
    store.put(tlsrpt_store.day_key("alpha.test", dt.date(2027, 11, 28)), b"not json")
    with pytest.raises(Exception, match="not a TLS report day object"):
        tlsrpt_store.record(store, report(), NOW)
    assert store.objects[tlsrpt_store.day_key("alpha.test", dt.date(2027, 11, 28))].body == b"not json"


def test_period_and_reported_domains() -> None:
    today = dt.date(2027, 12, 1)
    assert tlsrpt_store.period(today, 7) == (dt.date(2027, 11, 25), today)
    assert tlsrpt_store.period(today, 2, include_today=False) == (dt.date(2027, 11, 29), dt.date(2027, 11, 30))
    store = MemoryStore()
    tlsrpt_store.record(store, report(), NOW)
    assert tlsrpt_store.reported_domains(store) == ["alpha.test"]
