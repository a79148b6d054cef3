"""Domain names: accept U-labels and A-labels, return lowercase A-labels (IDNA 2008 via ``idna``), refuse the rest.

The normal form (``normalize_domain``): lowercase ASCII, no trailing dot, at least two labels, each 1-63 letters,
digits or inner hyphens (``xn--`` A-labels for Unicode labels), at most 253 characters, a top-level label that is not
all digits, and not a public suffix. It is a fixed point (``normalize_domain(n) == n``) and round-trips through its
U-label form (``normalize_domain(to_unicode(n)) == n``). Spellings that UTS 46 maps to one name (case, full-width
letters, ideographic full stops, a trailing dot, soft hyphens) give the same normal form; a homoglyph (Cyrillic ``а``
for Latin ``a``) is another name, with its own A-label, never the one it imitates.
"""

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
            outside IDNA 2008 (quotes, spaces, newlines, semicolons, underscores, NUL, bidi controls ...), an
            all-numeric top-level label (``1.2.3.4``, RFC 3696 §2), or a public suffix.
    """
    if not isinstance(raw, str):
        raise EventInvalid("domain must be a string")
    if raw in ("", ".") or any(c.isspace() for c in raw):
        raise EventInvalid(f"domain {_show(raw)} is empty or contains whitespace")
    if "*" in raw:
        raise EventInvalid(f"domain {_show(raw)} is a wildcard")
    try:
        alabel = idna.encode(raw, uts46=True, transitional=False).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as exc:
        raise EventInvalid(f"domain {_show(raw)} is not a valid IDNA 2008 name: {exc}") from None
    alabel = alabel.removesuffix(".")  # the root: "." or a full stop UTS 46 maps to "." (U+3002, U+FF0E ...)
    labels = alabel.split(".")
    if len(labels) < 2:
        raise EventInvalid(f"domain {_show(raw)} must have at least two labels")
    if len(alabel) > 253 or any(not _LDH.fullmatch(label) for label in labels):
        raise EventInvalid(f"domain {_show(raw)} has an invalid or over-long label")
    if labels[-1].isdigit():
        raise EventInvalid(f"domain {_show(raw)} has an all-numeric top-level label (an address is not a domain)")
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
