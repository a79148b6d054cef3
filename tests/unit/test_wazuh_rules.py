"""infra/wazuh: mailplane's decoder and rules, applied to real outcome lines the way wazuh-logtest would.

Wazuh cannot run here, so this module parses the decoder and rule XML and evaluates them with Wazuh's semantics,
as far as these files use them: the syslog pre-decoder (program name), a parent decoder on ``program_name`` and a
child with ``prematch`` and ``plugin_decoder`` JSON_Decoder (``offset="after_parent"``: nested keys joined with
``.``, numbers as their JSON text, nulls discarded), and rules with ``decoded_as``, ``field`` (pcre2), ``if_sid``
(a child is tried only once its parent matched; the deepest match is the alert), ``level`` and ``group``. Every
other element or attribute makes the test fail, so a rule cannot silently use an unmodelled feature. Not modelled:
Wazuh's built-in rules (ours hang off no built-in rule), osregex/osmatch (only pcre2 is used), frequency rules.

The lines are produced by the product (``dispatch.run`` over the in-process fakes) and must equal the samples in
``infra/wazuh/mailplane-logtest.txt`` except for the time and the duration; MAILPLANE_WRITE_SAMPLES=1 rewrites it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from functions import node_down
from functions.runtime import dispatch
from tests.conftest import load_event
from tests.stackenv import REPO
from tests.unit.test_node_down import build_world, down

WAZUH = REPO / "infra" / "wazuh"
SAMPLES = WAZUH / "mailplane-logtest.txt"
SYSLOG = re.compile(r"^(\w{3} [ \d]\d \d\d:\d\d:\d\d) (\S+) ([^\s\[:]+)(?:\[\d+\])?: (.*)$")
HEADER = "Dec  2 04:20:34 worker1 mailplane[4242]: "


# ---------------------------------------------------------------- the emulator


def xml_elements(path: Path) -> list[ET.Element]:
    """Wazuh's files may hold several top-level elements: wrap them in one root."""
    return list(ET.fromstring(f"<root>{path.read_text()}</root>"))


