"""aws/names.py and node/config.py: queue URL, topic ARN and bucket validation,
region agreement, NodeConfig."""

from __future__ import annotations

from typing import Any

import pytest
from unit_support import QUEUE_URL, TOPIC_ARN, make_config

from claude_code_scheduler.aws.names import (
    QueueUrl,
    TopicArn,
    node_region,
    parse_queue_url,
    parse_topic_arn,
    resolve_region,
    validate_bucket,
)
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.node.command import build_config, node
from claude_code_scheduler.node.config import default, log_key
from claude_code_scheduler.node.startup import real_mode_warnings

# --- queue URLs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "account", "name", "region"),
    [
        ("https://sqs.us-east-1.amazonaws.com/123456789012/q", "123456789012", "q", "us-east-1"),
        ("https://us-west-2.queue.amazonaws.com/123456789012/q", "123456789012", "q", "us-west-2"),
        ("http://localhost:4566/000000000000/q", "000000000000", "q", None),
        ("http://127.0.0.1:5000/123456789012/my-queue", "123456789012", "my-queue", None),
        (
            "http://sqs.us-east-1.localhost.localstack.cloud:4566/000000000000/q",
            "000000000000",
            "q",
            "us-east-1",
        ),
        (
            "https://sqs.eu-central-1.amazonaws.com/123456789012/tasks.fifo",
            "123456789012",
            "tasks.fifo",
            "eu-central-1",
        ),
        (
            "https://sqs.us-gov-west-1.amazonaws.com/123456789012/q_1",
            "123456789012",
            "q_1",
            "us-gov-west-1",
        ),
        (
            "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q",
            "123456789012",
            "q",
            "cn-north-1",
        ),
        ("https://sqs.us-east-1.amazonaws.com/123456789012/q/", "123456789012", "q", "us-east-1"),
        # FIPS and dual-stack hosts: "fips" is not part of the region.
        (
            "https://sqs-fips.us-gov-west-1.amazonaws.com/123456789012/q",
            "123456789012",
            "q",
            "us-gov-west-1",
        ),
        (
            "https://sqs-fips.us-east-1.amazonaws.com/123456789012/q",
            "123456789012",
            "q",
            "us-east-1",
        ),
        ("https://sqs.eu-west-1.api.aws/123456789012/q", "123456789012", "q", "eu-west-1"),
        ("https://sqs-fips.us-east-2.api.aws/123456789012/q", "123456789012", "q", "us-east-2"),
        # us-east-1's legacy endpoint names no region.
        ("https://queue.amazonaws.com/123456789012/q", "123456789012", "q", "us-east-1"),
        # LocalStack's path strategy: the region is in the path.
        (
            "http://localhost:4566/queue/us-east-1/000000000000/q",
            "000000000000",
            "q",
            "us-east-1",
        ),
        (
            "http://localstack:4566/queue/eu-west-2/000000000000/tasks.fifo",
            "000000000000",
            "tasks.fifo",
            "eu-west-2",
        ),
        (
            "http://localhost.localstack.cloud:4566/queue/us-gov-west-1/000000000000/q/",
            "000000000000",
            "q",
            "us-gov-west-1",
        ),
        (
            "http://sqs.us-east-1.localhost.localstack.cloud:4566/queue/us-east-1/000000000000/q",
            "000000000000",
            "q",
            "us-east-1",
        ),
    ],
)
def test_queue_url_accepted(url: str, account: str, name: str, region: str | None) -> None:
    assert parse_queue_url(url) == QueueUrl(url=url, account=account, name=name, region=region)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "garbage",
        "sqs.us-east-1.amazonaws.com/123456789012/q",
        "ftp://sqs.us-east-1.amazonaws.com/123456789012/q",
        "https:///123456789012/q",
        "https://sqs.us-east-1.amazonaws.com/",
        "https://sqs.us-east-1.amazonaws.com/123456789012",
        "https://sqs.us-east-1.amazonaws.com/123456789012/q/extra",
        "https://sqs.us-east-1.amazonaws.com/notanaccount/q",
        "https://sqs.us-east-1.amazonaws.com/1234567890123/q",
        "https://sqs.us-east-1.amazonaws.com/123456789012/bad name",
        "https://sqs.us-east-1.amazonaws.com/123456789012/" + "q" * 81,
        "https://sqs.us-east-1.amazonaws.com/123456789012/q.fifo.fifo",
        "https://example.amazonaws.com/123456789012/q",
        "arn:aws:sqs:us-east-1:123456789012:q",
        # AWS hosts must name a real region.
        "https://sqs-fips.amazonaws.com/123456789012/q",
        "https://sqs-fips.notaregion.amazonaws.com/123456789012/q",
        "https://sqs-us-east-1.amazonaws.com/123456789012/q",
        "https://fips.queue.amazonaws.com/123456789012/q",
        "https://queue.amazonaws.com.cn/123456789012/q",
        "https://sqs.api.aws/123456789012/q",
        # Path-style near-misses.
        "http://localhost:4566/queue/us-east-1/000000000000",
        "http://localhost:4566/queue/us-east-1/000000000000/q/extra",
        "http://localhost:4566/queue/notaregion/000000000000/q",
        "http://localhost:4566/queue//000000000000/q",
        "http://localhost:4566/queue/000000000000/q",
        "http://localhost:4566/queues/us-east-1/000000000000/q",
        "http://localhost:4566/extra/us-east-1/000000000000/q",
        "http://localhost:4566/extra/000000000000/q",
        "http://localhost:4566/queue/us-east-1/notanaccount/q",
        "http://localhost:4566/queue/us-east-1/000000000000/bad name",
        "http://sqs.eu-west-1.localhost.localstack.cloud:4566/queue/us-east-1/000000000000/q",
        # Real AWS never uses the path-style form.
        "https://sqs.us-east-1.amazonaws.com/queue/us-east-1/123456789012/q",
        "https://queue.amazonaws.com/queue/us-east-1/123456789012/q",
    ],
)
def test_queue_url_rejected_with_option_name(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_queue_url(url)
    assert str(info.value).startswith("--queue-url: ")


def test_queue_url_error_uses_given_option_name() -> None:
    with pytest.raises(ConfigError, match=r"^--other: "):
        parse_queue_url("nope", option="--other")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "http://localhost:4566/queue/notaregion/000000000000/q",
            r"'notaregion' in .* is not an AWS region name",
        ),
        (
            "http://sqs.eu-west-1.localhost.localstack.cloud:4566/queue/us-east-1/000000000000/q",
            r"region 'eu-west-1' in its host but 'us-east-1' in its path",
        ),
        ("https://sqs-fips.amazonaws.com/123456789012/q", r"cannot read the region"),
    ],
)
def test_queue_url_region_errors_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_queue_url(url)


