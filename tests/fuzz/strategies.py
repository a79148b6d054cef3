"""Generators for the fuzz tests: domain names (valid, spelled, hostile, odd), events (valid from schemas/ and
events/, mutated, hostile, oversized) and raw bodies; plus ``fuzz()``, the settings every property runs with.

Settings: ``MAILPLANE_FUZZ_EXAMPLES`` examples per property (default 2000, what CI runs), derandomized (the examples
are a function of the test and this file, so CI is reproducible) unless ``MAILPLANE_FUZZ_SEED`` is set (a random
run, reproducible by that seed). No example database: nothing is written to ``.hypothesis/``.

Cost: a Hypothesis draw costs tens of microseconds, so the choices that matter for coverage (which class of input,
which mutation, which field) are Hypothesis draws, and the bulk (the characters of a label, a spelling, a payload)
comes from a ``random.Random`` seeded by one draw. A failure prints the generated value (``note``) and its seed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import string
import uuid
from collections.abc import Callable
from pathlib import Path
from re import _parser as sre  # the stdlib regex parser: generate strings that match a schema pattern
from typing import Any, TypeVar

from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st
from publicsuffixlist import PublicSuffixList

from functions._core.platform.envelope import INBOUND_TYPES, MAX_BODY
from tests.stackenv import REPO

T = TypeVar("T")
EXAMPLES = int(os.environ.get("MAILPLANE_FUZZ_EXAMPLES", "2000"))
SEED = os.environ.get("MAILPLANE_FUZZ_SEED")
PSL = PublicSuffixList()
seeds = st.integers(0, 2**32 - 1)


def fuzz(share: float = 1.0) -> Callable[[T], T]:
    """The settings of a property: ``share`` of ``EXAMPLES`` examples (less for the full-dispatch properties)."""

    def wrap(test: T) -> T:
        configured = settings(
            max_examples=max(10, int(EXAMPLES * share)),
            derandomize=SEED is None,
            database=None,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        )(test)
        return seed(int(SEED))(configured) if SEED is not None else configured

    return wrap


def seeded(make: Callable[[random.Random], T]) -> st.SearchStrategy[T]:
    """``make`` called with a Random seeded by one draw."""
    return seeds.map(lambda s: make(random.Random(s)))


# --- domain names ---------------------------------------------------------------------------------------------------

LDH = string.ascii_lowercase + string.digits + "-"
# Lowercase letters that IDNA 2008 allows as they are (PVALID, NFC, left-to-right): Latin-1, Latin Extended-A,
# Greek, Cyrillic, Hiragana, CJK.
UNICODE_LETTERS = (
    "àáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿß"
    "āăąćčďđēėęěğģīįķĺļľłńņňőœŕřśşšţťūůűųźżž"
    "αβγδεζηθικλμνξοπρστυφχψω"
    "абвгдежзийклмнопрстуфхцчшщъыьэюяё"
    "あいうえおかきくけこさしすせそ"
    "中文网络邮件测试"
)
TLDS = ("test", "example", "cz", "de", "com", "org", "xn--p1ai", "xn--80akhbyknj4f")  # рф, испытание (IDN test TLD)
DOTS = (".", "\u3002", "\uff0e", "\uff61")  # full stop, ideographic, full-width, half-width ideographic
LENGTHS = (1, 1, 2, 3, 4, 5, 6, 8, 10, 13, 20, 40, 61, 62, 63)


def _ldh_ok(label: str) -> bool:
    return label[0] != "-" and label[-1] != "-" and label[2:4] != "--"


def alabel_of(label: str) -> str:
    """RFC 3492 Punycode by Python's own codec: an oracle independent of the ``idna`` package."""
    return label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")


def random_label(rnd: random.Random, *, unicode: bool) -> str:
    """A valid label: LDH, or with Unicode letters (its A-label at most 63 octets)."""
    while True:
        size = rnd.choice(LENGTHS if not unicode else LENGTHS[:10])
        alphabet = LDH if not unicode else UNICODE_LETTERS + LDH
        label = "".join(rnd.choice(alphabet) for _ in range(size))
        if unicode and label.isascii():
            label = rnd.choice(UNICODE_LETTERS) + label[1:]
        if _ldh_ok(label) and len(alabel_of(label)) <= 63:
            return label


