"""Thin adapters over the SQS, SNS and S3 clients, and where the clients are made.

The adapters translate between boto3 and the node's own small types and hold
no logic. Every client uses botocore's standard retry mode, which retries one
call's transient failures with backoff and jitter; what outlasts that (an
outage) is retried by the callers with tenacity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from claude_code_scheduler.config import ConfigError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

# botocore's standard mode: 3 attempts per call, exponential backoff with jitter.
STANDARD_RETRIES = {"mode": "standard", "max_attempts": 3}
# SQS allows at most 10 messages per ReceiveMessage.
MAX_RECEIVE_BATCH = 10
# Above this size an upload goes multipart, in parts of this size, so a large
# log streams from disk instead of being read into memory.
MULTIPART_THRESHOLD = 8 * 1024 * 1024

_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "SlowDown",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "KMSThrottling",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
    }
)


def is_transient(exc: BaseException) -> bool:
    """Whether trying the same call again later can succeed."""
    if isinstance(
        exc,
        botocore.exceptions.ConnectionError
        | botocore.exceptions.HTTPClientError
        | botocore.exceptions.ReadTimeoutError,
    ):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code", "") in _TRANSIENT_CODES or status >= 500
    return False


def describe_error(exc: BaseException) -> str:
    """`Code: message` for an AWS error, the exception's text otherwise."""
    if isinstance(exc, botocore.exceptions.ClientError):
        message = exc.response.get("Error", {}).get("Message")
        return f"{error_code(exc)}: {message}" if message else error_code(exc)
    return f"{type(exc).__name__}: {exc}"


def error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return type(exc).__name__


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
    config = Config(retries=STANDARD_RETRIES, connect_timeout=5, read_timeout=60)  # type: ignore[arg-type]
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


@dataclass(frozen=True)
class ReceivedMessage:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int


class QueueClient:
    def __init__(self, sqs: SQSClient, queue_url: str) -> None:
        self._sqs = sqs
        self.url = queue_url

    def visibility_timeout(self) -> int:
        attrs = self._sqs.get_queue_attributes(
            QueueUrl=self.url, AttributeNames=["VisibilityTimeout"]
        )["Attributes"]
        return int(attrs["VisibilityTimeout"])

    def receive(self, max_messages: int, wait_seconds: int) -> list[ReceivedMessage]:
        response = self._sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=max(1, min(max_messages, MAX_RECEIVE_BATCH)),
            WaitTimeSeconds=wait_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return [
            ReceivedMessage(
                message_id=m["MessageId"],
                receipt_handle=m["ReceiptHandle"],
                body=m.get("Body", ""),
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
            )
            for m in response.get("Messages", [])
        ]

    def change_visibility(self, receipt_handle: str, seconds: int) -> None:
        self._sqs.change_message_visibility(
            QueueUrl=self.url, ReceiptHandle=receipt_handle, VisibilityTimeout=seconds
        )

    def delete(self, receipt_handle: str) -> None:
        self._sqs.delete_message(QueueUrl=self.url, ReceiptHandle=receipt_handle)


class BusClient:
    def __init__(self, sns: SNSClient, topic_arn: str, *, fifo: bool = False) -> None:
        self._sns = sns
        self._topic_arn = topic_arn
        self._fifo = fifo

    def publish(self, body: str, attributes: dict[str, str], *, group: str, dedup: str) -> None:
        extra: dict[str, str] = {}
        if self._fifo:
            # One group per node keeps a FIFO topic's order per node; the event
            # id makes a retried publish idempotent.
            extra = {"MessageGroupId": group, "MessageDeduplicationId": dedup}
        self._sns.publish(
            TopicArn=self._topic_arn,
            Message=body,
            MessageAttributes={
                name: {"DataType": "String", "StringValue": value}
                for name, value in attributes.items()
            },
            **extra,
        )


class LogStore:
    def __init__(self, s3: S3Client, bucket: str) -> None:
        self._s3 = s3
        self.bucket = bucket
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_THRESHOLD,
            use_threads=True,
        )

    def upload(self, path: Path, key: str) -> None:
        """boto3's managed transfer: streams from disk, multipart when large."""
        self._s3.upload_file(
            str(path),
            self.bucket,
            key,
            ExtraArgs={"ContentType": "text/plain; charset=utf-8"},
            Config=self._transfer,
        )
