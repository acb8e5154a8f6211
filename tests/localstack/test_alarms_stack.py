"""deploy/cloudformation/alarms.yaml on LocalStack 4.14.0, beside the
messaging stack (conftest.messaging_stack) whose queues and topics it watches.

LocalStack community creates every alarm, the metric math ones included, and
publishes to the alarm topic when an alarm changes state. What it does not do
here: evaluate a metric math alarm (its scheduler evaluates only alarms on
one metric, with Statistic and Period), publish Container Insights metrics,
or check that a metric or dimension exists (neither does CloudWatch). So the
test forces a state change with SetAlarmState rather than waiting minutes for
SQS metrics; tests/infra/test_alarms.py checks the names and dimensions.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.infra import support
from tests.localstack.conftest import STACK_PREFIX, DeployedStack, LocalStack, created_stack

pytestmark = [pytest.mark.localstack, pytest.mark.timeout(900)]

ALARMS = support.REPO / "deploy" / "cloudformation" / "alarms.yaml"
STACK_NAME = "claude-code-scheduler-alarms"


@dataclass
class AlarmStack:
    topic_arn: str
    # alarm name -> DescribeAlarms' view of it
    alarms: dict[str, dict[str, Any]]


def template_alarm_names(prefix: str) -> set[str]:
    template = support.cfn_template(ALARMS)
    return {
        properties["AlarmName"]["Fn::Sub"].replace("${Prefix}", prefix)
        for properties in support.resources(template, "AWS::CloudWatch::Alarm").values()
    }


def create_stack(localstack: LocalStack, name: str, body: str, parameters: dict[str, str]) -> Any:
    cfn = localstack.client("cloudformation")
    cfn.create_stack(
        StackName=name,
        TemplateBody=body,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    )
    return created_stack(cfn, name)


def delete_stack(localstack: LocalStack, name: str) -> None:
    cfn = localstack.client("cloudformation")
    cfn.delete_stack(StackName=name)
    cfn.get_waiter("stack_delete_complete").wait(
        StackName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )


@pytest.fixture(scope="module")
def alarm_stack(localstack: LocalStack, messaging_stack: DeployedStack) -> Iterator[AlarmStack]:
    """The stack, deleted again at the end: its topic, <prefix>-alarms, would
    otherwise count as part of the bus that test_localstack_e2e compares."""
    try:
        # The messaging stack's prefix, so the alarms watch its queues and topics.
        parameters = {"Prefix": STACK_PREFIX, "CostPerHourUSD": "5"}
        stack = create_stack(localstack, STACK_NAME, ALARMS.read_text(), parameters)
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        cloudwatch = localstack.client("cloudwatch")
        described = cloudwatch.describe_alarms(AlarmNamePrefix=f"{STACK_PREFIX}-")
        alarms = {a["AlarmName"]: a for a in described["MetricAlarms"]}
        yield AlarmStack(outputs["AlarmTopicArn"], alarms)
    finally:
        delete_stack(localstack, STACK_NAME)


@pytest.fixture
def topic_listener(localstack: LocalStack, alarm_stack: AlarmStack) -> Iterator[str]:
    """A queue of this test's own, subscribed raw to the alarm topic."""
    sqs, sns = localstack.client("sqs"), localstack.client("sns")
    url = sqs.create_queue(QueueName=f"alarm-listener-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    subscription = sns.subscribe(
        TopicArn=alarm_stack.topic_arn,
        Protocol="sqs",
        Endpoint=arn,
        Attributes={"RawMessageDelivery": "true"},
        ReturnSubscriptionArn=True,
    )["SubscriptionArn"]
    yield url
    sns.unsubscribe(SubscriptionArn=subscription)
    sqs.delete_queue(QueueUrl=url)


def dimension(alarm: dict[str, Any], name: str) -> str:
    (value,) = [d["Value"] for d in alarm["Dimensions"] if d["Name"] == name]
    return str(value)


def test_every_alarm_is_created_with_the_topic_as_its_action(alarm_stack: AlarmStack) -> None:
    assert set(alarm_stack.alarms) == template_alarm_names(STACK_PREFIX)
    for name, alarm in alarm_stack.alarms.items():
        assert alarm["AlarmActions"] == [alarm_stack.topic_arn], name
        assert alarm["OKActions"] == [alarm_stack.topic_arn], name
    # The metric math alarms keep their queries.
    failure_rate = alarm_stack.alarms[f"{STACK_PREFIX}-failure-rate"]
    returned = [q["Id"] for q in failure_rate["Metrics"] if q.get("ReturnData", True)]
    assert returned == ["rate"]


def test_the_alarms_name_the_deployed_queues_and_topics(
    localstack: LocalStack, alarm_stack: AlarmStack, messaging_stack: DeployedStack
) -> None:
    sqs = localstack.client("sqs")
    alarms = alarm_stack.alarms
    dead_letters = dimension(alarms[f"{STACK_PREFIX}-dead-letters"], "QueueName")
    assert (
        sqs.get_queue_url(QueueName=dead_letters)["QueueUrl"]
        == messaging_stack.outputs["NodeDeadLetterQueueUrl"]
    )
    oldest = dimension(alarms[f"{STACK_PREFIX}-oldest-command"], "QueueName")
    assert sqs.get_queue_url(QueueName=oldest)["QueueUrl"] == messaging_stack.bus.node_queue_url
    topics = {
        dimension(alarms[f"{STACK_PREFIX}-command-delivery-failures"], "TopicName"),
        dimension(alarms[f"{STACK_PREFIX}-event-delivery-failures"], "TopicName"),
    }
    deployed = {messaging_stack.bus.command_topic_arn, messaging_stack.bus.control_bus_arn}
    assert {arn.rsplit(":", 1)[-1] for arn in deployed} == topics
    assert dimension(alarms[f"{STACK_PREFIX}-cost-per-hour"], "Queue") == oldest


def alarm_notifications(localstack: LocalStack, queue_url: str, name: str) -> Iterator[Any]:
    """The notifications about alarm `name` that reach the queue within 15 s.
    LocalStack's scheduler evaluates the single-metric alarms too, so an OK
    from it may come first."""
    sqs = localstack.client("sqs")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for message in sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1).get(
            "Messages", []
        ):
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            notification = json.loads(message["Body"])
            if notification.get("AlarmName") == name:
                yield notification


def test_an_alarm_that_fires_reaches_the_topic(
    localstack: LocalStack, alarm_stack: AlarmStack, topic_listener: str
) -> None:
    name = f"{STACK_PREFIX}-dead-letters"
    cloudwatch = localstack.client("cloudwatch")
    cloudwatch.set_alarm_state(AlarmName=name, StateValue="ALARM", StateReason="test")
    try:
        states = alarm_notifications(localstack, topic_listener, name)
        fired = next((n for n in states if n["NewStateValue"] == "ALARM"), None)
    finally:
        cloudwatch.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="test over")
    assert fired is not None, f"{name} went to ALARM, but that never reached the alarm topic"
    assert "docs/operations.md#dead-letters-alarm" in fired["AlarmDescription"]
