"""SmtpProbePort: the real SmtpProbe (smtplib, a socket from the configured source address) against the PMG
simulator's SMTP listener, and the in-process FakeSmtp over the same model: both see the same answers."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from sim.pmg import PmgModel
from sim.pmg.smtp import serve_smtp

from functions._core.model.acceptance import CONTROL
from functions._core.model.ports import SmtpAnswer, SmtpProbePort
from functions._core.platform.config import SmtpProbeSettings
from functions.adapters.smtp import SmtpProbe, split_target
from tests.fakes.pmg import quick_model
from tests.fakes.smtp import FakeSmtp


@pytest.fixture
def served() -> Iterator[tuple[PmgModel, str]]:
    model = quick_model(nodes=[("pmg1", "127.0.0.1")])
    server = serve_smtp(model, "pmg1", "127.0.0.1", 0)
    try:
        yield model, f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def probes(model: PmgModel, target: str) -> list[SmtpProbePort]:
    return [SmtpProbe(SmtpProbeSettings(source="127.0.0.2", timeout=5)), FakeSmtp(model, {target: "pmg1"})]


def test_both_probes_report_the_source_and_the_replies(served: tuple[PmgModel, str]) -> None:
    model, target = served
    for probe in probes(model, target):
        answer = probe.rcpt(target, ("postmaster@a.test", CONTROL))
        assert (answer.source, answer.error) == ("127.0.0.2", "")
        assert [code for code, _ in answer.replies] == [554, 554]
        assert answer.replies[0][1] == "5.7.1 <postmaster@a.test>: Relay access denied"


def test_a_refused_connection_is_an_answer_not_an_exception() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        answer = SmtpProbe(SmtpProbeSettings(timeout=2)).rcpt(f"127.0.0.1:{port}", ("postmaster@a.test",))
    assert isinstance(answer, SmtpAnswer) and answer.replies == () and "Connection" in answer.error


def test_a_node_that_is_down_gives_no_session(served: tuple[PmgModel, str]) -> None:
    model, target = served
    model.set_down("pmg1")
    for probe in probes(model, target):
        answer = probe.rcpt(target, ("postmaster@a.test",))
        assert answer.replies == () and answer.error


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("mx.example:2525", ("mx.example", 2525)),
        ("mx.example", ("mx.example", 25)),
        ("[2001:db8::1]:26", ("2001:db8::1", 26)),
    ],
)
def test_split_target(text: str, want: tuple[str, int]) -> None:
    assert split_target(text) == want
