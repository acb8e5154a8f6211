"""deploy/: the CloudFormation templates, the task definition and the IAM
policies agree with each other and with the code."""

from __future__ import annotations

import json
import re
from typing import Any

import botocore.session
import pytest
from botocore.validate import ParamValidator

from tests.infra import support
from tests.infra.test_compose import shutdown_budget

PACKAGE = support.REPO / "app" / "claude_code_scheduler"
HEALTHCHECK = ["CMD", "claude-code-scheduler", "healthcheck"]
SEED_OUTPUTS = {
    "CommandTopicArn": "command_topic_arn",
    "ControlBusArn": "control_bus_arn",
    "ServerQueueUrl": "server_queue_url",
    "NodeQueueUrl": "node_queue_url",
    "LogBucketName": "log_bucket_name",
}


@pytest.fixture(scope="module")
def container_cfn(ecs_service: dict[str, Any]) -> dict[str, Any]:
    (task,) = support.resources(ecs_service, "AWS::ECS::TaskDefinition").values()
    (container,) = task["ContainerDefinitions"]
    return dict(container)


@pytest.fixture(scope="module")
def task_json() -> dict[str, Any]:
    return dict(support.read_json(support.TASK_DEFINITION))


@pytest.fixture(scope="module")
def container_json(task_json: dict[str, Any]) -> dict[str, Any]:
    (container,) = task_json["containerDefinitions"]
    return dict(container)


# --- CloudFormation ---------------------------------------------------------------


def test_messaging_outputs_carry_the_seeds_names(messaging: dict[str, Any]) -> None:
    outputs = messaging["Outputs"]
    for name, seed_name in SEED_OUTPUTS.items():
        assert name in outputs
        assert outputs[name]["Description"].startswith(seed_name)


def test_ecs_service_imports_only_what_messaging_exports(
    messaging: dict[str, Any], ecs_service: dict[str, Any]
) -> None:
    exported = {
        output["Export"]["Name"]["Fn::Sub"].replace("${AWS::StackName}", "${MessagingStackName}")
        for output in messaging["Outputs"].values()
        if "Export" in output
    }
    imported = set(re.findall(r"\$\{MessagingStackName\}-\w+", support.ECS_SERVICE.read_text()))
    assert imported
    assert imported <= exported


def test_cluster_name_agrees(messaging: dict[str, Any], ecs_service: dict[str, Any]) -> None:
    cluster = support.parameter_defaults(ecs_service)["ClusterName"]
    assert support.parameter_defaults(messaging)["ClusterName"] == cluster
    (props,) = support.resources(ecs_service, "AWS::ECS::Cluster").values()
    assert props["ClusterName"] == {"Ref": "ClusterName"}
    insights = {s["Name"]: s["Value"] for s in props["ClusterSettings"]}
    assert insights["containerInsights"] == "enabled", "RunningTaskCount needs it"


def test_autoscaling_tracks_backlog_per_task(ecs_service: dict[str, Any]) -> None:
    kind = "AWS::ApplicationAutoScaling::ScalingPolicy"
    (policy,) = support.resources(ecs_service, kind).values()
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    metrics = {m["Id"]: m for m in tracking["CustomizedMetricSpecification"]["Metrics"]}
    by_name = {
        m["MetricStat"]["Metric"]["MetricName"]: (m_id, m["MetricStat"]["Metric"])
        for m_id, m in metrics.items()
        if "MetricStat" in m
    }
    queue_id, queue_metric = by_name["ApproximateNumberOfMessagesVisible"]
    tasks_id, tasks_metric = by_name["RunningTaskCount"]
    assert queue_metric["Namespace"] == "AWS/SQS"
    assert [d["Name"] for d in queue_metric["Dimensions"]] == ["QueueName"]
    assert tasks_metric["Namespace"] == "ECS/ContainerInsights"
    assert {d["Name"] for d in tasks_metric["Dimensions"]} == {"ClusterName", "ServiceName"}
    returned = [m for m in metrics.values() if m.get("ReturnData")]
    assert len(returned) == 1
    assert returned[0]["Expression"].replace(" ", "") == f"{queue_id}/{tasks_id}"


def test_fargate_task_definition_settings(container_cfn: dict[str, Any]) -> None:
    assert container_cfn["StopTimeout"] == 120
    assert container_cfn["LinuxParameters"]["InitProcessEnabled"] is True
    assert container_cfn["ReadonlyRootFilesystem"] is True
    # Root with the default capabilities: none added (no SYS_PTRACE), none needed.
    assert container_cfn["User"] == "0"
    assert "Capabilities" not in container_cfn["LinuxParameters"]
    assert "Privileged" not in container_cfn
    assert container_cfn["HealthCheck"]["Command"] == HEALTHCHECK
    assert [s["Name"] for s in container_cfn["Secrets"]] == ["ANTHROPIC_API_KEY"]
    assert container_cfn["LogConfiguration"]["LogDriver"] == "awslogs"


# --- the task definition for register-task-definition --------------------------------


def env_of(container: dict[str, Any], key: str = "Environment") -> dict[str, Any]:
    entries = container.get(key) or container.get(key[0].lower() + key[1:]) or []
    return {(e.get("Name") or e.get("name")): (e.get("Value", e.get("value"))) for e in entries}