def pcre2(el: ET.Element) -> re.Pattern[str]:
    assert el.get("type") == "pcre2", f"only pcre2 patterns are modelled: <{el.tag}> {el.attrib}"
    assert set(el.attrib) <= {"type", "name"}, el.attrib
    return re.compile(el.text or "")


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """JSON_Decoder: nested keys joined with '.', scalars as their JSON text (strings unquoted), nulls dropped."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from flatten(v, f"{prefix}{k}.")
    elif value is not None:
        yield prefix[:-1], value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class Decoded:
    decoder: str  # the parent decoder's name, as decoded_as sees it
    fields: dict[str, str]


def decode(line: str) -> Decoded | None:
    found = SYSLOG.match(line)
    assert found, line
    program, message = found.group(3), found.group(4)
    decoders = xml_elements(WAZUH / "mailplane_decoders.xml")
    parents = [d for d in decoders if d.find("parent") is None]
    for parent in parents:
        assert {c.tag for c in parent} == {"program_name"}, "parent decoders: program_name only"
        if not pcre2(parent.find("program_name")).search(program):  # type: ignore[arg-type]
            continue
        for child in (d for d in decoders if (p := d.find("parent")) is not None and p.text == parent.get("name")):
            assert {c.tag for c in child} == {"parent", "prematch", "plugin_decoder"}, child.attrib
            if not pcre2(child.find("prematch")).search(message):  # type: ignore[arg-type]
                continue
            plugin = child.find("plugin_decoder")
            assert plugin is not None and plugin.text == "JSON_Decoder" and plugin.get("offset") == "after_parent"
            return Decoded(str(parent.get("name")), dict(flatten(json.loads(message))))
        return Decoded(str(parent.get("name")), {})
    return None


@dataclass(frozen=True)
class Rule:
    id: str
    level: int
    parents: tuple[str, ...]
    element: ET.Element

    def matches(self, event: Decoded) -> bool:
        for el in self.element:
            if el.tag == "decoded_as" and el.text != event.decoder:
                return False
            if el.tag == "field":
                value = event.fields.get(str(el.get("name")))
                if value is None or not pcre2(el).search(value):
                    return False
            assert el.tag in ("decoded_as", "field", "if_sid", "description", "group"), f"unmodelled <{el.tag}>"
        return True


def rules() -> dict[str, Rule]:
    out: dict[str, Rule] = {}
    for group in xml_elements(WAZUH / "mailplane_rules.xml"):
        for el in group.iter("rule"):
            assert set(el.attrib) == {"id", "level"}, el.attrib
            sids = el.findtext("if_sid")
            parents = tuple(s.strip() for s in sids.split(",")) if sids else ()
            out[el.attrib["id"]] = Rule(el.attrib["id"], int(el.attrib["level"]), parents, el)
    return out


def alert(line: str) -> Rule | None:
    """The rule wazuh-logtest reports for ``line`` (phase 3), or None."""
    event = decode(line)
    if event is None:
        return None
    table = rules()
    best = None
    candidates = [r for r in table.values() if not r.parents]
    while True:
        hits = [r for r in candidates if r.matches(event)]
        assert len(hits) <= 1, f"sibling rules overlap: {[r.id for r in hits]}"
        if not hits:
            return best
        best = hits[0]
        candidates = [r for r in table.values() if best.id in r.parents]


# ---------------------------------------------------------------- real outcome lines


def created(domain: str) -> bytes:
    raw = load_event("domain.created")
    raw["id"] = f"ev-{domain}"
    raw["subject"] = raw["data"]["domain"] = domain
    return json.dumps(raw).encode()


def product_lines() -> dict[str, str]:
    """case -> the outcome line the worker logged for it (through dispatch.run, over the in-process fakes)."""
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    log = logging.getLogger("mailplane.outcome")
    handler = Capture()
    log.addHandler(handler)
    old = log.level
    log.setLevel(logging.INFO)
    try:
        world = build_world()
        quorum = load_event("node.down")
        quorum["id"] = "mon1-pmg1-11"
        quorum["subject"] = quorum["data"]["node"] = "pmg1"
        quorum["data"]["sequence"] = 11
        runs: list[tuple[str, bytes, str, int]] = [
            ("provisioned", created("alpha.test"), "billing", 0),
            ("parked: hostile name", created("alpha;rm.test"), "billing", 0),
            ("parked: refused publisher", created("alpha.test"), "monitoring", 0),
        ]
        for _case, body, publisher, attempt in runs:
            dispatch.run(body, publisher, world.ports, attempt=attempt)
        world.pmg_model.set_down("pmg1")
        world.dns.add_zone("beta.test")
        for attempt in (1, 3):
            dispatch.run(created("beta.test"), "billing", world.ports, attempt=attempt, last_attempt=False)
        node_down.handle(down("pmg2", 10), world.ports)
        dispatch.run(json.dumps(quorum).encode(), "monitoring", world.ports)
    finally:
        log.removeHandler(handler)
        log.setLevel(old)
    names = [c for c, *_ in runs] + ["retried at rung 1", "retried at rung 3", "parked: quorum guard"]
    assert len(lines) == len(names), lines
    return dict(zip(names, lines, strict=True))


def masked(line: str) -> str:
    return re.sub(r'"duration_ms": [0-9.]+', '"duration_ms": 0', re.sub(r'"time": "[^"]*"', '"time": ""', line))


def stored_samples() -> list[tuple[str, str | None, int, str]]:
    """(case, expected rule id or None, expected level, line) from the logtest file."""
    out = []
    blocks = [b for b in SAMPLES.read_text().split("\n\n") if b.strip() and not b.startswith("##")]
    for block in blocks:
        case_line, expect_line, line = block.strip().splitlines()
        expect = dict(kv.split("=") for kv in expect_line.removeprefix("# expect ").split())
        rid = None if expect["rule"] == "none" else expect["rule"]
        out.append((case_line.removeprefix("# case: "), rid, int(expect["level"]), line))
    return out


EXPECTED = {  # case -> (rule, level): what an operator is paged for
    "provisioned": ("100930", 2),
    "parked: hostile name": ("100931", 8),
    "parked: refused publisher": ("100933", 10),
    "retried at rung 1": ("100930", 2),
    "retried at rung 3": ("100932", 7),
    "parked: quorum guard": ("100934", 12),
}


def write_samples(lines: dict[str, str]) -> None:
    head = "## wazuh-logtest samples: real mailplane outcome lines (tests/unit/test_wazuh_rules.py checks them)\n\n"
    blocks = [
        f"# case: {case}\n# expect rule={EXPECTED[case][0]} level={EXPECTED[case][1]}\n{HEADER}{line}"
        for case, line in lines.items()
    ]
    SAMPLES.write_text(head + "\n\n".join(blocks) + "\n")


@pytest.fixture(scope="module")
def lines() -> dict[str, str]:
    found = product_lines()
    if os.environ.get("MAILPLANE_WRITE_SAMPLES") == "1":
        write_samples(found)
    return found


def test_the_samples_are_the_products_lines(lines: dict[str, str]) -> None:
    stored = {case: line for case, _, _, line in stored_samples()}
    assert stored.keys() == lines.keys()
    for case, line in lines.items():
        assert masked(stored[case]) == masked(HEADER + line), f"{case}: regenerate with MAILPLANE_WRITE_SAMPLES=1"


@pytest.mark.parametrize(("case", "rule", "level"), [(c, r, lv) for c, (r, lv) in EXPECTED.items()])
def test_each_sample_raises_its_rule(case: str, rule: str, level: int) -> None:
    line = next(line for c, _, _, line in stored_samples() if c == case)
    got = alert(line)
    assert got is not None and (got.id, got.level) == (rule, level), (case, got)
    assert next((r, lv) for c, r, lv, _ in stored_samples() if c == case) == (rule, level)


def test_the_decoder_reads_the_json_fields() -> None:
    line = next(line for c, _, _, line in stored_samples() if c == "provisioned")
    event = decode(line)
    assert event is not None and event.decoder == "mailplane"
    assert event.fields["outcome"] == "provisioned" and event.fields["attempt"] == "0"
    assert event.fields["changes.dns"].isdigit() and "publisher" in event.fields


def test_other_programs_and_other_lines_raise_nothing() -> None:
    assert alert("Dec  2 04:20:34 worker1 postfix/smtpd[12]: connect from x[127.0.0.1]") is None
    plain = f"{HEADER}2026-12-02 04:20:34 INFO mailplane.worker consuming q.work.0..5 (prefetch 32)"
    assert decode(plain) == Decoded("mailplane", {}) and alert(plain) is None
