"""Domain names: accept U-labels and A-labels, return lowercase A-labels (IDNA 2008 via ``idna``), refuse the rest."""

from __future__ import annotations

import re
from collections.abc import Iterable

import idna
from publicsuffixlist import PublicSuffixList

from functions._core.platform.errors import EventInvalid

_LDH = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_PSL = PublicSuffixList()


def _show(raw: str) -> str:
    """Quote untrusted input for an error message, bounded in length."""
    return repr(raw if len(raw) <= 80 else raw[:77] + "...")


def normalize_domain(raw: object) -> str:
    """Return the lowercase A-label form of a customer domain name.

    Raises:
        EventInvalid: not a string, empty, a wildcard, a single label, an over-long name or label, characters
            outside IDNA 2008 (quotes, spaces, newlines, semicolons, underscores ...), or a public suffix.
    """
    if not isinstance(raw, str):
        raise EventInvalid("domain must be a string")
    name = raw[:-1] if raw.endswith(".") else raw
    if not name or name != name.strip() or any(c.isspace() for c in name):
        raise EventInvalid(f"domain {_show(raw)} is empty or contains whitespace")
    if "*" in name:
        raise EventInvalid(f"domain {_show(raw)} is a wildcard")
    try:
        alabel = idna.encode(name, uts46=True, transitional=False).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as exc:
        raise EventInvalid(f"domain {_show(raw)} is not a valid IDNA 2008 name: {exc}") from None
    labels = alabel.split(".")
    if len(labels) < 2:
        raise EventInvalid(f"domain {_show(raw)} must have at least two labels")
    if len(alabel) > 253 or any(not _LDH.match(label) for label in labels):
        raise EventInvalid(f"domain {_show(raw)} has an invalid or over-long label")
    if _PSL.is_public(alabel):
        raise EventInvalid(f"domain {_show(raw)} is a public suffix")
    return alabel


def is_within(name: str, zones: Iterable[str]) -> str | None:
    """Return the zone of ``zones`` that ``name`` equals or lies under, or None."""
    for zone in zones:
        z = zone.rstrip(".").lower()
        if name == z or name.endswith("." + z):
            return z
    return None


def to_unicode(alabel: str) -> str:
    """Return the U-label form of a normalised name for display."""
    try:
        return idna.decode(alabel)
    except idna.IDNAError:
        return alabel
