"""The names of AWS resources: queue URLs, topic ARNs, bucket names, regions.

Each parser checks a value as AWS defines it and raises a ConfigError that
names the option, so a typo fails at start-up in one line, before any call.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlparse

from claude_code_scheduler.errors import ConfigError

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


def check_region(region: str, option: str = "--region") -> str:
    if not _REGION.fullmatch(region):
        raise ConfigError(f"{option}: {region!r} is not an AWS region name")
    return region


def resolve_region(
    region: str | None, sources: list[tuple[str, str | None]], *, required: str | None = None
) -> str:
    """One region for every client: --region, else the first source that names
    one; any two that disagree are an error. `required` is what to say when
    nothing names a region (None: that cannot happen for the caller)."""
    if region is not None:
        check_region(region)
    named = [(name, value) for name, value in [("--region", region), *sources] if value]
    for name, value in named[1:]:
        if value != named[0][1]:
            raise ConfigError(
                f"--region: {named[0][0]} says {named[0][1]!r} but {name} says {value!r}"
            )
    if not named:
        raise ConfigError(required or "--region is required (or set AWS_REGION)")
    return named[0][1]


def node_region(queue: QueueUrl, topic: TopicArn, region: str | None) -> str:
    """The node's region; the topic ARN always names one."""
    sources: list[tuple[str, str | None]] = [
        ("the queue URL", queue.region),
        ("the topic ARN", topic.region),
    ]
    return resolve_region(region, sources)


# --- secret references -------------------------------------------------------------

_SECRET_ARN = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):secretsmanager:(?P<region>[a-z0-9-]+):(?P<account>\d{12})"
    r":secret:(?P<name>[A-Za-z0-9/_+=.@-]{1,512})$"
)
_PARAMETER_ARN = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):ssm:(?P<region>[a-z0-9-]+):(?P<account>\d{12})"
    r":parameter/(?P<name>[A-Za-z0-9_.\-/]{1,2048})$"
)
_PARAMETER_NAME = re.compile(r"^/?[A-Za-z0-9_.\-/]{1,2048}$")


@dataclass(frozen=True)
class SecretRef:
    """Where a secret is kept: a Secrets Manager secret (by ARN) or an SSM
    parameter (by name or ARN). `name` is the secret's or the parameter's
    name without a leading slash, which is what a prefix is compared with;
    `ref` is what the API is called with."""

    service: str  # "secretsmanager" or "ssm"
    ref: str
    name: str

    def under(self, prefix: str) -> bool:
        """Whether the name lies under `prefix` (a path: "a/" covers "a/b", not "ab")."""
        path = prefix.strip("/") + "/"
        return self.name.startswith(path)


def parse_secret_ref(value: str) -> SecretRef:
    """A Secrets Manager ARN, else an SSM parameter name or ARN; ValueError
    (with a message that quotes the reference, never a value) otherwise."""
    if value.startswith("arn:") and ":secretsmanager:" in value:
        match = _SECRET_ARN.fullmatch(value)
        if match is None:
            raise ValueError(f"{value!r} is not a Secrets Manager secret ARN")
        return SecretRef("secretsmanager", value, match["name"])
    if value.startswith("arn:"):
        match = _PARAMETER_ARN.fullmatch(value)
        if match is None:
            raise ValueError(f"{value!r} is neither a Secrets Manager ARN nor an SSM parameter ARN")
        return SecretRef("ssm", value, match["name"])
    if not _PARAMETER_NAME.fullmatch(value) or "//" in value:
        raise ValueError(f"{value!r} is not an SSM parameter name (letters, digits, _.-/)")
    return SecretRef("ssm", value, value.lstrip("/"))
