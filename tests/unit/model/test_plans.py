from __future__ import annotations

from dataclasses import replace

import pytest

from functions._core.model.mailset import MARKER_NAME, MARKER_VALUE
from functions._core.model.plans import plan_dns, plan_gateway, plan_mail
from functions._core.model.ports import DkimKey, GatewayTransport, MailDomain, RelayDomain, TrustedNetwork
from functions._core.model.records import Key, RecordSet
from functions._core.platform.errors import EventInvalid, OwnershipConflict

Z = "alpha.test"
MX = RecordSet.of(Z, "MX", 3600, ["10 pmg1.faster.test.", "10 pmg2.faster.test.", "10 pmg3.faster.test."])
SPF = RecordSet.of(Z, "TXT", 3600, ["v=spf1 include:_pmg.faster.test ~all"])
AUTOCONF = RecordSet.of(f"autoconfig.{Z}", "CNAME", 3600, ["moo.faster.test."])
MARKER = RecordSet.of(f"{MARKER_NAME}.{Z}", "TXT", 3600, [MARKER_VALUE])
WANT: dict[Key, RecordSet] = {rs.key: rs for rs in (MX, SPF, AUTOCONF, MARKER)}


def test_empty_zone_creates_everything_with_absent_prerequisites() -> None:
    plan = plan_dns(Z, {}, WANT)
    assert {c.key for c in plan.changes} == set(WANT)
    assert all(c.before is None for c in plan.changes)


def test_converged_zone_plans_nothing() -> None:
    assert plan_dns(Z, dict(WANT), WANT).changes == ()


def test_customer_txt_at_apex_is_kept() -> None:
    have = {(Z, "TXT"): RecordSet.of(Z, "TXT", 300, ["google-site-verification=abc"])}
    plan = plan_dns(Z, have, WANT)
    apex = next(c for c in plan.changes if c.key == (Z, "TXT"))
    assert apex.before == have[(Z, "TXT")]  # compare-and-set against what was read
    assert apex.after is not None and set(apex.after.values) == {"google-site-verification=abc", *SPF.values}


def test_foreign_spf_mx_and_cname_shapes_conflict() -> None:
    have = {
        (Z, "TXT"): RecordSet.of(Z, "TXT", 300, ["v=spf1 mx -all"]),
        (Z, "MX"): RecordSet.of(Z, "MX", 300, ["10 mail.elsewhere.example."]),
        (f"autoconfig.{Z}", "A"): RecordSet.of(f"autoconfig.{Z}", "A", 300, ["192.0.2.1"]),
    }
    with pytest.raises(OwnershipConflict) as info:
        plan_dns(Z, have, WANT)
    msg = str(info.value)
    assert "another SPF" in msg and "MX" in msg and "CNAME cannot be added" in msg


def test_owned_zone_drift_is_repaired_with_cas() -> None:
    drifted = RecordSet.of(Z, "MX", 3600, ["10 pmg1.faster.test."])
    have = {**WANT, (Z, "MX"): drifted}
    (change,) = plan_dns(Z, have, WANT).changes
    assert change.before == drifted and change.after == MX


def test_ttl_only_difference_is_updated_even_without_marker() -> None:
    have = {(Z, "MX"): RecordSet.of(Z, "MX", 300, list(MX.values))}
    changes = {c.key: c for c in plan_dns(Z, have, WANT).changes}
    assert changes[(Z, "MX")].after == MX


WANT_MAIL = MailDomain("alpha.test", "managed-by mailplane customer=C1", 10, 100, 2048, 1024, 512)
KEY = DkimKey("fc20261127", "MIIB")


def test_mail_plan_add_edit_and_key() -> None:
    assert plan_mail(WANT_MAIL, None, KEY, None).add == WANT_MAIL
    have = MailDomain("alpha.test", "managed-by mailplane customer=C1", 10, 100, 1024, 1024, 512)
    plan = plan_mail(WANT_MAIL, have, KEY, KEY)
    assert dict(plan.edit) == {"quota": 2048} and plan.dkim_import is None and plan.add is None
    assert plan_mail(WANT_MAIL, WANT_MAIL, KEY, DkimKey("dkim", "old")).dkim_import == KEY
    assert plan_mail(WANT_MAIL, WANT_MAIL, KEY, KEY).summary() == []


def test_gateway_plan_respects_read_back_normalisation() -> None:
    domain = RelayDomain("alpha.test", "managed-by mailplane")
    transport = GatewayTransport("alpha.test", "moo.faster.test", 25, "smtp", False)
    nets = (TrustedNetwork("127.0.2.1/32"), TrustedNetwork("2001:db8:10:1410::6d/128"))
    have_nets = [TrustedNetwork("127.0.2.1/32"), TrustedNetwork("2001:DB8:10:1410::6D/128")]
    plan = plan_gateway(
        domain,
        transport,
        nets,
        RelayDomain("alpha.test", "other comment"),
        GatewayTransport("alpha.test", "MOO.faster.test", 25, "smtp", False),
        have_nets,
    )
    assert plan.summary() == []
    plan = plan_gateway(domain, transport, nets, None, GatewayTransport("alpha.test", "old.host", 25), [])
    assert plan.add_domain == domain and plan.update_transport == transport and len(plan.add_networks) == 2


def test_mail_plan_refuses_an_edit_to_zero_aliases_that_mailcow_would_ignore() -> None:
    have = MailDomain("alpha.test", "managed-by mailplane customer=C1", 10, 100, 2048, 1024, 512)
    with pytest.raises(EventInvalid, match="cannot lower aliases=100 to 0"):
        plan_mail(replace(WANT_MAIL, aliases=0), have, KEY, KEY)
    assert plan_mail(replace(WANT_MAIL, aliases=0), None, KEY, None).add is not None  # add/domain stores 0
    same = replace(have, aliases=0)
    assert plan_mail(replace(WANT_MAIL, aliases=0), same, KEY, KEY).summary() == []  # already 0: nothing to edit