def make_name(rnd: random.Random) -> tuple[list[str], str]:
    """(U-labels, expected normal form): 1-4 labels (ASCII or Unicode) under a known TLD, at most 253 octets."""
    while True:
        labels = [random_label(rnd, unicode=rnd.random() < 0.4) for _ in range(rnd.choice((1, 1, 1, 2, 3, 4)))]
        tld = rnd.choice(TLDS)
        alabel = ".".join([alabel_of(label) for label in labels] + [tld])
        if len(alabel) <= 253 and not PSL.is_public(alabel):
            utld = tld if not tld.startswith("xn--") else tld.encode("ascii")[4:].decode("punycode")
            return [*labels, utld], alabel


def _upper(char: str) -> str:
    up = char.upper()
    return up if len(up) == 1 and up.lower() == char else char


def _full_width(char: str) -> str:
    return chr(ord(char) + 0xFEE0) if "!" <= char <= "~" else char


def spell(labels: list[str], rnd: random.Random) -> str:
    """A spelling of ``labels`` that UTS 46 maps to the same name: case, full-width letters, other full stops,
    A-labels for some labels (upper-case ``XN--`` too), soft hyphens, a trailing dot."""
    out = []
    for label in labels:
        form = alabel_of(label) if rnd.random() < 0.5 else label
        chars = []
        for char in form:
            how = rnd.choice(["keep", "keep", "upper", "wide", "soft"])
            if how == "upper":
                char = _upper(char)
            elif how == "wide":
                char = _full_width(char)
            elif how == "soft" and not form.startswith("xn--"):
                char = char + "\u00ad"
            chars.append(char)
        out.append("".join(chars))
    name = rnd.choice(DOTS).join(out)
    return name + rnd.choice(DOTS) if rnd.random() < 0.3 else name


valid_names = seeded(make_name)
# (expected normal form, a spelling of it)
spelled_names = seeded(lambda rnd: (lambda v: (v[1], spell(v[0], rnd)))(make_name(rnd)))

HOSTILE_CHARS = (
    [chr(c) for c in range(0x20)]
    + ["\x7f", "\x85", "\x9b", "\u00a0", "\u2028", "\u3000", "\ufffd", "\U0001f4a9"]
    + ["\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"]
    + ["\u061c", "\ud800", "\udfff", "\uff0f", "\uff3c"]
    + list(" /\\*_\"';`$<>|&@:%?#!=+,()[]{}~^")
)
TRAVERSALS = (
    "../../etc/passwd",
    "..",
    "./alpha.test",
    "alpha.test/../../x",
    "..\\..\\alpha.test",
    "%2e%2e%2falpha.test",
    "alpha.test%00.evil",
    "alpha..test",
    "/alpha.test",
    "alpha.test\\",
    "file:///etc/passwd",
)
PUBLIC_SUFFIXES = ("com", "co.uk", "github.io", "x.ck", "xn--p1ai", "cz", "ck", "blogspot.com", "s3.amazonaws.com")
HOSTILE_KINDS = ("char", "char", "char", "traversal", "long-label", "long-name", "numeric", "wild", "single", "psl")


