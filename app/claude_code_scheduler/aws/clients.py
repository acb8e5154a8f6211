"""Where every boto3 client is made.

Every client uses botocore's standard retry mode, which retries one call's
transient failures with backoff and jitter; what outlasts that (an outage) is
retried by the callers with tenacity (aws.retry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions
from botocore.config import Config

from claude_code_scheduler.errors import ConfigError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

# botocore's standard mode: 3 attempts per call, exponential backoff with jitter.
STANDARD_RETRIES: Any = {"mode": "standard", "max_attempts": 3}


@dataclass(frozen=True)
class Clients:
    sqs: SQSClient
    sns: SNSClient
    s3: S3Client


def make_clients(
    *, region: str, profile: str | None = None, endpoint_url: str | None = None
) -> Clients:
    """All clients in one place. With no `endpoint_url`, botocore itself reads
    AWS_ENDPOINT_URL and the per-service AWS_ENDPOINT_URL_SQS and friends."""
    try:
        session = boto3.Session(profile_name=profile, region_name=region)
    except botocore.exceptions.ProfileNotFound:
        raise ConfigError(f"--profile: no AWS profile named {profile!r}") from None
    config = Config(retries=STANDARD_RETRIES, connect_timeout=5, read_timeout=60)
    extra: dict[str, Any] = {"config": config}
    if endpoint_url:
        extra["endpoint_url"] = endpoint_url
    try:
        return Clients(
            sqs=session.client("sqs", **extra),
            sns=session.client("sns", **extra),
            s3=session.client("s3", **extra),
        )
    except ValueError as exc:  # botocore's complaint about a malformed endpoint
        raise ConfigError(f"--endpoint-url: {exc}") from None
