"""The LocalStack init script creates what messaging.yaml creates.

The script runs for real, with a recording stand-in for `awslocal` as its
AWS_CMD (the same switch that points it at a LocalStack on the host), and the
resources it asks for are compared with the template's. The settings it
prints are loaded, as printed, into the client commands run against moto.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.infra import support
from tests.infra.support import Bus
from tests.integration.conftest import CREDENTIALS, moto_endpoint  # noqa: F401

FAKE_AWS = Path(__file__).with_name("fake_aws.py")
# The endpoint the recording stand-in is given, and the one its queue URLs name.
FAKE_ENDPOINT = "http://localhost:4566"
EXIT_WAIT_TIMEOUT = 124  # submit --wait gave up
QUEUE_SETTINGS = (
    "VisibilityTimeout",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "SqsManagedSseEnabled",
)


def fake_aws(state: Path) -> str:
    """The recording stand-in as a command line."""
    return f"{sys.executable} {FAKE_AWS} {state}"


def run_script(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The init script with exactly this environment."""
    return subprocess.run(
        [str(support.INIT_SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_init_script(state: Path, **env: str) -> subprocess.CompletedProcess[str]:
    state.mkdir(exist_ok=True)
    return run_script(
        {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_CMD": f"{fake_aws(state)} --endpoint-url {FAKE_ENDPOINT}",
            **env,
        }
    )


def calls(state: Path) -> list[dict[str, Any]]:
    path = state / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def stand_in(path: Path, script: str) -> Path:
    """An executable shell script at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def queue_name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def bus_from_calls(recorded: list[dict[str, Any]]) -> Bus:
    bus = Bus()
    for call in recorded:
        op, options = (call["service"], call["operation"]), call["options"]
        if op == ("sns", "create-topic"):
            bus.topics.add(options["name"])
        elif op == ("sqs", "create-queue"):
            bus.queues.setdefault(options["queue-name"], {})
        elif op == ("sqs", "set-queue-attributes"):
            name = queue_name(options["queue-url"])
            attributes = json.loads(options["attributes"])
            settings: dict[str, Any] = bus.queues.setdefault(name, {})
            settings.update({k: attributes[k] for k in QUEUE_SETTINGS if k in attributes})
            if "RedrivePolicy" in attributes:
                redrive = json.loads(attributes["RedrivePolicy"])
                settings["Redrive"] = (
                    support.arn_name(redrive["deadLetterTargetArn"]),
                    int(redrive["maxReceiveCount"]),
                )
            if "Policy" in attributes:
                bus.queue_senders[name] = support.senders(json.loads(attributes["Policy"]))
        elif op == ("sns", "subscribe"):
            key = (
                support.arn_name(options["topic-arn"]),
                support.arn_name(options["notification-endpoint"]),
            )
            bus.subscriptions[key] = "RawMessageDelivery=true" in options.get("attributes", "")
        elif op == ("s3api", "create-bucket"):
            bus.bucket = options["bucket"]
        elif op == ("s3api", "put-bucket-encryption"):
            config = json.loads(options["server-side-encryption-configuration"])
            rule = config["Rules"][0]["ApplyServerSideEncryptionByDefault"]
            bus.bucket_settings["sse"] = rule["SSEAlgorithm"]
        elif op == ("s3api", "put-public-access-block"):
            pairs = options["public-access-block-configuration"].split(",")
            flags = dict(pair.split("=") for pair in pairs)
            bus.bucket_settings["public_access_blocked"] = all(v == "true" for v in flags.values())
            bus.bucket_settings["public_access_flags"] = len(flags)
        elif op == ("s3api", "put-bucket-lifecycle-configuration"):
            rules = json.loads(options["lifecycle-configuration"])["Rules"]
            for rule in rules:
                prefix = rule.get("Filter", {}).get("Prefix", rule.get("Prefix", ""))
                if "Expiration" in rule:
                    expire = bus.bucket_settings.setdefault("expire", set())
                    expire.add((prefix, int(rule["Expiration"]["Days"])))
                if "AbortIncompleteMultipartUpload" in rule:
                    days = rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
                    bus.bucket_settings["abort_uploads_days"] = int(days)
    return bus


def bus_from_template() -> Bus:
    template = support.cfn_template(support.MESSAGING)
    bus = Bus()
    topic_names = {
        logical: support.resolve(props["TopicName"], template)
        for logical, props in support.resources(template, "AWS::SNS::Topic").items()
    }
    bus.topics = set(topic_names.values())
    sqs = support.resources(template, "AWS::SQS::Queue")
    queue_names = {logical: support.resolve(p["QueueName"], template) for logical, p in sqs.items()}
    for logical, props in sqs.items():
        settings: dict[str, Any] = {}
        for key in QUEUE_SETTINGS:
            if key in props:
                value = support.resolve(props[key], template)
                settings[key] = str(value).lower() if isinstance(value, bool) else str(value)
        if "RedrivePolicy" in props:
            redrive = props["RedrivePolicy"]
            target = redrive["deadLetterTargetArn"]["Fn::GetAtt"][0]
            settings["Redrive"] = (queue_names[target], int(redrive["maxReceiveCount"]))
        bus.queues[queue_names[logical]] = settings
    for props in support.resources(template, "AWS::SNS::Subscription").values():
        assert props["Protocol"] == "sqs"
        topic = topic_names[props["TopicArn"]["Ref"]]
        queue = queue_names[props["Endpoint"]["Fn::GetAtt"][0]]
        bus.subscriptions[(topic, queue)] = bool(props.get("RawMessageDelivery", False))
    for props in support.resources(template, "AWS::SQS::QueuePolicy").values():
        allowed = set()
        for statement in props["PolicyDocument"]["Statement"]:
            source = statement.get("Condition", {}).get("ArnEquals", {}).get("aws:SourceArn")
            if statement["Effect"] == "Allow" and source is not None:
                allowed.add(topic_names[source["Ref"]])
        for queue in props["Queues"]:
            bus.queue_senders[queue_names[queue["Ref"]]] = allowed
    (bucket,) = support.resources(template, "AWS::S3::Bucket").values()
    bus.bucket = support.resolve(bucket["BucketName"], template)
    (sse,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    bus.bucket_settings["sse"] = sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"]
    block = bucket["PublicAccessBlockConfiguration"]
    bus.bucket_settings["public_access_blocked"] = all(v is True for v in block.values())
    bus.bucket_settings["public_access_flags"] = len(block)
    for rule in bucket["LifecycleConfiguration"]["Rules"]:
        if "ExpirationInDays" in rule:
            days = support.resolve(rule["ExpirationInDays"], template)
            expire = bus.bucket_settings.setdefault("expire", set())
            expire.add((rule.get("Prefix", ""), int(days)))
        if "AbortIncompleteMultipartUpload" in rule:
            days = rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
            bus.bucket_settings["abort_uploads_days"] = int(days)
    return bus


@dataclass
class Created:
    bus: Bus
    settings: dict[str, str]  # what it printed on stdout
    stderr: str


@pytest.fixture(scope="module")
def created(tmp_path_factory: pytest.TempPathFactory) -> Created:
    state = tmp_path_factory.mktemp("init-script")
    result = run_init_script(state)
    assert result.returncode == 0, result.stderr
    return Created(bus_from_calls(calls(state)), support.assignments(result.stdout), result.stderr)


def test_creates_the_topics_and_queues_of_the_template(created: Created) -> None:
    bus = created.bus
    expected = bus_from_template()
    assert bus.topics == expected.topics
    assert bus.queues == expected.queues


def test_subscribes_the_same_queues_with_raw_delivery(created: Created) -> None:
    bus = created.bus
    expected = bus_from_template()
    assert bus.subscriptions == expected.subscriptions
    assert bus.queue_senders == expected.queue_senders
    # Every subscribed queue accepts its topic's deliveries.
    for topic, queue in bus.subscriptions:
        assert topic in bus.queue_senders[queue]


def test_creates_the_log_bucket_with_the_template_settings(created: Created) -> None:
    bus = created.bus
    expected = bus_from_template()
    # The template's bucket name is global, so it ends in the account and region.
    assert expected.bucket == bus.bucket + "-${AWS::AccountId}-${AWS::Region}"
    assert bus.bucket_settings == expected.bucket_settings
    assert bus.bucket_settings["public_access_flags"] == 4


def test_names_are_the_ones_compose_gives_the_worker(created: Created) -> None:
    bus, settings = created.bus, created.settings
    env = support.environment(support.compose()["services"]["worker"])
    assert queue_name(env["CLAUDE_NODE_QUEUE_URL"]) in bus.queues
    assert support.arn_name(env["CLAUDE_NODE_TOPIC_ARN"]) in bus.topics
    assert env["CLAUDE_NODE_LOG_BUCKET"] == bus.bucket
    assert settings["CLAUDE_NODE_LOG_BUCKET"] == bus.bucket
    assert support.arn_name(settings["CLAUDE_NODE_TOPIC_ARN"]) == support.arn_name(
        env["CLAUDE_NODE_TOPIC_ARN"]
    )


# ---------------------------------------------------------------- what it prints


def test_prints_only_what_the_node_and_the_client_read(created: Created) -> None:
    read = support.node_envvars().union(*map(support.command_envvars, support.CLIENT_COMMANDS))
    assert set(created.settings) <= read
    # The client's readers take CLAUDE_CONTROL_BUS_ARN, the node CLAUDE_NODE_TOPIC_ARN.
    assert created.settings["CLAUDE_CONTROL_BUS_ARN"] == created.settings["CLAUDE_NODE_TOPIC_ARN"]
    assert support.arn_name(created.settings["CLAUDE_CONTROL_BUS_ARN"]) in created.bus.topics


def test_never_prints_a_queue_that_a_reading_command_would_drain(created: Created) -> None:
    """Given a server queue, events, nodes and submit --wait read it and delete
    what they read: the scheduler that owns it would lose its events."""
    for command in support.CLIENT_COMMANDS:
        assert not support.option_envvars(command, "server_queue_url") & set(created.settings)
    # The scheduler finds its queue on stderr.
    server_queue = "claude-code-scheduler-server-queue"
    assert f"{FAKE_ENDPOINT}/000000000000/{server_queue}" in created.stderr


@pytest.mark.parametrize(
    ("aws_cmd", "env", "expected"),
    [
        ("{fake} --endpoint-url http://127.0.0.1:4510", {}, "http://127.0.0.1:4510"),
        ("{fake} --endpoint-url=http://127.0.0.1:4511", {}, "http://127.0.0.1:4511"),
        (
            "{fake} --endpoint-url http://127.0.0.1:4512",
            {"ENDPOINT_URL": "http://host.example:4513"},
            "http://host.example:4513",
        ),
        # scripts/localstack.sh aws knows its endpoint: `endpoint` prints it.
        ("{bin}/localstack.sh aws", {}, "http://127.0.0.1:4514"),
        ("sh {bin}/localstack_host.py aws", {}, "http://127.0.0.1:4514"),
        # The ready.d hook in compose's container; compose publishes port 4566.
        ("awslocal", {}, "http://localhost:4566"),
        (None, {}, "http://localhost:4566"),  # AWS_CMD unset: awslocal, as in the hook
    ],
)
def test_prints_the_endpoint_it_sent_to(
    tmp_path: Path, aws_cmd: str | None, env: dict[str, str], expected: str
) -> None:
    state, bin_dir = tmp_path / "state", tmp_path / "bin"
    state.mkdir()
    wrapper = (
        "case $1 in endpoint) echo http://127.0.0.1:4514 ;;"
        f' aws) shift; exec {fake_aws(state)} "$@" ;; esac'
    )
    stand_in(bin_dir / "localstack.sh", wrapper)
    stand_in(bin_dir / "localstack_host.py", wrapper)
    stand_in(bin_dir / "awslocal", f'exec {fake_aws(state)} "$@"')
    environ = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", **env}
    if aws_cmd is not None:
        environ["AWS_CMD"] = aws_cmd.format(fake=fake_aws(state), bin=bin_dir)
    result = run_script(environ)
    assert result.returncode == 0, result.stderr
    assert support.assignments(result.stdout)["AWS_ENDPOINT_URL"] == expected


def test_stops_when_it_cannot_tell_the_endpoint(tmp_path: Path) -> None:
    result = run_init_script(tmp_path, AWS_CMD=fake_aws(tmp_path))
    assert result.returncode == 2
    assert "ENDPOINT_URL" in result.stderr
    assert not result.stdout
    assert calls(tmp_path) == [], "it created resources first"


def test_printed_settings_work_as_printed(moto_endpoint: str, tmp_path: Path) -> None:  # noqa: F811
    """Loaded into an environment as printed, the client commands publish to the
    command topic and read the control bus through queues of their own: the
    scheduler's server queue keeps its messages."""
    prefix = f"init-{uuid.uuid4().hex[:8]}"
    result = run_script(
        {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(support.REPO),
            "AWS_CMD": f"{sys.executable} -m tests.infra.moto_aws --endpoint-url {moto_endpoint}",
            "RESOURCE_PREFIX": prefix,
            **CREDENTIALS,
        }
    )
    assert result.returncode == 0, result.stderr
    settings = support.assignments(result.stdout)
    assert settings["AWS_ENDPOINT_URL"] == moto_endpoint
    sqs = boto3.client(  # type: ignore[call-overload]
        "sqs",
        endpoint_url=moto_endpoint,
        region_name=settings["AWS_REGION"],
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    server_queue = sqs.get_queue_url(QueueName=f"{prefix}-server-queue")["QueueUrl"]
    assert server_queue in result.stderr
    unread = 2  # events the scheduler has not read yet
    for n in range(unread):
        sqs.send_message(QueueUrl=server_queue, MessageBody=json.dumps({"unread": n}))

    def client(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "claude_code_scheduler", *args],
            env={**CREDENTIALS, **settings},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    for args in (["events", "--listen", "1"], ["nodes", "--listen", "1"]):
        ran = client(*args)
        assert ran.returncode == 0, f"{args}: {ran.stderr}"
    # Both the command topic and the node queue are printed (a node needs the
    # queue): submit takes the topic.
    submitted = client("submit", "--prompt", "hello")
    assert submitted.returncode == 0, submitted.stderr
    waited = client("submit", "--prompt", "hello", "--wait", "--wait-timeout", "1")
    assert waited.returncode == EXIT_WAIT_TIMEOUT, waited.stderr

    counts = sqs.get_queue_attributes(
        QueueUrl=server_queue,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert counts == {
        "ApproximateNumberOfMessages": str(unread),
        "ApproximateNumberOfMessagesNotVisible": "0",
    }
    # Published to the command topic, delivered (raw) to the nodes' queue.
    received = sqs.receive_message(
        QueueUrl=settings["CLAUDE_NODE_QUEUE_URL"], MaxNumberOfMessages=10, WaitTimeSeconds=1
    ).get("Messages", [])
    run_ids = {json.loads(m["Body"])["run_id"] for m in received}
    assert run_ids == {submitted.stdout.strip(), waited.stdout.strip()}


def test_is_idempotent(tmp_path: Path) -> None:
    first = run_init_script(tmp_path)
    assert first.returncode == 0, first.stderr
    bus_after_first = bus_from_calls(calls(tmp_path))
    (tmp_path / "calls.jsonl").unlink()
    second = run_init_script(tmp_path)
    assert second.returncode == 0, second.stderr
    recorded = calls(tmp_path)
    assert not [c for c in recorded if c["operation"] == "create-bucket"]
    bus_after_second = bus_from_calls(recorded)
    bus_after_second.bucket = bus_after_first.bucket
    assert bus_after_second == bus_after_first
    assert second.stdout == first.stdout


def test_uses_the_region_it_is_given(tmp_path: Path) -> None:
    result = run_init_script(tmp_path, AWS_DEFAULT_REGION="eu-central-1")
    assert result.returncode == 0, result.stderr
    recorded = calls(tmp_path)
    assert {c["options"]["region"] for c in recorded} == {"eu-central-1"}
    (create,) = [c for c in recorded if c["operation"] == "create-bucket"]
    assert create["options"]["create-bucket-configuration"] == "LocationConstraint=eu-central-1"


# ---------------------------------------------------------------- the rest


def test_says_so_when_the_aws_command_is_missing(tmp_path: Path) -> None:
    result = run_script({"PATH": "/usr/bin:/bin", "AWS_CMD": "no-such-aws-cli --endpoint-url x"})
    assert result.returncode == 127
    assert "no-such-aws-cli" in result.stderr
    assert "AWS_CMD" in result.stderr


def test_is_executable() -> None:
    # LocalStack runs ready.d scripts by path, so the bit must survive checkout.
    assert os.access(support.INIT_SCRIPT, os.X_OK)
