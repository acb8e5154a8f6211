"""The node's configuration: one immutable object, validated once at start-up.

The command line only maps options onto `NodeConfig`; everything that can be
checked without the network is checked here, so a bad value fails before the
node touches AWS.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

# SQS allows long polls of 1 to 20 seconds (ReceiveMessage WaitTimeSeconds).
MAX_POLL_WAIT_SECONDS = 20
# SQS caps a message's total invisibility at 12 hours from its first receipt.
MAX_TASK_TIMEOUT_SECONDS = 12 * 60 * 60

_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d+$")
# /<account-id>/<queue-name>, or /queue/<region>/<account-id>/<queue-name> (LocalStack's
# SQS_ENDPOINT_STRATEGY=path, and =dynamic when called at http://localhost:4566)
_QUEUE_PATH = re.compile(
    r"/(queue/(?P<region>[^/]+)/)?(?P<account>\d{1,12})/(?P<name>[A-Za-z0-9_-]{1,80}(\.fifo)?)/?"
)
# sqs.<region>.amazonaws.com, sqs-fips.<region>.amazonaws.com, sqs.<region>.api.aws,
# sqs.<region>.localhost.localstack.cloud
_SQS_HOST_REGION = re.compile(r"sqs(-fips)?\.(?P<region>[a-z0-9-]+)\..+")
# <region>.queue.amazonaws.com(.cn): the legacy endpoints (us-east-1's is queue.amazonaws.com)
_LEGACY_HOST_REGION = re.compile(r"(?P<region>[a-z0-9-]+)\.queue\.amazonaws\.com(\.cn)?")
_AWS_DOMAINS = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws")
_TOPIC_ARN = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):sns:(?P<region>[a-z0-9-]+):(?P<account>\d{1,12})"
    r":(?P<name>[A-Za-z0-9_-]{1,256}(\.fifo)?)$"
)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ConfigError(ValueError):
    """A start-up problem the user must fix; the message names the option."""


@dataclass(frozen=True)
class QueueUrl:
    url: str
    account: str
    name: str
    region: str | None  # None for emulator URLs such as http://localhost:4566/...


@dataclass(frozen=True)
class TopicArn:
    arn: str
    region: str
    account: str
    name: str

    @property
    def is_fifo(self) -> bool:
        return self.name.endswith(".fifo")


def parse_queue_url(value: str, option: str = "--queue-url") -> QueueUrl:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"{option}: {value!r} is not an http(s) SQS queue URL")
    host = parsed.hostname
    path = _QUEUE_PATH.fullmatch(parsed.path)
    if not path or (path["region"] is not None and host.endswith(_AWS_DOMAINS)):
        raise ConfigError(
            f"{option}: {value!r} is not a queue URL of the form "
            "https://sqs.<region>.amazonaws.com/<account-id>/<queue-name> "
            "(or LocalStack's http://<host>:4566/queue/<region>/<account-id>/<queue-name>)"
        )
    region = _host_region(host)
    if path["region"] is not None:
        if not _REGION.fullmatch(path["region"]):
            raise ConfigError(
                f"{option}: {path['region']!r} in {value!r} is not an AWS region name"
            )
        if region not in (None, path["region"]):
            raise ConfigError(
                f"{option}: {value!r} names region {region!r} in its host "
                f"but {path['region']!r} in its path"
            )
        region = path["region"]
    elif region is None and host.endswith(_AWS_DOMAINS):
        raise ConfigError(f"{option}: cannot read the region from the host {host!r}")
    return QueueUrl(url=value, account=path["account"], name=path["name"], region=region)


def _host_region(host: str) -> str | None:
    """The region an SQS host names; None for hosts that name none (emulators)."""
    if host == "queue.amazonaws.com":  # us-east-1's legacy endpoint
        return "us-east-1"
    match = _SQS_HOST_REGION.fullmatch(host) or _LEGACY_HOST_REGION.fullmatch(host)
    return match["region"] if match and _REGION.fullmatch(match["region"]) else None


def parse_topic_arn(value: str, option: str = "--topic-arn") -> TopicArn:
    match = _TOPIC_ARN.fullmatch(value)
    if not match or not _REGION.fullmatch(match.group("region")):
        raise ConfigError(
            f"{option}: {value!r} is not an SNS topic ARN of the form "
            "arn:aws:sns:<region>:<account-id>:<topic-name>"
        )
    return TopicArn(
        arn=value,
        region=match.group("region"),
        account=match.group("account"),
        name=match.group("name"),
    )


def validate_bucket(value: str, option: str = "--log-bucket") -> str:
    """S3 general purpose bucket naming rules, as documented by AWS."""
    problem = None
    if not _BUCKET.fullmatch(value):
        problem = "must be 3-63 lower-case letters, digits, dots or hyphens"
    elif ".." in value:
        problem = "must not contain two adjacent dots"
    elif value.startswith(("xn--", "sthree-")) or value.endswith(("-s3alias", "--ol-s3")):
        problem = "uses a prefix or suffix that S3 reserves"
    else:
        try:
            ipaddress.IPv4Address(value)
            problem = "must not be formatted as an IP address"
        except ValueError:
            pass
    if problem:
        raise ConfigError(f"{option}: {value!r} is not a valid bucket name: it {problem}")
    return value


def resolve_region(queue: QueueUrl, topic: TopicArn, region: str | None) -> str:
    """One region for every client; any two sources that disagree are an error."""
    sources = [
        ("--region", region),
        ("the queue URL", queue.region),
        ("the topic ARN", topic.region),
    ]
    named = [(name, value) for name, value in sources if value]
    for name, value in named[1:]:
        if value != named[0][1]:
            raise ConfigError(
                f"--region: {named[0][0]} says {named[0][1]!r} but {name} says {value!r}"
            )
    if region is not None and not _REGION.fullmatch(region):
        raise ConfigError(f"--region: {region!r} is not an AWS region name")
    return named[0][1] or topic.region


@dataclass(frozen=True)
class NodeConfig:
    queue: QueueUrl
    topic: TopicArn
    log_bucket: str
    region: str
    node_id: str
    node_name: str
    profile: str | None = None
    endpoint_url: str | None = None
    heartbeat_interval: float = 30.0
    mock_mode: bool = False
    max_concurrent_tasks: int = 1
    task_timeout: float = 3600.0
    shutdown_timeout: float = 25.0
    poll_wait_seconds: int = MAX_POLL_WAIT_SECONDS
    claude_bin: str = "claude"
    work_dir: Path = Path("/tmp/claude-code-scheduler")  # noqa: S108 - the CLI passes its own
    state_file: Path = Path("/tmp/claude-code-scheduler/node-state.json")  # noqa: S108
    # Seconds between SIGTERM to the CLI and SIGKILL to its process group.
    kill_grace: float = 3.0
    # Hand the node's AWS credentials to the CLI (for CLAUDE_CODE_USE_BEDROCK).
    pass_aws_credentials: bool = False
    # CLAUDE_CODE_MAX_RETRIES for the CLI; None leaves the CLI's default (10).
    claude_max_retries: int | None = None

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (bool(self.node_id.strip()), "--node-id: must not be empty"),
            (self.heartbeat_interval >= 1, "--heartbeat-interval: must be at least 1 second"),
            (self.max_concurrent_tasks >= 1, "--max-concurrent-tasks: must be at least 1"),
            (
                0 < self.task_timeout <= MAX_TASK_TIMEOUT_SECONDS,
                f"--task-timeout: must be above 0 and at most {MAX_TASK_TIMEOUT_SECONDS} "
                "seconds (SQS keeps a message invisible for 12 hours at most)",
            ),
            (self.shutdown_timeout >= 0, "--shutdown-timeout: must not be negative"),
            (
                1 <= self.poll_wait_seconds <= MAX_POLL_WAIT_SECONDS,
                f"--poll-wait-seconds: must be from 1 to {MAX_POLL_WAIT_SECONDS} (the SQS limit)",
            ),
            (self.kill_grace >= 0, "--kill-grace: must not be negative"),
            (
                self.claude_max_retries is None or self.claude_max_retries >= 0,
                "--claude-max-retries: must not be negative",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def log_uri(self, run_id: str) -> str:
        return f"s3://{self.log_bucket}/{log_key(run_id)}"


def log_key(run_id: str) -> str:
    return f"logs/{run_id}.log"
