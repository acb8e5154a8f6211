"""deploy/cloudformation/schedules.yaml on LocalStack 4.14.0, beside the
messaging stack (conftest.messaging_stack) whose exports it imports, and
`schedule create` against what it made.

LocalStack community keeps schedules in moto's store, checking each
expression against its own patterns, and never fires them, so this proves the
stack deploys (group, role and its policy, DLQ), that the cross-stack imports
resolve, and that an independent validator takes the expressions `schedule
create` sends. Firings run by a node are tests/integration/test_schedules.py.
The stack has a prefix of its own: its retained DLQ must not count as part of
the bus test_localstack_e2e compares.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest

from claude_code_scheduler.protocol.schedules import check_template
from tests.infra import support
from tests.localstack.conftest import (
    CREDENTIALS,
    REGION,
    STACK_NAME,
    DeployedStack,
    LocalStack,
    clean_env,
    created_stack,
)

pytestmark = [pytest.mark.localstack, pytest.mark.timeout(600)]

SCHEDULES = support.REPO / "deploy" / "cloudformation" / "schedules.yaml"
SCHEDULES_STACK = "claude-code-scheduler-schedules"
PREFIX = "ls-sched"


@pytest.fixture(scope="module")
def schedules_stack(
    localstack: LocalStack, messaging_stack: DeployedStack
) -> Iterator[dict[str, str]]:
    cfn = localstack.client("cloudformation")
    cfn.create_stack(
        StackName=SCHEDULES_STACK,
        TemplateBody=SCHEDULES.read_text(),
        Parameters=[
            {"ParameterKey": "Prefix", "ParameterValue": PREFIX},
            {"ParameterKey": "GroupName", "ParameterValue": PREFIX},
            {"ParameterKey": "MessagingStackName", "ParameterValue": STACK_NAME},
        ],
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    try:
        stack = created_stack(cfn, SCHEDULES_STACK)
        yield {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    finally:
        cfn.delete_stack(StackName=SCHEDULES_STACK)
        cfn.get_waiter("stack_delete_complete").wait(
            StackName=SCHEDULES_STACK, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
        )
        sqs = localstack.client("sqs")  # retained by the stack, as on AWS
        for url in sqs.list_queues(QueueNamePrefix=f"{PREFIX}-").get("QueueUrls", []):
            sqs.delete_queue(QueueUrl=url)


def test_the_stack_makes_the_group_the_role_and_the_dlq(
    localstack: LocalStack, schedules_stack: dict[str, str], messaging_stack: DeployedStack
) -> None:
    assert schedules_stack["ScheduleGroupName"] == PREFIX
    group = localstack.client("scheduler").get_schedule_group(Name=PREFIX)
    assert group["Name"] == PREFIX
    assert schedules_stack["RoleArn"].endswith(f":role/{PREFIX}-scheduler")
    assert schedules_stack["DeadLetterQueueArn"].endswith(f":{PREFIX}-scheduler-dlq")

    iam = localstack.client("iam")
    role = iam.get_role(RoleName=f"{PREFIX}-scheduler")["Role"]
    trust = role["AssumeRolePolicyDocument"]
    if isinstance(trust, str):
        trust = json.loads(unquote(trust))
    (statement,) = trust["Statement"]
    assert statement["Principal"] == {"Service": "scheduler.amazonaws.com"}
    (policy_name,) = iam.list_role_policies(RoleName=f"{PREFIX}-scheduler")["PolicyNames"]
    document = iam.get_role_policy(RoleName=f"{PREFIX}-scheduler", PolicyName=policy_name)[
        "PolicyDocument"
    ]
    if isinstance(document, str):
        document = json.loads(unquote(document))
    by_sid = {s["Sid"]: s for s in document["Statement"]}
    # The imports resolved to the messaging stack's topic and key.
    assert by_sid["PublishCommands"]["Resource"] == messaging_stack.bus.command_topic_arn
    assert by_sid["EncryptCommands"]["Resource"] == messaging_stack.outputs["TopicKeyArn"]
    assert by_sid["DeadLetterFirings"]["Resource"] == schedules_stack["DeadLetterQueueArn"]


def schedule(
    localstack: LocalStack, settings: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    env = clean_env(
        AWS_ENDPOINT_URL=localstack.endpoint, AWS_REGION=REGION, **CREDENTIALS, **settings
    )
    return subprocess.run(
        [sys.executable, "-m", "claude_code_scheduler", "schedule", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "when",
    [
        ["--cron", "0 9 ? * MON-FRI *", "--timezone", "Europe/Berlin"],
        ["--rate", "1 hour"],
        ["--at", "2030-01-01T09:00:00", "--timezone", "Asia/Tokyo"],
    ],
)
def test_schedule_create_uses_the_stacks_outputs(
    localstack: LocalStack,
    schedules_stack: dict[str, str],
    messaging_stack: DeployedStack,
    when: list[str],
) -> None:
    settings = {
        "CLAUDE_SCHEDULE_GROUP": schedules_stack["ScheduleGroupName"],
        "CLAUDE_COMMAND_TOPIC_ARN": messaging_stack.bus.command_topic_arn,
        "CLAUDE_SCHEDULER_ROLE_ARN": schedules_stack["RoleArn"],
        "CLAUDE_SCHEDULER_DLQ_ARN": schedules_stack["DeadLetterQueueArn"],
    }
    name = f"ls-{when[0].strip('-')}"
    created = schedule(localstack, settings, "create", name, "--prompt", "hello", *when)
    assert created.returncode == 0, created.stderr
    try:
        stored: Any = localstack.client("scheduler").get_schedule(
            Name=name, GroupName=schedules_stack["ScheduleGroupName"]
        )
        assert stored["Target"]["Arn"] == messaging_stack.bus.command_topic_arn
        assert stored["Target"]["RoleArn"] == schedules_stack["RoleArn"]
        assert check_template(stored["Target"]["Input"]).task.task_id == name
        listed = schedule(localstack, settings, "list", "--json")
        assert name in {s["name"] for s in json.loads(listed.stdout)}, listed.stderr
    finally:
        deleted = schedule(localstack, settings, "delete", name)
        assert deleted.returncode == 0, deleted.stderr
