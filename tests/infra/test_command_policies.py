"""Who may put a command in: the command topic's policy and the node queue's.

The template's statements are evaluated for the requests that matter, with
IAM's documented rules for the operators they use: an explicit Deny wins; the
values of one operator are ORed, except for a negated operator, whose values
must all differ; the operators of one Condition are ANDed; and a negated
operator holds when its key is absent from the request (SNS's delivery has no
aws:PrincipalArn, a direct send no aws:SourceArn). Within one account an
identity policy that allows the action is enough on its own, so each case is
judged as "allowed by the caller's IAM policy": only a Deny can stop it. The
control: the same requests with the template's Deny statements taken out get
in, which is the hole the policies close.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest

from tests.infra import support

ACCOUNT = "123456789012"
TOPIC = f"arn:aws:sns:us-east-1:{ACCOUNT}:claude-code-scheduler-command-topic"
QUEUE = f"arn:aws:sqs:us-east-1:{ACCOUNT}:claude-code-scheduler-node-queue"
SCHEDULER = f"arn:aws:iam::{ACCOUNT}:role/scheduler"
OPERATOR = f"arn:aws:iam::{ACCOUNT}:role/ops/operator-alice"
PUBLISHERS = [SCHEDULER, f"arn:aws:iam::{ACCOUNT}:role/ops/operator-*"]
# A role in the account whose IAM policy says sqs:* and sns:* on "*": a
# build job, a node's task role, a Lambda function gone wrong.
INTRUDER = f"arn:aws:iam::{ACCOUNT}:role/ci-build"
SNS_DELIVERY = {"aws:SourceArn": TOPIC, "aws:SecureTransport": "true"}


def direct(principal: str) -> dict[str, str]:
    return {"aws:PrincipalArn": principal, "aws:SecureTransport": "true"}


def template_value(value: Any) -> Any:
    """The template's references, as this test deploys them."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return {"CommandPublisherArns": PUBLISHERS, "CommandTopic": TOPIC}[value["Ref"]]
    if isinstance(value, dict) and set(value) == {"Fn::GetAtt"}:
        return {"NodeQueue": QUEUE}[value["Fn::GetAtt"][0]]
    return value


def matches(operator: str, actual: str | None, expected: Any) -> bool:
    values = [str(v) for v in support.as_list(template_value(expected))]
    negated = "Not" in operator
    if actual is None:
        return negated
    if operator.startswith("Arn") and "Like" in operator:
        hits = [fnmatch.fnmatchcase(actual, pattern) for pattern in values]
    else:
        hits = [actual == value for value in values]
    return not any(hits) if negated else any(hits)


def applies(statement: dict[str, Any], action: str, request: dict[str, str]) -> bool:
    if not any(fnmatch.fnmatchcase(action, a) for a in support.as_list(statement["Action"])):
        return False
    return all(
        matches(operator, request.get(key), expected)
        for operator, keys in statement.get("Condition", {}).items()
        for key, expected in keys.items()
    )


def allowed(statements: list[dict[str, Any]], action: str, request: dict[str, str]) -> bool:
    """For a caller whose own IAM policy allows the action: only a Deny stops it."""
    return not any(s["Effect"] == "Deny" and applies(s, action, request) for s in statements)


def policy(kind: str, target: str) -> list[dict[str, Any]]:
    template = support.cfn_template(support.MESSAGING)
    key = "Topics" if kind == "AWS::SNS::TopicPolicy" else "Queues"
    (props,) = [p for p in support.resources(template, kind).values() if {"Ref": target} in p[key]]
    return list(props["PolicyDocument"]["Statement"])


def without_denies(statements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in statements if s["Effect"] != "Deny"]


TOPIC_CASES = [
    ("the scheduler", direct(SCHEDULER), True),
    ("an operator under the wildcard", direct(OPERATOR), True),
    ("another role of the account", direct(INTRUDER), False),
    ("another account's root", direct("arn:aws:iam::999999999999:root"), False),
]


@pytest.mark.parametrize(
    ("who", "request_", "expected"), TOPIC_CASES, ids=[c[0] for c in TOPIC_CASES]
)
def test_only_the_named_publishers_may_publish_a_command(
    who: str, request_: dict[str, str], expected: bool
) -> None:
    statements = policy("AWS::SNS::TopicPolicy", "CommandTopic")
    assert allowed(statements, "sns:Publish", request_) is expected, who
    assert allowed(without_denies(statements), "sns:Publish", request_), "the control"


def test_the_named_publishers_are_granted_by_the_topic_too() -> None:
    """Another account's publisher has no identity policy of ours to lean on."""
    (grant,) = [
        s for s in policy("AWS::SNS::TopicPolicy", "CommandTopic") if s["Effect"] == "Allow"
    ]
    assert applies(grant, "sns:Publish", direct(SCHEDULER))
    assert not applies(grant, "sns:Publish", direct(INTRUDER))


QUEUE_CASES = [
    ("the command topic's delivery", SNS_DELIVERY, True),
    ("the scheduler sending straight", direct(SCHEDULER), True),
    ("another role of the account", direct(INTRUDER), False),
    (
        "another topic's delivery",
        {
            "aws:SourceArn": TOPIC.replace("command-topic", "elsewhere"),
            "aws:SecureTransport": "true",
        },
        False,
    ),
    ("the scheduler without TLS", {**direct(SCHEDULER), "aws:SecureTransport": "false"}, False),
]


@pytest.mark.parametrize(
    ("who", "request_", "expected"), QUEUE_CASES, ids=[c[0] for c in QUEUE_CASES]
)
def test_the_node_queue_takes_commands_from_the_topic_and_the_publishers_only(
    who: str, request_: dict[str, str], expected: bool
) -> None:
    statements = policy("AWS::SQS::QueuePolicy", "NodeQueue")
    assert allowed(statements, "sqs:SendMessage", request_) is expected, who
    if request_["aws:SecureTransport"] == "true":
        assert allowed(without_denies(statements), "sqs:SendMessage", request_), "the control"


def test_the_publishers_have_no_default() -> None:
    """A default would have to be a guess that either locks everyone out or no one."""
    template = support.cfn_template(support.MESSAGING)
    spec = template["Parameters"]["CommandPublisherArns"]
    assert spec["Type"] == "CommaDelimitedList"
    assert "Default" not in spec
