"""Least privilege, proven: every AWS call the package can make, walked from
the source, against the policies in deploy/.

Who makes a call is decided by imports: the node's calls are those of every
module the `node` command imports (directly or not), the operator's those of
every module the client commands import. Each role's policy must grant
exactly the actions its modules call (nothing missing, nothing unused), and
the standalone JSON policies must name the same resources as the
CloudFormation ones, with the partition, region and account left as
placeholders instead of `aws` and `*`.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore import xform_name

from claude_code_scheduler.client.bus import READER_QUEUE_PREFIX
from claude_code_scheduler.node.config import default
from tests.infra import support

PACKAGE_ROOT = support.REPO / "app"
PACKAGE = PACKAGE_ROOT / "claude_code_scheduler"
# The services the package has clients for (aws/clients.py), by the names the
# code gives them: `self._sqs`, `clients.sqs`, `sqs`.
SERVICES = ("sqs", "sns", "s3", "secretsmanager", "ssm", "sts", "scheduler")
CLIENT_NAMES = {f"{p}{s}": s for s in SERVICES for p in ("", "_")} | {"sqs_leases": "sqs"}
# boto3 calls that need other IAM actions than their own name.
SPECIAL_CALLS = {
    # Managed transfer: PutObject covers CreateMultipartUpload, UploadPart and
    # CompleteMultipartUpload; a failed multipart upload is aborted.
    ("s3", "upload_file"): {"s3:PutObject", "s3:AbortMultipartUpload"},
    # sns:Publish grants PublishBatch too; there is no action of its own.
    ("sns", "publish_batch"): {"sns:Publish"},
    # HeadObject has no action of its own: s3:GetObject grants it.
    ("s3", "head_object"): {"s3:GetObject"},
    # Managed transfer: GetObject, ranged for a large object.
    ("s3", "download_fileobj"): {"s3:GetObject"},
    ("s3", "download_file"): {"s3:GetObject"},
    # ListObjectsV2 is governed by s3:ListBucket, on the bucket (`runs`).
    ("s3", "list_objects_v2"): {"s3:ListBucket"},
    # A schedule names its execution role, which the caller passes to the
    # service ("CreateSchedule ... iam:PassRole" in the Service Authorization
    # Reference); UpdateSchedule sends the role again.
    ("scheduler", "create_schedule"): {"scheduler:CreateSchedule", "iam:PassRole"},
    ("scheduler", "update_schedule"): {"scheduler:UpdateSchedule", "iam:PassRole"},
}
# Receivers whose methods share a name with an operation but are the
# package's own adapters, each of which makes its calls through a client the
# walk does see.
OWN_ADAPTERS = {
    "_outbox": "node.outbox.Outbox.publish queues an event for the one publisher",
    "_bus": "aws.topic.BusClient.publish_batch calls sns.publish_batch",
}
# SNS encrypts with the topics' KMS key (messaging.yaml's TopicKey) on behalf
# of the publisher, who needs these on the key: "Configuring AWS KMS
# permissions" in the SNS developer guide.
PUBLISH_TO_AN_ENCRYPTED_TOPIC = {"kms:GenerateDataKey", "kms:Decrypt"}
# Calls IAM does not govern: "No permissions are required to perform this
# operation" (the STS API reference, GetCallerIdentity); `cancel` names the caller.
NEEDS_NO_GRANT = {"sts:GetCallerIdentity"}
NODE_ENTRY = "claude_code_scheduler.node.command"
# Granted for what the operator does with other tools, as the docs show.
OPERATOR_OUTSIDE_THE_PACKAGE = {
    # deploy/README.md and docs/workspaces.md: `aws s3 cp` of a run's log and
    # artifacts, and of an input archive into inputs/.
    "s3:GetObject",
    "s3:PutObject",
}
# CloudFormation's pseudo parameters as the standalone policies write them.
PLACEHOLDERS = {
    "${AWS::Partition}": "${Partition}",
    "${AWS::Region}": "${Region}",
    "${AWS::AccountId}": "${AccountId}",
}


@cache
def operations() -> dict[str, frozenset[str]]:
    """Every operation of each service, as boto3 method names."""
    session = botocore.session.get_session()
    return {
        service: frozenset(
            xform_name(name) for name in session.get_service_model(service).operation_names
        )
        for service in SERVICES
    }


def module_path(name: str) -> Path | None:
    base = PACKAGE_ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """The package's modules that `path` imports (a `from x import y` counts
    x, and x.y when y is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {n for n in names if n.startswith("claude_code_scheduler") and module_path(n)}
    return found


