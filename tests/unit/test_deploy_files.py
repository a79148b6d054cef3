"""infra/deploy: every manifest parses and names its kind, KEDA counts unacked messages, the units run mailplane,
and the Kubernetes settings file stays the production sample with secrets from the environment."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from functions._core.platform.config import Settings, Web6Settings
from tests.stackenv import REPO

DEPLOY = REPO / "infra" / "deploy"
# Kubernetes manifests (systemd/prometheus.yml is a Prometheus config, checked by tests/unit/test_monitoring.py)
MANIFESTS = sorted([*(DEPLOY / "k8s").rglob("*.yaml"), *(DEPLOY / "k8s").rglob("*.yml")])
UNITS = sorted([*DEPLOY.rglob("*.service"), *DEPLOY.rglob("*.timer")])
DRAIN_GRACE_S = 30  # functions/runtime/consumer.py Worker._drain


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for p in MANIFESTS for d in documents(p) if d["kind"] == kind]


def unit(path: Path) -> dict[str, list[str]]:
    """``Key`` -> every value it is given (systemd allows repeats), across sections."""
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not a key=value line: {line!r}"
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def seconds(value: str) -> float:
    """A systemd time span such as ``90s``, ``15min`` or ``1min 30s``."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value))


def test_there_is_something_to_check() -> None:
    assert len(MANIFESTS) >= 9 and len(UNITS) == 12


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_parses_and_names_its_kind(path: Path) -> None:
    docs = documents(path)
    assert docs
    for doc in docs:
        assert isinstance(doc.get("apiVersion"), str) and isinstance(doc.get("kind"), str), path.name


def test_kustomization_lists_existing_files() -> None:
    (kust,) = by_kind("Kustomization")
    for name in kust["resources"] + kust["configMapGenerator"][0]["files"]:
        assert (DEPLOY / "k8s" / name).is_file(), name


def test_keda_scales_on_ready_plus_unacked_of_the_work_queue() -> None:
    (scaled,) = by_kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "mailplane-worker"
    triggers = scaled["spec"]["triggers"]
    assert triggers and all(t["type"] == "rabbitmq" for t in triggers)
    for t in triggers:
        assert t["metadata"]["protocol"] == "http"  # amqp counts only ready messages (broker.md §14)
        assert t["metadata"].get("excludeUnacknowledged", "false") == "false"
        assert t["metadata"]["vhostName"] == "mailplane"
    assert "q.work.0" in {t["metadata"]["queueName"] for t in triggers}


