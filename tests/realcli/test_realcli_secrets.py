"""Redaction with the genuine CLI: a task's secret (from the moto server's
Secrets Manager) and a task env value, echoed by a scripted Bash tool_use,
leave the node only as the marker, on the bus and in the S3 log.

The control is the request the CLI sent back to the API stand-in: its
tool_result holds the values as Bash printed them (the run itself sees its
secrets), so they were in the CLI's output and the node took them out."""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3

from tests.integration.conftest import CREDENTIALS, REGION, Stack
from tests.realcli.anthropic_standin import AnthropicStandin, Text, ToolUse
from tests.realcli.test_node_real_mode import (  # noqa: F401 - the fixtures
    Launch,
    api,
    launch,
)

MARKER = "***"


def secret_in(stack: Stack, value: str) -> str:
    client: Any = boto3.client(
        "secretsmanager",
        endpoint_url=stack.endpoint,
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    name = f"claude-code-scheduler/realcli-{uuid.uuid4().hex[:8]}"
    return str(client.create_secret(Name=name, SecretString=value)["ARN"])


def test_a_secret_a_bash_tool_echoes_is_redacted_on_the_bus_and_in_s3(
    launch: Launch,  # noqa: F811 - the fixture imported above
    api: AnthropicStandin,  # noqa: F811
    stack: Stack,
) -> None:
    secret = f"realcli-secret-{uuid.uuid4().hex[:12]}"
    env_value = f"env-value-{uuid.uuid4().hex[:12]}"
    api.add(
        ToolUse("Bash", {"command": 'echo "db=$DB_PASSWORD env=$PLAIN short=$SHORT"'}),
        Text("printed"),
    )
    node = launch(api)
    run_id, terminal = node.run(
        prompt="print the variables",
        allowed_tools=["Bash"],
        env={"PLAIN": env_value, "SHORT": "ab12"},
        secrets={"DB_PASSWORD": secret_in(stack, secret)},
    )
    assert terminal["event_type"] == "TaskCompleted", terminal
    tool_output = api.main_requests[1].tool_result_text()
    assert f"db={secret} env={env_value} short=ab12" in tool_output, "control: the run saw them"

    output = node.output_text(run_id)
    log = stack.log_text(run_id).decode()
    assert output == log
    assert f"db={MARKER} env={MARKER} short=ab12" in output
    published = json.dumps(stack.events)
    for value in (secret, env_value):
        assert value not in output and value not in published
        assert value not in node.process.stderr
