"""How the acceptance gate reads a PMG node's SMTP answers (functions/_core/model/acceptance.py)."""

from __future__ import annotations

import pytest

from functions._core.model.acceptance import CONTROL, read_answer
from functions._core.model.ports import SmtpAnswer

DENIED = (554, f"5.7.1 <{CONTROL}>: Relay access denied")


@pytest.mark.parametrize(
    ("reply", "ok"),
    [
        ((554, "5.7.1 <postmaster@a.test>: Relay access denied"), False),  # not effective on that node
        ((450, "4.7.1 <postmaster@a.test>: Recipient address rejected: Service is unavailable (try later)"), True),
        ((550, "5.1.1 <postmaster@a.test>: Recipient address rejected: undeliverable address: User unknown"), True),
        ((250, "2.1.5 Ok"), True),
        ((451, "4.3.0 Temporary lookup failure"), False),  # proves nothing either way
        ((550, "5.7.1 <postmaster@a.test>: Recipient address rejected: Access denied"), False),
    ],
)
def test_replies_are_read_as_a_sender_reads_them(reply: tuple[int, str], ok: bool) -> None:
    got = read_answer("pmg1", "a.test", SmtpAnswer("127.0.0.1:2525", "127.0.0.2", (reply, DENIED)))
    assert got.ok is ok
    assert got.answer == f"{reply[0]} {reply[1]}" and (got.source, got.target) == ("127.0.0.2", "127.0.0.1:2525")


def test_a_probe_from_a_trusted_address_proves_nothing() -> None:
    answer = SmtpAnswer("127.0.0.1:2525", "127.0.2.1", ((250, "2.1.5 Ok"), (250, "2.1.5 Ok")))
    got = read_answer("pmg1", "a.test", answer)
    assert not got.ok and "127.0.2.1 is trusted" in got.answer and "proves nothing" in got.answer


def test_no_session_is_not_acceptance() -> None:
    got = read_answer("pmg2", "a.test", SmtpAnswer("127.0.0.1:2526", "127.0.0.2", (), "ConnectionRefusedError"))
    assert not got.ok and "no SMTP answer (ConnectionRefusedError)" in got.describe()
