"""Fuzzing the CLI's event loader (functions/ops/event_file.py) and the three commands that read an event file:
`mailplane publish FILE`, `mailplane invoke FUNCTION -e FILE`, `mailplane plan FILE`.

Properties: the loader accepts exactly what the worker's parser accepts (the same event, the file's bytes
unchanged) and refuses the rest with ``EventInvalid`` naming the file. `publish` sends an accepted file's bytes
unchanged, once, and publishes nothing for a refused one (exit 2); `invoke` runs nothing for a refused file (exit
2, no write on any system); `plan` never writes on any system, whatever the file (exit 0 with a plan, 1 refused).
The commands run in-process through typer over the fakes; ``FUZZ_SHARE`` of the examples (CliRunner costs a few
milliseconds per command); the loader itself gets them all.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, note
from hypothesis import strategies as st
from typer.testing import CliRunner

from functions._core.platform.envelope import MAX_BODY, fingerprint, parse
from functions._core.platform.errors import EventInvalid
from functions.ops import cli
from functions.ops.event_file import load
from functions.runtime import amqp, main
from tests.fuzz.strategies import SAMPLES, base_events, dumps, fuzz, hostile_bodies, mutated_events
from tests.fuzz.test_fuzz_dispatch import SETTINGS, Platform, platform

FUZZ_SHARE = 0.05
bodies = st.one_of(
    base_events.map(dumps), mutated_events.map(lambda m: dumps(m[1])), hostile_bodies, st.binary(max_size=200)
)
CREATED = dumps(SAMPLES["domain.created.json"])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("event-files")


def write(folder: Path, body: bytes) -> Path:
    path = folder / "event.json"
    path.write_bytes(body)
    return path


@fuzz()
@given(bodies)
@example(b"x" * (MAX_BODY + 1))
@example(CREATED)
def test_the_loader_accepts_exactly_what_the_worker_accepts(folder: Path, body: bytes) -> None:
    path = write(folder, body)
    try:
        want = parse(body)
    except EventInvalid as exc:
        with pytest.raises(EventInvalid) as info:
            load(path)
        big = len(body) > MAX_BODY
        assert str(info.value) == f"{path}: " + (
            f"body: larger than the limit of {MAX_BODY} bytes" if big else str(exc)
        )
        return
    got = load(path)
    assert got.body == body and fingerprint(got.event) == fingerprint(want) and got.event.id == want.id


@pytest.mark.parametrize("name", ["missing", "directory", "/dev/null", "/dev/zero"])
def test_unreadable_or_endless_files_are_refused(folder: Path, name: str) -> None:
    path = {"missing": folder / "nope.json", "directory": folder}.get(name, Path(name))
    with pytest.raises(EventInvalid, match=r"cannot read|not JSON|larger than the limit"):
        load(path)


class Published:
    """Stands in for the broker: records what `publish` sends."""

    sent: list[tuple[str, str, bytes, Any]] = []

    def __init__(self, _params: Any) -> None:
        pass

    def publish(self, exchange: str, routing_key: str, body: bytes, properties: Any) -> None:
        self.sent.append((exchange, routing_key, body, properties))

    def close(self) -> None:
        pass


class Current:
    world: Platform


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    """The commands over the fakes: settings, ports and the publisher patched; no logging set-up."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(main, "load_settings", lambda config=None: SETTINGS)
        patch.setattr(main, "build_ports", lambda settings, probe=True: Current.world.ports)
        patch.setattr(main, "setup_logging", lambda *a, **k: None)
        patch.setattr(amqp, "Publisher", Published)
        patch.setenv("MAILPLANE_AMQP_BILLING_PASSWORD", "publisher-test-password")
        yield


NO_WRITES = {"mailcow": 0, "pmg": 0, "dns": 0, "state": 0, "web": 0}


@fuzz(FUZZ_SHARE)
@given(bodies, st.integers(0, 2**32))
@example(CREATED, 0)
@example(b'{"type": "domain.created"}', 0)
@example(b"[]", 0)  # before the loader, publish crashed on it with TypeError (it read JSON, not an event)
def test_publish_invoke_and_plan_refuse_what_the_worker_refuses(folder: Path, body: bytes, seed: int) -> None:
    path = str(write(folder, body))
    try:
        event = parse(body)
    except EventInvalid:
        event = None
    note(f"body={body[:2000]!r}")
    runner = CliRunner()

    Published.sent.clear()
    published = runner.invoke(cli.app, ["publish", path, "--as", "billing"])
    if event is None:
        assert published.exit_code == 2 and "EventInvalid" in published.output and not Published.sent
    else:
        assert published.exit_code == 0, published.output
        assert [(k, b) for _, k, b, _ in Published.sent] == [(event.type, body)]

    Current.world = platform(None)
    planned = runner.invoke(cli.app, ["plan", path, "--json"])
    assert planned.exit_code == (1 if event is None else planned.exit_code) and planned.exit_code in (0, 1)
    assert Current.world.write_requests() == NO_WRITES  # a plan never writes, whatever the file

    Current.world = platform(None)
    function = random.Random(seed).choice(["domain_created", "domain_deleted", "key_rotate", "node_down", "node_up"])
    invoked = runner.invoke(cli.app, ["invoke", function, "-e", path])
    if event is None:
        assert invoked.exit_code == 2 and "EventInvalid" in invoked.output
        assert Current.world.write_requests() == NO_WRITES
    else:
        assert invoked.exit_code in (0, 1), invoked.output
    assert os.path.exists(path)
