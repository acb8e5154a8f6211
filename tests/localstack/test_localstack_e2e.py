"""End to end on LocalStack 4.14.0, run on this host (scripts/localstack_host.py).

The same pieces the compose stack and ECS use, outside containers:
- deploy/localstack/init-resources.sh creates the bus, run from the host with
  AWS_CMD, and run as LocalStack's ready.d hook the way docker-compose.yml does;
- deploy/cloudformation/messaging.yaml deploys with CloudFormation, and makes
  the same bus as the init script;
- the queue URL forms LocalStack hands out are ones the node takes;
- a node in mock mode, configured only through environment variables, runs
  tasks published to the command topic (raw and in an SNS envelope) through to
  TaskCompleted and their S3 logs, and deregisters on SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from claude_code_scheduler.aws.names import parse_queue_url
from tests.conftest import assert_valid_command
from tests.integration.conftest import EventReader
from tests.localstack.conftest import (
    ACCOUNT,
    CREDENTIALS,
    INIT_PREFIX,
    INIT_SCRIPT,
    REGION,
    REPO,
    STACK_OUTPUTS,
    STACK_PREFIX,
    TEMPLATE,
    Bus,
    DeployedStack,
    InitRun,
    LocalStack,
    clean_env,
    parse_assignments,
    run_script,
    tail,
)
from tests.unprivileged import let_other_users_through

# The session fixture installs LocalStack on first use (about 45 s from PyPI):
# that counts towards the first test's timeout.
pytestmark = [pytest.mark.localstack, pytest.mark.timeout(900)]


# ---------------------------------------------------------------- what exists


def queue_attributes(localstack: LocalStack, url: str) -> dict[str, str]:
    attributes = localstack.client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["All"]
    )["Attributes"]
    return dict(attributes)


def strip_prefix(name: str, prefix: str) -> str:
    assert name.startswith(prefix + "-"), f"{name!r} does not start with {prefix}-"
    return name[len(prefix) + 1 :]


def arn_name(arn: str) -> str:
    return arn.rsplit(":", 1)[-1]


def normal_lifecycle(rules: list[dict[str, Any]], id_key: str, days_key: str) -> list[Any]:
    """Lifecycle rules as S3 returns them (ID, Expiration.Days) or as the
    template declares them (Id, ExpirationInDays), in one form."""
    out = []
    for rule in rules:
        expiration = rule.get("Expiration", {}).get(days_key) or rule.get("ExpirationInDays")
        out.append(
            {
                "id": rule.get(id_key),
                "status": rule.get("Status"),
                "prefix": rule.get("Filter", {}).get("Prefix", rule.get("Prefix", "")),
                "expiration_days": int(expiration) if expiration is not None else None,
                "abort_incomplete_days": rule.get("AbortIncompleteMultipartUpload", {}).get(
                    "DaysAfterInitiation"
                ),
            }
        )
    return sorted(out, key=lambda r: str(r["id"]))


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref X becomes {"Ref": "X"})."""


def _cfn_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def template_lifecycle() -> list[Any]:
    """The log bucket's lifecycle rules as messaging.yaml declares them, with
    parameter references replaced by the parameters' defaults."""
    template = yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)
    defaults = {name: p.get("Default") for name, p in template["Parameters"].items()}
    buckets = [
        r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::S3::Bucket"
    ]
    assert len(buckets) == 1
    rules = buckets[0]["LifecycleConfiguration"]["Rules"]
    for rule in rules:
        days = rule.get("ExpirationInDays")
        if isinstance(days, dict) and "Ref" in days:
            rule["ExpirationInDays"] = defaults[days["Ref"]]
    return normal_lifecycle(rules, "Id", "Days")


