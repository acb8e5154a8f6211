"""An operator's cancel as the nodes see it, against the moto server with real
node processes: the request is the S3 record the `cancel` command writes
(aws.cancels.CancelStore, written here directly: the command has its own
tests), and what the nodes do with it is read off the bus, the bucket and the
queue. Two nodes share one queue for the module, so "no other node runs it"
is tested wherever a run is cancelled."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from claude_code_scheduler.aws.cancels import CancelRequest, CancelStore
from claude_code_scheduler.protocol.events import iso
from tests.integration.conftest import NodeProcess, Stack, command, make_stack, node_env

# The documented bound, from the request to the run's end (docs/cancel.md).
CANCEL_BOUND_SECONDS = 10.0
NODE_ARGS = ["--mock-mode", "--poll-wait-seconds", "1", "--heartbeat-interval", "1"]


def cancel(stack: Stack, run_id: str, reason: str | None = "stop it") -> CancelRequest:
    request = CancelRequest(run_id, reason, "tester@integration", iso())
    CancelStore(stack.s3, stack.bucket).request(request)
    return request


def terminal_events(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    return stack.of("TaskCompleted", run_id) + stack.of("TaskFailed", run_id)


@pytest.fixture(scope="module")
def fleet(
    moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, list[NodeProcess]]]:
    stack = make_stack(moto_endpoint)
    tmp = tmp_path_factory.mktemp("cancel")
    nodes = [NodeProcess(stack, tmp, NODE_ARGS, node_env(stack)) for _ in range(2)]
    for node in nodes:
        stack.wait_event("NodeRegistered", node_id=node.node_id)
    yield stack, nodes
    for node in nodes:
        node.kill()


def test_a_run_cancelled_before_delivery_never_starts(fleet):
    stack, _ = fleet
    cmd = command(mock={"duration_seconds": 30})
    run_id = cmd["run_id"]
    request = cancel(stack, run_id, reason="changed my mind")
    stack.send(cmd)

    failed = stack.wait_event("TaskFailed", run_id)["data"]
    assert failed["error"]["type"] == "Cancelled"
    assert failed["retryable"] is False
    assert failed["cancel"] == {
        "reason": "changed my mind",
        "requested_by": "tester@integration",
        "requested_at": request.requested_at,
    }
    stack.drain_events(2.0)
    assert stack.of("TaskStarted", run_id) == [], "never started, on any node"
    assert len(terminal_events(stack, run_id)) == 1
    assert stack.queue_counts() == (0, 0), "the message is deleted"


def test_a_running_run_stops_within_the_bound_and_no_other_node_runs_it(fleet):
    stack, nodes = fleet
    cmd = command(mock={"duration_seconds": 60, "output_bytes": 4000})
    run_id = cmd["run_id"]
    stack.send(cmd)
    started = stack.wait_event("TaskStarted", run_id)
    time.sleep(1.0)  # into the run

    requested = time.monotonic()
    cancel(stack, run_id)
    failed_event = stack.wait_event("TaskFailed", run_id, timeout=30)
    failed = failed_event["data"]
    # Seen on the server queue, which adds up to one long poll of 1 s.
    assert failed_event["_seen_at"] - requested < CANCEL_BOUND_SECONDS
    assert failed["error"]["type"] == "Cancelled"
    assert failed["retryable"] is False
    assert failed["cancel"]["reason"] == "stop it"
    assert failed_event["node_id"] == started["node_id"]
    assert failed["log_uri"] == f"s3://{stack.bucket}/logs/{run_id}.log"
    log = stack.log_text(run_id)
    chunks = sorted(stack.of("TaskOutput", run_id), key=lambda e: e["data"]["chunk_index"])
    assert log and "".join(c["data"]["data"] for c in chunks).encode() == log, "log uploaded"

    # Longer than a visibility timeout would take to matter is not needed:
    # the message is gone, so there is nothing for the other node to take.
    stack.drain_events(3.0)
    assert stack.queue_counts() == (0, 0)
    assert len(stack.of("TaskStarted", run_id)) == 1
    assert len(terminal_events(stack, run_id)) == 1
    other = next(n for n in nodes if n.node_id != started["node_id"])
    beats = [e for e in stack.of("NodeHeartbeat") if e["node_id"] == other.node_id]
    assert beats and all(run_id not in e["data"]["running"] for e in beats)
    for node in nodes:
        assert node.process.poll() is None
        assert "Traceback" not in node.stderr


@pytest.mark.parametrize("offset", [0.7, 1.0, 1.3])
def test_a_cancel_racing_the_runs_natural_end_gives_exactly_one_terminal_event(fleet, offset):
    """A 1 s run, cancelled about when it ends: either ending is right; only
    one of them, with the message deleted once."""
    stack, _ = fleet
    cmd = command(mock={"duration_seconds": 1.0})
    run_id = cmd["run_id"]
    stack.send(cmd)
    stack.wait_event("TaskStarted", run_id)
    time.sleep(offset)
    cancel(stack, run_id)
    ended = stack.wait_for(
        lambda e: (
            e["event_type"] in ("TaskCompleted", "TaskFailed") and e["data"].get("run_id") == run_id
        )
    )
    if ended["event_type"] == "TaskFailed":
        assert ended["data"]["error"]["type"] == "Cancelled"
    stack.drain_events(3.0)
    assert len(terminal_events(stack, run_id)) == 1
    assert len(stack.of("TaskStarted", run_id)) == 1
    assert stack.queue_counts() == (0, 0)


def test_a_cancel_survives_a_node_restart_between_the_request_and_the_delivery(
    moto_endpoint, tmp_path
):
    """Node A holds the run and stops (handing it back); the cancel is made
    while no node runs; node B, started after, receives it and never starts it."""
    stack = make_stack(moto_endpoint, visibility_timeout=60)
    first = NodeProcess(stack, tmp_path, [*NODE_ARGS, "--shutdown-timeout", "0"], node_env(stack))
    second: NodeProcess | None = None
    try:
        cmd = command(run_id=f"restart-{uuid.uuid4().hex[:8]}", mock={"duration_seconds": 60})
        run_id = cmd["run_id"]
        stack.send(cmd)
        stack.wait_event("TaskStarted", run_id, node_id=first.node_id)
        first.signal(signal.SIGTERM)
        handed_back = stack.wait_event("TaskFailed", run_id, node_id=first.node_id)["data"]
        assert handed_back["error"]["type"] == "NodeShutdown"
        assert first.wait(30) == 0

        cancel(stack, run_id, reason="while no node ran")
        second = NodeProcess(stack, tmp_path, NODE_ARGS, node_env(stack))
        failed = stack.wait_event("TaskFailed", run_id, node_id=second.node_id, timeout=30)
        assert failed["data"]["error"]["type"] == "Cancelled"
        assert failed["data"]["cancel"]["reason"] == "while no node ran"
        stack.drain_events(2.0)
        assert [e["node_id"] for e in stack.of("TaskStarted", run_id)] == [first.node_id]
        assert stack.queue_counts() == (0, 0)
    finally:
        first.kill()
        if second is not None:
            second.kill()
