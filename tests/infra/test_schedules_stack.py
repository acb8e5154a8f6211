"""deploy/cloudformation/schedules.yaml and the operator's schedule permissions:
the scheduler's execution role may publish on the command topic and nothing
else, only EventBridge Scheduler of this account and group may assume it, and
the names agree with the client's defaults and the operator policy. (cfn-lint
lints the template with the others: test_lint_infra.py.)"""

from __future__ import annotations

import re
from typing import Any

import pytest

from claude_code_scheduler.client.schedules.commands import DEFAULT_GROUP
from tests.infra import support

SCHEDULES = support.REPO / "deploy" / "cloudformation" / "schedules.yaml"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return support.cfn_template(SCHEDULES)


@pytest.fixture(scope="module")
def role(template: dict[str, Any]) -> dict[str, Any]:
    (properties,) = support.resources(template, "AWS::IAM::Role").values()
    return dict(properties)


def role_statements(role: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        statement["Sid"]: statement
        for policy in role["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
    }


def test_the_role_may_publish_on_the_command_topic_only(role: dict[str, Any]) -> None:
    statements = role_statements(role)
    assert all(s["Effect"] == "Allow" for s in statements.values())
    assert {sid: sorted(support.as_list(s["Action"])) for sid, s in statements.items()} == {
        "PublishCommands": ["sns:Publish"],
        "EncryptCommands": ["kms:Decrypt", "kms:GenerateDataKey"],
        "DeadLetterFirings": ["sqs:SendMessage"],
    }
    publish = statements["PublishCommands"]["Resource"]
    assert publish == {"Fn::ImportValue": {"Fn::Sub": "${MessagingStackName}-CommandTopicArn"}}
    key = statements["EncryptCommands"]
    assert key["Resource"] == {"Fn::ImportValue": {"Fn::Sub": "${MessagingStackName}-TopicKeyArn"}}
    assert key["Condition"] == {
        "StringEquals": {"kms:ViaService": {"Fn::Sub": "sns.${AWS::Region}.amazonaws.com"}}
    }
    assert statements["DeadLetterFirings"]["Resource"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert "ManagedPolicyArns" not in role, "no other permissions"


def test_the_topic_key_statement_is_there_because_the_topics_are_encrypted() -> None:
    messaging = support.cfn_template(support.MESSAGING)
    (topic,) = [
        t
        for t in support.resources(messaging, "AWS::SNS::Topic").values()
        if "command-topic" in support.resolve(t["TopicName"], messaging)
    ]
    assert topic["KmsMasterKeyId"] == {"Fn::GetAtt": ["TopicKey", "Arn"]}


def test_only_the_scheduler_of_this_account_and_group_may_assume_it(
    role: dict[str, Any],
) -> None:
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Effect"] == "Allow"
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    source = trust["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"]
    assert source.endswith(":schedule-group/${GroupName}")


def test_imports_are_what_messaging_exports(template: dict[str, Any]) -> None:
    messaging = support.cfn_template(support.MESSAGING)
    exported = {
        output["Export"]["Name"]["Fn::Sub"].replace("${AWS::StackName}", "${MessagingStackName}")
        for output in messaging["Outputs"].values()
        if "Export" in output
    }
    imported = set(re.findall(r"\$\{MessagingStackName\}-\w+", SCHEDULES.read_text()))
    assert imported == {
        "${MessagingStackName}-CommandTopicArn",
        "${MessagingStackName}-TopicKeyArn",
    }
    assert imported <= exported
    defaults = support.parameter_defaults(template)
    assert defaults["MessagingStackName"] == "claude-code-scheduler-messaging"
    assert defaults["Prefix"] == support.parameter_defaults(messaging)["Prefix"]


def test_names_agree_with_the_client_and_the_operator_policy(
    template: dict[str, Any], role: dict[str, Any]
) -> None:
    defaults = support.parameter_defaults(template)
    assert defaults["GroupName"] == DEFAULT_GROUP
    role_name = support.resolve(role["RoleName"], template)
    assert role_name == "claude-code-scheduler-scheduler"
    by_sid = {s["Sid"]: s for s in support.read_json(support.OPERATOR_POLICY)["Statement"]}
    assert by_sid["ManageSchedules"]["Resource"] == (
        f"arn:${{Partition}}:scheduler:${{Region}}:${{AccountId}}:schedule/{DEFAULT_GROUP}/*"
    )
    assert by_sid["PassTheSchedulerRole"] == {
        "Sid": "PassTheSchedulerRole",
        "Effect": "Allow",
        "Action": "iam:PassRole",
        "Resource": f"arn:${{Partition}}:iam::${{AccountId}}:role/{role_name}",
        "Condition": {"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}},
    }
    # ListSchedules has no resource-level permissions: "*" is its only form.
    assert by_sid["ListSchedules"]["Action"] == "scheduler:ListSchedules"
    assert by_sid["ListSchedules"]["Resource"] == "*"
    passing = [
        s
        for s in by_sid.values()
        if "iam:PassRole" in support.as_list(s["Action"]) or s["Resource"] == "*"
    ]
    assert {s["Sid"] for s in passing} == {
        "PassTheSchedulerRole",
        "ListSchedules",
        "UnsubscribeReaders",
    }


def test_the_outputs_are_what_schedule_create_asks_for(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert set(outputs) == {
        "ScheduleGroupName",
        "RoleArn",
        "DeadLetterQueueArn",
        "DeadLetterQueueUrl",
    }
    assert "CLAUDE_SCHEDULE_GROUP" in outputs["ScheduleGroupName"]["Description"]
    assert "CLAUDE_SCHEDULER_ROLE_ARN" in outputs["RoleArn"]["Description"]
    assert "CLAUDE_SCHEDULER_DLQ_ARN" in outputs["DeadLetterQueueArn"]["Description"]
    for envvar, option in (
        ("CLAUDE_SCHEDULE_GROUP", "group"),
        ("CLAUDE_SCHEDULER_ROLE_ARN", "role_arn"),
        ("CLAUDE_SCHEDULER_DLQ_ARN", "dead_letter_arn"),
        ("CLAUDE_COMMAND_TOPIC_ARN", "command_topic_arn"),
    ):
        assert envvar in schedule_create_envvars(option), envvar


def schedule_create_envvars(option: str) -> set[str]:
    from claude_code_scheduler.cli import cli  # noqa: PLC0415

    group = cli.commands["schedule"]
    assert hasattr(group, "commands")
    params = [p for p in group.commands["create"].params if p.name == option]
    assert params, option
    envvar = getattr(params[0], "envvar", None)
    return {envvar} if isinstance(envvar, str) else set(envvar or ())


def test_the_dead_letter_queue_outlives_the_stack_and_takes_tls_only(
    template: dict[str, Any],
) -> None:
    queue = template["Resources"]["DeadLetterQueue"]
    assert queue["DeletionPolicy"] == queue["UpdateReplacePolicy"] == "Retain"
    assert queue["Properties"]["SqsManagedSseEnabled"] is True
    (policy,) = support.resources(template, "AWS::SQS::QueuePolicy").values()
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