def bus_shape(localstack: LocalStack, bus: Bus, prefix: str) -> dict[str, Any]:
    """What a bus is, with its prefix taken out of every name: for comparing two."""
    sqs, sns, s3 = (localstack.client(n) for n in ("sqs", "sns", "s3"))
    queues = {}
    for url in sqs.list_queues(QueueNamePrefix=prefix + "-").get("QueueUrls", []):
        name = url.rsplit("/", 1)[-1]
        if not name.startswith(prefix + "-"):
            continue
        attributes = queue_attributes(localstack, url)
        redrive = json.loads(attributes.get("RedrivePolicy", "null") or "null")
        policy = json.loads(attributes.get("Policy", "null") or "null")
        allows = []
        for statement in (policy or {}).get("Statement", []):
            if statement.get("Effect") != "Allow":
                continue  # messaging.yaml adds a TLS-only Deny; LocalStack speaks HTTP
            source = statement.get("Condition", {}).get("ArnEquals", {}).get("aws:SourceArn")
            allows.append(
                (
                    json.dumps(statement.get("Principal"), sort_keys=True),
                    statement.get("Action"),
                    strip_prefix(arn_name(statement.get("Resource", "")), prefix),
                    strip_prefix(arn_name(source), prefix) if source else None,
                )
            )
        queues[strip_prefix(name, prefix)] = {
            "VisibilityTimeout": attributes.get("VisibilityTimeout"),
            "MessageRetentionPeriod": attributes.get("MessageRetentionPeriod"),
            "ReceiveMessageWaitTimeSeconds": attributes.get("ReceiveMessageWaitTimeSeconds"),
            "SqsManagedSseEnabled": attributes.get("SqsManagedSseEnabled"),
            "redrive": (
                (
                    strip_prefix(arn_name(redrive["deadLetterTargetArn"]), prefix),
                    int(redrive["maxReceiveCount"]),
                )
                if redrive
                else None
            ),
            "allows": sorted(allows),
        }
    topics = sorted(
        strip_prefix(arn_name(t["TopicArn"]), prefix)
        for t in sns.list_topics()["Topics"]
        if arn_name(t["TopicArn"]).startswith(prefix + "-")
    )
    subscriptions = []
    for sub in sns.list_subscriptions()["Subscriptions"]:
        if not arn_name(sub["TopicArn"]).startswith(prefix + "-"):
            continue
        attributes = sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])
        subscriptions.append(
            (
                strip_prefix(arn_name(sub["TopicArn"]), prefix),
                sub["Protocol"],
                strip_prefix(arn_name(sub["Endpoint"]), prefix),
                attributes["Attributes"].get("RawMessageDelivery"),
            )
        )
    bucket = bus.log_bucket
    encryption = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    public_access = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    try:
        lifecycle = normal_lifecycle(
            s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"], "ID", "Days"
        )
    except s3.exceptions.ClientError as error:
        if error.response["Error"]["Code"] != "NoSuchLifecycleConfiguration":
            raise
        lifecycle = None
    return {
        "queues": queues,
        "topics": topics,
        "subscriptions": sorted(subscriptions),
        "bucket": {
            "encryption": [
                r["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] for r in encryption["Rules"]
            ],
            "public_access": public_access,
            "lifecycle": lifecycle,
        },
    }


EXPECTED_QUEUES = {"node-queue", "node-queue-dlq", "server-queue"}
EXPECTED_TOPICS = ["command-topic", "control-bus"]
EXPECTED_SUBSCRIPTIONS = [
    ("command-topic", "sqs", "node-queue", "true"),
    ("control-bus", "sqs", "server-queue", "true"),
]


def assert_bus_shape(shape: dict[str, Any]) -> None:
    """What the seed and issue ask of the bus, whichever way it was created."""
    assert set(shape["queues"]) == EXPECTED_QUEUES
    assert shape["topics"] == EXPECTED_TOPICS
    assert shape["subscriptions"] == EXPECTED_SUBSCRIPTIONS
    node_queue = shape["queues"]["node-queue"]
    assert node_queue["redrive"] == ("node-queue-dlq", 10)  # messaging.yaml says why
    assert int(node_queue["VisibilityTimeout"]) >= 30
    for name, queue in shape["queues"].items():
        assert queue["SqsManagedSseEnabled"] == "true", name
    # Only the matching topic may send to each subscribed queue.
    sns_principal = json.dumps({"Service": "sns.amazonaws.com"})
    assert node_queue["allows"] == [
        (sns_principal, "sqs:SendMessage", "node-queue", "command-topic")
    ]
    assert shape["queues"]["server-queue"]["allows"] == [
        (sns_principal, "sqs:SendMessage", "server-queue", "control-bus")
    ]
    bucket = shape["bucket"]
    assert bucket["encryption"] == ["AES256"]
    assert all(bucket["public_access"].values()) and len(bucket["public_access"]) == 4
    assert_expires_logs(bucket["lifecycle"])


def assert_expires_logs(lifecycle: list[Any]) -> None:
    assert any(
        r["prefix"] == "logs/" and r["status"] == "Enabled" and r["expiration_days"]
        for r in lifecycle
    ), lifecycle


def assert_delivers(localstack: LocalStack, topic_arn: str, queue_url: str) -> None:
    """A message published to the topic arrives, raw, on the queue."""
    sns, sqs = localstack.client("sns"), localstack.client("sqs")
    body = json.dumps({"probe": uuid.uuid4().hex})
    sns.publish(
        TopicArn=topic_arn,
        Message=body,
        MessageAttributes={"event_type": {"DataType": "String", "StringValue": "Probe"}},
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for message in sqs.receive_message(
            QueueUrl=queue_url, WaitTimeSeconds=1, MessageAttributeNames=["All"]
        ).get("Messages", []):
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            if message["Body"] == body:
                assert message["MessageAttributes"]["event_type"]["StringValue"] == "Probe"
                return
    raise AssertionError(f"nothing published to {topic_arn} reached {queue_url}")


def drain(localstack: LocalStack, queue_url: str) -> None:
    sqs = localstack.client("sqs")
    while messages := sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
    ).get("Messages", []):
        for message in messages:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


# ---------------------------------------------------------------- (a) init script


def test_init_script_creates_the_bus(localstack: LocalStack, init_resources: InitRun) -> None:
    bus = init_resources.bus
    assert bus.command_topic_arn == f"arn:aws:sns:{REGION}:{ACCOUNT}:{INIT_PREFIX}-command-topic"
    assert bus.control_bus_arn == f"arn:aws:sns:{REGION}:{ACCOUNT}:{INIT_PREFIX}-control-bus"
    assert bus.node_queue_url.endswith(f"/{ACCOUNT}/{INIT_PREFIX}-node-queue")
    assert bus.server_queue_url.endswith(f"/{ACCOUNT}/{INIT_PREFIX}-server-queue")
    assert bus.log_bucket == f"{INIT_PREFIX}-logs"
    # Loadable as printed: the endpoint the requests went to, the control bus
    # under the names the client and the node read, and no server queue.
    settings = init_resources.settings
    assert settings["AWS_ENDPOINT_URL"] == localstack.endpoint
    assert settings["CLAUDE_NODE_TOPIC_ARN"] == bus.control_bus_arn
    assert "CLAUDE_SERVER_QUEUE_URL" not in settings
    assert bus.server_queue_url in init_resources.stderr

    shape = bus_shape(localstack, bus, INIT_PREFIX)
    assert_bus_shape(shape)
    assert_delivers(localstack, bus.command_topic_arn, bus.node_queue_url)
    assert_delivers(localstack, bus.control_bus_arn, bus.server_queue_url)


def test_init_script_is_idempotent(localstack: LocalStack, init_resources: InitRun) -> None:
    before = bus_shape(localstack, init_resources.bus, INIT_PREFIX)
    again = subprocess.run(
        ["bash", str(INIT_SCRIPT)],
        env=init_resources.env,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert parse_assignments(again.stdout) == parse_assignments(init_resources.stdout)
    assert bus_shape(localstack, init_resources.bus, INIT_PREFIX) == before


# ---------------------------------------------------------------- (b) CloudFormation


def test_messaging_template_deploys(localstack: LocalStack, messaging_stack: DeployedStack) -> None:
    assert messaging_stack.status == "CREATE_COMPLETE"
    bus = messaging_stack.bus
    seed_outputs = {seed: messaging_stack.outputs[key] for key, seed in STACK_OUTPUTS.items()}
    assert seed_outputs["command_topic_arn"].endswith(f":{STACK_PREFIX}-command-topic")
    assert seed_outputs["control_bus_arn"].endswith(f":{STACK_PREFIX}-control-bus")
    assert seed_outputs["node_queue_url"].endswith(f"/{STACK_PREFIX}-node-queue")
    assert seed_outputs["server_queue_url"].endswith(f"/{STACK_PREFIX}-server-queue")
    assert seed_outputs["log_bucket_name"] == f"{STACK_PREFIX}-logs-{ACCOUNT}-{REGION}"

    shape = bus_shape(localstack, bus, STACK_PREFIX)
    # LocalStack 4.14's CloudFormation provider for AWS::S3::Bucket ignores
    # LifecycleConfiguration (the bucket ends up with none; encryption, public
    # access block and ownership are S3's defaults for a new bucket anyway), so
    # the rules are checked as the template declares them.
    assert shape["bucket"]["lifecycle"] is None, "LocalStack applies lifecycle rules now"
    shape["bucket"]["lifecycle"] = template_lifecycle()
    assert_bus_shape(shape)
    assert_delivers(localstack, bus.command_topic_arn, bus.node_queue_url)
    assert_delivers(localstack, bus.control_bus_arn, bus.server_queue_url)

    # Both topics name the stack's KMS key, which exists and rotates. (LocalStack
    # does not encrypt with it or check who may use it: tests/infra reads the
    # key policy and the publishers' grants.)
    key_arn = messaging_stack.outputs["TopicKeyArn"]
    sns = localstack.client("sns")
    for topic in (bus.command_topic_arn, bus.control_bus_arn):
        attributes = sns.get_topic_attributes(TopicArn=topic)["Attributes"]
        assert attributes.get("KmsMasterKeyId") == key_arn, topic
    kms = localstack.client("kms")
    assert kms.describe_key(KeyId=key_arn)["KeyMetadata"]["KeyState"] == "Enabled"
    assert kms.get_key_rotation_status(KeyId=key_arn)["KeyRotationEnabled"] is True

    # The node's managed policy exists and grants what the node calls.
    if "NodePolicyArn" in messaging_stack.outputs:
        iam = localstack.client("iam")
        arn = messaging_stack.outputs["NodePolicyArn"]
        version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
        document = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"][
            "Document"
        ]
        if isinstance(document, str):
            document = json.loads(document)
        actions = {
            action
            for statement in document["Statement"]
            for action in (
                statement["Action"]
                if isinstance(statement["Action"], list)
                else [statement["Action"]]
            )
        }
        assert {
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:GetQueueAttributes",
            "sqs:ChangeMessageVisibility",
            "sns:Publish",
            "s3:PutObject",
        } <= actions


def test_init_script_and_template_make_the_same_bus(
    localstack: LocalStack, init_resources: InitRun, messaging_stack: DeployedStack
) -> None:
    """Same names (after the prefix) and settings, whichever way the bus is made.

    The documented differences: the template's bucket name ends in
    -<account>-<region> (bucket names are global on AWS), and its queue and
    bucket policies add a TLS-only Deny (left out of the comparison).
    """
    from_script = bus_shape(localstack, init_resources.bus, INIT_PREFIX)
    from_template = bus_shape(localstack, messaging_stack.bus, STACK_PREFIX)
    # LocalStack does not apply the template's lifecycle rules (see above):
    # compare the script's applied rules with the template's declared ones.
    from_template["bucket"]["lifecycle"] = template_lifecycle()
    assert from_script == from_template
    assert init_resources.bus.log_bucket == f"{INIT_PREFIX}-logs"
    assert messaging_stack.bus.log_bucket == f"{STACK_PREFIX}-logs-{ACCOUNT}-{REGION}"


# ---------------------------------------------------------------- queue URL forms


def url_forms(localstack: LocalStack, returned: str) -> dict[str, str]:
    name = returned.rsplit("/", 1)[-1]
    port = urlparse(localstack.endpoint).port
    return {
        # What LocalStack returns by default (SQS_ENDPOINT_STRATEGY=standard).
        "standard": returned,
        # What docker-compose.yml gives the worker: http://localstack:4566/<account>/<name>.
        "off": f"{localstack.endpoint}/{ACCOUNT}/{name}",
        "localhost": f"http://localhost:{port}/{ACCOUNT}/{name}",
        # SQS_ENDPOINT_STRATEGY=domain.
        "domain": f"http://queue.localhost.localstack.cloud:{port}/{ACCOUNT}/{name}",
        # SQS_ENDPOINT_STRATEGY=path, and what =dynamic returns to a client that
        # calls http://localhost:4566.
        "path": f"{localstack.endpoint}/queue/{REGION}/{ACCOUNT}/{name}",
    }


@pytest.mark.parametrize(
    "form",
    [
        "standard",
        "off",
        "localhost",
        "domain",
        "path",
    ],
)
def test_node_accepts_localstack_queue_urls(
    localstack: LocalStack, messaging_stack: DeployedStack, form: str
) -> None:
    url = url_forms(localstack, messaging_stack.bus.node_queue_url)[form]
    # LocalStack itself takes every form as a QueueUrl (the node's start-up
    # check is this GetQueueAttributes call) ...
    attributes = localstack.client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["QueueArn"]
    )["Attributes"]
    assert attributes["QueueArn"] == f"arn:aws:sqs:{REGION}:{ACCOUNT}:{STACK_PREFIX}-node-queue"
    # ... and the node's parser must too.
    parsed = parse_queue_url(url)
    assert parsed.account == ACCOUNT
    assert parsed.name == f"{STACK_PREFIX}-node-queue"
    assert parsed.region in (REGION, None)