def test_worker_deployment_outlives_the_drain_grace() -> None:
    deployments = {d["metadata"]["name"]: d for d in by_kind("Deployment")}
    pod = deployments["mailplane-worker"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > DRAIN_GRACE_S
    (worker,) = pod["containers"]
    assert worker["command"] == ["mailplane"] and worker["args"] == ["worker"]
    assert {"name": "MAILPLANE_CONFIG", "value": "/etc/mailplane/platform.toml"} in worker["env"]
    assert {"secretRef": {"name": "mailplane-secrets"}} in worker["envFrom"]


def cronjob(name: str) -> dict[str, Any]:
    return next(d for d in by_kind("CronJob") if d["metadata"]["name"] == name)


@pytest.mark.parametrize(
    ("name", "args"), [("mailplane-rotate-due", ["rotate-due"]), ("mailplane-drift", ["drift", "--all", "--report"])]
)
def test_cronjobs_run_one_at_a_time(name: str, args: list[str]) -> None:
    cron = cronjob(name)
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["mailplane"] and container["args"] == args


@pytest.mark.parametrize("path", [p for p in UNITS if p.suffix == ".service"], ids=lambda p: p.name)
def test_service_runs_mailplane_hardened(path: Path) -> None:
    keys = unit(path)
    (exec_start,) = keys["ExecStart"]
    assert re.search(r"/mailplane \S", exec_start), exec_start
    assert keys["NoNewPrivileges"] == ["yes"] and keys["ProtectSystem"] == ["strict"]
    for env_file in keys["EnvironmentFile"]:
        example = DEPLOY / "systemd" / (Path(env_file.lstrip("-")).name + ".example")
        assert example.is_file(), f"{path.name}: no {example.name} for {env_file}"


def test_worker_unit_stops_after_the_drain() -> None:
    keys = unit(DEPLOY / "systemd" / "mailplane-worker.service")
    assert keys["ExecStart"][0].endswith("mailplane worker")
    assert keys["Restart"] == ["on-failure"] and keys["KillSignal"] == ["SIGTERM"]
    assert seconds(keys["TimeoutStopSec"][0]) > DRAIN_GRACE_S
    assert "/var/lib/mailplane" in keys["ReadWritePaths"]


def test_rotate_due_timer_is_hourly_and_spread() -> None:
    keys = unit(DEPLOY / "systemd" / "mailplane-rotate-due.timer")
    assert keys["OnCalendar"] == ["hourly"] and seconds(keys["RandomizedDelaySec"][0]) > 0
    assert keys["Unit"] == ["mailplane-rotate-due.service"]
    service = unit(DEPLOY / "systemd" / "mailplane-rotate-due.service")
    assert service["Type"] == ["oneshot"] and service["ExecStart"][0].endswith("mailplane rotate-due")


def _without_secret_references(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) in ({"env"}, {"file"}):
            return "<reference>"
        return {k: _without_secret_references(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_secret_references(v) for v in value]
    return value


def test_k8s_settings_are_the_production_sample_with_env_secrets() -> None:
    k8s = tomllib.loads((DEPLOY / "k8s" / "platform.toml").read_text())
    prod = tomllib.loads((REPO / "infra" / "platform.toml").read_text())
    assert _without_secret_references(k8s) == _without_secret_references(prod)
    assert "{ file =" not in (DEPLOY / "k8s" / "platform.toml").read_text()  # secrets from the environment


def test_every_referenced_variable_is_documented_and_in_the_secret() -> None:
    text = (DEPLOY / "k8s" / "platform.toml").read_text()
    names = set(re.findall(r'\{ env = "([A-Z0-9_]+)" \}', text))
    settings = Settings.load(DEPLOY / "k8s" / "platform.toml", {n: "x" for n in names})  # loads with exactly these
    assert settings.mailcow.api_key.reveal() == "x"
    readme = (DEPLOY / "README.md").read_text()
    secret = next(
        d for d in documents(DEPLOY / "k8s" / "secrets.example.yaml") if d["metadata"]["name"] == "mailplane-secrets"
    )
    for name in names | {"MAILPLANE_CONFIG"}:
        assert f"`{name}`" in readme, name
    assert names == set(secret["stringData"])


# ---------------------------------------------------------------- metrics exposure (worker and health collector)


def cli_envvars() -> dict[str, set[str]]:
    """command -> the environment variables its options read (from the real `mailplane` app)."""
    import typer.main

    from functions.ops.cli import app

    group = typer.main.get_command(app)
    out: dict[str, set[str]] = {}
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        out[name] = {p.envvar for p in command.params if isinstance(getattr(p, "envvar", None), str)}
    return out


def pod(name: str) -> dict[str, Any]:
    return next(d for d in by_kind("Deployment") if d["metadata"]["name"] == name)["spec"]["template"]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


@pytest.mark.parametrize(("name", "command"), [("mailplane-worker", "worker"), ("mailplane-health", "health")])
def test_pods_serve_metrics_on_their_address_to_prometheus_only(name: str, command: str) -> None:
    template = pod(name)
    (container,) = template["spec"]["containers"]
    assert container["args"][0] == command
    env = env_of(container)
    assert env["MAILPLANE_METRICS_BIND"] == "0.0.0.0" and "MAILPLANE_METRICS_BIND" in cli_envvars()[command]
    (port,) = [p for p in container["ports"] if p["name"] == "metrics"]
    args = container["args"]
    served = int(env["MAILPLANE_METRICS_PORT"]) if command == "worker" else int(args[args.index("--metrics-port") + 1])
    assert port["containerPort"] == served
    labels = template["metadata"]["labels"]
    (policy,) = by_kind("NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}] and rule["from"]
    (monitor,) = by_kind("PodMonitor")
    for expr in monitor["spec"]["selector"]["matchExpressions"]:
        assert expr["operator"] == "In" and labels[expr["key"]] in expr["values"]
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]


def test_worker_metrics_port_is_a_real_option() -> None:
    assert "MAILPLANE_METRICS_PORT" in cli_envvars()["worker"]
    example = (DEPLOY / "systemd" / "mailplane.env.example").read_text()
    assert "MAILPLANE_METRICS_BIND=127.0.0.1" in example and "MAILPLANE_METRICS_PORT=" in example


def test_health_collector_reads_the_broker_as_the_operator() -> None:
    (container,) = pod("mailplane-health")["spec"]["containers"]
    assert container["command"] == ["mailplane"] and "--every" in container["args"]
    assert {"secretRef": {"name": "mailplane-operator"}} in container["envFrom"]
    secret = next(
        d for d in documents(DEPLOY / "k8s" / "secrets.example.yaml") if d["metadata"]["name"] == "mailplane-operator"
    )
    assert set(secret["stringData"]) == {"MAILPLANE_AMQP_OPERATOR_PASSWORD"}
    assert "MAILPLANE_AMQP_OPERATOR_PASSWORD" in (DEPLOY / "systemd" / "health.env.example").read_text()


def test_health_timer_writes_the_textfile_every_five_minutes() -> None:
    timer = unit(DEPLOY / "systemd" / "mailplane-health.timer")
    assert timer["OnCalendar"] == ["*:0/5"] and timer["Unit"] == ["mailplane-health.service"]
    service = unit(DEPLOY / "systemd" / "mailplane-health.service")
    assert service["Type"] == ["oneshot"]
    (exec_start,) = service["ExecStart"]
    textfile = Path(exec_start.split("--textfile ", 1)[1].split()[0])
    assert textfile.suffix == ".prom"
    assert str(textfile.parent) in service["ReadWritePaths"][0].split()


def test_sweep_timer_applies_the_retention_daily() -> None:
    timer = unit(DEPLOY / "systemd" / "mailplane-sweep.timer")
    assert timer["OnCalendar"][0].startswith("*-*-* ") and timer["Unit"] == ["mailplane-sweep.service"]
    service = unit(DEPLOY / "systemd" / "mailplane-sweep.service")
    assert service["ExecStart"][0].endswith("mailplane sweep --apply") and service["Type"] == ["oneshot"]


def test_drift_timer_runs_the_report_daily() -> None:
    timer = unit(DEPLOY / "systemd" / "mailplane-drift.timer")
    assert timer["OnCalendar"][0].startswith("*-*-* ") and timer["Unit"] == ["mailplane-drift.service"]
    service = unit(DEPLOY / "systemd" / "mailplane-drift.service")
    assert service["ExecStart"][0].endswith("mailplane drift --all --report")


def test_web6_sync_runs_every_minute_and_at_boot_writing_only_the_certificate_directory(tmp_path: Path) -> None:
    timer = unit(DEPLOY / "systemd" / "mailplane-web6-sync.timer")
    assert timer["Unit"] == ["mailplane-web6-sync.service"] and timer["OnCalendar"] == ["*:*:00"]
    assert 0 < seconds(timer["OnBootSec"][0]) <= 60
    service = unit(DEPLOY / "systemd" / "mailplane-web6-sync.service")
    (exec_start,) = service["ExecStart"]
    assert " web6 sync --once " in exec_start and service["Type"] == ["oneshot"]
    cert_dir = exec_start.split("--cert-dir ", 1)[1].split()[0]
    assert service["ReadWritePaths"] == [cert_dir] and "StateDirectory" not in service
    assert service["User"] == ["mailplane-web6"] and service["CapabilityBoundingSet"] == [""]
    assert f"`{cert_dir}`" in (REPO / "infra" / "web6" / "README.md").read_text()  # nginx's @CERT_DIR@
    env = (DEPLOY / "systemd" / "web6.env.example").read_text()
    assert set(re.findall(r"^([A-Z0-9_]+)=", env, re.M)) == {
        "MAILPLANE_CONFIG",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    (config,) = re.findall(r"^MAILPLANE_CONFIG=(\S+)", env, re.M)
    sample = REPO / "infra" / "web6" / Path(config).name
    raw = tomllib.loads(sample.read_text())
    assert set(raw) == {"store", "dkim"} and set(raw["dkim"]) == {"key_encryption_key"}  # no platform secret
    prod = tomllib.loads((REPO / "infra" / "platform.toml").read_text())["store"]
    assert {k: raw["store"][k] for k in ("kind", "endpoint_url", "state_bucket")} == {
        k: prod[k] for k in ("kind", "endpoint_url", "state_bucket")
    }
    kek = tmp_path / "kek"
    kek.write_text("a2V5")
    local = tmp_path / "sync.toml"
    local.write_text(sample.read_text().replace(raw["dkim"]["key_encryption_key"]["file"], str(kek)))
    settings = Web6Settings.load(local, {"AWS_ACCESS_KEY_ID": "ro", "AWS_SECRET_ACCESS_KEY": "x"})
    assert settings.store.state_bucket == "mailplane-state" and settings.dkim.key_encryption_key.reveal() == "a2V5"
