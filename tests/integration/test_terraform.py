"""infra/terraform against LocalStack: apply the buckets, secrets and schedule, read them back, no drift, destroy;
plan (never apply) the Lambda part, which LocalStack cannot run.

Terraform runs offline: providers come from the mirror named in infra/terraform/terraformrc
(reference/local-stack.md §4). Every run works on a copy of infra/terraform in a temporary directory with a unique
name prefix, so runs never share state or names.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.stackenv import REPO

pytestmark = pytest.mark.stack

TF_DIR = REPO / "infra" / "terraform"
TERRAFORM = shutil.which("terraform") or "/usr/local/bin/terraform"
FUNCTIONS = ("domain_created", "domain_deleted", "key_rotate", "node_down", "node_up")
BROKER_ARN = "arn:aws:mq:us-east-1:000000000000:broker:mailplane:b-00000000-0000-0000-0000-000000000000"
# test values only; handed to Terraform as TF_VAR_* environment variables, never on the command line
SECRET_VARS = {
    "mailcow_api_key": "TEST00-MAILCOW-KEY",
    "pmg_password": "pmg-test-password",
    "tsig_secret": "dGVzdC10c2lnLXNlY3JldC0zMi1ieXRlcy1sb25nISE=",
    "dkim_kek": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    "broker_password": "broker-test-password",
}


class Terraform:
    """One working copy of infra/terraform; runs terraform offline with the stack's credentials."""

    def __init__(self, workdir: Path, stack_env: dict[str, str], tfvars: dict[str, Any]) -> None:
        shutil.copytree(
            TF_DIR,
            workdir,
            ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "*.tfstate*", "*.tfplan"),
        )
        (workdir / "test.auto.tfvars.json").write_text(json.dumps(tfvars))
        self.workdir = workdir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "AWS_"))}
        env.update(
            TF_CLI_CONFIG_FILE=str(TF_DIR / "terraformrc"),
            TF_IN_AUTOMATION="1",
            TF_INPUT="0",
            CHECKPOINT_DISABLE="1",
            AWS_ACCESS_KEY_ID=stack_env["AWS_ACCESS_KEY_ID"],
            AWS_SECRET_ACCESS_KEY=stack_env["AWS_SECRET_ACCESS_KEY"],
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CA_BUNDLE=stack_env["MAILPLANE_STACK_CA"],  # LocalStack's HTTPS certificate is the stack CA's
        )
        env.update({f"TF_VAR_{name}": value for name, value in SECRET_VARS.items()})
        self.env = env
        self.timings: dict[str, float] = {}

    def run(self, *args: str, ok: tuple[int, ...] = (0,), timeout: float = 180) -> subprocess.CompletedProcess[str]:
        start = time.monotonic()
        proc = subprocess.run(
            [TERRAFORM, *args, "-no-color"],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.timings[args[0]] = round(time.monotonic() - start, 1)
        assert proc.returncode in ok, f"terraform {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def init(self) -> None:
        self.run("init", "-input=false")

    def destroy_leftovers(self) -> None:
        """After a failed test: destroy whatever the state still holds (errors ignored)."""
        state = self.workdir / "terraform.tfstate"
        if state.exists() and json.loads(state.read_text()).get("resources"):
            subprocess.run(
                [TERRAFORM, "destroy", "-auto-approve", "-input=false", "-no-color"],
                cwd=self.workdir,
                env=self.env,
                capture_output=True,
                timeout=180,
                check=False,
            )

    def outputs(self) -> dict[str, Any]:
        raw = json.loads(self.run("output", "-json").stdout)
        return {name: o["value"] for name, o in raw.items()}


def clients(stack_env: dict[str, str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "endpoint_url": stack_env["MAILPLANE_S3_ENDPOINT"],
        "verify": stack_env["MAILPLANE_STACK_CA"],
        "region_name": "us-east-1",
        "aws_access_key_id": stack_env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": stack_env["AWS_SECRET_ACCESS_KEY"],
    }
    return {name: boto3.client(name, **kwargs) for name in ("s3", "secretsmanager", "scheduler", "iam")}


def base_vars(stack_env: dict[str, str], prefix: str) -> dict[str, Any]:
    return {
        "endpoint_url": stack_env["MAILPLANE_S3_ENDPOINT"],
        "region": "us-east-1",
        "name_prefix": prefix,
        "recovery_window_in_days": 0,
        "force_destroy": True,
    }


@pytest.fixture
def prefix() -> str:
    return f"mp-tf-{uuid.uuid4().hex[:10]}"


def check_bucket(s3: Any, name: str, *, versioned: bool) -> None:
    s3.head_bucket(Bucket=name)
    rules = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"]
    assert block == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    assert (s3.get_bucket_versioning(Bucket=name).get("Status") == "Enabled") is versioned
    policy = json.loads(s3.get_bucket_policy(Bucket=name)["Policy"])
    assert any(st["Condition"]["Bool"]["aws:SecureTransport"] == "false" for st in policy["Statement"])


@pytest.mark.timeout(480)  # apply ~70 s: the provider confirms a lifecycle configuration 3 times, >= 10 s apart
def test_apply_check_replan_destroy(stack_env: dict[str, str], prefix: str, tmp_path: Path) -> None:
    tf = Terraform(tmp_path / "tf", stack_env, base_vars(stack_env, prefix) | {"enable_lambda": False})
    try:
        apply_check_replan_destroy(tf, clients(stack_env), prefix)
    finally:
        tf.destroy_leftovers()
    print(f"terraform timings (s): {tf.timings}")


def apply_check_replan_destroy(tf: Terraform, aws: dict[str, Any], prefix: str) -> None:
    tf.init()
    tf.run("apply", "-auto-approve", "-input=false")
    out = tf.outputs()

    # buckets: encryption, public access block, TLS-only policy; versioning and ledger expiry on the state bucket
    assert (out["state_bucket"], out["web_bucket"]) == (f"{prefix}-state", f"{prefix}-mta-sts")
    check_bucket(aws["s3"], out["state_bucket"], versioned=True)
    check_bucket(aws["s3"], out["web_bucket"], versioned=False)
    rules = aws["s3"].get_bucket_lifecycle_configuration(Bucket=out["state_bucket"])["Rules"]
    idem = next(r for r in rules if r["ID"] == "expire-idempotency-ledger")
    assert idem["Filter"]["Prefix"] == "idem/" and idem["Expiration"]["Days"] == 14 and idem["Status"] == "Enabled"
    audit = next(r for r in rules if r["ID"] == "expire-audit-records")
    assert audit["Filter"]["Prefix"] == "audit/" and audit["Expiration"]["Days"] == 730 and audit["Status"] == "Enabled"

    # secrets: readable, plain strings or the BASIC_AUTH JSON the Amazon MQ event source mapping reads
    arns = out["secret_arns"]
    assert set(arns) == {"mailcow-api-key", "pmg-credentials", "tsig-key", "dkim-kek", "broker-credentials"}
    value = {name: aws["secretsmanager"].get_secret_value(SecretId=arn)["SecretString"] for name, arn in arns.items()}
    assert value["mailcow-api-key"] == SECRET_VARS["mailcow_api_key"]
    assert value["tsig-key"] == SECRET_VARS["tsig_secret"]
    assert value["dkim-kek"] == SECRET_VARS["dkim_kek"]
    assert json.loads(value["pmg-credentials"]) == {"username": "automation@pmg", "password": "pmg-test-password"}
    assert json.loads(value["broker-credentials"]) == {"username": "worker", "password": "broker-test-password"}
    assert out["secret_env"]["broker-credentials"] == "MAILPLANE_AMQP_WORKER_PASSWORD"

    # schedule: hourly, flexible window, puts the nudge on our bus through the scheduler role
    sched = aws["scheduler"].get_schedule(Name=f"{prefix}-rotate-due")
    assert sched["Arn"] == out["schedule_arn"]
    assert sched["ScheduleExpression"] == "rate(1 hour)"
    assert sched["FlexibleTimeWindow"] == {"Mode": "FLEXIBLE", "MaximumWindowInMinutes": 15}
    target = sched["Target"]
    assert target["Arn"] == out["event_bus_arn"]
    assert target["RoleArn"].endswith(f":role/{prefix}-scheduler")
    assert target["EventBridgeParameters"] == {"DetailType": "rotate-due", "Source": "mailplane.scheduler"}
    assert json.loads(target["Input"])["command"] == "rotate-due"
    aws["iam"].get_role(RoleName=f"{prefix}-scheduler")
    assert out["lambda_function_arns"] == {} and out["event_source_mapping_ids"] == {}

    # a second plan finds nothing to change
    plan = tf.run("plan", "-detailed-exitcode", "-input=false", ok=(0, 2))
    assert plan.returncode == 0, f"drift after apply:\n{plan.stdout}"

    tf.run("destroy", "-auto-approve", "-input=false")
    for bucket in (out["state_bucket"], out["web_bucket"]):
        with pytest.raises(ClientError) as exc:
            aws["s3"].head_bucket(Bucket=bucket)
        assert exc.value.response["Error"]["Code"] in ("404", "NoSuchBucket")
    with pytest.raises(ClientError):
        aws["scheduler"].get_schedule(Name=f"{prefix}-rotate-due")
    left = aws["secretsmanager"].list_secrets(Filters=[{"Key": "name", "Values": [f"{prefix}/"]}])["SecretList"]
    assert left == []


def plan_json(tf: Terraform) -> list[dict[str, Any]]:
    tf.run("plan", "-input=false", "-out=test.tfplan")
    shown = json.loads(tf.run("show", "-json", "test.tfplan").stdout)
    changes: list[dict[str, Any]] = [c for c in shown["resource_changes"] if c["mode"] == "managed"]
    return changes


def test_validate_and_plan_lambda(stack_env: dict[str, str], prefix: str, tmp_path: Path) -> None:
    package = tmp_path / "lambda.zip"
    with zipfile.ZipFile(package, "w") as zf:
        zf.writestr("functions/__init__.py", "")
    lambda_vars = {"enable_lambda": True, "lambda_zip": str(package), "broker_arn": BROKER_ARN}
    tf = Terraform(tmp_path / "tf", stack_env, base_vars(stack_env, prefix) | lambda_vars)
    tf.init()
    tf.run("validate")
    changes = plan_json(tf)
    assert {c["change"]["actions"][0] for c in changes} == {"create"}

    fns = {c["index"]: c["change"] for c in changes if c["type"] == "aws_lambda_function"}
    assert set(fns) == set(FUNCTIONS)
    for name, fn in fns.items():
        assert fn["after"]["handler"] == "functions.runtime.lambda_rmq.handler"
        assert fn["after"]["function_name"] == f"{prefix}-{name.replace('_', '-')}"
        assert fn["after_unknown"]["environment"][0]["variables"]  # bucket names and secret ARNs: known at apply

    esms = [c["change"]["after"] for c in changes if c["type"] == "aws_lambda_event_source_mapping"]
    assert len(esms) == len(FUNCTIONS) * 7  # every function on q.work.0 and the six retry rungs
    first = [m for m in esms if m["queues"] == ["q.work.0"]]
    assert len(first) == len(FUNCTIONS)
    for m in esms:
        assert m["event_source_arn"] == BROKER_ARN
        assert m["batch_size"] == 10
        kinds = {s["type"]: s.get("uri") for s in m["source_access_configuration"]}
        assert set(kinds) == {"BASIC_AUTH", "VIRTUAL_HOST"} and kinds["VIRTUAL_HOST"] == "mailplane"
    assert {m["queues"][0] for m in esms} == {f"q.work.{k}" for k in range(7)}
    assert any(c["type"] == "aws_iam_role_policy" and c["name"] == "lambda" for c in changes)
    print(f"terraform timings (s): {tf.timings}")
