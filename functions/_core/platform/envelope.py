"""CloudEvents 1.0 envelopes (A8): parse and validate inbound bodies, build validated outbound events.

A body is checked in this order, and the first failure raises ``EventInvalid`` with a one-line reason that starts
with the JSON path (``data.plan.mailboxes: -1 is less than the minimum of 1``):

1. size (``MAX_BODY``), UTF-8, JSON (no duplicate keys, NaN or unpaired surrogates), a JSON object;
2. ``schemas/envelope.schema.json`` (CloudEvents attributes, ``type`` is the routing key); a ``pattern`` is matched
   with ECMA-262's ``$`` (end of string), as JSON Schema specifies, not Python's (which allows a final newline);
3. ``schemas/<type>.schema.json`` against ``data``;
4. every ``domain`` field normalised to its lowercase A-label (``normalize_domain``), except in ``domain.failed``,
   whose domain may be the invalid input it reports;
5. the subject: the normalised domain for ``domain.*``/``key.*``, the node for ``node.*``;
6. cross-field rules a schema cannot state (Mailcow: defquota <= maxquota <= quota).

Schemas are read once, on first use, from ``$MAILPLANE_SCHEMAS_DIR`` or else the repository's ``schemas/``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
from jsonschema.exceptions import ValidationError, best_match  # type: ignore[import-untyped]

from functions._core.platform.errors import ConfigError, EventInvalid
from functions._core.platform.names import normalize_domain

__all__ = [
    "CONTENT_TYPE",
    "INBOUND_TYPES",
    "MAX_BODY",
    "OUTBOUND_TYPES",
    "Envelope",
    "build",
    "dataschema_uri",
    "fingerprint",
    "parse",
    "schemas_dir",
]

INBOUND_TYPES: Final = (
    "domain.created",
    "domain.deleted",
    "domain.adopt",
    "key.rotate",
    "node.down",
    "node.up",
    "cert.renew",
)
OUTBOUND_TYPES: Final = ("domain.provisioned", "domain.failed", "key.rotated", "node.drained", "node.restored")
MAX_BODY: Final = 256 * 1024
CONTENT_TYPE: Final = "application/cloudevents+json"
SCHEMA_BASE: Final = "https://mailplane.invalid/schemas/"
SCHEMAS_ENV: Final = "MAILPLANE_SCHEMAS_DIR"

# The data field the subject must equal (after normalisation); domain.failed reports invalid input: no rule.
_SUBJECT_FIELD: Final[Mapping[str, str]] = {
    "domain.created": "domain",
    "domain.deleted": "domain",
    "domain.provisioned": "domain",
    "key.rotate": "domain",
    "key.rotated": "domain",
    "node.down": "node",
    "node.up": "node",
    "cert.renew": "node",
    "node.drained": "node",
    "node.restored": "node",
}
_RAW_DOMAIN_TYPES: Final = frozenset({"domain.failed"})
_SHOW = 80  # at most this many characters of untrusted input in a message
_MAX_MESSAGE = 300

_DATE_TIME = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_URI_CHARS = re.compile(r"^[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+$")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class Envelope:
    """A validated event. ``data`` is a deep read-only copy with normalised domains; ``raw`` is the body as parsed."""

    id: str
    type: str
    source: str
    time: datetime
    subject: str
    data: Mapping[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False)
    publisher: str | None = None


def parse(body: bytes, *, publisher: str | None = None) -> Envelope:
    """Decode and validate one structured-mode CloudEvent; ``publisher`` is the validated AMQP ``user_id``.

    Raises:
        EventInvalid: too large, not JSON, schema-invalid, a bad domain name, or a subject that does not match.
        ConfigError: the schemas directory or a schema file is missing or broken.
    """
    return _validate(_decode(body), publisher)


def build(
    type: str,
    subject: str,
    data: Mapping[str, Any],
    *,
    source: str,
    id: str | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """Return a validated structured-mode CloudEvent (normalised domains, ``dataschema`` set) ready to serialise.

    ``id`` defaults to a random UUID (pass one to make the event deterministic); ``time`` defaults to now.

    Raises:
        EventInvalid: the event does not satisfy its schemas (a bug in the caller).
        ValueError: ``time`` is naive.
    """
    when = datetime.now(UTC) if time is None else time
    if when.utcoffset() is None:
        raise ValueError("time must be timezone-aware")
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()) if id is None else id,
        "source": source,
        "type": type,
        "time": when.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "subject": subject,
        "datacontenttype": "application/json",
        "dataschema": dataschema_uri(type),
        "data": json.loads(json.dumps(data, default=dict)),
    }
    env = _validate(event, None)
    event["subject"] = env.subject
    event["data"] = json.loads(json.dumps(env.data, default=dict))
    return event


def fingerprint(env: Envelope) -> str:
    """Return the sha256 (hex) of canonical JSON of type, subject and data: key order and IDN spelling do not count."""
    doc = {"type": env.type, "subject": env.subject, "data": env.data}
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=dict)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def dataschema_uri(event_type: str) -> str:
    """Return the ``$id`` of the data schema of ``event_type`` (the CloudEvents ``dataschema``)."""
    return f"{SCHEMA_BASE}{event_type}.json"


def schemas_dir() -> Path:
    """Return ``$MAILPLANE_SCHEMAS_DIR`` if set, else the repository's ``schemas/`` beside ``functions/``.

    Raises:
        ConfigError: the variable is set but empty.
    """
    override = os.environ.get(SCHEMAS_ENV)
    if override is None:
        return _repo_schemas()
    if not override:
        raise ConfigError(f"{SCHEMAS_ENV} is set but empty")
    return Path(override)


@cache
def _repo_schemas() -> Path:
    """The repository's ``schemas/`` (resolved once: ``resolve()`` costs a syscall per path part on every event)."""
    return Path(__file__).resolve().parents[3] / "schemas"