def closure(*entries: str) -> set[Path]:
    """Every module the entries import, directly or not, and their packages."""
    seen: set[str] = set()
    pending = list(entries)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        pending += [".".join(parts[:i]) for i in range(1, len(parts))]  # the __init__s
        path = module_path(name)
        assert path is not None, name
        pending += imported_modules(path)
    return {p for p in map(module_path, seen) if p is not None}


def client_calls(path: Path) -> list[tuple[str, str, int]]:
    """(service, method, line) of every call of a boto3 client's operation."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        receiver = node.func.value
        name = receiver.attr if isinstance(receiver, ast.Attribute) else getattr(receiver, "id", "")
        service = CLIENT_NAMES.get(name)
        if service is None:
            continue
        calls.append((service, node.func.attr, node.lineno))
        if (service, node.func.attr) == ("sqs", "create_queue") and any(
            keyword.arg == "tags" for keyword in node.keywords
        ):
            calls.append(("sqs", "tag_queue", node.lineno))  # tags at creation need it
    return calls


def unattributed_calls(path: Path) -> list[str]:
    """Calls that look like a boto3 operation on a receiver the walk does not
    know as a client: each would be an AWS call no policy was checked for."""
    every_operation = frozenset().union(*operations().values())
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in every_operation
        ):
            receiver = node.func.value
            name = (
                receiver.attr
                if isinstance(receiver, ast.Attribute)
                else getattr(receiver, "id", "")
            )
            if name not in CLIENT_NAMES and name not in OWN_ADAPTERS:
                found.append(
                    f"{path.relative_to(PACKAGE_ROOT)}:{node.lineno} {name}.{node.func.attr}"
                )
    return found


def actions(service: str, method: str) -> set[str]:
    if (service, method) in SPECIAL_CALLS:
        return SPECIAL_CALLS[(service, method)]
    assert method in operations()[service] or method == "get_paginator", (service, method)
    return {f"{service}:" + "".join(part.title() for part in method.split("_"))}


def actions_called(modules: set[Path]) -> set[str]:
    called = {
        action
        for path in modules
        for service, method, _ in client_calls(path)
        for action in actions(service, method)
    }
    if "sns:Publish" in called and topics_are_encrypted():
        called |= PUBLISH_TO_AN_ENCRYPTED_TOPIC
    return called


def topics_are_encrypted() -> bool:
    template = support.cfn_template(support.MESSAGING)
    return all(
        "KmsMasterKeyId" in t for t in support.resources(template, "AWS::SNS::Topic").values()
    )


def node_actions() -> set[str]:
    modules = closure(NODE_ENTRY)
    called = actions_called(modules)
    # The ECS agent's endpoint calls UpdateTaskProtection with the task role.
    if any("task-protection/v1/state" in path.read_text() for path in modules):
        called.add("ecs:UpdateTaskProtection")
    return called


def operator_entries() -> list[str]:
    """Every module under client/, sub-packages (schedules/, dashboard/) too."""
    return [
        "claude_code_scheduler." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        for path in sorted((PACKAGE / "client").rglob("*.py"))
        if path.stem != "__init__"
    ]


def difference(granted: set[str], called: set[str]) -> str:
    return (
        f"granted but not called: {sorted(granted - called)}; "
        f"called but not granted: {sorted(called - granted)}"
    )


# --- the walk itself -----------------------------------------------------------------


def test_every_aws_call_is_one_the_walk_attributes() -> None:
    """No module calls an AWS operation on a receiver the walk does not
    recognise as a client, so the sets below are all there is."""
    found = [call for path in sorted(PACKAGE.rglob("*.py")) for call in unattributed_calls(path)]
    assert found == []


def test_the_walk_finds_the_calls_it_is_meant_to_find() -> None:
    """The walk sees through imports: the node's closure reaches the adapters."""
    node = {p.relative_to(PACKAGE).as_posix() for p in closure(NODE_ENTRY)}
    assert {"aws/queue.py", "aws/topic.py", "aws/logstore.py", "aws/secrets.py"} <= node
    assert {"sqs:ReceiveMessage", "sns:Publish", "s3:PutObject"} <= node_actions()
    # And nothing of the operator's is in the node: it cannot create queues.
    assert not any(p.startswith("client/") for p in node)


# --- the node ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_policy_cfn(messaging: dict[str, Any]) -> dict[str, Any]:
    (policy,) = support.resources(messaging, "AWS::IAM::ManagedPolicy").values()
    return dict(policy["PolicyDocument"])


