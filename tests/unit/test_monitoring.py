"""infra/monitoring: the alert rules pass `promtool check rules` and their unit tests (`promtool test rules`), every
alert names a runbook section that exists and README lists it, and every dashboard and rule query names a metric
the code really exports (taken from the worker's registry and the health collector, not from a list here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import yaml

from functions.ops.health import HealthCollector
from functions.runtime.metrics import Metrics
from tests.stackenv import REPO

MONITORING = REPO / "infra" / "monitoring"
RULES = MONITORING / "mailplane-alerts.yml"
RULE_TESTS = sorted((MONITORING / "tests").glob("*.test.yml"))
DASHBOARD = MONITORING / "mailplane-dashboard.json"
SCRAPE_CONFIG = REPO / "infra" / "deploy" / "systemd" / "prometheus.yml"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"), "gauge": ("",)}
PROMQL_WORDS = set(
    "sum min max avg count rate irate delta increase deriv time vector scalar histogram_quantile absent and or "
    "unless by without on ignoring group_left group_right bool offset topk bottomk abs clamp_min clamp_max".split()
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: infra/local/install installs Debian's prometheus package (service not started)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)


def exported() -> set[str]:
    """Every sample name the worker's registry and the health collector can export."""
    families = [*Metrics().registry.collect(), *HealthCollector().describe()]
    return {f"{fam.name}{suffix}" for fam in families for suffix in SUFFIXES[fam.type]}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (strings, matchers, ranges and label lists removed first)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    found = re.findall(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\b(?!\s*\()", e)
    return {n for n in found if n not in PROMQL_WORDS}


def alerts() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def test_metric_names_are_read_from_promql() -> None:
    expr = 'sum by (le) (rate(a_b_bucket{x="y{z}"}[5m])) / on (q) c unless on () time() - d > 2 * 86400'
    assert metric_names(expr) == {"a_b_bucket", "c", "d"}


def test_rules_pass_promtool_check() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_pass_their_promtool_unit_tests() -> None:
    done = promtool("test", "rules", *map(str, RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_scrape_config_passes_promtool_check() -> None:
    done = promtool("check", "config", str(SCRAPE_CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_unit_tested_firing() -> None:
    tests = [t for path in RULE_TESTS for t in yaml.safe_load(path.read_text())["tests"]]
    firing = {c["alertname"] for t in tests for c in t["alert_rule_test"] if c.get("exp_alerts")}
    assert {a["alert"] for a in alerts()} <= firing


def test_every_alert_names_a_runbook_section_that_exists_and_readme_lists_it() -> None:
    runbook = (REPO / "docs" / "runbook.md").read_text()
    readme = (REPO / "README.md").read_text()
    for alert in alerts():
        url = alert["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/runbook.md" and f'<a id="{anchor}"></a>\n## {alert["alert"]} ' in runbook, alert["alert"]
        assert re.search(rf"`{alert['alert']}`.*\({re.escape(url)}\)", readme), f"README does not list {alert['alert']}"


def test_rule_queries_name_exported_metrics() -> None:
    known = exported()
    for alert in alerts():
        names = metric_names(alert["expr"])
        assert names and names <= known, (alert["alert"], names - known)


def test_every_dashboard_panel_queries_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = exported()
    shown = [p for p in panels(dashboard["panels"]) if p["type"] != "row"]
    ids = [p["id"] for p in panels(dashboard["panels"])]
    assert len(shown) >= 15 and len(set(ids)) == len(ids)
    used: set[str] = set()
    for panel in shown:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names and names <= known, (panel["title"], names - known)
            used |= names
    wanted = """mailplane_events_completed_total mailplane_event_duration_seconds_bucket mailplane_queue_messages
        mailplane_parked_oldest_age_seconds mailplane_domains mailplane_mx_nodes_in_rotation
        mailplane_dkim_rotations_stuck mailplane_certificate_days_to_expiry mailplane_drift_findings""".split()
    assert set(wanted) <= used  # the contents: rates, latencies, queues, parked, platform health
