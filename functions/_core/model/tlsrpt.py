"""TLS reports (RFC 8460): from the bytes a reporter sent to the report as mailplane keeps it (no I/O).

A report arrives as a mail message (RFC 5322, MIME; the report attached as ``application/tlsrpt+gzip`` or
``application/tlsrpt+json``), or as the gzip or JSON file itself. ``parse`` refuses, with a reason, anything that
is not exactly one well-formed report: input larger than ``limit`` bytes (decompressed, so a gzip bomb stops at the
limit; the compressed part and the message are bounded too), JSON that is malformed, nested deeper than
``MAX_DEPTH``, with repeated keys, NaN or numbers longer than ``MAX_DIGITS``, fields of the wrong type, counts that
are negative or above ``MAX_COUNT``, over-long or control-character names, a date range that ends before it starts
or spans more than ``MAX_RANGE``. Nothing of the raw report is kept: ``Report`` holds the counts, the failure types
and bounded, validated names. Every untrusted string in a reason passes through ``show`` (escaped, bounded).
"""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import hashlib
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from typing import Any

from functions._core.platform.errors import EventInvalid, PermanentError
from functions._core.platform.names import normalize_domain

MAX_DEPTH = 10  # RFC 8460's structure is 5 deep (report, policies, entry, failure-details, detail)
MAX_DIGITS = 15
MAX_COUNT = 10**12  # sessions per report
MAX_POLICIES = 100
MAX_DETAILS = 1000
MAX_NAME = 255
MAX_RANGE = dt.timedelta(days=7)
POLICY_TYPES = ("sts", "tlsa", "no-policy-found")
REPORT_TYPES = ("application/tlsrpt+gzip", "application/tlsrpt+json")
_RESULT_TYPE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_HOST = re.compile(r"^[A-Za-z0-9_.:*-]{1,253}$")  # a host name, possibly a policy's wildcard, or an address


class ReportRefused(PermanentError):
    """A TLS report that is not accepted: the reason says why; nothing was stored."""


