"""Output at volume, and secrets that must never show up in logs or events."""

from __future__ import annotations

import json

from tests.integration.conftest import command

SNS_LIMIT = 256 * 1024
CHUNK_LIMIT = 192 * 1024


def test_twenty_megabytes_arrive_whole_within_the_limits(stack, start_node):
    start_node(stack, "--mock-mode", "--poll-wait-seconds", "1")
    size = 20 * 1024 * 1024
    cmd = command(mock={"duration_seconds": 1, "output_bytes": size})
    stack.send(cmd)
    completed = stack.wait_event("TaskCompleted", cmd["run_id"], timeout=240)
    assert completed["data"]["output_bytes"] == size
    chunks = sorted(stack.of("TaskOutput", cmd["run_id"]), key=lambda e: e["data"]["chunk_index"])
    assert [c["data"]["chunk_index"] for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        body = {k: v for k, v in chunk.items() if not k.startswith("_")}
        assert len(chunk["data"]["data"].encode()) <= CHUNK_LIMIT
        encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        assert len(encoded) < SNS_LIMIT
    # Full chunks, not a flood of tiny ones.
    assert len(chunks) <= size // CHUNK_LIMIT + 3
    log = stack.log_text(cmd["run_id"])
    assert len(log) == size
    assert "".join(c["data"]["data"] for c in chunks).encode() == log


def test_secrets_stay_out_of_logs_and_events(stack, start_node, fake_claude, tmp_path):
    secrets = {
        "AWS_SECRET_ACCESS_KEY": "aws-secret-value-123456",
        "ANTHROPIC_API_KEY": "sk-ant-secret-value-654321",
    }
    node = start_node(
        stack, "--claude-bin", str(fake_claude), "--poll-wait-seconds", "1", "-vvv", env=secrets
    )
    task_secret = "task-env-secret-value-42"
    cmd = command(env={"FAKE_CLAUDE_MODE": "ok", "DB_PASSWORD": task_secret})
    stack.send(cmd)
    bad = command(env={"DB_PASSWORD": 42, "OTHER": task_secret})
    stack.send(json.dumps(bad))
    stack.wait_event("TaskCompleted", cmd["run_id"])
    stack.wait_event("TaskFailed", bad["run_id"])
    node.signal()
    assert node.wait(15) == 0
    stack.wait_event("NodeDeregistered", node_id=node.node_id)
    logged = node.stderr
    assert "run started" in logged  # the log is there, with the lifecycle in it
    published = json.dumps(stack.events)
    for value in (*secrets.values(), task_secret):
        assert value not in logged
        assert value not in published
