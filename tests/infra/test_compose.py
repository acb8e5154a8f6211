"""docker-compose.yml, read as data: what `docker compose up` would run."""

from __future__ import annotations

import re
from typing import Any

import pytest

from claude_code_scheduler.node.shutdown import SHUTDOWN_MARGIN_SECONDS
from tests.infra import support

# After SIGTERM a node exits within CLAUDE_NODE_SHUTDOWN_TIMEOUT + the kill
# grace + the node's fixed margin, however many runs it has (node.worker and
# tests/integration/test_shutdown_bound.py). The platform's stop window must cover it.
SHUTDOWN_OVERHEAD_SECONDS = SHUTDOWN_MARGIN_SECONDS


def shutdown_budget(env: dict[str, Any]) -> float:
    return (
        support.setting(env, "CLAUDE_NODE_SHUTDOWN_TIMEOUT", "shutdown_timeout")
        + support.setting(env, "CLAUDE_NODE_KILL_GRACE", "kill_grace")
        + SHUTDOWN_OVERHEAD_SECONDS
    )


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    data = support.compose()
    return dict(data["services"])


@pytest.fixture(scope="module")
def worker(services: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return services["worker"]


@pytest.fixture(scope="module")
def worker_env(worker: dict[str, Any]) -> dict[str, Any]:
    return support.environment(worker)


def test_every_image_tag_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        if image is None:
            assert "build" in service, f"{name} has neither an image nor a build"
            continue
        reference = image.partition("@")[0]
        repository, _, tag = reference.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image} has no tag"
        assert tag != "latest", f"{name}: image {image} is not pinned"
    localstack = services["localstack"]["image"]
    assert localstack.startswith("localstack/localstack:4.14.0@sha256:")
    # The same build CI's service container runs.
    assert localstack.split("@")[1] in (support.REPO / ".github/workflows/ci.yml").read_text()


def test_localstack_runs_the_init_script_with_the_bus_services(
    services: dict[str, dict[str, Any]],
) -> None:
    localstack = services["localstack"]
    env = support.environment(localstack)
    assert set(env["SERVICES"].split(",")) >= {"sqs", "sns", "s3"}
    # Passed through from the host when set (a null value in compose).
    assert "LOCALSTACK_AUTH_TOKEN" in env
    assert env["LOCALSTACK_AUTH_TOKEN"] is None
    mounts = [v.split(":") for v in localstack["volumes"]]
    script = support.INIT_SCRIPT.relative_to(support.REPO)
    assert any(
        source == f"./{script}" and target.startswith("/etc/localstack/init/ready.d/")
        for source, target, *_ in mounts
    ), mounts
    test = localstack["healthcheck"]["test"]
    assert "/_localstack/init/ready" in " ".join(test)


def test_worker_is_built_from_the_dockerfile(worker: dict[str, Any]) -> None:
    build = worker["build"]
    assert build["context"] == "."
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    # No override: the Dockerfile installs the version in claude-code.version.
    assert "CLAUDE_CODE_VERSION" not in (build.get("args") or {})


def test_worker_environment_names_are_ones_the_node_reads(worker_env: dict[str, Any]) -> None:
    unknown = set(worker_env) - support.node_envvars()
    assert not unknown, f"the node reads none of {sorted(unknown)}"


def test_worker_is_configured_through_the_environment_only(worker: dict[str, Any]) -> None:
    assert "command" not in worker, "options belong in the environment"
    assert "entrypoint" not in worker
    env = support.environment(worker)
    for required in (
        "CLAUDE_NODE_QUEUE_URL",
        "CLAUDE_NODE_TOPIC_ARN",
        "CLAUDE_NODE_LOG_BUCKET",
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ):
        assert env.get(required), f"{required} is not set"
    assert env["AWS_ENDPOINT_URL"] == "http://localstack:4566"
    assert env["CLAUDE_NODE_QUEUE_URL"].startswith("http://localstack:4566/")


def test_worker_runs_in_mock_mode_unless_switched(worker_env: dict[str, Any]) -> None:
    mock = support.expand_default(str(worker_env["CLAUDE_NODE_MOCK_MODE"]))
    assert mock.lower() in ("1", "true", "yes", "on")
    assert re.fullmatch(r"\$\{CLAUDE_NODE_MOCK_MODE:-\w+\}", worker_env["CLAUDE_NODE_MOCK_MODE"])
    # The key comes from the host's environment only, never from this file.
    assert "ANTHROPIC_API_KEY" in worker_env
    assert worker_env["ANTHROPIC_API_KEY"] is None


def test_grace_period_exceeds_the_nodes_shutdown(
    worker: dict[str, Any], worker_env: dict[str, Any]
) -> None:
    grace = support.seconds(worker["stop_grace_period"])
    shutdown_timeout = support.setting(
        worker_env, "CLAUDE_NODE_SHUTDOWN_TIMEOUT", "shutdown_timeout"
    )
    assert grace > shutdown_timeout
    assert grace >= shutdown_budget(worker_env), (
        f"stop_grace_period {grace}s < the node's {shutdown_budget(worker_env)}s after SIGTERM"
    )


def test_worker_waits_for_a_healthy_localstack(worker: dict[str, Any]) -> None:
    assert worker["depends_on"]["localstack"]["condition"] == "service_healthy"


def test_worker_scales(worker: dict[str, Any]) -> None:
    assert "container_name" not in worker, "a fixed name stops --scale worker=3"
    assert "ports" not in worker, "a fixed host port stops --scale worker=3"
    assert "hostname" not in worker, "replicas need their own node ids (the host name)"
    assert "CLAUDE_NODE_ID" not in support.environment(worker)


def test_worker_root_filesystem_is_read_only_as_on_ecs(worker: dict[str, Any]) -> None:
    assert worker.get("read_only") is True


def test_duration_parsing() -> None:
    assert support.seconds("60s") == 60
    assert support.seconds("1m30s") == 90
    assert support.seconds("1m0s") == 60
    assert support.seconds(45) == 45
