"""`cancel RUN_ID`: ask for a run to stop, on whichever node holds it, or
before any node takes it (docs/cancel.md).

The request is an object in the log bucket (aws.cancels), so it outlives
this command, a node's restart and the command's wait in the queue; nodes
look it up before a run starts and every few seconds while it runs. Once it
is written, a CancelRequested event tells the bus. A run that already ended
for good (its runs/<run_id>/result.json says so) is left alone.

`request_cancel` is the same for Python callers (a scheduler's server side).
"""

from __future__ import annotations

import getpass
import json
import socket
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import botocore.exceptions
import click

from claude_code_scheduler.aws.cancels import CancelRequest, CancelStore
from claude_code_scheduler.aws.clients import Clients, make_identity_client
from claude_code_scheduler.aws.errors import describe_error, explain
from claude_code_scheduler.aws.names import parse_topic_arn, validate_bucket
from claude_code_scheduler.client.options import aws_options, clients_for, region_of
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.protocol.commands import RUN_ID_PATTERN
from claude_code_scheduler.protocol.events import (
    CANCEL_REASON_LIMIT,
    OPERATOR_NODE_ID,
    EventType,
    cancel_requested,
    encode_event,
    iso,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sns.type_defs import MessageAttributeValueTypeDef

# result.json holds the CLI's whole result line, which can be large; past
# this, the run is taken as not ended (a needless cancel is harmless, a
# refused one is not).
MAX_RESULT_BYTES = 8 * 1024 * 1024
# What a node stops a running run within, from the request (docs/cancel.md).
STOP_BOUND_SECONDS = 10
# Where the node stores a run's result.json (node.artifacts; the operator
# commands share only protocol/ with the node).
RESULT_KEY = "runs/{run_id}/result.json"
LOG_BUCKET_ENVVARS = ["CLAUDE_LOG_BUCKET", "CLAUDE_NODE_LOG_BUCKET"]


class CancelStatus(StrEnum):
    RECORDED = "recorded"
    ALREADY_ENDED = "already ended"


@dataclass(frozen=True)
class CancelResult:
    status: CancelStatus
    run_id: str
    # What was written (RECORDED).
    request: CancelRequest | None = None
    # How the run ended (ALREADY_ENDED): its terminal event type and error type.
    ending: str | None = None
    # Why CancelRequested could not be published; the request stands all the same.
    announce_error: str | None = None

    def line(self) -> str:
        """The command's one line."""
        if self.status is CancelStatus.ALREADY_ENDED:
            return f"run {self.run_id} already ended ({self.ending}): nothing to cancel"
        line = (
            f"run {self.run_id}: cancel recorded; a node running it stops it within "
            f"{STOP_BOUND_SECONDS}s, and it never starts if no node has taken it yet"
        )
        if self.announce_error is not None:
            line += f" (CancelRequested not published: {self.announce_error})"
        return line


class IdentityClient(Protocol):
    def get_caller_identity(self) -> Any: ...


def request_cancel(
    s3: S3Client,
    sns: SNSClient | None,
    *,
    log_bucket: str,
    control_bus_arn: str | None,
    run_id: str,
    reason: str | None = None,
    requested_by: str | None = None,
) -> CancelResult:
    """Asks for `run_id` to stop, or says it already ended. Raises
    ConfigError for a malformed run id or reason, and when the request cannot
    be written; a CancelRequested that cannot be published (or with no
    `sns`/`control_bus_arn`) leaves the request in place and says why."""
    check_request(run_id, reason)
    ending = final_ending(s3, log_bucket, run_id)
    if ending is not None:
        return CancelResult(CancelStatus.ALREADY_ENDED, run_id, ending=ending)
    request = CancelRequest(run_id, reason, requested_by or local_identity(), iso())
    try:
        CancelStore(s3, log_bucket).request(request)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise explain(exc, "--log-bucket", f"the bucket {log_bucket}") from None
    announce_error = None
    if sns is None or not control_bus_arn:
        announce_error = "no control bus given"
    else:
        announce_error = announce(sns, control_bus_arn, request)
    return CancelResult(CancelStatus.RECORDED, run_id, request, announce_error=announce_error)


def check_request(run_id: str, reason: str | None) -> None:
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise ConfigError(
            f"RUN_ID: {run_id!r} is not a run id (1-128 letters, digits, '.', '_' or '-')"
        )
    if reason is not None and len(reason.encode("utf-8", "surrogatepass")) > CANCEL_REASON_LIMIT:
        raise ConfigError(f"--reason: at most {CANCEL_REASON_LIMIT} bytes of UTF-8")


def final_ending(s3: S3Client, bucket: str, run_id: str) -> str | None:
    """How the run ended for good, from its result.json: TaskCompleted, or a
    TaskFailed that is not retried. None when it has not (no result.json, or
    one of an attempt that runs again), or when that cannot be told: a needless
    request is harmless, a refused one lets a run go on."""
    try:
        answer = s3.get_object(Bucket=bucket, Key=RESULT_KEY.format(run_id=run_id))
        with answer["Body"] as body:
            raw = body.read(MAX_RESULT_BYTES + 1)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        # Missing (a 403 without s3:ListBucket), or unreadable: not known to have ended.
        return None
    if len(raw) > MAX_RESULT_BYTES:
        return None
    try:
        document = json.loads(raw)
        outcome = document["outcome"]
        event_type, error_type = outcome["event_type"], outcome["error_type"]
    except (ValueError, KeyError, TypeError):
        return None
    if event_type == EventType.TASK_COMPLETED:
        return str(event_type)
    if event_type == EventType.TASK_FAILED and document.get("retryable") is False:
        return f"{event_type} {error_type}"
    return None


def announce(sns: SNSClient, control_bus_arn: str, request: CancelRequest) -> str | None:
    """Publishes CancelRequested; None once done, else why not."""
    event = cancel_requested(request)
    body = event.body(OPERATOR_NODE_ID, request.requested_by, 1)
    attributes: dict[str, MessageAttributeValueTypeDef] = {
        name: {"DataType": "String", "StringValue": value}
        for name, value in event.attributes(OPERATOR_NODE_ID).items()
    }
    try:
        sns.publish(
            TopicArn=control_bus_arn, Message=encode_event(body), MessageAttributes=attributes
        )
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        return describe_error(exc)
    return None


def caller_identity(sts: IdentityClient) -> str:
    """The caller's ARN, else user@host: who asked is worth a line in the
    terminal event, not a failed cancel."""
    try:
        return str(sts.get_caller_identity()["Arn"])
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, KeyError):
        return local_identity()