# --- decoding -------------------------------------------------------------------------------------------------------


def _decode(body: bytes) -> dict[str, Any]:
    """Bytes -> JSON object, refusing what different parsers could read differently."""
    if len(body) > MAX_BODY:
        raise EventInvalid(f"body: {len(body)} bytes exceeds the limit of {MAX_BODY}")
    try:
        text = bytes(body).decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeError:
        raise EventInvalid("body: not valid UTF-8 (or an unpaired surrogate escape)") from None
    except json.JSONDecodeError as exc:
        raise EventInvalid(f"body: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise EventInvalid(f"body: not acceptable JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise EventInvalid(f"event: the body must be a JSON object, not {type(doc).__name__}")
    return doc


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise EventInvalid(f"body: duplicate key {_show(key)}")
        out[key] = value
    return out


def _no_constant(name: str) -> NoReturn:
    raise EventInvalid(f"body: {name} is not a JSON number")


# --- validation -----------------------------------------------------------------------------------------------------


def _validate(raw: dict[str, Any], publisher: str | None) -> Envelope:
    schemas = _load(schemas_dir())
    _check(schemas.envelope, raw, "")
    event_type: str = raw["type"]
    _check(schemas.data[event_type], raw["data"], "data")
    if "dataschema" in raw and raw["dataschema"] != dataschema_uri(event_type):
        raise EventInvalid(f"dataschema: {_show(raw['dataschema'])} is not {dataschema_uri(event_type)!r}")
    data = copy.deepcopy(raw["data"])
    if event_type not in _RAW_DOMAIN_TYPES:
        _normalise_domains(data, "data")
    subject = _checked_subject(event_type, raw["subject"], data)
    if event_type == "domain.created":
        _check_quotas(data["plan"])
    return Envelope(
        id=raw["id"],
        type=event_type,
        source=raw["source"],
        time=_to_datetime(raw["time"]),
        subject=subject,
        data=_freeze(data),
        raw=raw,
        publisher=publisher,
    )


def _check(validator: Any, instance: object, prefix: str) -> None:
    error = best_match(validator.iter_errors(instance))
    if error is not None:
        where = _path(prefix, error.absolute_path) or "event"
        raise EventInvalid(_bounded(f"{where}: {_describe(error)}"))


def _path(prefix: str, parts: Any) -> str:
    out = prefix
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))[: _SHOW + 1]
    return out


def _describe(error: Any) -> str:
    """jsonschema's message with the untrusted instance clipped and long lists summarised."""
    instance, kind, expected = error.instance, error.validator, error.validator_value
    if kind == "additionalProperties" and expected is False:
        known = error.schema.get("properties", {})
        extra = [_show(k) for k in instance if k not in known]
        return f"additional properties are not allowed ({', '.join(extra[:3])} unexpected)"
    if kind == "pattern" and "propertyNames" in error.schema_path:
        return f"attribute name {_show(instance)} is not allowed (extensions: lowercase a-z0-9, at most 20)"
    if kind == "const":
        return f"{_show(instance)} is not {expected!r}"
    if kind == "enum" and len(expected) > 4:
        return f"{_show(instance)} is not one of the {len(expected)} allowed values"
    message: str = error.message
    shown = repr(instance)
    return _show(instance) + message[len(shown) :] if message.startswith(shown) else message


