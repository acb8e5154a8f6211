"""The node's SQS queue: receive, extend, release, delete. No logic here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from claude_code_scheduler.aws.limits import MAX_RECEIVE_BATCH

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient


@dataclass(frozen=True)
class ReceivedMessage:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    # When SQS took the message (SentTimestamp), in seconds since the epoch:
    # set by SQS, not the sender, and the same at every receive.
    sent_at: float | None = None


@dataclass(frozen=True)
class QueueAttributes:
    visibility_timeout: int
    # The RedrivePolicy's maxReceiveCount: the receive after that many moves
    # the message to the dead-letter queue. None: the queue has none.
    max_receive_count: int | None = None


class MessageQueue(Protocol):
    """What the node needs of its queue; QueueClient, and the tests' fakes."""

    url: str

    def attributes(self) -> QueueAttributes: ...

    def receive(self, max_messages: int, wait_seconds: int) -> list[ReceivedMessage]: ...

    def change_visibility(self, receipt_handle: str, seconds: int) -> None: ...

    def delete(self, receipt_handle: str) -> None: ...


class QueueClient:
    def __init__(self, sqs: SQSClient, queue_url: str) -> None:
        self._sqs = sqs
        self.url = queue_url

    def attributes(self) -> QueueAttributes:
        attrs = self._sqs.get_queue_attributes(
            QueueUrl=self.url, AttributeNames=["VisibilityTimeout", "RedrivePolicy"]
        )["Attributes"]
        return QueueAttributes(
            visibility_timeout=int(attrs["VisibilityTimeout"]),
            max_receive_count=_max_receive_count(attrs.get("RedrivePolicy")),
        )

    def receive(self, max_messages: int, wait_seconds: int) -> list[ReceivedMessage]:
        response = self._sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=max(1, min(max_messages, MAX_RECEIVE_BATCH)),
            WaitTimeSeconds=wait_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        return [
            ReceivedMessage(
                message_id=m["MessageId"],
                receipt_handle=m["ReceiptHandle"],
                body=m.get("Body", ""),
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
                sent_at=_sent_at(m.get("Attributes", {}).get("SentTimestamp")),
            )
            for m in response.get("Messages", [])
        ]

    def change_visibility(self, receipt_handle: str, seconds: int) -> None:
        self._sqs.change_message_visibility(
            QueueUrl=self.url, ReceiptHandle=receipt_handle, VisibilityTimeout=seconds
        )

    def delete(self, receipt_handle: str) -> None:
        self._sqs.delete_message(QueueUrl=self.url, ReceiptHandle=receipt_handle)


def _max_receive_count(redrive_policy: str | None) -> int | None:
    """RedrivePolicy is a JSON string; SQS writes maxReceiveCount as a number
    or as a string of one, depending on how the policy was set."""
    if not redrive_policy:
        return None
    count = json.loads(redrive_policy).get("maxReceiveCount")
    return None if count is None else int(count)


def _sent_at(sent_timestamp: str | None) -> float | None:
    """SentTimestamp is epoch milliseconds."""
    try:
        return int(sent_timestamp or "") / 1000
    except ValueError:
        return None
