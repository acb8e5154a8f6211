"""Publishing on an SNS topic (the node's control bus). No logic here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient


class Publisher(Protocol):
    """What the outbox needs of the bus; BusClient, and the tests' fakes."""

    def publish(self, body: str, attributes: dict[str, str], *, group: str, dedup: str) -> None: ...


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