def _normalise_domains(node: Any, path: str) -> None:
    """Replace every ``domain`` string in ``node`` (in place) by its normalised A-label."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "domain" and isinstance(value, str):
                node[key] = _domain(value, f"{path}.{key}")
            else:
                _normalise_domains(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _normalise_domains(value, f"{path}[{index}]")


def _domain(value: str, path: str) -> str:
    try:
        return normalize_domain(value)
    except EventInvalid as exc:
        raise EventInvalid(_bounded(f"{path}: {exc}")) from None


def _checked_subject(event_type: str, subject: str, data: Mapping[str, Any]) -> str:
    name = _SUBJECT_FIELD.get(event_type)
    if event_type == "cert.renew" and "domain" in data:  # the MTA-STS certificate of a domain, not a node's
        name = "domain"
    if name is None:
        return subject
    got = _domain(subject, "subject") if name == "domain" else subject
    if got != data[name]:
        raise EventInvalid(f"subject: {_show(subject)} does not match data.{name} {_show(data[name])}")
    return got


def _check_quotas(plan: Mapping[str, int]) -> None:
    default, largest, total = plan["default_mailbox_quota_mib"], plan["mailbox_quota_mib"], plan["quota_mib"]
    if default > largest:
        raise EventInvalid(f"data.plan.default_mailbox_quota_mib: {default} exceeds mailbox_quota_mib {largest}")
    if largest > total:
        raise EventInvalid(f"data.plan.mailbox_quota_mib: {largest} exceeds quota_mib {total}")


def _to_datetime(value: str) -> datetime:
    return datetime.fromisoformat(value.upper())


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _show(value: object) -> str:
    """repr() of untrusted input, at most ``_SHOW`` characters."""
    text = repr(value)
    return text if len(text) <= _SHOW else text[: _SHOW - 3] + "..."


def _bounded(message: str) -> str:
    line = " ".join(message.split())
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 3] + "..."


# --- schemas --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Schemas:
    envelope: Any
    data: Mapping[str, Any]


def _format_checker() -> Any:
    checker = jsonschema.FormatChecker(formats=())
    checker.checks("date-time")(_is_date_time)
    checker.checks("uri-reference")(_is_uri_reference)
    checker.checks("uri")(_is_uri)
    return checker


def _is_uri(value: object) -> bool:
    """An absolute URI (not a string: the ``type`` keyword's business; a list here crashed ``urlsplit``)."""
    return not isinstance(value, str) or (_is_uri_reference(value) and bool(urlsplit(value).scheme))


def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _DATE_TIME.fullmatch(value):
        return False
    try:
        _to_datetime(value)
    except ValueError:
        return False
    return True


def _is_uri_reference(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _URI_CHARS.fullmatch(value) or _BAD_PERCENT.search(value):
        return False
    try:
        urlsplit(value)
    except ValueError:
        return False
    return True


def _strict_int(_checker: Any, instance: object) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


def _ecma_pattern(validator: Any, pattern: str, instance: object, _schema: Any) -> Iterator[Any]:
    """JSON Schema's ``pattern`` with ECMA-262's ``$`` (the end of the string). Python's ``$`` also matches before a
    final newline, so with jsonschema's own check ``^[a-z0-9]+$`` accepted the node ``"pmg1\\n"``."""
    if isinstance(instance, str) and not _ecma(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def _ecma(pattern: str) -> re.Pattern[str]:
    """``pattern`` with every ``$`` outside a character class (and not escaped) replaced by ``\\Z``."""
    out, in_class, i = [], False, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        in_class = (in_class or char == "[") and char != "]"
        out.append(r"\Z" if char == "$" and not in_class else char)
        i += 1
    return re.compile("".join(out))


@cache
def _load(directory: Path) -> _Schemas:
    """Read and check every schema in ``directory`` once.

    Raises:
        ConfigError: a schema is missing, unreadable, invalid, or has the wrong ``$id``.
    """
    base = jsonschema.Draft202012Validator
    cls = jsonschema.validators.extend(
        base,
        validators={"pattern": _ecma_pattern},
        type_checker=base.TYPE_CHECKER.redefine("integer", _strict_int),
    )
    checker = _format_checker()
    envelope = _read(directory, "envelope", base)
    data = {name: _read(directory, name, base) for name in INBOUND_TYPES + OUTBOUND_TYPES}
    return _Schemas(
        envelope=cls(envelope, format_checker=checker),
        data={name: cls(schema, format_checker=checker) for name, schema in data.items()},
    )


def _read(directory: Path, name: str, base: Any) -> dict[str, Any]:
    path = directory / f"{name}.schema.json"
    try:
        schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        base.check_schema(schema)
    except (OSError, ValueError, jsonschema.SchemaError) as exc:
        raise ConfigError(f"schema {path}: {type(exc).__name__}: {str(exc)[:200]} (set {SCHEMAS_ENV}?)") from None
    if schema.get("$id") != dataschema_uri(name):
        raise ConfigError(f"schema {path}: $id must be {dataschema_uri(name)!r}")
    return schema
