"""The equivalence rules (functions/_core/model/equivalence.py) and the adoption classes built on them: each rule
accepted, and the near misses that must stay different or foreign."""

from __future__ import annotations

import pytest

from functions._core.model.adoption_items import classify
from functions._core.model.equivalence import RULES, compare, covers, tag_list
from functions._core.model.records import RecordSet

D = "alpha.test"
DMARC = "v=DMARC1;p=reject;pct=100;rua=mailto:r@faster.test;ruf=mailto:f@faster.test;fo=1"


def txt(name: str, *values: str, ttl: int = 3600) -> RecordSet:
    return RecordSet.of(name, "TXT", ttl, list(values))


def test_the_rules_are_the_four_documented_ones() -> None:
    assert [name for name, _ in RULES] == ["txt-split", "tag-list", "name-case", "ttl"]


@pytest.mark.parametrize(
    "have",
    [
        "v=DMARC1; p=reject; pct=100; rua=mailto:r@faster.test; ruf=mailto:f@faster.test; fo=1;",
        "v=DMARC1;p=reject;pct=100;rua=mailto:r@faster.test;ruf=mailto:f@faster.test;fo=1;",
        "v=DMARC1 ; fo=1; ruf=mailto:f@faster.test; rua=mailto:r@faster.test; pct=100 ; p = reject",
    ],
)
def test_dmarc_spacing_order_and_trailing_semicolon_are_equivalent(have: str) -> None:
    assert compare(txt(f"_dmarc.{D}", DMARC), txt(f"_dmarc.{D}", have)) == "equivalent"


@pytest.mark.parametrize(
    "have",
    [
        DMARC.replace("p=reject", "p=none"),  # another policy
        DMARC.replace("p=reject", "p=REJECT"),  # values are compared exactly
        DMARC.replace(";fo=1", ""),  # a tag missing
        DMARC + ";fo=1",  # a tag repeated
        "p=reject;v=DMARC1;pct=100;rua=mailto:r@faster.test;ruf=mailto:f@faster.test;fo=1",  # v= not first
        DMARC.replace("pct=100", "pct=50"),
        DMARC + ";;",  # an empty tag
    ],
)
def test_dmarc_near_misses_are_not_equivalent(have: str) -> None:
    assert compare(txt(f"_dmarc.{D}", DMARC), txt(f"_dmarc.{D}", have)) is None


def test_spf_is_compared_exactly() -> None:
    want = txt(D, "v=spf1 include:_pmg.faster.test ~all")
    assert compare(want, txt(D, "v=spf1 include:_pmg.faster.test -all")) is None
    assert compare(want, txt(D, "v=spf1  include:_pmg.faster.test ~all")) is None  # no SPF whitespace rule
    assert compare(want, txt(D, "V=SPF1 include:_pmg.faster.test ~all")) is None  # no case folding in TXT


def test_ttl_alone_is_equivalent_and_identical_is_same() -> None:
    want = txt(f"_dmarc.{D}", DMARC)
    assert compare(want, want) == "same"
    assert compare(want, txt(f"_dmarc.{D}", DMARC, ttl=300)) == "equivalent"


def test_name_case_in_targets_is_equivalent() -> None:
    want = RecordSet.of(D, "MX", 3600, ["10 pmg1.faster.test.", "10 pmg2.faster.test."])
    assert compare(want, RecordSet.of(D, "MX", 3600, ["10 PMG1.Faster.Test.", "10 pmg2.faster.test."])) == (
        "equivalent"
    )
    assert compare(want, RecordSet.of(D, "MX", 3600, ["20 pmg1.faster.test.", "10 pmg2.faster.test."])) is None
    assert compare(want, RecordSet.of(D, "MX", 3600, ["10 pmg1.faster.test."])) is None


def test_split_txt_strings_are_read_joined() -> None:
    # the adapters join a record's character-strings: a split record is the same text (rule txt-split)
    key = "v=DKIM1;k=rsa;t=s;s=email;p=" + "A" * 300
    assert compare(txt(f"dkim._domainkey.{D}", key), txt(f"dkim._domainkey.{D}", key[:255] + key[255:])) == "same"


def test_dkim_tag_list_spacing_is_equivalent_but_a_missing_tag_is_not() -> None:
    want = txt(f"dkim._domainkey.{D}", "v=DKIM1;k=rsa;t=s;s=email;p=MIIB")
    assert compare(want, txt(f"dkim._domainkey.{D}", "v=DKIM1; k=rsa; t=s; s=email; p=MIIB")) == "equivalent"
    assert compare(want, txt(f"dkim._domainkey.{D}", "v=DKIM1; k=rsa; p=MIIB")) is None


def test_tag_list_parsing() -> None:
    assert tag_list("v=DMARC1; p=none;") == ("DMARC1", {"p": "none"})
    assert tag_list("p=none; v=DMARC1") is None
    assert tag_list("v=DMARC1; p") is None


def test_covers_allows_the_customers_other_apex_strings() -> None:
    want = txt(D, "v=spf1 include:_pmg.faster.test ~all")
    assert covers(want, txt(D, "v=spf1 include:_pmg.faster.test ~all", "google-site-verification=x"))
    assert not covers(want, txt(D, "google-site-verification=x"))


# ---------------------------------------------------------------- classes


def zone(*sets: RecordSet) -> dict[tuple[str, str], RecordSet]:
    return {rs.key: rs for rs in sets}


def test_classes_of_records() -> None:
    cname = RecordSet.of(f"autoconfig.{D}", "CNAME", 3600, ["mail.faster.test."])
    spf = txt(D, "v=spf1 include:_pmg.faster.test ~all")
    dmarc = txt(f"_dmarc.{D}", DMARC)
    assert classify(cname.key, cname, zone(), D)[0] == "missing"
    elsewhere = RecordSet.of(cname.name, "CNAME", 3600, ["autoconfig.isp.example."])
    assert classify(cname.key, cname, zone(elsewhere), D)[0] == "foreign"  # a CNAME elsewhere
    a_record = RecordSet.of(cname.name, "A", 3600, ["192.0.2.1"])
    assert classify(cname.key, cname, zone(a_record), D)[0] == "foreign"  # data where our CNAME must be
    assert classify(spf.key, spf, zone(txt(D, "google-site-verification=x")), D)[0] == "missing"
    assert classify(spf.key, spf, zone(txt(D, "v=spf1 include:_pmg.faster.test -all", "x=1")), D)[0] == "different"
    assert classify(dmarc.key, dmarc, zone(txt(dmarc.name, DMARC.replace("reject", "none"))), D)[0] == "different"
    assert classify(dmarc.key, dmarc, zone(txt(dmarc.name, "hello")), D)[0] == "foreign"  # another protocol
    alias = RecordSet.of(dmarc.name, "CNAME", 300, ["dmarc.isp.example."])
    assert classify(dmarc.key, dmarc, zone(alias), D)[0] == "foreign"
