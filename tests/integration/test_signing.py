"""Signed commands end to end: real nodes started with --verification-keys
against the moto server, and `submit --signing-key`.

A node that requires signatures runs what a key of its set signed, raw or
through the SNS command topic, and refuses (TaskFailed InvalidCommand, the
message deleted) what is forged, altered, unsigned or expired. The control: the
same forged command runs on a node without --verification-keys, which is the
attack signing stops.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from claude_code_scheduler.protocol.signing import SigningKey, generate_key, sign_command
from tests.conftest import wait_until
from tests.integration.conftest import Stack, aws_client, command, node_env

FAST = {"duration_seconds": 0, "output_bytes": 100}
ONE = generate_key("scheduler-one")
TWO = generate_key("scheduler-two")
INTRUDER = generate_key("intruder")


def jwks(*keys: SigningKey) -> str:
    return json.dumps({"keys": [key.public_jwk() for key in keys]})


def signed(key: SigningKey, run_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("now", time.time())
    return sign_command(command(run_id, mock=FAST), key, **kwargs)


def aws(stack: Stack, service: str) -> Any:
    return aws_client(stack.endpoint, service)


def submit(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "claude_code_scheduler", "submit", "--prompt", "hi", *args],
        capture_output=True,
        text=True,
        env=node_env(stack),
        timeout=60,
        check=False,
    )


def start(start_node: Any, stack: Stack, keys: str | None) -> Any:
    args = ["--mock-mode", "--poll-wait-seconds", "1"]
    node = start_node(stack, *args, *(["--verification-keys", keys] if keys else []))
    registered = stack.wait_event("NodeRegistered", node_id=node.node_id)
    assert registered["data"]["requires_signatures"] is (keys is not None)
    return node


def failure(stack: Stack, run_id: str) -> str:
    error = stack.wait_event("TaskFailed", run_id)["data"]["error"]
    assert error["type"] == "InvalidCommand"
    return str(error["message"])


def queue_empty(stack: Stack) -> bool:
    return stack.queue_counts() == (0, 0)


def test_a_node_with_keys_runs_only_what_its_keys_signed(stack, start_node, tmp_path):
    keys = tmp_path / "nodes.jwks"
    keys.write_text(jwks(ONE, TWO))  # two keys at once: a rotation under way
    start(start_node, stack, str(keys))

    by_one, by_two = signed(ONE), signed(TWO)
    altered = signed(ONE)
    altered["task"]["prompt"] = "something else entirely"
    expired = signed(ONE, now=time.time() - 7200, ttl=60)
    unsigned = command(mock=FAST)
    forged = signed(INTRUDER)
    for body in (by_one, by_two, altered, expired, unsigned, forged):
        stack.send(body)
    through_topic = signed(TWO)
    stack.publish_command(through_topic)  # an SNS envelope: the signature is inside

    for body in (by_one, by_two, through_topic):
        stack.wait_event("TaskCompleted", body["run_id"])
    assert failure(stack, altered["run_id"]) == "signature invalid: it does not match the command"
    assert failure(stack, expired["run_id"]).startswith("signature expired: ")
    assert failure(stack, unsigned["run_id"]) == "signature missing"
    assert failure(stack, forged["run_id"]) == "unknown key id: 'intruder'"
    assert wait_until(lambda: queue_empty(stack), timeout=15), stack.queue_counts()
    for body in (altered, expired, unsigned, forged):
        assert not stack.of("TaskStarted", body["run_id"])


def test_the_forged_command_runs_on_a_node_without_keys(stack, start_node):
    """The control: what a node without --verification-keys does with it."""
    start(start_node, stack, None)
    forged = signed(INTRUDER)
    stack.send(forged)
    stack.wait_event("TaskCompleted", forged["run_id"])


def test_key_sets_in_secrets_manager_and_ssm_and_a_key_added_while_running(stack, start_node):
    secrets, ssm = aws(stack, "secretsmanager"), aws(stack, "ssm")
    name = f"claude-code-scheduler-keys/{uuid.uuid4().hex[:8]}"
    arn = secrets.create_secret(Name=name, SecretString=jwks(ONE))["ARN"]
    parameter = f"/{name}"
    ssm.put_parameter(Name=parameter, Value=jwks(TWO), Type="SecureString")
    start(start_node, stack, arn)
    from_ssm = stack_with_own_queue(stack)
    start(start_node, from_ssm, parameter)

    by_one, by_two = signed(ONE), signed(TWO)
    stack.send(by_one)
    from_ssm.send(by_two)
    stack.wait_event("TaskCompleted", by_one["run_id"])
    from_ssm.wait_event("TaskCompleted", by_two["run_id"])

    # A new key put in the secret is picked up on the first command that
    # names it, without a restart.
    secrets.put_secret_value(SecretId=arn, SecretString=jwks(ONE, TWO))
    by_new = signed(TWO)
    stack.send(by_new)
    stack.wait_event("TaskCompleted", by_new["run_id"])


def stack_with_own_queue(stack: Stack) -> Stack:
    """A second node queue and control bus on the same server."""
    from tests.integration.conftest import make_stack  # noqa: PLC0415

    return make_stack(stack.endpoint)


def test_submit_signs_with_a_key_file_or_a_secret(stack, start_node, tmp_path):
    keys = tmp_path / "nodes.jwks"
    keys.write_text(jwks(ONE, TWO))
    start(start_node, stack, str(keys))
    key_file = tmp_path / "one.jwk"
    key_file.write_text(json.dumps(ONE.private_jwk()))
    secret = aws(stack, "secretsmanager").create_secret(
        Name=f"scheduler/signing-{uuid.uuid4().hex[:8]}",
        SecretString=json.dumps(TWO.private_jwk()),
    )["ARN"]

    via_queue = submit(
        stack, "--queue-url", stack.queue_url, "--signing-key", str(key_file), "--run-id", "q-1"
    )
    via_topic = submit(
        stack,
        "--command-topic-arn",
        stack.command_topic_arn,
        "--signing-key",
        secret,
        "--run-id",
        "t-1",
    )
    unsigned = submit(stack, "--queue-url", stack.queue_url, "--run-id", "u-1")
    for result in (via_queue, via_topic, unsigned):
        assert result.returncode == 0, result.stderr
    stack.wait_event("TaskCompleted", "q-1")
    stack.wait_event("TaskCompleted", "t-1")
    assert failure(stack, "u-1") == "signature missing"


@pytest.mark.parametrize(
    ("key_text", "message"),
    [
        (json.dumps(ONE.public_jwk()), "is a public key"),
        ("not json", "is not JSON"),
    ],
)
def test_submit_refuses_a_bad_signing_key_in_one_line(stack, tmp_path, key_text, message):
    path = tmp_path / "key.jwk"
    path.write_text(key_text)
    result = submit(stack, "--queue-url", stack.queue_url, "--signing-key", str(path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert stack.queue_counts() == (0, 0), "nothing was sent"


def test_a_key_set_holding_a_private_key_stops_the_node_at_start_up(
    stack, start_node, tmp_path: Path
):
    keys = tmp_path / "leaked.jwks"
    keys.write_text(json.dumps({"keys": [ONE.private_jwk()]}))
    node = start_node(stack, "--mock-mode", "--verification-keys", str(keys))
    assert node.wait(30) == 2
    assert "--verification-keys" in node.stderr and "is a private key" in node.stderr
    assert ONE.private_jwk()["d"] not in node.stderr
    stack.poll_events()
    assert not stack.of("NodeRegistered")
