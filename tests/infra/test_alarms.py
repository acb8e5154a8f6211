"""deploy/cloudformation/alarms.yaml: each alarm watches a metric that exists,
under the names and dimensions it is published with: the EMF ones as
node/metrics.py writes them, the AWS ones for the resources messaging.yaml
and ecs-service.yaml create; each notifies the alarm topic and names its
runbook section. (cfn-lint lints the template with the others:
test_lint_infra.py; tests/localstack deploys it.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from claude_code_scheduler.node.metrics import EMF_NAMESPACE, RunEnded, emf_document
from claude_code_scheduler.protocol.events import ErrorType
from tests.infra import support
from tests.unit.test_docs import anchors

ALARMS = support.REPO / "deploy" / "cloudformation" / "alarms.yaml"
RUNBOOK = support.REPO / "docs" / "operations.md"
# What the issue asks to be alarmed on, as (namespace, metric).
REQUIRED = {
    ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),  # dead letters
    ("AWS/SQS", "ApproximateAgeOfOldestMessage"),
    ("AWS/SNS", "NumberOfNotificationsFailed"),
    ("ECS/ContainerInsights", "RunningTaskCount"),
    (EMF_NAMESPACE, "RunsFailed"),
    (EMF_NAMESPACE, "CostUSD"),
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return support.cfn_template(ALARMS)


@pytest.fixture(scope="module")
def alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return support.resources(template, "AWS::CloudWatch::Alarm")


def watched(
    alarm: dict[str, Any], template: dict[str, Any]
) -> list[tuple[str, str, dict[str, str]]]:
    """(namespace, metric, dimension name -> value with the defaults) of
    every metric an alarm reads, a plain one or each of its metric math's."""
    if "MetricName" in alarm:
        specs = [alarm]
    else:
        specs = [q["MetricStat"]["Metric"] for q in alarm["Metrics"] if "MetricStat" in q]
    return [
        (
            spec["Namespace"],
            spec["MetricName"],
            {d["Name"]: support.resolve(d["Value"], template) for d in spec.get("Dimensions", [])},
        )
        for spec in specs
    ]


def emitted_metrics() -> set[tuple[str, str, frozenset[str]]]:
    """(namespace, metric, dimension names) of what a node's EMF lines
    define, for a completed run and a failed one that reported everything."""
    tokens = (("input_tokens", 10), ("output_tokens", 20))
    completed = RunEnded("r1", completed=True, duration_seconds=2.0, cost_usd=0.5, tokens=tokens)
    failed = RunEnded("r2", completed=False, error_type=ErrorType.TIMEOUT.value, cost_usd=0.5)
    ends = [completed, failed]
    found = set()
    for ended in ends:
        document = emf_document(ended, node_id="n", queue="q", timestamp_ms=0)
        for directive in document["_aws"]["CloudWatchMetrics"]:
            for dimensions in directive["Dimensions"]:
                for metric in directive["Metrics"]:
                    found.add((directive["Namespace"], metric["Name"], frozenset(dimensions)))
    return found


# The property that names a resource, by its type.
NAME_PROPERTY = {
    "AWS::SQS::Queue": "QueueName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::ECS::Cluster": "ClusterName",
    "AWS::ECS::Service": "ServiceName",
}


def resource_name(path: Path, logical_id: str) -> str:
    """The name a resource of messaging.yaml or ecs-service.yaml gets with
    the template's defaults."""
    template = support.cfn_template(path)
    resource = template["Resources"][logical_id]
    name = resource["Properties"][NAME_PROPERTY[resource["Type"]]]
    return str(support.resolve(name, template))


def messaging_name(logical_id: str) -> str:
    return resource_name(support.MESSAGING, logical_id)


SCHEDULES = support.REPO / "deploy" / "cloudformation" / "schedules.yaml"


def test_every_required_alarm_is_there(
    alarms: dict[str, dict[str, Any]], template: dict[str, Any]
) -> None:
    covered = {
        (ns, metric) for alarm in alarms.values() for ns, metric, _ in watched(alarm, template)
    }
    assert covered >= REQUIRED