def test_task_definition_json_matches_the_cfn_one(
    ecs_service: dict[str, Any],
    container_cfn: dict[str, Any],
    task_json: dict[str, Any],
    container_json: dict[str, Any],
) -> None:
    (task_cfn,) = support.resources(ecs_service, "AWS::ECS::TaskDefinition").values()
    assert task_json["family"] == task_cfn["Family"]
    assert task_json["requiresCompatibilities"] == task_cfn["RequiresCompatibilities"]
    assert task_json["networkMode"] == task_cfn["NetworkMode"]
    assert task_json["cpu"] == str(support.resolve(task_cfn["Cpu"], ecs_service))
    assert task_json["memory"] == str(support.resolve(task_cfn["Memory"], ecs_service))
    assert task_json["ephemeralStorage"]["sizeInGiB"] == support.resolve(
        task_cfn["EphemeralStorage"]["SizeInGiB"], ecs_service
    )
    assert [v["name"] for v in task_json["volumes"]] == [v["Name"] for v in task_cfn["Volumes"]]
    assert container_json["name"] == container_cfn["Name"]

    cfn_env, json_env = env_of(container_cfn), env_of(container_json)
    assert set(json_env) == set(cfn_env)
    for name, value in cfn_env.items():
        if isinstance(value, str):
            assert json_env[name] == value, name
    assert set(env_of(container_json, "Secrets")) == set(env_of(container_cfn, "Secrets"))

    assert container_json["stopTimeout"] == container_cfn["StopTimeout"] == 120
    assert container_json["linuxParameters"]["initProcessEnabled"] is True
    assert container_json["readonlyRootFilesystem"] is True
    assert container_json["user"] == container_cfn["User"] == "0"
    assert "capabilities" not in container_json["linuxParameters"]
    assert "privileged" not in container_json
    health_json, health_cfn = container_json["healthCheck"], container_cfn["HealthCheck"]
    assert health_json["command"] == health_cfn["Command"] == HEALTHCHECK
    for key in ("Interval", "Timeout", "Retries", "StartPeriod"):
        assert health_json[key[0].lower() + key[1:]] == health_cfn[key]
    mounts_json = [
        (m["sourceVolume"], m["containerPath"], m["readOnly"])
        for m in container_json["mountPoints"]
    ]
    mounts_cfn = [
        (m["SourceVolume"], m["ContainerPath"], m["ReadOnly"]) for m in container_cfn["MountPoints"]
    ]
    assert mounts_json == mounts_cfn
    (log_group,) = support.resources(ecs_service, "AWS::Logs::LogGroup").values()
    assert container_json["logConfiguration"]["options"]["awslogs-group"] == support.resolve(
        log_group["LogGroupName"], ecs_service
    )


def test_task_definition_names_the_bus_of_messaging_yaml(
    messaging: dict[str, Any], container_json: dict[str, Any]
) -> None:
    env = env_of(container_json)
    prefix = support.parameter_defaults(messaging)["Prefix"]
    assert env["CLAUDE_NODE_QUEUE_URL"].endswith(f"/{prefix}-node-queue")
    assert env["CLAUDE_NODE_TOPIC_ARN"].endswith(f":{prefix}-control-bus")
    (bucket,) = support.resources(messaging, "AWS::S3::Bucket").values()
    expected = support.resolve(bucket["BucketName"], messaging)
    expected = expected.replace("${AWS::AccountId}", "${AWS_ACCOUNT_ID}")
    assert env["CLAUDE_NODE_LOG_BUCKET"] == expected.replace("${AWS::Region}", "${AWS_REGION}")


def test_task_environment_names_are_ones_the_node_reads(
    container_cfn: dict[str, Any], container_json: dict[str, Any]
) -> None:
    for container in (container_cfn, container_json):
        names = set(env_of(container)) | set(
            env_of(container, "Secrets") or env_of(container, "secrets")
        )
        unknown = names - support.node_envvars()
        assert not unknown, f"the node reads none of {sorted(unknown)}"


def test_stop_timeout_covers_the_nodes_shutdown(container_json: dict[str, Any]) -> None:
    assert container_json["stopTimeout"] >= shutdown_budget(env_of(container_json))


def test_task_definition_json_is_valid_input_for_register_task_definition(
    task_json: dict[str, Any],
) -> None:
    text = support.TASK_DEFINITION.read_text()
    placeholders = set(re.findall(r"\$\{([A-Z_]+)\}", text))
    assert placeholders == {"AWS_ACCOUNT_ID", "AWS_REGION", "IMAGE", "ANTHROPIC_API_KEY_SECRET_ARN"}
    filled = text
    for name, value in {
        "AWS_ACCOUNT_ID": "123456789012",
        "AWS_REGION": "eu-central-1",
        "IMAGE": "ghcr.io/example/claude-code-scheduler:1.0.0",
        "ANTHROPIC_API_KEY_SECRET_ARN": "arn:aws:secretsmanager:eu-central-1:123456789012:secret:k",
    }.items():
        filled = filled.replace("${" + name + "}", value)
    params = json.loads(filled)
    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    assert shape is not None
    report = ParamValidator().validate(params, shape)
    assert not report.has_errors(), report.generate_report()
