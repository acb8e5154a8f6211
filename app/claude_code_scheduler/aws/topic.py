"""Publishing on an SNS topic (the node's control bus), a batch at a time: one
message with Publish, more with PublishBatch. No logic here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import botocore.exceptions

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sns.type_defs import (
        MessageAttributeValueTypeDef,
        PublishBatchRequestEntryTypeDef,
    )


@dataclass(frozen=True)
class BusMessage:
    body: str
    attributes: dict[str, str]
    # A FIFO topic's MessageGroupId and MessageDeduplicationId.
    group: str
    dedup: str


def message_size(body_bytes: int, attributes: dict[str, str]) -> int:
    """What a message counts against SNS_MAX_BATCH_BYTES: its UTF-8 body, and
    each attribute's name, data type and value."""
    return body_bytes + sum(
        len(name.encode()) + len("String") + len(value.encode())
        for name, value in attributes.items()
    )


class Publisher(Protocol):
    """What the outbox needs of the bus; BusClient, and the tests' fakes."""

    def publish_batch(self, messages: Sequence[BusMessage]) -> list[Exception | None]:
        """Publishes the messages in one call, in order. Returns, for each, None
        when the bus took it, or the error it was refused with; raises when
        the whole call failed."""
        ...


class BusClient:
    def __init__(self, sns: SNSClient, topic_arn: str, *, fifo: bool = False) -> None:
        self._sns = sns
        self._topic_arn = topic_arn
        self._fifo = fifo

    def publish_batch(self, messages: Sequence[BusMessage]) -> list[Exception | None]:
        if len(messages) == 1:
            # The same call on the wire for one message, and cheaper to serve.
            (message,) = messages
            self._sns.publish(
                TopicArn=self._topic_arn,
                Message=message.body,
                MessageAttributes=_attributes(message),
                **self._fifo_keys(message),
            )
            return [None]
        entries: list[PublishBatchRequestEntryTypeDef] = []
        for index, message in enumerate(messages):
            entry: PublishBatchRequestEntryTypeDef = {
                "Id": str(index),
                "Message": message.body,
                "MessageAttributes": _attributes(message),
            }
            if self._fifo:
                entry["MessageGroupId"] = message.group
                entry["MessageDeduplicationId"] = message.dedup
            entries.append(entry)
        response = self._sns.publish_batch(
            TopicArn=self._topic_arn, PublishBatchRequestEntries=entries
        )
        # An entry the response does not account for is taken as not published.
        outcome: list[Exception | None] = [
            _entry_error("InternalError", "no result for this entry", sender_fault=False)
            for _ in messages
        ]
        for taken in response.get("Successful", []):
            outcome[int(taken["Id"])] = None
        for failed in response.get("Failed", []):
            outcome[int(failed["Id"])] = _entry_error(
                failed["Code"], failed.get("Message", ""), sender_fault=failed["SenderFault"]
            )
        return outcome

    def _fifo_keys(self, message: BusMessage) -> dict[str, str]:
        if not self._fifo:
            return {}
        # One group per node keeps a FIFO topic's order per node; the event id
        # makes a retried publish idempotent.
        return {"MessageGroupId": message.group, "MessageDeduplicationId": message.dedup}


def _attributes(message: BusMessage) -> dict[str, MessageAttributeValueTypeDef]:
    return {
        name: {"DataType": "String", "StringValue": value}
        for name, value in message.attributes.items()
    }


def _entry_error(code: str, message: str, *, sender_fault: bool) -> Exception:
    """A refused entry as the ClientError a Publish of it would have raised, so
    aws.errors judges it like any other: a fault of the sender is permanent."""
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": 400 if sender_fault else 500},
    }
    return botocore.exceptions.ClientError(response, "PublishBatch")
