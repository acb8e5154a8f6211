"""How `events` and `nodes` show a cancel: CancelRequested comes from an
operator, not a node, and marks the run it names."""

from __future__ import annotations

from claude_code_scheduler.aws.cancels import CancelRequest
from claude_code_scheduler.client.watch import Fleet, describe, table
from claude_code_scheduler.protocol.events import (
    OPERATOR_NODE_ID,
    ErrorType,
    cancel_requested,
    task_failed,
    task_started,
)

REQUEST = CancelRequest(
    "r-1", "runaway", "arn:aws:iam::123456789012:user/ops", "2024-01-01T00:00:00.000Z"
)


def test_events_lines_say_who_asked_and_why() -> None:
    asked = describe(cancel_requested(REQUEST).body(OPERATOR_NODE_ID, "ops", 1))
    assert asked.endswith(
        "operator #1 CancelRequested run=r-1 by=arn:aws:iam::123456789012:user/ops reason='runaway'"
    )
    stopped = task_failed("r-1", ErrorType.CANCELLED, "cancelled by an operator", cancel=REQUEST)
    line = describe(stopped.body("node-1", "n", 4))
    assert "Cancelled: cancelled by an operator" in line
    assert "by=arn:aws:iam::123456789012:user/ops reason='runaway'" in line


def test_nodes_marks_a_run_being_cancelled_and_lists_no_operator_node() -> None:
    fleet = Fleet()
    started = task_started("r-1", task_id=None, task_name=None, attempt=1, started_at=0)
    fleet.add(started.body("node-1", "n", 1))
    fleet.add(cancel_requested(REQUEST).body(OPERATOR_NODE_ID, "ops", 1))
    (row,) = fleet.rows(0.0, 30.0)
    assert row["node_id"] == "node-1" and row["cancelling"] == ["r-1"]
    assert "r-1 (cancelling)" in table([row])
    fleet.add(task_failed("r-1", ErrorType.CANCELLED, "c", cancel=REQUEST).body("node-1", "n", 2))
    (row,) = fleet.rows(0.0, 30.0)
    assert row["running"] == [] and row["cancelling"] == []
