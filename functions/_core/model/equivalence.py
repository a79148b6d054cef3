"""When a published record means exactly what mailplane would publish: the equivalence rules, all in one place.

Adoption (functions/_core/model/adoption.py) leaves an *equivalent* record untouched, and `mailplane status` /
`drift` accept it, so these rules decide what mailplane may call "the same meaning written differently". They are
deliberately narrow; docs/adoption.md lists them for operators. Nothing else is equivalent: ``-all`` is not
``~all``, ``p=none`` is not ``p=reject``, another MX host or preference is another MX, a missing ``t=s`` in a DKIM
key is another key record, and TXT text outside the tag lists below is compared byte for byte (case included).
"""

from __future__ import annotations

from functions._core.model.records import RecordSet

RULES: tuple[tuple[str, str], ...] = (
    (
        "txt-split",
        "TXT character-string splits: the strings of one record are compared joined (RFC 7208 §3.3, RFC 6376 "
        '§3.6.2.2), so "v=spf1 " "include:x ~all" is the record "v=spf1 include:x ~all"',
    ),
    (
        "tag-list",
        "DMARC and DKIM tag lists (RFC 7489 §6.4, RFC 6376 §3.2): whitespace around ';' and '=', the order of the "
        "tags after v= (v= must come first) and a trailing ';' do not matter; tag names and values are compared "
        "exactly, every tag must be present on both sides, none may repeat",
    ),
    (
        "name-case",
        "letter case in domain names (MX, CNAME and SRV targets, owner names), which DNS compares "
        "case-insensitively (RFC 4343); never in TXT text",
    ),
    ("ttl", "the TTL alone: a record with mailplane's data and another TTL keeps its TTL"),
)

TAG_LIST_PREFIXES = ("v=DMARC1", "v=DKIM1")  # the TXT protocols whose text is a tag list
NAME_TYPES = ("MX", "CNAME", "SRV")  # presentation values that end in a domain name


def tag_list(text: str) -> tuple[str, dict[str, str]] | None:
    """``(version, {tag: value})`` of a DMARC/DKIM tag list, or None when it is not a well-formed one
    (no ``v=`` first, an empty tag, a tag without ``=``, a repeated tag)."""
    parts = [p.strip() for p in text.split(";")]
    if parts and parts[-1] == "":
        parts.pop()  # one trailing ';'
    tags: dict[str, str] = {}
    for part in parts:
        name, eq, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not name or name in tags:
            return None
        tags[name] = value
    first = next(iter(tags), None)
    if first != "v":
        return None
    return tags.pop("v"), tags


def _same_tag_list(want: str, have: str) -> bool:
    a, b = tag_list(want), tag_list(have)
    return a is not None and a == b


def _name_fold(rtype: str, value: str) -> str:
    """MX/CNAME/SRV values with their domain names lowercased (the numbers are unaffected)."""
    return value.lower() if rtype in NAME_TYPES else value


def value_equivalent(rtype: str, want: str, have: str) -> bool:
    """One value of an RRset: identical, or equal under the name-case or tag-list rule."""
    if want == have or _name_fold(rtype, want) == _name_fold(rtype, have):
        return True
    return rtype == "TXT" and want.startswith(TAG_LIST_PREFIXES) and _same_tag_list(want, have)


def compare(want: RecordSet, have: RecordSet | None) -> str | None:
    """``same`` (identical data and TTL), ``equivalent`` (the same meaning under RULES), or None (neither).

    Each wanted value must match one published value and each published value one wanted value.
    """
    if have is None or have.key != want.key:
        return None
    if have.values == want.values:
        return "same" if have.ttl == want.ttl else "equivalent"
    if len(have.values) != len(want.values):
        return None
    matched = all(any(value_equivalent(want.rtype, w, h) for h in have.values) for w in want.values) and all(
        any(value_equivalent(want.rtype, w, h) for w in want.values) for h in have.values
    )
    return "equivalent" if matched else None


def covers(want: RecordSet, have: RecordSet | None) -> bool:
    """Every wanted value is published (exactly or equivalently); other published values are allowed (the apex TXT
    holds the customer's strings beside SPF). What `mailplane status` checks."""
    if have is None:
        return False
    return all(any(value_equivalent(want.rtype, w, h) for h in have.values) for w in want.values)