def test_emf_alarms_read_what_the_node_writes(
    alarms: dict[str, dict[str, Any]], template: dict[str, Any]
) -> None:
    emitted = emitted_metrics()
    node_queue = messaging_name("NodeQueue")
    emf_metrics = [
        (ns, metric, dims)
        for alarm in alarms.values()
        for ns, metric, dims in watched(alarm, template)
        if ns == EMF_NAMESPACE
    ]
    assert emf_metrics
    for ns, metric, dims in emf_metrics:
        assert (ns, metric, frozenset(dims)) in emitted, (metric, sorted(dims))
        # The node's Queue dimension is its queue's name (config.queue.name).
        assert dims["Queue"] == node_queue
    # The failure rate leaves out exactly the ends that are not failing runs,
    # under the error types' own names.
    left_out = {dims["ErrorType"] for _, _, dims in emf_metrics if "ErrorType" in dims}
    assert left_out == {ErrorType.NODE_SHUTDOWN.value, ErrorType.CANCELLED.value}


def test_aws_alarms_watch_the_resources_the_stacks_create(
    alarms: dict[str, dict[str, Any]], template: dict[str, Any]
) -> None:
    expected = {
        "AWS/SQS": {
            "QueueName": {
                messaging_name("NodeQueue"),
                messaging_name("NodeDeadLetterQueue"),
                resource_name(SCHEDULES, "DeadLetterQueue"),
            }
        },
        "AWS/SNS": {
            "TopicName": {
                messaging_name("CommandTopic"),
                messaging_name("ControlBus"),
            }
        },
        "ECS/ContainerInsights": {
            "ClusterName": {resource_name(support.ECS_SERVICE, "Cluster")},
            "ServiceName": {resource_name(support.ECS_SERVICE, "Service")},
        },
    }
    seen: dict[str, dict[str, set[str]]] = {}
    for alarm in alarms.values():
        for ns, _, dims in watched(alarm, template):
            if ns in expected:
                for name, value in dims.items():
                    seen.setdefault(ns, {}).setdefault(name, set()).add(value)
    assert seen == expected


def test_the_dead_letter_alarms_watch_the_node_queues_and_the_schedules_dlqs(
    alarms: dict[str, dict[str, Any]], template: dict[str, Any]
) -> None:
    watching = {
        logical_id: d["QueueName"]
        for logical_id, alarm in alarms.items()
        for _, metric, d in watched(alarm, template)
        if metric == "ApproximateNumberOfMessagesVisible"
    }
    assert watching == {
        "DeadLetterQueueNotEmpty": messaging_name("NodeDeadLetterQueue"),
        "SchedulerDeadLetters": resource_name(SCHEDULES, "DeadLetterQueue"),
    }


def test_every_alarm_notifies_the_topic_and_names_its_runbook(
    alarms: dict[str, dict[str, Any]],
) -> None:
    runbook_anchors = anchors(RUNBOOK)
    topic = {"Ref": "AlarmTopic"}
    for name, alarm in alarms.items():
        assert alarm["AlarmActions"] == [topic], name
        assert alarm["OKActions"] == [topic], name
        (anchor,) = re.findall(r"docs/operations\.md#([a-z0-9-]+)", alarm["AlarmDescription"])
        assert anchor in runbook_anchors, f"{name}: no heading #{anchor} in docs/operations.md"


def test_metric_math_refers_only_to_its_own_ids(alarms: dict[str, dict[str, Any]]) -> None:
    for name, alarm in alarms.items():
        queries = alarm.get("Metrics", [])
        ids = {q["Id"] for q in queries}
        returned = [q["Id"] for q in queries if q.get("ReturnData", True)]
        assert len(returned) <= 1, name
        for query in queries:
            expression = query.get("Expression")
            if isinstance(expression, dict):  # !Sub of a parameter
                expression = expression["Fn::Sub"]
            if expression:
                words = set(re.findall(r"\b[a-z][a-zA-Z0-9_]*\b", expression))
                assert words <= ids, (name, sorted(words - ids))
