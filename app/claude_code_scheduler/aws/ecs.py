"""What the node learns about itself from the ECS task metadata endpoint (v4)."""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Mapping

from claude_code_scheduler.protocol.events import EcsTask

log = logging.getLogger(__name__)

METADATA_ENV = "ECS_CONTAINER_METADATA_URI_V4"
METADATA_TIMEOUT_SECONDS = 2.0


def task_metadata(environ: Mapping[str, str]) -> EcsTask | None:
    """NodeRegistered's `ecs`, or None off ECS (or if the agent is silent)."""
    base = environ.get(METADATA_ENV)
    if not base:
        return None
    try:
        with urllib.request.urlopen(  # noqa: S310 - the agent's own http URL
            f"{base.rstrip('/')}/task", timeout=METADATA_TIMEOUT_SECONDS
        ) as response:
            document = json.load(response)
    except (OSError, ValueError) as exc:
        log.warning("ECS metadata endpoint did not answer: %s", exc)
        return None
    task_arn = document.get("TaskARN")
    if not isinstance(task_arn, str):
        return None
    cluster, zone = document.get("Cluster"), document.get("AvailabilityZone")
    return EcsTask(
        task_arn=task_arn,
        cluster=cluster if isinstance(cluster, str) else None,
        availability_zone=zone if isinstance(zone, str) else None,
    )


def task_id(task: EcsTask) -> str:
    """arn:aws:ecs:<region>:<account>:task/<cluster>/<task-id> -> <task-id>."""
    return task.task_arn.rsplit("/", 1)[-1]
