"""DNS record sets in our own vocabulary (no dnspython here): identity, normalised values, TXT splitting."""

from __future__ import annotations

from dataclasses import dataclass

Key = tuple[str, str]  # (absolute owner name without trailing dot, lowercase; RR type upper-case)

TXT_CHUNK = 255


@dataclass(frozen=True, order=True)
class RecordSet:
    """One RRset. ``values`` are presentation-format rdata, sorted; TXT values are the joined, unquoted text.

    Names are absolute, lowercase, without the trailing dot; targets inside values end with a dot.
    """

    name: str
    rtype: str
    ttl: int
    values: tuple[str, ...]

    @classmethod
    def of(cls, name: str, rtype: str, ttl: int, values: list[str] | tuple[str, ...]) -> RecordSet:
        """Build a normalised RecordSet (lowercase name, sorted unique values)."""
        return cls(name.rstrip(".").lower(), rtype.upper(), ttl, tuple(sorted(set(values))))

    @property
    def key(self) -> Key:
        return (self.name, self.rtype)

    def same_data(self, other: RecordSet | None) -> bool:
        """True when ``other`` holds the same values (TTL ignored)."""
        return other is not None and other.key == self.key and other.values == self.values

    def zone_lines(self) -> list[str]:
        """Zone-file lines for this RRset (TXT split into 255-byte strings inside one record)."""
        return [f"{self.name}. {self.ttl} IN {self.rtype} {render_value(self.rtype, v)}" for v in self.values]


def soa_serial(soa: RecordSet | None) -> int | None:
    """The serial of a zone's SOA RRset (one record); None when absent or ambiguous."""
    return int(soa.values[0].split()[2]) if soa is not None and len(soa.values) == 1 else None


def split_txt(text: str) -> list[str]:
    """Split TXT data into character-strings of at most 255 bytes (one record, several strings)."""
    data = text.encode("utf-8")
    return [data[i : i + TXT_CHUNK].decode("utf-8") for i in range(0, len(data), TXT_CHUNK)] or [""]


def render_value(rtype: str, value: str) -> str:
    """Presentation form of one value: TXT quoted and split, others unchanged."""
    if rtype != "TXT":
        return value
    parts = (p.replace("\\", "\\\\").replace('"', '\\"') for p in split_txt(value))
    return " ".join(f'"{p}"' for p in parts)