# ---------------------------------------------------------------- (c) a node


def run_one_task(
    localstack: LocalStack,
    bus: Bus,
    events: EventReader,
    node_log: Callable[[], str],
    raw: bool,
) -> str:
    """Publish a RunTask to the command topic; check its events, log and message."""
    sns, s3 = localstack.client("sns"), localstack.client("s3")
    run_id = f"ls-run-{'raw' if raw else 'envelope'}-{uuid.uuid4().hex[:12]}"
    command = {
        "type": "RunTask",
        "version": 1,
        "run_id": run_id,
        "task": {
            "prompt": "Say hello from LocalStack",
            "name": "localstack end to end",
            "task_id": "ls-task-1",
            "mock": {"duration_seconds": 1.5, "output_bytes": 6000},
        },
    }
    assert_valid_command(command)
    sns.publish(TopicArn=bus.command_topic_arn, Message=json.dumps(command))

    def run_event(event_type: str) -> Callable[[dict[str, Any]], bool]:
        return lambda e: e["event_type"] == event_type and e["data"].get("run_id") == run_id

    try:
        completed = events.wait_for(run_event("TaskCompleted"), timeout=60)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{node_log()}") from None
    started = events.wait_for(run_event("TaskStarted"), timeout=5)
    assert started["data"]["task_id"] == "ls-task-1"
    assert started["data"]["task_name"] == "localstack end to end"
    assert started["data"]["attempt"] == 1
    assert not events.of("TaskFailed"), events.of("TaskFailed")

    # Every chunk of output is published before TaskCompleted, but SQS
    # (standard) may hand them over in any order: give stragglers a moment.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        events.poll_events(wait=1)
    outputs = sorted(
        (e for e in events.events if run_event("TaskOutput")(e)),
        key=lambda e: e["data"]["chunk_index"],
    )
    assert outputs, "no TaskOutput"
    assert [e["data"]["chunk_index"] for e in outputs] == list(range(len(outputs)))
    text = "".join(e["data"]["data"] for e in outputs)
    assert "Say hello from LocalStack" in text  # the mock echoes the prompt

    data = completed["data"]
    assert data["exit_code"] == 0
    assert data["log_uri"] == f"s3://{bus.log_bucket}/logs/{run_id}.log"
    log = s3.get_object(Bucket=bus.log_bucket, Key=f"logs/{run_id}.log")["Body"].read()
    assert log == text.encode("utf-8")
    assert data["output_bytes"] == len(log)
    assert data["result"] is not None and data["result"]["is_error"] is False

    # The command message is gone once the run is over.
    deadline = time.monotonic() + 10
    while True:
        attributes = queue_attributes(localstack, bus.node_queue_url)
        counts = (
            int(attributes["ApproximateNumberOfMessages"]),
            int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        )
        if counts == (0, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert counts == (0, 0), f"node queue still holds {counts}"
    return run_id


def test_node_runs_a_task_from_the_command_topic(
    localstack: LocalStack,
    messaging_stack: DeployedStack,
    node_processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    bus = messaging_stack.bus
    sqs, sns = localstack.client("sqs"), localstack.client("sns")
    for url in (bus.server_queue_url, bus.node_queue_url):
        drain(localstack, url)  # anything an earlier test left
    events = EventReader(sqs=sqs, server_queue_url=bus.server_queue_url)

    node_id = f"ls-node-{uuid.uuid4().hex[:8]}"
    # Configured only through the environment, as docker-compose.yml and the
    # ECS task definition configure it.
    env = clean_env(
        AWS_ENDPOINT_URL=localstack.endpoint,
        AWS_REGION=REGION,
        **CREDENTIALS,
        CLAUDE_NODE_QUEUE_URL=bus.node_queue_url,
        CLAUDE_NODE_TOPIC_ARN=bus.control_bus_arn,
        CLAUDE_NODE_LOG_BUCKET=bus.log_bucket,
        CLAUDE_NODE_MOCK_MODE="true",
        CLAUDE_NODE_ID=node_id,
        CLAUDE_NODE_HEARTBEAT_INTERVAL="1",
        CLAUDE_NODE_POLL_WAIT_SECONDS="2",
        CLAUDE_NODE_SHUTDOWN_TIMEOUT="25",
        # Runs run under uids of their own, which must reach their folders.
        CLAUDE_NODE_WORK_DIR=str(let_other_users_through(tmp_path) / "work"),
        CLAUDE_NODE_LOG_FORMAT="json",
        CLAUDE_NODE_VERBOSE="1",
        PYTHONUNBUFFERED="1",
    )
    stderr_path = tmp_path / "node.log"
    with stderr_path.open("w") as stderr:
        node = subprocess.Popen(
            [sys.executable, "-m", "claude_code_scheduler", "node"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    node_processes.append(node)

    def node_log() -> str:
        return stderr_path.read_text()[-4000:]

    try:
        registered = events.wait_event("NodeRegistered", timeout=30)
    except AssertionError as error:
        raise AssertionError(f"{error}\nnode exit: {node.poll()}\n{node_log()}") from None
    assert registered["node_id"] == node_id
    assert registered["data"]["mock_mode"] is True
    assert registered["data"]["heartbeat_interval"] == 1

    # messaging.yaml subscribes the node queue with raw delivery; the node takes
    # SNS envelopes too, so the second run goes through LocalStack's envelope.
    queue_arn = queue_attributes(localstack, bus.node_queue_url)["QueueArn"]
    (subscription,) = [
        sub["SubscriptionArn"]
        for sub in sns.list_subscriptions_by_topic(TopicArn=bus.command_topic_arn)["Subscriptions"]
        if sub["Endpoint"] == queue_arn
    ]
    run_ids = []
    try:
        for raw in ("true", "false"):
            sns.set_subscription_attributes(
                SubscriptionArn=subscription,
                AttributeName="RawMessageDelivery",
                AttributeValue=raw,
            )
            attributes = sns.get_subscription_attributes(SubscriptionArn=subscription)
            assert attributes["Attributes"]["RawMessageDelivery"] == raw
            run_ids.append(run_one_task(localstack, bus, events, node_log, raw == "true"))
    finally:
        sns.set_subscription_attributes(
            SubscriptionArn=subscription, AttributeName="RawMessageDelivery", AttributeValue="true"
        )

    # SNS message attributes let subscribers filter; task events carry the run_id.
    for event in events.events:
        attributes = event["_attributes"]
        assert attributes["event_type"] == event["event_type"]
        assert attributes["node_id"] == node_id
        if event["event_type"].startswith("Task"):
            assert attributes["run_id"] == event["data"]["run_id"]
            assert attributes["run_id"] in run_ids

    # SIGTERM while idle: NodeDeregistered, then exit 0 once the 2 s poll returns.
    node.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    deregistered = events.wait_event("NodeDeregistered", timeout=15)
    assert deregistered["data"]["reason"] == "SIGTERM"
    assert deregistered["data"]["tasks_completed"] == 2
    assert deregistered["data"]["tasks_failed"] == 0
    assert node.wait(30) == 0, node_log()
    assert time.monotonic() - signalled < 15

    # Nothing after NodeDeregistered; one sequence, no gaps, from this node.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        events.poll_events(wait=1)
    assert {e["node_id"] for e in events.events} == {node_id}
    sequences = sorted(e["sequence"] for e in events.events)
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
    assert deregistered["sequence"] == sequences[-1]
    assert events.of("NodeHeartbeat"), "no NodeHeartbeat at a 1 s interval"


# ---------------------------------------------------------------- (a') as compose runs it

COMPOSE = REPO / "docker-compose.yml"
DEFAULT_PREFIX = "claude-code-scheduler"


def compose_worker_env() -> dict[str, str] | None:
    if not COMPOSE.exists():
        return None
    worker = yaml.safe_load(COMPOSE.read_text())["services"]["worker"]
    env = worker.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def test_init_script_as_a_ready_hook(localstack: LocalStack) -> None:
    """As docker-compose.yml runs it: in /etc/localstack/init/ready.d with
    `awslocal` on PATH, and healthy once /_localstack/init/ready says so.

    A LocalStack of its own, so the default names do not meet the other tests'.
    """
    run_dir = localstack.run_dir.with_name(localstack.run_dir.name + "-hook")
    env = clean_env(
        LOCALSTACK_RUN_DIR=str(run_dir),
        LOCALSTACK_WATCH_PID=str(os.getpid()),
        LOCALSTACK_INIT_READY=str(INIT_SCRIPT),
    )
    started = run_script("start", env, timeout=180)
    try:
        assert started.returncode == 0, f"start with the hook failed:\n{tail(started.stderr, 45)}"
        hooked = LocalStack(endpoint=started.stdout.strip(), run_dir=run_dir)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{hooked.endpoint}/_localstack/init/ready", timeout=5) as response:
            text = response.read().decode()
        assert json.loads(text) == {
            "completed": True,
            "scripts": [{"stage": "READY", "name": INIT_SCRIPT.name, "state": "SUCCESSFUL"}],
        }
        # docker-compose.yml's health check greps this text.
        assert '"completed": true' in text and '"ERROR"' not in text

        bucket = f"{DEFAULT_PREFIX}-logs"
        bus = Bus("", "", "", "", bucket)
        assert_bus_shape(bus_shape(hooked, bus, DEFAULT_PREFIX))

        # The worker's settings in docker-compose.yml point at what the hook made,
        # and the node takes its queue URL as it stands there.
        worker = compose_worker_env()
        if worker is not None:
            sqs = hooked.client("sqs")
            url = worker["CLAUDE_NODE_QUEUE_URL"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            assert arn == f"arn:aws:sqs:{REGION}:{ACCOUNT}:{DEFAULT_PREFIX}-node-queue"
            assert parse_queue_url(url).name == f"{DEFAULT_PREFIX}-node-queue"
            topics = {t["TopicArn"] for t in hooked.client("sns").list_topics()["Topics"]}
            assert worker["CLAUDE_NODE_TOPIC_ARN"] in topics
            assert worker["CLAUDE_NODE_TOPIC_ARN"].endswith(f":{DEFAULT_PREFIX}-control-bus")
            assert worker["CLAUDE_NODE_LOG_BUCKET"] == bucket
    finally:
        stopped = run_script("stop", env, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        shutil.rmtree(run_dir, ignore_errors=True)
