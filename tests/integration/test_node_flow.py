"""A node in mock mode on a moto server: every event, the log, the queue."""

from __future__ import annotations

import time

from tests.integration.conftest import command


def test_mock_run_publishes_every_event_and_archives_the_log(stack, start_node):
    node = start_node(stack, "--mock-mode", "--heartbeat-interval", "1", "--poll-wait-seconds", "2")
    registered = stack.wait_event("NodeRegistered", node_id=node.node_id)
    data = registered["data"]
    assert data["mock_mode"] is True
    assert data["claude_version"] is None
    assert data["heartbeat_interval"] == 1
    assert data["max_concurrent_tasks"] == 1
    assert data["ecs"] is None
    assert registered["_attributes"] == {"event_type": "NodeRegistered", "node_id": node.node_id}

    cmd = command(
        name="greeting", task_id="t-1", mock={"duration_seconds": 3, "output_bytes": 6000}
    )
    stack.send(cmd)
    run_id = cmd["run_id"]
    completed = stack.wait_event("TaskCompleted", run_id)

    started = stack.of("TaskStarted", run_id)
    assert len(started) == 1
    assert started[0]["data"]["attempt"] == 1
    assert started[0]["data"]["task_id"] == "t-1"
    assert started[0]["data"]["task_name"] == "greeting"
    assert started[0]["_attributes"]["run_id"] == run_id

    chunks = sorted(stack.of("TaskOutput", run_id), key=lambda e: e["data"]["chunk_index"])
    assert [c["data"]["chunk_index"] for c in chunks] == list(range(len(chunks)))
    log = stack.log_text(run_id)
    assert "".join(c["data"]["data"] for c in chunks).encode() == log
    assert len(log) == 6000
    assert b"Mock reply to: say hello" in log

    result = completed["data"]
    assert result["exit_code"] == 0
    assert result["log_uri"] == f"s3://{stack.bucket}/logs/{run_id}.log"
    assert result["output_bytes"] == 6000
    assert result["duration_seconds"] >= 3
    assert result["result"]["text"] == "Mock reply to: say hello"
    assert result["result"]["is_error"] is False

    # Heartbeats keep coming during the run, and say so.
    busy = [e for e in stack.of("NodeHeartbeat") if e["data"]["status"] == "busy"]
    assert busy and all(e["data"]["running"] == [run_id] for e in busy)

    # The command is deleted once the run is over.
    stack.drain_events(1.5)
    assert stack.queue_counts() == (0, 0)
    idle = stack.of("NodeHeartbeat")[-1]["data"]
    assert idle["status"] == "idle" and idle["tasks_completed"] == 1

    node.signal()
    assert node.wait(15) == 0
    gone = stack.wait_event("NodeDeregistered", node_id=node.node_id)
    assert gone["data"]["reason"] == "SIGTERM"
    assert gone["data"]["tasks_completed"] == 1

    stack.drain_events(1.0)
    mine = [e for e in stack.events if e["node_id"] == node.node_id]
    assert [e["sequence"] for e in sorted(mine, key=lambda e: e["sequence"])] == list(
        range(1, len(mine) + 1)
    )
    # Nothing after NodeDeregistered.
    assert max(mine, key=lambda e: e["sequence"])["event_type"] == "NodeDeregistered"
    assert "Traceback" not in node.stderr


def test_command_inside_an_sns_envelope_runs(stack, start_node):
    start_node(stack, "--mock-mode", "--poll-wait-seconds", "1")
    cmd = command(mock={"duration_seconds": 0.2})
    stack.publish_command(cmd)
    completed = stack.wait_event("TaskCompleted", cmd["run_id"])
    assert completed["data"]["exit_code"] == 0


def test_mock_exit_code_fails_like_the_cli(stack, start_node):
    start_node(stack, "--mock-mode", "--poll-wait-seconds", "1")
    cmd = command(mock={"duration_seconds": 0.2, "exit_code": 3})
    stack.send(cmd)
    failed = stack.wait_event("TaskFailed", cmd["run_id"])["data"]
    assert failed["error"]["type"] == "ClaudeError"
    assert failed["error"]["message"] == "mock run failed with exit code 3"
    assert failed["exit_code"] == 3
    assert failed["retryable"] is False
    assert failed["log_uri"] == f"s3://{stack.bucket}/logs/{cmd['run_id']}.log"
    assert b"mock run failed with exit code 3" in stack.log_text(cmd["run_id"])


def test_invalid_commands_fail_and_are_deleted(stack, start_node):
    node = start_node(stack, "--mock-mode", "--poll-wait-seconds", "1")
    bad = {
        "not json": ("not JSON", None),
        '{"type": "RunTask", "version": 2, "run_id": "v2", "task": {"prompt": "x"}}': (
            "version 2 is not supported",
            "v2",
        ),
        '{"type": "RunTask", "version": 1, "run_id": "empty", "task": {"prompt": "  "}}': (
            "task.prompt must be a non-empty string",
            "empty",
        ),
        '{"type": "RunTask", "version": 1, "run_id": "bad id!", "task": {"prompt": "x"}}': (
            "run_id must be",
            None,
        ),
        '{"type": "RunTask", "version": 1, "run_id": "tm", '
        '"task": {"prompt": "x", "max_turns": 0}}': (
            "task.max_turns must be at least 1",
            "tm",
        ),
    }
    for body in bad:
        stack.send(body)
    for body, (fragment, run_id) in bad.items():
        event = stack.wait_for(
            lambda e, f=fragment: (
                e["event_type"] == "TaskFailed" and f in e["data"]["error"]["message"]
            )
        )
        data = event["data"]
        assert data["error"]["type"] == "InvalidCommand", body
        assert data["run_id"] == run_id
        assert data["retryable"] is False
        assert data["log_uri"] is None
    # Still alive and working after all that.
    good = command(mock={"duration_seconds": 0.1})
    stack.send(good)
    stack.wait_event("TaskCompleted", good["run_id"])
    time.sleep(0.5)
    assert stack.queue_counts() == (0, 0)
    assert node.process.poll() is None


def test_concurrent_runs_use_every_slot(stack, start_node):
    start_node(stack, "--mock-mode", "--max-concurrent-tasks", "2", "--poll-wait-seconds", "1")
    first, second = command(mock={"duration_seconds": 4}), command(mock={"duration_seconds": 4})
    stack.send(first)
    stack.send(second)
    done = [stack.wait_event("TaskCompleted", c["run_id"]) for c in (first, second)]
    starts = {e["data"]["run_id"]: e for e in stack.of("TaskStarted")}
    # Both started before either finished: they ran side by side.
    latest_start = max(starts[c["run_id"]]["_seen_at"] for c in (first, second))
    earliest_end = min(e["_seen_at"] for e in done)
    assert latest_start < earliest_end


def test_a_busy_node_does_not_hold_messages_it_cannot_start(stack, start_node):
    start_node(stack, "--mock-mode", "--poll-wait-seconds", "1")
    first, second = command(mock={"duration_seconds": 5}), command(mock={"duration_seconds": 0.1})
    stack.send(first)
    stack.wait_event("TaskStarted", first["run_id"])
    stack.send(second)
    time.sleep(2.5)
    # One slot, taken: the second message stays visible for other nodes.
    assert stack.queue_counts() == (1, 1)
    stack.wait_event("TaskCompleted", second["run_id"], timeout=30)