def test_queue_name_of_80_characters_is_accepted() -> None:
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/" + "q" * 80
    assert parse_queue_url(url).name == "q" * 80


# --- topic ARNs -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("arn", "region", "account", "name", "fifo"),
    [
        (
            "arn:aws:sns:us-east-1:123456789012:control",
            "us-east-1",
            "123456789012",
            "control",
            False,
        ),
        (
            "arn:aws:sns:eu-west-1:000000000000:bus.fifo",
            "eu-west-1",
            "000000000000",
            "bus.fifo",
            True,
        ),
        ("arn:aws-cn:sns:cn-north-1:123456789012:t", "cn-north-1", "123456789012", "t", False),
        (
            "arn:aws-us-gov:sns:us-gov-west-1:123456789012:t_-1",
            "us-gov-west-1",
            "123456789012",
            "t_-1",
            False,
        ),
    ],
)
def test_topic_arn_accepted(arn: str, region: str, account: str, name: str, fifo: bool) -> None:
    topic = parse_topic_arn(arn)
    assert topic == TopicArn(arn=arn, region=region, account=account, name=name)
    assert topic.is_fifo is fifo


@pytest.mark.parametrize(
    "arn",
    [
        "",
        "control",
        "arn:aws:sqs:us-east-1:123456789012:control",
        "arn:aws:sns:us-east-1:control",
        "arn:aws:sns:us-east-1:123456789012:",
        "arn:aws:sns:us-east-1:abc:control",
        "arn:aws:sns:nowhere:123456789012:control",
        "arn:aws:sns:us-east-1:123456789012:bad name",
        "arn:aws:sns:us-east-1:123456789012:control:extra",
        "https://sns.us-east-1.amazonaws.com/",
    ],
)
def test_topic_arn_rejected_with_option_name(arn: str) -> None:
    with pytest.raises(ConfigError, match=r"^--topic-arn: .*not an SNS topic ARN"):
        parse_topic_arn(arn)