def make_hostile(kind: str, rnd: random.Random) -> str:
    """A name that must be refused, of one ``kind``."""
    labels, alabel = make_name(rnd)
    if kind == "char":  # a hostile character anywhere
        name = ".".join(labels)
        at = rnd.randint(0, len(name))
        return name[:at] + rnd.choice(HOSTILE_CHARS) + name[at:]
    if kind == "traversal":
        return rnd.choice(TRAVERSALS)
    if kind == "long-label":  # 64+ octets
        return "".join(rnd.choice(LDH[:36]) for _ in range(rnd.randint(64, 300))) + "." + alabel
    if kind == "long-name":  # 254+ octets of valid labels
        label = random_label(rnd, unicode=False) + "x"
        return ".".join([label] * (254 // (len(label) + 1) + 1) + [alabel])
    if kind == "numeric":
        return alabel + "." + str(rnd.randint(0, 10**6))
    if kind == "wild":
        return "*." + alabel
    if kind == "single":
        return labels[0]
    return rnd.choice(PUBLIC_SUFFIXES)


hostile_names = st.builds(make_hostile, st.sampled_from(HOSTILE_KINDS), seeds.map(random.Random))

# Latin letters and a look-alike from another script.
HOMOGLYPHS = {"a": "а", "c": "с", "e": "е", "i": "і", "j": "ј", "o": "о", "p": "р", "s": "ѕ", "x": "х", "y": "у"}


def make_spoof(rnd: random.Random) -> tuple[str, str]:
    """(a name, the same name with at least one Latin letter of its first label replaced by a look-alike)."""
    labels, alabel = make_name(rnd)
    first = "".join(rnd.choice(string.ascii_lowercase + string.digits) for _ in range(rnd.randint(0, 10)))
    at = rnd.randint(0, len(first))
    first = first[:at] + rnd.choice(sorted(HOMOGLYPHS)) + first[at:]
    name = first + "." + alabel.split(".", 1)[1] if len(labels) > 2 else first + "." + alabel.rsplit(".", 1)[-1]
    spots = [i for i, c in enumerate(first) if c in HOMOGLYPHS]
    chosen = set(rnd.sample(spots, rnd.randint(1, len(spots))))
    spoof = "".join(HOMOGLYPHS[c] if i in chosen else c for i, c in enumerate(first)) + name[len(first) :]
    return name, spoof


spoofed_names = seeded(make_spoof)
ODD_CHARS = list(UNICODE_LETTERS) + [
    "\u200c",  # ZWNJ (CONTEXTJ)
    "\u200d",  # ZWJ
    "\u0301",  # combining acute
    "\u05d0",  # Hebrew alef (RTL)
    "\u0627",  # Arabic alef (RTL)
    "\u0661",  # Arabic-Indic digit
    "\u094d",  # Devanagari virama (ZWJ after it is allowed)
    "\u0915",  # Devanagari ka
    "\ufeff",  # BOM / ZWNBSP (ignored by UTS 46)
    "\u00ad",  # soft hyphen (ignored)
    "\u200b",  # zero-width space
    "\u2215",  # division slash
    "\u0338",  # combining long solidus overlay
    "\u30fb",  # katakana middle dot (CONTEXTO)
    "\u0375",  # Greek keraia
    "\u00b7",  # middle dot (CONTEXTO)
    "\u212a",  # Kelvin sign (maps to k)
    "\u2488",  # "1." in one code point
    "\u3002",
    "İ",
    "ẞ",
    "-",
    ".",
    "a",
    "1",
    "xn--",
]
odd_names = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=60),  # every code point, surrogates too
    seeded(lambda rnd: "".join(rnd.choice(ODD_CHARS) for _ in range(rnd.randint(1, 30))) + rnd.choice(["", ".test"])),
)
not_strings = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=20), st.lists(st.integers(), max_size=3)
)


# --- events ---------------------------------------------------------------------------------------------------------

SAMPLES = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted((REPO / "events").glob("*.json"))}
SCHEMAS = {
    p.name.removesuffix(".schema.json"): json.loads(p.read_text(encoding="utf-8"))
    for p in sorted((REPO / "schemas").glob("*.schema.json"))
}
PUBLISHERS = {
    "domain.created": "billing",
    "domain.deleted": "billing",
    "domain.adopt": "operator",
    "key.rotate": "scheduler",
    "node.down": "monitoring",
    "node.up": "monitoring",
}
NODES = ("pmg1", "pmg2", "pmg3")
ENVELOPE_ATTRIBUTES = frozenset(SCHEMAS["envelope"]["properties"])


def match(pattern: str, rnd: random.Random, cap: int = 8) -> str:
    """A random string that ``re.fullmatch(pattern)`` accepts (repeats capped at ``cap``: long values are the
    mutations' business). Handles what the schemas use: literals, classes, ranges, repeats, groups, anchors."""
    return _emit(sre.parse(pattern), rnd, cap)


def _emit(items: Any, rnd: random.Random, cap: int) -> str:
    out = []
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(arg))
        elif name == "IN":
            choices = []
            for kind, value in arg:
                low, high = (value, value) if str(kind) == "LITERAL" else value
                choices.append((low, high))
            low, high = rnd.choice(choices)
            out.append(chr(rnd.randint(low, high)))
        elif name == "MAX_REPEAT":
            low, high, sub = arg
            out.extend(_emit(sub, rnd, cap) for _ in range(rnd.randint(low, max(low, min(high, cap)))))
        elif name == "SUBPATTERN":
            out.append(_emit(arg[-1], rnd, cap))
        elif name == "BRANCH":  # a|b
            out.append(_emit(rnd.choice(arg[1]), rnd, cap))
        elif name != "AT":
            raise AssertionError(f"pattern element {name} not supported")
    return "".join(out)


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    return _resolve(root["$defs"][ref.removeprefix("#/$defs/")], root)