def show(value: object, limit: int = 80) -> str:
    """Untrusted input quoted for a message or a log line: control characters escaped, bounded in length."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text)


@dataclass(frozen=True)
class PolicyResult:
    """One entry of ``policies``: the policy applied and the sessions under it."""

    domain: str  # policy-domain, normalised (lowercase A-label)
    policy_type: str  # sts | tlsa | no-policy-found
    successful: int
    failed: int
    failures: tuple[tuple[str, int], ...] = ()  # result-type -> failed sessions, summed, sorted
    mx: tuple[tuple[str, int], ...] = ()  # receiving-mx-hostname -> failed sessions, summed, sorted


@dataclass(frozen=True)
class Report:
    organisation: str
    report_id: str
    contact: str
    start: dt.datetime  # UTC
    end: dt.datetime
    policies: tuple[PolicyResult, ...]
    fingerprint: str  # sha256 of the report's canonical JSON: the same id with other content is refused

    @property
    def day(self) -> dt.date:
        """The UTC day the report is filed under: the day its range starts."""
        return self.start.date()

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(sorted({p.domain for p in self.policies}))


# ---------------------------------------------------------------- from bytes to JSON payloads


def payload(raw: bytes, limit: int) -> bytes:
    """The report's JSON bytes from a mail message, a gzip file or a JSON file.

    Raises:
        ReportRefused: too large, not a report, a message with no or several report parts, a broken gzip stream.
    """
    if len(raw) > 2 * limit + 65536:
        raise ReportRefused(f"input of {len(raw)} bytes is larger than {2 * limit + 65536} bytes")
    if raw[:2] == b"\x1f\x8b":
        return gunzip(raw, limit)
    if raw.lstrip()[:1] in (b"{", b"["):
        if len(raw) > limit:
            raise ReportRefused(f"JSON report of {len(raw)} bytes is larger than {limit} bytes")
        return raw
    return _from_message(raw, limit)


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress one gzip stream, stopping at ``limit`` bytes (a gzip bomb is refused without being inflated).

    Raises:
        ReportRefused: larger than ``limit`` compressed or decompressed, truncated, corrupt, or trailing data.
    """
    if len(data) > limit:
        raise ReportRefused(f"compressed report of {len(data)} bytes is larger than {limit} bytes")
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ReportRefused(f"corrupt gzip data: {show(str(exc))}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise ReportRefused(f"gzip data decompresses to more than {limit} bytes (refused unread: a gzip bomb?)")
    if not d.eof:
        raise ReportRefused("truncated gzip data")
    if d.unused_data:
        raise ReportRefused("data after the end of the gzip stream")
    return out


def _from_message(raw: bytes, limit: int) -> bytes:
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    if not msg.keys() or msg.defects and not msg.get("From"):
        raise ReportRefused("neither a mail message nor a gzip or JSON report")
    parts = [p for p in _walk(msg) if p.get_content_type() in REPORT_TYPES]
    if not parts:
        raise ReportRefused(f"mail message without a report part ({' or '.join(REPORT_TYPES)})")
    if len(parts) > 1:
        raise ReportRefused(f"mail message with {len(parts)} report parts (RFC 8460: exactly one)")
    body = parts[0].get_payload(decode=True)
    if not isinstance(body, bytes) or not body:
        raise ReportRefused("the report part of the message is empty")
    if parts[0].get_content_type() == "application/tlsrpt+gzip":
        return gunzip(body, limit)
    if len(body) > limit:
        raise ReportRefused(f"JSON report of {len(body)} bytes is larger than {limit} bytes")
    return body


def _walk(msg: Message, depth: int = 0) -> Iterator[Message]:
    """The message's parts, at most ``MAX_DEPTH`` multiparts deep."""
    if depth > MAX_DEPTH:
        raise ReportRefused(f"MIME structure nested deeper than {MAX_DEPTH}")
    if not msg.is_multipart():
        yield msg
        return
    sub = msg.get_payload()
    for part in sub if isinstance(sub, list) else []:
        if isinstance(part, Message):
            yield from _walk(part, depth + 1)


def header_domain(raw: bytes) -> str | None:
    """The ``TLS-Report-Domain`` header of a mail message (RFC 8460 §5.3), None when absent or not a message."""
    if raw[:2] == b"\x1f\x8b" or raw.lstrip()[:1] in (b"{", b"["):
        return None
    value = (
        email.parser.BytesParser(policy=email.policy.compat32)
        .parsebytes(raw, headersonly=True)
        .get("TLS-Report-Domain")
    )
    return str(value).strip() if value is not None else None


# ---------------------------------------------------------------- JSON, strictly


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ReportRefused(f"key {show(k)} appears twice in one object")
        out[k] = v
    return out


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ReportRefused(f"number with more than {MAX_DIGITS} digits")
    return int(text)


def _float(text: str) -> float:
    if len(text) > 32:
        raise ReportRefused("number longer than 32 characters")
    return float(text)


def _constant(text: str) -> Any:
    raise ReportRefused(f"{text} is not JSON")


def load_json(data: bytes) -> Any:
    """Strict JSON: UTF-8, depth-limited, no repeated keys, no NaN/Infinity, no over-long numbers.

    Raises:
        ReportRefused: any of these.
    """
    depth = _depth(data)
    if depth > MAX_DEPTH:
        raise ReportRefused(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        text = data.decode("utf-8")
        return json.loads(
            text, object_pairs_hook=_no_duplicates, parse_int=_int, parse_float=_float, parse_constant=_constant
        )
    except UnicodeDecodeError:
        raise ReportRefused("report is not UTF-8") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ReportRefused(f"malformed JSON: {show(str(exc))}") from None


def _depth(data: bytes) -> int:
    """The deepest bracket nesting outside strings (so deep input is refused before the parser recurses)."""
    deepest = level = 0
    in_str = esc = False
    for b in data:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            level += 1
            deepest = max(deepest, level)
            if deepest > MAX_DEPTH:
                return deepest
        elif b in (0x5D, 0x7D):
            level -= 1
    return deepest


# ---------------------------------------------------------------- the report's fields


def _get(obj: dict[str, Any], key: str, kind: type, where: str, *, required: bool = True) -> Any:
    if key not in obj:
        if required:
            raise ReportRefused(f"{where}: {key} is missing")
        return None
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ReportRefused(f"{where}: {key} must be {_KINDS.get(kind, kind.__name__)}, not {type(value).__name__}")
    return value


_KINDS = {str: "a string", int: "an integer", dict: "an object", list: "an array"}


def _name(obj: dict[str, Any], key: str, where: str, *, required: bool = True, limit: int = MAX_NAME) -> str:
    value: str | None = _get(obj, key, str, where, required=required)
    if value is None:
        return ""
    if not value.strip() and required:
        raise ReportRefused(f"{where}: {key} is empty")
    if len(value) > limit:
        raise ReportRefused(f"{where}: {key} is longer than {limit} characters ({show(value)})")
    if any(
        ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
        for c in value
    ):
        raise ReportRefused(f"{where}: {key} contains control characters ({show(value)})")
    return value


def _count(obj: dict[str, Any], key: str, where: str) -> int:
    value: int = _get(obj, key, int, where)
    if not 0 <= value <= MAX_COUNT:
        raise ReportRefused(f"{where}: {key} = {value} is outside 0..{MAX_COUNT}")
    return value


def _time(obj: dict[str, Any], key: str) -> dt.datetime:
    text = _name(obj, key, "date-range", limit=40)
    try:
        t = dt.datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ReportRefused(f"date-range: {key} {show(text)} is not an RFC 3339 date-time") from None
    if t.tzinfo is None:
        raise ReportRefused(f"date-range: {key} {show(text)} has no time zone offset")
    return t.astimezone(dt.UTC)


def _range(doc: dict[str, Any], now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    rng: dict[str, Any] = _get(doc, "date-range", dict, "report")
    start, end = _time(rng, "start-datetime"), _time(rng, "end-datetime")
    if end <= start:
        raise ReportRefused(f"date-range ends ({end:%FT%TZ}) before it starts ({start:%FT%TZ})")
    if end - start > MAX_RANGE:
        raise ReportRefused(f"date-range spans {end - start}, more than {MAX_RANGE.days} days")
    if start > now + dt.timedelta(days=1):
        raise ReportRefused(f"date-range starts in the future ({start:%FT%TZ})")
    return start, end


def _details(entry: dict[str, Any], where: str) -> tuple[dict[str, int], dict[str, int]]:
    details: list[Any] | None = _get(entry, "failure-details", list, where, required=False)
    if details is not None and len(details) > MAX_DETAILS:
        raise ReportRefused(f"{where}: more than {MAX_DETAILS} failure-details")
    kinds: dict[str, int] = {}
    hosts: dict[str, int] = {}
    for i, d in enumerate(details or ()):
        at = f"{where}.failure-details[{i}]"
        if not isinstance(d, dict):
            raise ReportRefused(f"{at} must be an object, not {type(d).__name__}")
        kind = _name(d, "result-type", at, limit=64)
        if not _RESULT_TYPE.fullmatch(kind):
            raise ReportRefused(f"{at}: result-type {show(kind)} is not a result type")
        n = _count(d, "failed-session-count", at)
        for key in ("sending-mta-ip", "receiving-ip", "receiving-mx-helo", "additional-information"):
            _name(d, key, at, required=False, limit=1024)
        host = _name(d, "receiving-mx-hostname", at, required=False).rstrip(".").lower()
        if host and not _HOST.fullmatch(host):
            raise ReportRefused(f"{at}: receiving-mx-hostname {show(host)} is not a host name")
        kinds[kind] = kinds.get(kind, 0) + n
        if host:
            hosts[host] = hosts.get(host, 0) + n
    return kinds, hosts


def _policy(entry: Any, i: int) -> PolicyResult:
    where = f"policies[{i}]"
    if not isinstance(entry, dict):
        raise ReportRefused(f"{where} must be an object, not {type(entry).__name__}")
    pol: dict[str, Any] = _get(entry, "policy", dict, where)
    ptype = _name(pol, "policy-type", f"{where}.policy", limit=32)
    if ptype not in POLICY_TYPES:
        raise ReportRefused(f"{where}.policy: policy-type {show(ptype)} is not one of {', '.join(POLICY_TYPES)}")
    for key in ("policy-string", "mx-host"):
        items: list[Any] = _get(pol, key, list, f"{where}.policy", required=False) or []
        if len(items) > MAX_DETAILS or not all(isinstance(s, str) and len(s) <= 1024 for s in items):
            raise ReportRefused(f"{where}.policy: {key} must be an array of at most {MAX_DETAILS} short strings")
    raw_domain = _name(pol, "policy-domain", f"{where}.policy")
    try:
        domain = normalize_domain(raw_domain)
    except EventInvalid as exc:
        raise ReportRefused(f"{where}.policy: policy-domain: {exc}") from None
    summ: dict[str, Any] = _get(entry, "summary", dict, where)
    ok = _count(summ, "total-successful-session-count", f"{where}.summary")
    failed = _count(summ, "total-failure-session-count", f"{where}.summary")
    kinds, hosts = _details(entry, where)
    if sum(kinds.values()) > failed:
        raise ReportRefused(f"{where}: failure-details count more failed sessions than total-failure-session-count")
    return PolicyResult(domain, ptype, ok, failed, tuple(sorted(kinds.items())), tuple(sorted(hosts.items())))


def parse(data: bytes, now: dt.datetime) -> Report:
    """The report in ``data`` (JSON bytes, see ``payload``), validated field by field.

    Raises:
        ReportRefused: see the module docstring; the reason names the field.
    """
    doc = load_json(data)
    if not isinstance(doc, dict):
        raise ReportRefused(f"report must be a JSON object, not {type(doc).__name__}")
    org = _name(doc, "organization-name", "report")
    report_id = _name(doc, "report-id", "report")
    contact = _name(doc, "contact-info", "report", required=False)
    start, end = _range(doc, now)
    entries: list[Any] = _get(doc, "policies", list, "report")
    if not entries or len(entries) > MAX_POLICIES:
        raise ReportRefused(f"report: policies must hold 1 to {MAX_POLICIES} entries, not {len(entries)}")
    policies = tuple(_policy(e, i) for i, e in enumerate(entries))
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return Report(org, report_id, contact, start, end, policies, hashlib.sha256(canonical).hexdigest())


def read(raw: bytes, limit: int, now: dt.datetime) -> Report:
    """``parse(payload(raw))``, and a message's ``TLS-Report-Domain`` header must name the report's domain.

    Raises:
        ReportRefused: see ``payload`` and ``parse``.
    """
    report = parse(payload(raw, limit), now)
    header = header_domain(raw)
    if header is not None:
        try:
            named = normalize_domain(header)
        except EventInvalid:
            raise ReportRefused(f"TLS-Report-Domain header {show(header)} is not a domain name") from None
        if named not in report.domains:
            raise ReportRefused(f"TLS-Report-Domain {show(named)} is not the report's policy-domain")
    return report