# --- bucket names -------------------------------------------------------------------


@pytest.mark.parametrize(
    "bucket",
    ["abc", "a" * 63, "my-logs", "my.logs.bucket", "1-2-3", "logs-2024", "a.b-c.d"],
)
def test_bucket_accepted(bucket: str) -> None:
    assert validate_bucket(bucket) == bucket


@pytest.mark.parametrize(
    ("bucket", "problem"),
    [
        ("ab", "3-63"),
        ("a" * 64, "3-63"),
        ("", "3-63"),
        ("My-Bucket", "3-63"),
        ("my_bucket", "3-63"),
        ("-bucket", "3-63"),
        ("bucket-", "3-63"),
        (".bucket", "3-63"),
        ("bucket.", "3-63"),
        ("my bucket", "3-63"),
        ("my..bucket", "adjacent dots"),
        ("192.168.5.4", "IP address"),
        ("10.0.0.1", "IP address"),
        ("xn--bucket", "reserves"),
        ("sthree-bucket", "reserves"),
        ("bucket-s3alias", "reserves"),
        ("bucket--ol-s3", "reserves"),
    ],
)
def test_bucket_rejected(bucket: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_bucket(bucket)
    message = str(info.value)
    assert message.startswith("--log-bucket: ")
    assert problem in message


def test_bucket_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(ConfigError):
        validate_bucket("my-bucket\n")


# --- regions -------------------------------------------------------------------------

EAST_QUEUE = parse_queue_url("https://sqs.us-east-1.amazonaws.com/123456789012/q")
EMULATOR_QUEUE = parse_queue_url("http://localhost:4566/000000000000/q")
EAST_TOPIC = parse_topic_arn("arn:aws:sns:us-east-1:123456789012:t")
WEST_TOPIC = parse_topic_arn("arn:aws:sns:us-west-2:123456789012:t")


@pytest.mark.parametrize(
    ("queue", "topic", "region", "expected"),
    [
        (EAST_QUEUE, EAST_TOPIC, None, "us-east-1"),
        (EAST_QUEUE, EAST_TOPIC, "us-east-1", "us-east-1"),
        (EMULATOR_QUEUE, WEST_TOPIC, None, "us-west-2"),
        (EMULATOR_QUEUE, WEST_TOPIC, "us-west-2", "us-west-2"),
    ],
)
def test_region_sources_agree(
    queue: QueueUrl, topic: TopicArn, region: str | None, expected: str
) -> None:
    assert node_region(queue, topic, region) == expected


@pytest.mark.parametrize(
    ("queue", "topic", "region", "fragments"),
    [
        (EAST_QUEUE, WEST_TOPIC, None, ("the queue URL", "'us-east-1'", "the topic ARN")),
        (EAST_QUEUE, EAST_TOPIC, "eu-west-1", ("--region says 'eu-west-1'", "the queue URL")),
        (EMULATOR_QUEUE, EAST_TOPIC, "us-west-2", ("--region", "the topic ARN", "'us-east-1'")),
    ],
)
def test_region_sources_disagree(
    queue: QueueUrl, topic: TopicArn, region: str | None, fragments: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as info:
        node_region(queue, topic, region)
    message = str(info.value)
    assert message.startswith("--region: ")
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("region", ["useast1", "US-EAST-1", "us-east", "east-1"])
def test_a_malformed_region_is_named_as_such_before_any_mismatch(region: str) -> None:
    message = rf"^--region: '{region}' is not an AWS region name$"
    with pytest.raises(ConfigError, match=message):
        node_region(EAST_QUEUE, EAST_TOPIC, region)
    with pytest.raises(ConfigError, match=message):
        resolve_region(region, [("the topic ARN", "us-east-1")])
    with pytest.raises(ConfigError, match=message):
        resolve_region(region, [])


def test_a_region_is_required_when_nothing_names_one() -> None:
    with pytest.raises(ConfigError, match=r"^--region is required"):
        resolve_region(None, [("the queue URL", None)])
    assert resolve_region(None, [("the queue URL", None), ("the ARN", "eu-west-1")]) == "eu-west-1"


# --- NodeConfig ------------------------------------------------------------------------


def test_defaults_are_valid() -> None:
    config = make_config()
    assert config.log_uri("run-1") == "s3://logs-bucket/logs/run-1.log"
    assert log_key("a.b") == "logs/a.b.log"


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        ({"heartbeat_interval": 0.5}, "--heartbeat-interval"),
        ({"heartbeat_interval": 0}, "--heartbeat-interval"),
        ({"poll_wait_seconds": 0}, "--poll-wait-seconds"),
        ({"poll_wait_seconds": 21}, "--poll-wait-seconds"),
        ({"task_timeout": 0}, "--task-timeout"),
        ({"task_timeout": -1}, "--task-timeout"),
        ({"task_timeout": 43201}, "--task-timeout"),
        ({"max_concurrent_tasks": 0}, "--max-concurrent-tasks"),
        ({"shutdown_timeout": -1}, "--shutdown-timeout"),
        ({"startup_timeout": -1}, "--startup-timeout"),
        ({"startup_timeout": float("nan")}, "--startup-timeout"),
        ({"node_id": "  "}, "--node-id"),
        ({"claude_max_retries": -1}, "--claude-max-retries"),
    ],
)
def test_node_config_rejects(overrides: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{option}: "):
        make_config(**overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"heartbeat_interval": 1},
        {"poll_wait_seconds": 1},
        {"poll_wait_seconds": 20},
        {"task_timeout": 43200},
        {"shutdown_timeout": 0},
        {"startup_timeout": 0},
        {"max_concurrent_tasks": 8},
        {"claude_max_retries": 0},
        {"claude_max_retries": None},
    ],
)
def test_node_config_accepts_bounds(overrides: dict[str, Any]) -> None:
    config = make_config(**overrides)
    for key, value in overrides.items():
        assert getattr(config, key) == value