def local_identity() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@click.command()
@click.argument("run_id")
@click.option(
    "--reason", help=f"Why, for the run's TaskFailed (at most {CANCEL_REASON_LIMIT} bytes)."
)
@click.option("--log-bucket", envvar=LOG_BUCKET_ENVVARS, help="The nodes' log bucket. Required.")
@click.option(
    "--control-bus-arn",
    envvar=["CLAUDE_CONTROL_BUS_ARN", "CLAUDE_NODE_TOPIC_ARN"],
    help="SNS control bus to announce the request on (CancelRequested). Required.",
)
@aws_options
def cancel(**options: Any) -> None:
    """Ask for a run to stop: a run in progress stops within 10 s on any node,
    one not yet started never starts. Exit 0 once the request is recorded, or
    when the run had already ended."""
    check_request(options["run_id"], options.get("reason"))
    if not options.get("log_bucket"):
        raise ConfigError("--log-bucket is required (or set CLAUDE_LOG_BUCKET)")
    if not options.get("control_bus_arn"):
        raise ConfigError("--control-bus-arn is required (or set CLAUDE_CONTROL_BUS_ARN)")
    bucket = validate_bucket(options["log_bucket"])
    bus = options["control_bus_arn"]
    parse_topic_arn(bus, "--control-bus-arn")
    clients = clients_for(options, bus)
    result = cancel_as_caller(
        clients, options, log_bucket=bucket, run_id=options["run_id"], reason=options.get("reason")
    )
    click.echo(result.line())


def cancel_as_caller(
    clients: Clients, options: dict[str, Any], *, log_bucket: str, run_id: str, reason: str | None
) -> CancelResult:
    """request_cancel, in the name of whoever the command's AWS options make
    the caller (its STS ARN)."""
    bus = options.get("control_bus_arn")
    sts = make_identity_client(
        region=region_of(options.get("region"), bus),
        profile=options.get("profile"),
        endpoint_url=options.get("endpoint_url"),
    )
    return request_cancel(
        clients.s3,
        clients.sns,
        log_bucket=log_bucket,
        control_bus_arn=bus,
        run_id=run_id,
        reason=reason,
        requested_by=caller_identity(sts),
    )