def test_node_policy_grants_exactly_what_the_node_calls(node_policy_cfn: dict[str, Any]) -> None:
    called = node_actions()
    standalone = support.policy_actions(support.read_json(support.NODE_POLICY))
    task_role = support.policy_actions(node_policy_cfn)
    assert standalone == called, difference(standalone, called)
    assert task_role == called, difference(task_role, called)


def test_node_policy_json_names_the_resources_of_the_cfn_policy(
    messaging: dict[str, Any], node_policy_cfn: dict[str, Any]
) -> None:
    standalone = support.read_json(support.NODE_POLICY)
    assert statements(standalone) == {
        sid: (actions_, [standalone_arn(r, messaging) for r in resources])
        for sid, (actions_, resources) in statements(node_policy_cfn).items()
    }


def test_no_policy_hard_codes_a_partition_or_wildcards_an_account() -> None:
    for path in (support.NODE_POLICY, support.OPERATOR_POLICY):
        for statement in support.read_json(path)["Statement"]:
            for arn in support.as_list(statement["Resource"]):
                if arn == "*":
                    continue  # only where the action has no resource-level permissions
                assert arn.startswith("arn:${Partition}:"), (path.name, arn)
                fields = arn.split(":")
                if fields[2] == "iam":  # global: no region in its ARNs
                    assert fields[3:5] == ["", "${AccountId}"], (path.name, arn)
                elif fields[2] != "s3":
                    assert fields[3:5] == ["${Region}", "${AccountId}"], (path.name, arn)


def test_task_secrets_are_readable_under_the_prefix_only(messaging: dict[str, Any]) -> None:
    prefix = default("secrets_prefix")
    assert support.parameter_defaults(messaging)["SecretsPrefix"] == prefix
    by_sid = {s["Sid"]: s for s in support.read_json(support.NODE_POLICY)["Statement"]}
    assert by_sid["ReadTaskSecrets"]["Resource"] == [
        f"arn:${{Partition}}:secretsmanager:${{Region}}:${{AccountId}}:secret:{prefix}*",
        f"arn:${{Partition}}:ssm:${{Region}}:${{AccountId}}:parameter/{prefix}*",
    ]


# --- the operator --------------------------------------------------------------------


def test_operator_policy_grants_exactly_what_the_client_calls() -> None:
    called = actions_called(closure(*operator_entries())) | OPERATOR_OUTSIDE_THE_PACKAGE
    assert called >= NEEDS_NO_GRANT, "the walk sees the identity call"
    called -= NEEDS_NO_GRANT
    granted = support.policy_actions(support.read_json(support.OPERATOR_POLICY))
    assert granted == called, difference(granted, called)


def test_operator_reads_logs_and_artifacts_and_writes_inputs_only(
    messaging: dict[str, Any],
) -> None:
    by_sid = {s["Sid"]: s for s in support.read_json(support.OPERATOR_POLICY)["Statement"]}
    (bucket,) = support.resources(messaging, "AWS::S3::Bucket").values()
    name = placeholders(support.resolve(bucket["BucketName"], messaging))
    objects = f"arn:${{Partition}}:s3:::{name}"
    assert by_sid["ReadRunLogsAndArtifacts"]["Action"] == "s3:GetObject"
    assert by_sid["ReadRunLogsAndArtifacts"]["Resource"] == [
        f"{objects}/logs/*",
        f"{objects}/runs/*",
    ]
    assert by_sid["UploadInputArchives"]["Action"] == "s3:PutObject"
    assert by_sid["UploadInputArchives"]["Resource"] == f"{objects}/inputs/*"


def test_cancel_requests_are_written_by_the_operator_read_by_the_node_and_expire(
    messaging: dict[str, Any],
) -> None:
    (bucket,) = support.resources(messaging, "AWS::S3::Bucket").values()
    name = placeholders(support.resolve(bucket["BucketName"], messaging))
    cancels = f"arn:${{Partition}}:s3:::{name}/cancels/*"
    operator = {s["Sid"]: s for s in support.read_json(support.OPERATOR_POLICY)["Statement"]}
    node = {s["Sid"]: s for s in support.read_json(support.NODE_POLICY)["Statement"]}
    assert operator["RecordCancelRequests"]["Action"] == "s3:PutObject"
    assert operator["RecordCancelRequests"]["Resource"] == cancels
    assert operator["AnnounceCancelRequests"]["Resource"].endswith(
        ":claude-code-scheduler-control-bus"
    )
    assert node["ReadCancelRequests"] == {
        "Sid": "ReadCancelRequests",
        "Effect": "Allow",
        "Action": "s3:GetObject",
        "Resource": cancels,
    }
    rules = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}
    assert rules["ExpireCancelRequests"]["Prefix"] == "cancels/"
    assert rules["ExpireCancelRequests"]["ExpirationInDays"] == 30


