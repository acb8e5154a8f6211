"""The operator's side of the bus: sending commands and reading events.

Reading never steals from the scheduler's server queue by default: a reader
makes its own short-lived SQS queue, subscribes it to the control bus (with a
filter policy when it only wants one run or one node), and removes both when
it is done. Leftovers are harmless: the queue has a recognisable name, a tag
and a short retention.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import botocore.exceptions

from claude_code_scheduler.aws.errors import explain
from claude_code_scheduler.aws.limits import MAX_RECEIVE_BATCH
from claude_code_scheduler.protocol import EVENT_TYPES

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

log = logging.getLogger(__name__)

READER_QUEUE_PREFIX = "claude-code-scheduler-client-"
READER_TAG = {"claude-code-scheduler": "client-reader"}
# SQS's shortest retention is 60 s; ten minutes outlives a slow reader.
READER_RETENTION_SECONDS = 600


@dataclass(frozen=True)
class BusEvent:
    body: dict[str, Any]
    attributes: dict[str, str]

    @property
    def event_type(self) -> str:
        return str(self.body.get("event_type"))

    @property
    def run_id(self) -> str | None:
        value = self.body.get("data", {}).get("run_id")
        return value if isinstance(value, str) else None

    @property
    def node_id(self) -> str:
        return str(self.body.get("node_id"))


def parse_bus_message(message: dict[str, Any]) -> BusEvent | None:
    """An event from an SQS message: raw delivery, or an SNS envelope."""
    try:
        body = json.loads(message.get("Body", ""))
        attributes = {
            name: value.get("StringValue", "")
            for name, value in message.get("MessageAttributes", {}).items()
        }
        if isinstance(body, dict) and body.get("Type") == "Notification":
            attributes = {
                name: value.get("Value", "")
                for name, value in body.get("MessageAttributes", {}).items()
            }
            body = json.loads(body["Message"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(body, dict) or body.get("event_type") not in EVENT_TYPES:
        return None
    return BusEvent(body, attributes)


@dataclass(frozen=True)
class EventFilter:
    run_id: str | None = None
    node_id: str | None = None
    event_types: tuple[str, ...] = ()

    def matches(self, event: BusEvent) -> bool:
        return (
            (self.run_id is None or event.run_id == self.run_id)
            and (self.node_id is None or event.node_id == self.node_id)
            and (not self.event_types or event.event_type in self.event_types)
        )

    def policy(self) -> dict[str, list[str]] | None:
        """The same filter as an SNS subscription filter policy on the
        message attributes the node sets (AND across keys)."""
        policy: dict[str, list[str]] = {}
        if self.run_id:
            policy["run_id"] = [self.run_id]
        if self.node_id:
            policy["node_id"] = [self.node_id]
        if self.event_types:
            policy["event_type"] = list(self.event_types)
        return policy or None


class Reader(Protocol):
    def receive(self, wait_seconds: int) -> list[BusEvent]: ...


class QueueReader:
    """Reads (and deletes) events from an SQS queue."""

    def __init__(self, sqs: SQSClient, queue_url: str, event_filter: EventFilter) -> None:
        self._sqs = sqs
        self.queue_url = queue_url
        self._filter = event_filter

    def receive(self, wait_seconds: int) -> list[BusEvent]:
        response = self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=MAX_RECEIVE_BATCH,
            WaitTimeSeconds=wait_seconds,
            MessageAttributeNames=["All"],
        )
        events = []
        for message in response.get("Messages", []):
            self._sqs.delete_message(
                QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
            )
            event = parse_bus_message(dict(message))
            if event is None:
                log.warning("skipped a message that is not a protocol event")
            elif self._filter.matches(event):
                events.append(event)
        return events


class TemporaryReader:
    """A private queue subscribed to the control bus for as long as it is open."""

    def __init__(
        self, sqs: SQSClient, sns: SNSClient, control_bus_arn: str, event_filter: EventFilter
    ) -> None:
        self._sqs = sqs
        self._sns = sns
        self._topic_arn = control_bus_arn
        self._filter = event_filter
        self._queue_url: str | None = None
        self._subscription_arn: str | None = None
        self._reader: QueueReader | None = None

    def __enter__(self) -> TemporaryReader:
        try:
            self._open()
        except Exception:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open(self) -> None:
        name = f"{READER_QUEUE_PREFIX}{uuid.uuid4().hex[:16]}"
        try:
            self._queue_url = self._sqs.create_queue(
                QueueName=name,
                Attributes={"MessageRetentionPeriod": str(READER_RETENTION_SECONDS)},
                tags=READER_TAG,
            )["QueueUrl"]
            queue_arn = self._sqs.get_queue_attributes(
                QueueUrl=self._queue_url, AttributeNames=["QueueArn"]
            )["Attributes"]["QueueArn"]
            self._sqs.set_queue_attributes(
                QueueUrl=self._queue_url,
                Attributes={"Policy": json.dumps(_allow_topic(queue_arn, self._topic_arn))},
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise explain(exc, "--control-bus-arn", "a reader queue") from None
        attributes = {"RawMessageDelivery": "true"}
        policy = self._filter.policy()
        if policy:
            attributes["FilterPolicy"] = json.dumps(policy)
        try:
            self._subscription_arn = self._sns.subscribe(
                TopicArn=self._topic_arn,
                Protocol="sqs",
                Endpoint=queue_arn,
                Attributes=attributes,
                ReturnSubscriptionArn=True,
            )["SubscriptionArn"]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise explain(exc, "--control-bus-arn", f"the topic {self._topic_arn}") from None
        self._reader = QueueReader(self._sqs, self._queue_url, self._filter)

    def receive(self, wait_seconds: int) -> list[BusEvent]:
        assert self._reader is not None, "use TemporaryReader as a context manager"
        return self._reader.receive(wait_seconds)

    def close(self) -> None:
        if self._subscription_arn:
            with contextlib.suppress(Exception):
                self._sns.unsubscribe(SubscriptionArn=self._subscription_arn)
            self._subscription_arn = None
        if self._queue_url:
            try:
                self._sqs.delete_queue(QueueUrl=self._queue_url)
            except Exception as exc:
                log.warning("could not delete reader queue %s: %s", self._queue_url, exc)
            self._queue_url = None


def _allow_topic(queue_arn: str, topic_arn: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
            }
        ],
    }


def send_to_topic(sns: SNSClient, topic_arn: str, body: str) -> None:
    """Publish a command's wire form (RunTask.to_json, or a signed object)."""
    try:
        sns.publish(TopicArn=topic_arn, Message=body)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise explain(exc, "--command-topic-arn", f"the topic {topic_arn}") from None


def send_to_queue(sqs: SQSClient, queue_url: str, body: str) -> None:
    try:
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise explain(exc, "--queue-url", f"the queue {queue_url}") from None