def random_time(rnd: random.Random) -> str:
    """An RFC 3339 date-time: any offset (hh:mm), 0-6 fraction digits, ``Z``/``z``/``T``/``t`` spellings."""
    when = dt.datetime(1000, 1, 1) + dt.timedelta(seconds=rnd.randint(0, 9000 * 365 * 86400))
    offset = dt.timezone(dt.timedelta(minutes=rnd.randint(-23 * 60 - 59, 23 * 60 + 59))) if rnd.random() < 0.5 else None
    text = when.replace(tzinfo=offset or dt.UTC).isoformat(timespec=rnd.choice(["seconds", "milliseconds"]))
    if offset is None and rnd.random() < 0.7:
        text = text.replace("+00:00", rnd.choice(["Z", "z"]))
    return text.replace("T", "t") if rnd.random() < 0.1 else text


def from_schema(schema: dict[str, Any], root: dict[str, Any], rnd: random.Random, name: str = "") -> Any:
    """A value valid under ``schema`` (the subset of JSON Schema our data schemas use). ``domain`` fields get valid
    names in any spelling (the normal form is checked by the tests), ``node`` fields the platform's nodes or a
    generated host name."""
    schema = _resolve(schema, root)
    if name == "domain":
        labels, alabel = make_name(rnd)
        spelled = spell(labels, rnd)
        return alabel if rnd.random() < 0.4 or len(spelled) > schema["maxLength"] else spelled
    if name == "node" and rnd.random() < 0.7:
        return rnd.choice(NODES)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rnd.choice(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        required = set(schema.get("required", ()))
        props = schema.get("properties", {})
        excluded: set[str] = set()
        if "oneOf" in schema:  # one branch's required keys, none that only another branch requires
            branches = [set(b.get("required", ())) for b in schema["oneOf"]]
            chosen = rnd.choice(branches)
            required |= chosen
            excluded = set().union(*branches) - chosen
        out = {
            k: from_schema(v, root, rnd, k)
            for k, v in props.items()
            if k not in excluded and (k in required or rnd.random() < 0.5)
        }
        return _conditional(schema, out, root, rnd)
    if kind == "integer":
        low, high = schema.get("minimum", -(2**31)), schema.get("maximum", 2**31 - 1)
        return rnd.choice([low, high, rnd.randint(low, high), rnd.randint(low, min(high, low + 100))])
    if kind == "boolean":
        return rnd.random() < 0.5
    if kind == "array":  # distinct items, within minItems/maxItems (domain.adopt's fix list)
        want = rnd.randint(schema.get("minItems", 0), min(schema.get("maxItems", 5), 5))
        items = [from_schema(schema["items"], root, rnd) for _ in range(want)]
        return list(dict.fromkeys(items)) if schema.get("uniqueItems") else items
    if kind == "string" and "pattern" in schema:
        return match(schema["pattern"], rnd)
    if kind == "string" and schema.get("format") == "date-time":
        return random_time(rnd)
    if kind == "string":  # free text (node.down reason)
        text = random_text(rnd, min(schema.get("maxLength", 40), 40))
        return text.ljust(schema.get("minLength", 0), "x")
    raise AssertionError(f"unsupported schema {schema}")


def _conditional(
    schema: dict[str, Any], out: dict[str, Any], root: dict[str, Any], rnd: random.Random
) -> dict[str, Any]:
    """Apply ``if``/``then``/``else`` (cert.renew: reason mta-sts exactly when data.domain is given): the branch's
    ``const`` properties set, its ``not: {const}`` properties drawn again from the enum without that value."""
    if "if" not in schema:
        return out
    branch = schema["then"] if set(schema["if"].get("required", ())) <= out.keys() else schema.get("else", {})
    for k, rule in branch.get("properties", {}).items():
        if "const" in rule:
            out[k] = rule["const"]
        elif "not" in rule and out.get(k) == rule["not"].get("const"):
            choices = [v for v in _resolve(schema["properties"][k], root)["enum"] if v != rule["not"]["const"]]
            out[k] = rnd.choice(choices)
    return out


def _fix_quotas(data: dict[str, Any]) -> dict[str, Any]:
    """domain.created: defquota <= maxquota <= quota, the one cross-field rule (sorted, so still in range)."""
    plan = data.get("plan")
    if isinstance(plan, dict):
        low, mid, high = sorted((plan["default_mailbox_quota_mib"], plan["mailbox_quota_mib"], plan["quota_mib"]))
        plan.update(default_mailbox_quota_mib=low, mailbox_quota_mib=mid, quota_mib=high)
    return data


def _respell(domain: str, rnd: random.Random) -> str:
    """Another spelling of a (possibly already spelled) domain: upper case, or a trailing dot."""
    dotted = domain if domain.endswith(DOTS) else domain + "."
    return rnd.choice([domain.upper() if domain.isascii() else domain, dotted, domain])


def make_event(event_type: str, rnd: random.Random) -> dict[str, Any]:
    """A structured CloudEvent the contract accepts: data from the type's schema, subject = the data's domain in
    another spelling (or the node), optional dataschema and extension attributes."""
    schema = SCHEMAS[event_type]
    data = _fix_quotas(from_schema(schema, schema, rnd))
    subject = _respell(data["domain"], rnd) if "domain" in data else data["node"]
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": match(r"[!-~]{1,128}", rnd, cap=40) if rnd.random() < 0.5 else str(random_uuid(rnd)),
        "source": rnd.choice(["urn:mailplane:billing", "urn:mailplane:scheduler", "/billing", "x", "https://b.test/x"]),
        "type": event_type,
        "time": random_time(rnd),
        "subject": subject,
        "datacontenttype": "application/json",
        "data": data,
    }
    if rnd.random() < 0.5:
        event["dataschema"] = f"https://mailplane.invalid/schemas/{event_type}.json"
    for _ in range(rnd.choice((0, 0, 1, 2))):  # CloudEvents extension attributes
        name = match(r"[a-z0-9]{1,20}", rnd, cap=20)
        if name not in ENVELOPE_ATTRIBUTES:
            event[name] = rnd.choice([random_text(rnd, 40), rnd.randint(-(2**31), 2**31 - 1), True])
    return event


