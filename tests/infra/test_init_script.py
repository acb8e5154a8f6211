"""The LocalStack init script creates what messaging.yaml creates.

The script runs for real, with a recording stand-in for `awslocal` as its
AWS_CMD (the same switch that points it at a LocalStack on the host), and the
resources it asks for are compared with the template's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.infra import support
from tests.infra.support import Bus

FAKE_AWS = Path(__file__).with_name("fake_aws.py")
QUEUE_SETTINGS = (
    "VisibilityTimeout",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "SqsManagedSseEnabled",
)


def run_init_script(state: Path, **env: str) -> subprocess.CompletedProcess[str]:
    state.mkdir(exist_ok=True)
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_CMD": f"{sys.executable} {FAKE_AWS} {state}",
        **env,
    }
    return subprocess.run(
        [str(support.INIT_SCRIPT)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def calls(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]


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
                    bus.bucket_settings["expire"] = (prefix, int(rule["Expiration"]["Days"]))
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
            bus.bucket_settings["expire"] = (rule.get("Prefix", ""), int(days))
        if "AbortIncompleteMultipartUpload" in rule:
            days = rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
            bus.bucket_settings["abort_uploads_days"] = int(days)
    return bus


@pytest.fixture(scope="module")
def created(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bus, list[str]]:
    state = tmp_path_factory.mktemp("init-script")
    result = run_init_script(state)
    assert result.returncode == 0, result.stderr
    return bus_from_calls(calls(state)), result.stdout.splitlines()


def test_creates_the_topics_and_queues_of_the_template(created: tuple[Bus, list[str]]) -> None:
    bus, _ = created
    expected = bus_from_template()
    assert bus.topics == expected.topics
    assert bus.queues == expected.queues


def test_subscribes_the_same_queues_with_raw_delivery(created: tuple[Bus, list[str]]) -> None:
    bus, _ = created
    expected = bus_from_template()
    assert bus.subscriptions == expected.subscriptions
    assert bus.queue_senders == expected.queue_senders
    # Every subscribed queue accepts its topic's deliveries.
    for topic, queue in bus.subscriptions:
        assert topic in bus.queue_senders[queue]


def test_creates_the_log_bucket_with_the_template_settings(
    created: tuple[Bus, list[str]],
) -> None:
    bus, _ = created
    expected = bus_from_template()
    # The template's bucket name is global, so it ends in the account and region.
    assert expected.bucket == bus.bucket + "-${AWS::AccountId}-${AWS::Region}"
    assert bus.bucket_settings == expected.bucket_settings
    assert bus.bucket_settings["public_access_flags"] == 4


def test_names_are_the_ones_compose_gives_the_worker(created: tuple[Bus, list[str]]) -> None:
    bus, printed = created
    env = support.environment(support.compose()["services"]["worker"])
    assert queue_name(env["CLAUDE_NODE_QUEUE_URL"]) in bus.queues
    assert support.arn_name(env["CLAUDE_NODE_TOPIC_ARN"]) in bus.topics
    assert env["CLAUDE_NODE_LOG_BUCKET"] == bus.bucket
    settings = dict(line.split("=", 1) for line in printed)
    assert settings["CLAUDE_NODE_LOG_BUCKET"] == bus.bucket
    assert support.arn_name(settings["CLAUDE_NODE_TOPIC_ARN"]) == support.arn_name(
        env["CLAUDE_NODE_TOPIC_ARN"]
    )


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


def test_says_so_when_the_aws_command_is_missing(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(support.INIT_SCRIPT)],
        env={"PATH": "/usr/bin:/bin", "AWS_CMD": "no-such-aws-cli --endpoint-url x"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 127
    assert "no-such-aws-cli" in result.stderr
    assert "AWS_CMD" in result.stderr


def test_is_executable() -> None:
    # LocalStack runs ready.d scripts by path, so the bit must survive checkout.
    assert os.access(support.INIT_SCRIPT, os.X_OK)