def test_run_records_are_written_by_the_node_and_listed_by_the_operator_under_records(
    messaging: dict[str, Any],
) -> None:
    """The operator may list the bucket only under records/ (not the logs,
    runs and cancels beside them) and read records; the node only writes them."""
    (bucket,) = support.resources(messaging, "AWS::S3::Bucket").values()
    name = placeholders(support.resolve(bucket["BucketName"], messaging))
    operator = {s["Sid"]: s for s in support.read_json(support.OPERATOR_POLICY)["Statement"]}
    node = {s["Sid"]: s for s in support.read_json(support.NODE_POLICY)["Statement"]}
    assert operator["ListRunRecords"] == {
        "Sid": "ListRunRecords",
        "Effect": "Allow",
        "Action": "s3:ListBucket",
        "Resource": f"arn:${{Partition}}:s3:::{name}",
        "Condition": {"StringLike": {"s3:prefix": "records/*"}},
    }
    assert operator["ReadRunRecords"]["Action"] == "s3:GetObject"
    assert operator["ReadRunRecords"]["Resource"] == f"arn:${{Partition}}:s3:::{name}/records/*"
    assert node["StoreRunRecords"]["Action"] == "s3:PutObject"
    assert node["StoreRunRecords"]["Resource"] == f"arn:${{Partition}}:s3:::{name}/records/*"
    listing = [
        s
        for s in support.read_json(support.OPERATOR_POLICY)["Statement"]
        if "s3:ListBucket" in support.as_list(s["Action"])
    ]
    assert listing == [operator["ListRunRecords"]], "no listing of the bucket without the prefix"


def test_operator_reader_queues_are_limited_to_the_client_prefix() -> None:
    by_sid = {s["Sid"]: s for s in support.read_json(support.OPERATOR_POLICY)["Statement"]}
    assert "sqs:CreateQueue" in by_sid["TemporaryReaderQueues"]["Action"]
    assert by_sid["TemporaryReaderQueues"]["Resource"].split(":")[-1] == READER_QUEUE_PREFIX + "*"
    # sns:Unsubscribe has no resource-level permissions: "*" is the only form.
    assert by_sid["UnsubscribeReaders"]["Resource"] == "*"


# --- helpers -------------------------------------------------------------------------


def statements(document: dict[str, Any]) -> dict[str, tuple[list[str], list[Any]]]:
    return {
        s["Sid"]: (sorted(support.as_list(s["Action"])), support.as_list(s["Resource"]))
        for s in document["Statement"]
    }


def placeholders(text: str) -> str:
    for pseudo, placeholder in PLACEHOLDERS.items():
        text = text.replace(pseudo, placeholder)
    return text


def standalone_arn(resource: Any, template: dict[str, Any]) -> str:
    """A CloudFormation policy's resource as the standalone policy must write it."""
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        name, attribute = resource["Fn::GetAtt"]
        assert attribute == "Arn"
        return resource_arn(name, template)
    if isinstance(resource, dict) and "Ref" in resource:
        return resource_arn(resource["Ref"], template)
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        text = re.sub(
            r"\$\{(\w+)\.Arn\}",
            lambda m: resource_arn(m.group(1), template),
            support.resolve(resource, template),
        )
        return placeholders(text)
    raise AssertionError(f"cannot read {resource!r}")


def resource_arn(logical_id: str, template: dict[str, Any]) -> str:
    resource = template["Resources"][logical_id]
    props = resource["Properties"]
    kind = resource["Type"]
    if kind == "AWS::SQS::Queue":
        return sub_arn("sqs", support.resolve(props["QueueName"], template))
    if kind == "AWS::SNS::Topic":
        return sub_arn("sns", support.resolve(props["TopicName"], template))
    if kind == "AWS::S3::Bucket":
        return "arn:${Partition}:s3:::" + placeholders(
            support.resolve(props["BucketName"], template)
        )
    if kind == "AWS::KMS::Key":
        # A key's id is made by KMS: the standalone policies leave it as a placeholder.
        return "arn:${Partition}:kms:${Region}:${AccountId}:key/${TopicKeyId}"
    raise AssertionError(f"no ARN rule for {kind}")


def sub_arn(service: str, name: str) -> str:
    return f"arn:${{Partition}}:{service}:${{Region}}:${{AccountId}}:{placeholders(name)}"
