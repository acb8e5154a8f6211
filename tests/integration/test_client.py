"""submit, events and nodes against real nodes on the moto server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import assert_valid_event
from tests.integration.conftest import node_env

PREFIX = "claude-code-scheduler-client-"


def client(stack, *args, timeout=90, env=None):
    return subprocess.run(
        [sys.executable, "-m", "claude_code_scheduler", *args],
        capture_output=True,
        text=True,
        env=node_env(stack, env),
        timeout=timeout,
        check=False,
    )


def reader_queues(stack):
    return set(stack.sqs.list_queues(QueueNamePrefix=PREFIX).get("QueueUrls", []))


def test_submit_and_wait_for_success(stack, start_node):
    node = start_node(stack, "--mock-mode", "--poll-wait-seconds", "1")
    before = reader_queues(stack)
    done = client(
        stack,
        "submit",
        "--prompt",
        "write a haiku",
        "--run-id",
        "haiku-1",
        "--command-topic-arn",
        stack.command_topic_arn,
        "--control-bus-arn",
        stack.topic_arn,
        "--wait",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "haiku-1"
    assert "Mock reply to: write a haiku" in lines
    assert f"run haiku-1: started on {node.node_id} (attempt 1)" in done.stderr
    assert f"run haiku-1: completed on {node.node_id}" in done.stderr
    assert f"s3://{stack.bucket}/logs/haiku-1.log" in done.stderr
    assert reader_queues(stack) == before  # the temporary queue is gone


def test_submit_raw_prints_the_stream_json_lines(stack, start_node):
    start_node(stack, "--mock-mode", "--poll-wait-seconds", "1")
    done = client(
        stack,
        "submit",
        "--prompt",
        "hi",
        "--run-id",
        "raw-1",
        "--queue-url",
        stack.queue_url,
        "--control-bus-arn",
        stack.topic_arn,
        "--wait",
        "--raw",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "raw-1"
    assert done.stdout.encode().split(b"\n", 1)[1] == stack.log_text("raw-1")


def test_submit_and_wait_for_failure(stack, start_node, fake_claude):
    start_node(stack, "--claude-bin", str(fake_claude), "--poll-wait-seconds", "1")
    done = client(
        stack,
        "submit",
        "--prompt",
        "x",
        "--env",
        "FAKE_CLAUDE_MODE=api-error",
        "--queue-url",
        stack.queue_url,
        "--control-bus-arn",
        stack.topic_arn,
        "--wait",
    )
    assert done.returncode == 1, done.stderr
    assert "ClaudeError: API Error: 401 invalid x-api-key" in done.stderr


def test_wait_timeout_exits_124(stack, start_node, fake_claude):
    start_node(stack, "--claude-bin", str(fake_claude), "--poll-wait-seconds", "1")
    done = client(
        stack,
        "submit",
        "--prompt",
        "x",
        "--env",
        "FAKE_CLAUDE_MODE=sleep",
        "--env",
        "FAKE_CLAUDE_SECONDS=30",
        "--queue-url",
        stack.queue_url,
        "--control-bus-arn",
        stack.topic_arn,
        "--wait",
        "--wait-timeout",
        "4",
    )
    assert done.returncode == 124, done.stderr
    assert "stopped waiting" in done.stderr


def test_events_filters_and_json(stack, start_node):
    node = start_node(stack, "--mock-mode", "--poll-wait-seconds", "1", "--heartbeat-interval", "1")
    stack.wait_event("NodeRegistered", node_id=node.node_id)
    before = reader_queues(stack)
    reader = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "claude_code_scheduler",
            "events",
            "--json",
            "--follow",
            "--run-id",
            "watched",
            "--control-bus-arn",
            stack.topic_arn,
        ],
        env=node_env(stack),
        stdout=subprocess.PIPE,
        text=True,
    )
    typed = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "claude_code_scheduler",
            "events",
            "--listen",
            "12",
            "--type",
            "TaskCompleted",
            "--control-bus-arn",
            stack.topic_arn,
        ],
        env=node_env(stack),
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)  # both subscribed
    for run_id in ("other", "watched"):
        assert (
            client(
                stack, "submit", "--prompt", "p", "--run-id", run_id, "--queue-url", stack.queue_url
            ).returncode
            == 0
        )
    stack.wait_event("TaskCompleted", "watched")
    stack.wait_event("TaskCompleted", "other")
    time.sleep(3)
    reader.send_signal(signal.SIGINT)
    out, _ = reader.communicate(timeout=20)
    assert reader.returncode == 0
    seen = [json.loads(line) for line in out.splitlines()]
    for event in seen:
        assert_valid_event(event)
    assert {e["event_type"] for e in seen} >= {"TaskStarted", "TaskOutput", "TaskCompleted"}
    assert all(e["data"]["run_id"] == "watched" for e in seen)
    lines, _ = typed.communicate(timeout=30)
    completed = [line for line in lines.splitlines() if line]
    assert len(completed) == 2 and all(" TaskCompleted run=" in line for line in completed)
    assert reader_queues(stack) == before, "reader queues left behind"


def test_nodes_table_shows_lost_and_gone(stack, start_node):
    killed = start_node(
        stack, "--mock-mode", "--poll-wait-seconds", "1", "--heartbeat-interval", "1"
    )
    stopped = start_node(
        stack, "--mock-mode", "--poll-wait-seconds", "1", "--heartbeat-interval", "1"
    )
    alive = start_node(
        stack, "--mock-mode", "--poll-wait-seconds", "1", "--heartbeat-interval", "1"
    )
    for node in (killed, stopped, alive):
        stack.wait_event("NodeRegistered", node_id=node.node_id)
    listing = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "claude_code_scheduler",
            "nodes",
            "--json",
            "--listen",
            "8",
            "--heartbeat-interval",
            "1",
            "--control-bus-arn",
            stack.topic_arn,
        ],
        env=node_env(stack),
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    killed.process.kill()
    stopped.signal()
    out, _ = listing.communicate(timeout=60)
    rows = {row["node_id"]: row for row in json.loads(out)}
    assert rows[killed.node_id]["status"] == "lost"
    assert rows[stopped.node_id]["status"] == "gone"
    assert rows[alive.node_id]["status"] == "idle"
    assert rows[alive.node_id]["last_heartbeat_age_seconds"] < 3


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ["submit", "--prompt", "  ", "--queue-url", "{queue}"],
            "--prompt: the prompt must not be empty",
        ),
        (
            ["submit", "--prompt", "x", "--env", "NOEQUALS", "--queue-url", "{queue}"],
            "--env: 'NOEQUALS'",
        ),
        (
            ["submit", "--prompt", "x", "--command-topic-arn", "arn:aws:sns:nope"],
            "--command-topic-arn",
        ),
        (
            [
                "submit",
                "--prompt",
                "x",
                "--command-topic-arn",
                "arn:aws:sns:us-east-1:123456789012:missing",
            ],
            "--command-topic-arn: the topic",
        ),
        (["submit", "--prompt", "x", "--queue-url", "{queue}-missing"], "does not exist"),
        (
            ["events", "--control-bus-arn", "arn:aws:sns:us-east-1:123456789012:missing"],
            "--control-bus-arn",
        ),
        (["events", "--listen", "1"], "--control-bus-arn is required"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(stack, args, fragment):
    done = client(stack, *[a.replace("{queue}", stack.queue_url) for a in args])
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], done.stderr


def test_reading_commands_name_the_bus_before_asking_for_a_region(stack):
    env = node_env(stack)
    del env["AWS_REGION"]
    for command in ("events", "nodes"):
        done = subprocess.run(
            [sys.executable, "-m", "claude_code_scheduler", command, "--listen", "1"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: --control-bus-arn is required"), done.stderr


@pytest.mark.parametrize("command", ["node", "submit", "events", "nodes"])
def test_a_malformed_region_is_named_as_such_by_every_command(stack, command):
    args = {
        "node": ["node", "--mock-mode", *stack.node_args()],
        "submit": ["submit", "--prompt", "x", "--queue-url", stack.queue_url],
        "events": ["events", "--listen", "1", "--control-bus-arn", stack.topic_arn],
        "nodes": ["nodes", "--listen", "1", "--control-bus-arn", stack.topic_arn],
    }[command]
    done = client(stack, *args, "--region", "useast1")
    assert done.returncode == 2, done.stderr
    assert done.stderr == "error: --region: 'useast1' is not an AWS region name\n"


def test_submit_sends_to_the_command_topic_when_both_targets_come_from_the_environment(stack):
    """A shell with a node's settings and a scheduler's (what init-resources.sh
    prints) has both; the topic is how the scheduler sends."""
    missing_queue = stack.queue_url + "-not-this-one"
    env = {
        "CLAUDE_COMMAND_TOPIC_ARN": stack.command_topic_arn,
        "CLAUDE_NODE_QUEUE_URL": missing_queue,
    }
    done = client(stack, "submit", "--prompt", "x", "--run-id", "via-topic", env=env)
    assert done.returncode == 0, done.stderr
    bodies = [
        m["Body"]
        for m in stack.sqs.receive_message(QueueUrl=stack.queue_url, WaitTimeSeconds=5).get(
            "Messages", []
        )
    ]
    assert any("via-topic" in body for body in bodies), bodies
    typed = client(stack, "submit", "--prompt", "x", "--queue-url", missing_queue, env=env)
    assert typed.returncode == 2
    assert "does not exist" in typed.stderr, "the queue given on the command line wins"