def random_uuid(rnd: random.Random) -> str:
    return str(uuid.UUID(int=rnd.getrandbits(128), version=4))


def random_text(rnd: random.Random, size: int) -> str:
    """Text from every plane (no surrogates): ASCII, controls, Latin, RTL, CJK, emoji."""
    ranges = [
        (0x20, 0x7E),
        (0, 0x1F),
        (0xA0, 0x24F),
        (0x590, 0x6FF),
        (0x2000, 0x206F),
        (0x4E00, 0x4E80),
        (0x1F600, 0x1F64F),
    ]
    return "".join(chr(rnd.randint(*rnd.choice(ranges))) for _ in range(rnd.randint(0, size)))


valid_events = st.builds(make_event, st.sampled_from(INBOUND_TYPES), seeds.map(random.Random))
samples = st.sampled_from(list(SAMPLES.values()))


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value in ``doc`` (dict keys and list indexes), the root excluded."""
    out: list[tuple[Any, ...]] = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        out.append((*prefix, key))
        out.extend(paths(value, (*prefix, key)))
    return out


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def random_json(rnd: random.Random, depth: int = 2) -> Any:
    """A JSON value of any type (containers at most ``depth`` deep)."""
    kind = rnd.choice(["null", "bool", "int", "float", "str", "list", "dict"] if depth else ["null", "int", "str"])
    if kind == "list":
        return [random_json(rnd, depth - 1) for _ in range(rnd.randint(0, 3))]
    if kind == "dict":
        return {random_text(rnd, 6): random_json(rnd, depth - 1) for _ in range(rnd.randint(0, 3))}
    return {
        "null": None,
        "bool": rnd.random() < 0.5,
        "int": rnd.choice([0, -1, 1, 2**31, 2**63, -(2**63), rnd.randint(-(10**20), 10**20)]),
        "float": rnd.choice([0.0, -0.0, 1.0, 1.5, 1e308, -1e-308, 3.0]),
        "str": random_text(rnd, 12),
    }[kind]


def huge_value(rnd: random.Random) -> Any:
    return rnd.choice(
        [
            2**53 + rnd.randint(0, 10**6),
            -(2**63),
            10**400,
            1e308,
            random_text(rnd, 20) * 2000,
            "x" * (MAX_BODY // 2),
            ["x"] * 5000,
            {str(i): i for i in range(2000)},
        ]
    )


MUTATIONS = ("remove", "retype", "extra", "huge", "hostile-name", "hostile-text")


def mutate(event: dict[str, Any], how: str, rnd: random.Random) -> dict[str, Any]:
    """``event`` (copied) with one field removed, retyped, added to, made huge, or made hostile."""
    event = json.loads(json.dumps(event))
    path = rnd.choice(paths(event))
    parent, key = _at(event, path[:-1]), path[-1]
    if how == "remove" and isinstance(parent, dict):
        del parent[key]
    elif how == "retype":
        value = random_json(rnd)
        parent[key] = value if type(value) is not type(parent[key]) else [value]
    elif how == "extra":
        target = _at(event, path)
        target = target if isinstance(target, dict | list) else parent
        if isinstance(target, dict):
            target[rnd.choice([random_text(rnd, 12) or "x", "x", "domain", "extra"])] = random_json(rnd)
        else:
            target.append(random_json(rnd))
    elif how == "huge":
        parent[key] = huge_value(rnd)
    elif how == "hostile-name":
        parent[key] = make_hostile(rnd.choice(HOSTILE_KINDS), rnd)
    else:
        value = parent[key]
        text = value if isinstance(value, str) else json.dumps(value)
        at = rnd.randint(0, len(text))
        parent[key] = text[:at] + rnd.choice(HOSTILE_CHARS) + text[at:]
    return event


base_events = st.one_of(valid_events, samples)
# (mutation, event)
mutated_events = st.tuples(st.sampled_from(MUTATIONS), base_events, seeds.map(random.Random)).map(
    lambda t: (t[0], mutate(t[1], t[0], t[2]))
)


def dumps(event: Any) -> bytes:
    """UTF-8 JSON as a producer would send it (lone surrogates pass through, to be refused)."""
    return json.dumps(event, ensure_ascii=False).encode("utf-8", "surrogatepass")


BAD_UTF8 = (b"\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80\x80", b"\xc3")
BODY_KINDS = ("splice", "nul", "truncate", "deep", "big", "dup", "nan", "array", "bom", "junk")


def make_hostile_body(kind: str, event: dict[str, Any], rnd: random.Random) -> bytes:
    """A body that must be refused: invalid UTF-8 spliced into a string, a NUL byte, truncated, nested deeper than
    any parser should follow, over the size limit, a duplicate key, NaN, not an object, a BOM, or random bytes."""
    body = dumps(event)
    if kind == "splice":
        at = rnd.choice([i for i, byte in enumerate(body) if byte == ord('"')]) + 1
        return body[:at] + rnd.choice(BAD_UTF8) + body[at:]
    if kind == "nul":
        at = rnd.randint(0, len(body))
        return body[:at] + b"\x00" + body[at:]
    if kind == "truncate":
        return body[: rnd.randint(0, len(body) - 1)]
    if kind == "deep":
        depth = rnd.choice([990, 1000, 5000, 100_000])
        inner, close = rnd.choice([(b"[", b"]"), (b'{"data":', b"}")])
        return inner * depth + b"1" + close * depth
    if kind == "big":
        return body[:-1] + b', "pad": "' + b"x" * (MAX_BODY - len(body) + rnd.randint(0, 1000)) + b'"}'
    if kind == "dup":
        return body[:-1] + b', "id": "again"}'
    if kind == "nan":
        return body[:-1] + b', "n": ' + rnd.choice([b"NaN", b"Infinity", b"-Infinity"]) + b"}"
    if kind == "array":
        return b"[" + body + b"]"
    if kind == "bom":
        return b"\xef\xbb\xbf" + body
    return rnd.randbytes(rnd.randint(0, 200))


hostile_bodies = st.builds(make_hostile_body, st.sampled_from(BODY_KINDS), base_events, seeds.map(random.Random))


def write(directory: Path, body: bytes) -> Path:
    """``body`` in a file of ``directory`` (overwritten each example)."""
    path = directory / "event.json"
    path.write_bytes(body)
    return path