@pytest.mark.parametrize(
    ("environ", "expected"), [({}, 60.0), ({"CLAUDE_NODE_STARTUP_TIMEOUT": "7.5"}, 7.5)]
)
def test_the_startup_timeout_comes_from_its_option_or_the_config_default(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], expected: float
) -> None:
    monkeypatch.delenv("CLAUDE_NODE_STARTUP_TIMEOUT", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    resources = ["--queue-url", QUEUE_URL, "--topic-arn", TOPIC_ARN, "--log-bucket", "logs"]
    with node.make_context("node", resources) as ctx:
        config = build_config(ctx.params, None)
    assert config.startup_timeout == expected
    assert default("startup_timeout") == 60.0


# --- real-mode warnings -------------------------------------------------------------


def test_a_root_node_is_not_warned_about_bypass_permissions() -> None:
    # A root node runs the CLI under a run uid, which the CLI does not refuse.
    assert real_mode_warnings(make_config(), {"ANTHROPIC_API_KEY": "k"}) == []


@pytest.mark.parametrize(
    "credential", ["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CODE_USE_BEDROCK"]
)
def test_any_claude_credential_silences_the_login_warning(credential: str) -> None:
    assert real_mode_warnings(make_config(), {credential: "1"}) == []


def test_missing_claude_credentials_and_passed_aws_credentials_are_named() -> None:
    config = make_config(pass_aws_credentials=True)
    warnings = real_mode_warnings(config, {"ANTHROPIC_API_KEY": ""})
    assert len(warnings) == 2
    assert "Not logged in" in warnings[0]
    assert warnings[1].startswith("--pass-aws-credentials: ")
