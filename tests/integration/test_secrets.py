"""task.secrets end to end: a node process on the moto server reads a task's
secrets from Secrets Manager and SSM (SecureString), gives them to the CLI's
environment, and what the CLI prints of them reaches neither the bus nor the
S3 log, nor the node's own log; a reference outside --secrets-prefix and a
missing secret fail the run with SecretError naming the reference.

The CLI is tests/integration/fake_claude.py in its echo-env mode: it prints
the variables it is told to, split across two writes, in stream-json, on
stderr and in its result, as a run that leaks them would. It records the
environment it got, which is how the test sees that the value reached it.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Stack, aws_client, command
from tests.unprivileged import drop_box

MARKER = "***"
# Short of the redaction minimum (6): printed as it is, the control that shows
# the echo puts a variable's value in the output.
SHORT = "ab12"


def aws(stack: Stack, service: str) -> Any:
    return aws_client(stack.endpoint, service)


@pytest.fixture
def kept(stack: Stack) -> dict[str, str]:
    """A secret in Secrets Manager and a SecureString parameter, under the
    default prefix, with values that need escaping in JSON; reference -> value."""
    tag = uuid.uuid4().hex[:8]
    db_value = f'db-"pass"\\{tag}'
    token_value = f"ssm-token-{tag}-Zq9"
    arn = aws(stack, "secretsmanager").create_secret(
        Name=f"claude-code-scheduler/{tag}/db", SecretString=db_value
    )["ARN"]
    parameter = f"/claude-code-scheduler/{tag}/token"
    aws(stack, "ssm").put_parameter(Name=parameter, Value=token_value, Type="SecureString")
    return {arn: db_value, parameter: token_value}


def output_of(stack: Stack, run_id: str) -> str:
    stack.drain_events(1.0)  # TaskOutput may trail the terminal event on the queue
    chunks = sorted(stack.of("TaskOutput", run_id), key=lambda e: e["data"]["chunk_index"])
    return "".join(c["data"]["data"] for c in chunks)


def test_secrets_reach_the_cli_and_only_the_marker_leaves_the_node(
    stack: Stack, start_node: Any, fake_claude: Path, tmp_path: Path, kept: dict[str, str]
) -> None:
    (db_ref, db_value), (token_ref, token_value) = kept.items()
    node = start_node(stack, "--claude-bin", str(fake_claude), "--poll-wait-seconds", "1")
    record = drop_box(tmp_path) / "record.json"
    leaked = command(
        env={
            "FAKE_CLAUDE_MODE": "echo-env",
            "FAKE_CLAUDE_RECORD": str(record),
            "FAKE_CLAUDE_ECHO": "DB_PASSWORD,API_TOKEN,SHORT_ONE",
            "SHORT_ONE": SHORT,
        },
        secrets={"DB_PASSWORD": db_ref, "API_TOKEN": token_ref},
    )
    outside = command(secrets={"X": "/another-app/token"})
    missing = command(secrets={"Y": db_ref.replace("/db", "/nothing")})
    for cmd in (leaked, outside, missing):
        stack.send(cmd)

    completed = stack.wait_event("TaskCompleted", leaked["run_id"])
    seen_env = json.loads(record.read_text())["env"]
    assert seen_env["DB_PASSWORD"] == db_value and seen_env["API_TOKEN"] == token_value

    output, log = output_of(stack, leaked["run_id"]), stack.log_text(leaked["run_id"]).decode()
    assert output == log
    assert f"SHORT_ONE={SHORT}" in output, "control: the echo prints a variable's value"
    for value in (db_value, token_value, json.dumps(db_value)[1:-1]):
        assert value not in output and value not in completed["data"]["result"]["text"]
    # stdout (escaped in stream-json) and stderr (raw), and the result line.
    assert output.count(f"DB_PASSWORD={MARKER}") == 3
    assert output.count(f"API_TOKEN={MARKER}") == 3

    for cmd, reference in (
        (outside, "/another-app/token"),
        (missing, missing["task"]["secrets"]["Y"]),
    ):
        failed = stack.wait_event("TaskFailed", cmd["run_id"])
        error = failed["data"]["error"]
        assert error["type"] == "SecretError" and reference in error["message"], error
        assert failed["data"]["retryable"] is False
    assert (
        "--secrets-prefix"
        in stack.wait_event("TaskFailed", outside["run_id"])["data"]["error"]["message"]
    )
    assert (
        "ResourceNotFoundException"
        in stack.wait_event("TaskFailed", missing["run_id"])["data"]["error"]["message"]
    )

    node.signal()
    assert node.wait(30) == 0
    logged = node.stderr
    assert "run started" in logged
    published = json.dumps(stack.events)
    for value in (db_value, token_value):
        assert value not in logged and value not in published
