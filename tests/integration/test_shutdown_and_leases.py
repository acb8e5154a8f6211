"""Signals, hand-back and visibility: the promises that keep runs from being
lost or run twice. Real signals, generous bounds."""

from __future__ import annotations

import signal
import time

from claude_code_scheduler.node.leases import MIN_VISIBILITY_SECONDS
from tests.integration.conftest import command


def test_idle_sigterm_deregisters_fast_and_hides_nothing(stack_factory, start_node):
    stack = stack_factory(visibility_timeout=60)
    first = start_node(stack, "--mock-mode", "--poll-wait-seconds", "2")
    stack.wait_event("NodeRegistered", node_id=first.node_id)
    time.sleep(0.5)  # let it get into a long poll

    signalled = time.monotonic()
    first.signal(signal.SIGTERM)
    # Sent while the first node's last long poll may still be in flight.
    cmd = command(mock={"duration_seconds": 0.2})
    stack.send(cmd)

    gone = stack.wait_event("NodeDeregistered", node_id=first.node_id, timeout=10)
    assert first.wait(10) == 0
    exited = time.monotonic()
    # The event is published within 1 s of the signal; reading it back from
    # the server queue adds up to a poll of 1 s, hence 2 s.
    assert gone["_seen_at"] - signalled < 2.0
    assert exited - signalled < 5.0

    second = start_node(stack, "--mock-mode", "--poll-wait-seconds", "1")
    started = stack.wait_event("TaskStarted", cmd["run_id"], timeout=20)
    assert started["node_id"] == second.node_id
    # Well inside the 60 s visibility timeout: the first node released it.
    assert started["_seen_at"] - signalled < 20
    assert not [
        e
        for e in stack.events
        if e["node_id"] == first.node_id and e["sequence"] > gone["sequence"]
    ]
    # The poll in flight at the signal brought the message back, and the node
    # made it visible at once instead of sitting on it.
    assert "released a message for other nodes" in first.stderr


def test_busy_sigterm_hands_the_run_back(stack_factory, start_node):
    stack = stack_factory(visibility_timeout=60)
    first = start_node(stack, "--mock-mode", "--poll-wait-seconds", "1", "--shutdown-timeout", "1")
    cmd = command(mock={"duration_seconds": 8, "output_bytes": 20000})
    stack.send(cmd)
    stack.wait_event("TaskStarted", cmd["run_id"], node_id=first.node_id)
    signalled = time.monotonic()
    first.signal()

    failed = stack.wait_event("TaskFailed", cmd["run_id"], timeout=20)["data"]
    assert failed["error"]["type"] == "NodeShutdown"
    assert failed["retryable"] is True
    assert failed["log_uri"] == f"s3://{stack.bucket}/logs/{cmd['run_id']}.log"
    stack.wait_event("NodeDeregistered", node_id=first.node_id, timeout=10)
    assert first.wait(15) == 0
    assert time.monotonic() - signalled < 15

    second = start_node(stack, "--mock-mode", "--poll-wait-seconds", "1")
    again = stack.wait_for(
        lambda e: e["event_type"] == "TaskStarted" and e["node_id"] == second.node_id, timeout=20
    )
    assert again["data"]["run_id"] == cmd["run_id"]
    assert again["data"]["attempt"] == 2
    # Picked up long before the 60 s visibility timeout would have let it go.
    assert again["_seen_at"] - signalled < 20
    stack.wait_event("TaskCompleted", cmd["run_id"], timeout=30)


def test_second_signal_skips_the_wait(stack, start_node):
    node = start_node(stack, "--mock-mode", "--poll-wait-seconds", "1", "--shutdown-timeout", "120")
    cmd = command(mock={"duration_seconds": 60})
    stack.send(cmd)
    stack.wait_event("TaskStarted", cmd["run_id"])
    node.signal(signal.SIGTERM)
    time.sleep(0.5)
    node.signal(signal.SIGINT)
    assert node.wait(20) == 0
    assert stack.wait_event("TaskFailed", cmd["run_id"])["data"]["error"]["type"] == "NodeShutdown"


def test_leases_outlast_the_visibility_timeout(stack_factory, start_node):
    # The smallest timeout a node starts with: its renewals are the tightest.
    stack = stack_factory(visibility_timeout=MIN_VISIBILITY_SECONDS)
    nodes = [start_node(stack, "--mock-mode", "--poll-wait-seconds", "1") for _ in range(2)]
    cmd = command(mock={"duration_seconds": MIN_VISIBILITY_SECONDS + 5})
    stack.send(cmd)
    stack.wait_event("TaskCompleted", cmd["run_id"], timeout=MIN_VISIBILITY_SECONDS + 30)
    stack.drain_events(3.0)
    # Longer than the visibility timeout, two nodes polling, started exactly once.
    assert len(stack.of("TaskStarted", cmd["run_id"])) == 1
    assert stack.queue_counts() == (0, 0)
    assert all(n.process.poll() is None for n in nodes)


def test_duplicate_delivery_does_not_start_twice(stack, start_node):
    start_node(stack, "--mock-mode", "--poll-wait-seconds", "1", "--max-concurrent-tasks", "2")
    cmd = command(mock={"duration_seconds": 4})
    stack.send(cmd)
    stack.wait_event("TaskStarted", cmd["run_id"])
    stack.send(cmd)  # the scheduler (or SNS) delivered it again
    stack.wait_event("TaskCompleted", cmd["run_id"], timeout=30)
    time.sleep(1.0)
    stack.send(cmd)  # and once more after it finished
    stack.drain_events(3.0)
    assert len(stack.of("TaskStarted", cmd["run_id"])) == 1
    assert stack.queue_counts() == (0, 0)
