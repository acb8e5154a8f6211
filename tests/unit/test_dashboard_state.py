"""The dashboard's state model: events and run records in, what the page
shows out. The events are built with the protocol's own constructors and
checked against the shipped schemas, so the fold sees what nodes send."""

from __future__ import annotations

from typing import Any

from unit_support import schema_errors

from claude_code_scheduler.client.dashboard import state as state_module
from claude_code_scheduler.client.dashboard.state import (
    GONE_KEPT_SECONDS,
    MAX_OUTPUT_BYTES,
    MAX_RECENT_RUNS,
    MAX_RUNS_IN_PROGRESS,
    DashboardState,
)
from claude_code_scheduler.protocol.events import (
    ErrorType,
    Event,
    NodeCounters,
    NodeStatus,
    TaskUsage,
    iso,
    node_deregistered,
    node_heartbeat,
    node_registered,
    task_completed,
    task_failed,
    task_output,
    task_started,
)

T0 = 1_800_000_000.0


class Node:
    """One node's events, numbered as its outbox numbers them."""

    def __init__(self, node_id: str = "node-a") -> None:
        self.node_id = node_id
        self.sequence = 0

    def body(self, event: Event, at: float = T0) -> dict[str, Any]:
        self.sequence += 1
        body = event.body(self.node_id, f"{self.node_id}-name", self.sequence)
        body["timestamp"] = iso(at)
        assert schema_errors(str(body["event_type"]), body) == []
        return body

    def registered(self, capacity: int = 2, at: float = T0) -> dict[str, Any]:
        return self.body(
            node_registered(
                hostname="h",
                version="0.1.0",
                mock_mode=True,
                heartbeat_interval=1.0,
                max_concurrent_tasks=capacity,
                claude_version=None,
                started_at=at,
                ecs=None,
            ),
            at,
        )

    def heartbeat(self, running: list[str], at: float = T0, cost: float = 0.0) -> dict[str, Any]:
        status = NodeStatus.BUSY if running else NodeStatus.IDLE
        return self.body(node_heartbeat(status, running, NodeCounters(1.0, 0, 0, cost)), at)

    def started(
        self, run_id: str, attempt: int = 1, name: str | None = "nightly"
    ) -> dict[str, Any]:
        return self.body(
            task_started(run_id, task_id=None, task_name=name, attempt=attempt, started_at=T0)
        )

    def output(self, run_id: str, index: int, data: str, stream: str = "stdout") -> dict[str, Any]:
        return self.body(task_output(run_id, index, stream, data))

    def completed(self, run_id: str, cost: float = 0.5, at: float = T0 + 5) -> dict[str, Any]:
        return self.body(
            task_completed(
                run_id,
                exit_code=0,
                duration_seconds=4.2,
                log_uri=f"s3://b/logs/{run_id}.log",
                output_bytes=10,
                result=None,
                usage=TaskUsage(total_cost_usd=cost),
            ),
            at,
        )

    def failed(
        self, run_id: str, error: ErrorType, *, retryable: bool = False, attempt: int = 1
    ) -> dict[str, Any]:
        return self.body(
            task_failed(
                run_id, error, "it failed", retryable=retryable, attempt=attempt, duration_seconds=1
            ),
            T0 + 6,
        )


def assistant(text: str) -> str:
    return '{"type":"assistant","message":{"content":[{"type":"text","text":"' + text + '"}]}}\n'


def record(run_id: str, attempt: int = 1, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "version": 1,
        "run_id": run_id,
        "task_id": None,
        "task_name": "from-record",
        "node_id": "node-a",
        "attempt": attempt,
        "started_at": iso(T0),
        "ended_at": iso(T0 + 5),
        "duration_seconds": 4.0,
        "queue_wait_seconds": 0.1,
        "outcome": "TaskCompleted",
        "error_type": None,
        "exit_code": 0,
        "retryable": False,
        "final_attempt": False,
        "usage": {"total_cost_usd": 0.25},
        "log_uri": None,
        "artifact_uris": [],
    }
    base.update(fields)
    return base


def test_a_node_that_registers_shows_idle_with_its_capacity_then_busy() -> None:
    state, node = DashboardState(), Node()
    state.apply([node.registered(capacity=3)], T0)
    (row,) = state.snapshot(T0)["nodes"]
    assert (row["node_id"], row["status"], row["capacity"], row["running"]) == (
        "node-a",
        "idle",
        3,
        [],
    )
    state.apply([node.started("r1")], T0)
    view = state.snapshot(T0)
    assert view["nodes"][0]["status"] == "busy"
    assert view["totals"]["nodes_busy"] == 1
    assert [run["run_id"] for run in view["runs"]] == ["r1"]
    # Its last run's end makes it idle at once, not at its next heartbeat.
    state.apply([node.started("r2"), node.completed("r1")], T0)
    assert state.snapshot(T0)["nodes"][0]["status"] == "busy", "r2 still runs"
    state.apply([node.failed("r2", ErrorType.CLAUDE_ERROR)], T0)
    assert state.snapshot(T0)["nodes"][0]["status"] == "idle"


def test_a_silent_node_turns_lost_and_a_deregistered_one_leaves_after_a_while() -> None:
    state, node = DashboardState(), Node()
    state.apply([node.registered(), node.heartbeat([])], T0)
    assert state.snapshot(T0 + 3.5)["nodes"][0]["status"] == "lost", "3 intervals of 1 s"
    assert state.snapshot(T0 + 3.5)["totals"]["nodes_lost"] == 1
    state.apply([node.body(node_deregistered("shutdown", NodeCounters(1, 0, 0)))], T0 + 4)
    assert state.snapshot(T0 + 4)["nodes"][0]["status"] == "gone"
    changes = state.apply([], T0 + 4 + GONE_KEPT_SECONDS + 1)
    assert changes.summary
    assert state.snapshot(T0 + 4 + GONE_KEPT_SECONDS + 1)["nodes"] == []


def test_a_node_killed_outright_leaves_with_its_runs_once_silent_long_enough() -> None:
    """SIGKILL: no TaskFailed, no NodeDeregistered; only silence."""
    state, node = DashboardState(), Node()
    state.apply([node.registered(), node.started("r1")], T0)
    assert not state.prune(T0 + GONE_KEPT_SECONDS - 1)
    assert state.snapshot(T0 + GONE_KEPT_SECONDS - 1)["runs"] != []
    assert state.prune(T0 + GONE_KEPT_SECONDS + 1)
    view = state.snapshot(T0 + GONE_KEPT_SECONDS + 1)
    assert (view["nodes"], view["runs"]) == ([], [])


def test_silence_is_measured_by_the_dashboards_clock_not_the_nodes() -> None:
    state, node = DashboardState(), Node()
    skewed = node.registered(at=T0 - 3 * GONE_KEPT_SECONDS)  # the node's clock is behind
    state.apply([skewed], T0)
    assert not state.prune(T0 + 1)
    assert [row["node_id"] for row in state.snapshot(T0 + 1)["nodes"]] == ["node-a"]


def test_output_is_assembled_in_chunk_order_whatever_order_it_arrives_in() -> None:
    state, node = DashboardState(), Node()
    state.apply([node.started("r1")], T0)
    later = state.apply([node.output("r1", 1, assistant("second"))], T0)
    assert later.output == {}, "chunk 1 waits for chunk 0"
    first = state.apply([node.output("r1", 0, assistant("first"))], T0)
    assert first.output == {"r1": [("stdout", "first\n"), ("stdout", "second\n")]}
    state.apply([node.output("r1", 2, "oops\n", stream="stderr")], T0)
    (run,) = state.snapshot(T0)["runs"]
    assert run["output"] == [["stdout", "first\n"], ["stdout", "second\n"], ["stderr", "oops\n"]]
    assert "output" not in state.snapshot(T0, with_output=False)["runs"][0]


def test_output_before_task_started_is_kept_for_the_run() -> None:
    """SNS may deliver a chunk before TaskStarted: the card starts with it."""
    state, node = DashboardState(), Node()
    start = node.started("r1")
    state.apply([node.output("r1", 0, assistant("early"))], T0)
    state.apply([start], T0)
    (run,) = state.snapshot(T0)["runs"]
    assert run["output"] == [["stdout", "early\n"]]
    assert run["task"] == "nightly"


def test_each_runs_output_is_capped_to_its_tail() -> None:
    state, node = DashboardState(), Node()
    state.apply([node.started("r1")], T0)
    line = "x" * 1000
    chunks = MAX_OUTPUT_BYTES * 2 // 1000
    total = chunks * 1000
    for index in range(chunks):
        state.apply([node.output("r1", index, f"{line[:-1]}\n", stream="stderr")], T0)
    (run,) = state.snapshot(T0)["runs"]
    kept = sum(len(text) for _, text in run["output"])
    assert MAX_OUTPUT_BYTES - 1000 < kept <= MAX_OUTPUT_BYTES
    assert run["output_dropped_bytes"] == total - kept
    # One piece larger than the cap keeps its end.
    huge = "a" * MAX_OUTPUT_BYTES + "END"
    state.apply([node.output("r1", chunks, huge, stream="stderr")], T0)
    (run,) = state.snapshot(T0)["runs"]
    assert run["output"] == [["stderr", huge[-MAX_OUTPUT_BYTES:]]]


def test_runs_in_progress_are_capped_oldest_first() -> None:
    state, node = DashboardState(), Node()
    bodies = [node.started(f"r{i}") for i in range(MAX_RUNS_IN_PROGRESS + 5)]
    state.apply(bodies, T0)
    runs = {run["run_id"] for run in state.snapshot(T0)["runs"]}
    assert len(runs) == MAX_RUNS_IN_PROGRESS
    assert "r0" not in runs
    assert f"r{MAX_RUNS_IN_PROGRESS + 4}" in runs


def test_an_ended_run_leaves_the_cards_for_the_recent_runs_with_outcome_and_cost() -> None:
    state, node = DashboardState(), Node()
    state.apply([node.started("r1"), node.output("r1", 0, "partial line")], T0)
    changes = state.apply([node.completed("r1", cost=0.0008)], T0)
    assert changes.output == {"r1": [("stdout", "partial line\n")]}, "the unfinished line"
    view = state.snapshot(T0)
    assert view["runs"] == []
    (row,) = view["recent"]
    assert row == {
        "run_id": "r1",
        "attempt": 1,
        "task": "nightly",
        "node_id": "node-a",
        "outcome": "Completed",
        "retried": False,
        "duration_seconds": 4.2,
        "cost_usd": 0.0008,
        "ended_at": iso(T0 + 5),
    }
    assert view["totals"]["recent_cost_usd"] == 0.0008


def test_a_retried_attempt_is_its_own_row_and_the_next_attempt_a_new_card() -> None:
    state, node = DashboardState(), Node()
    state.apply([node.started("r1", attempt=1), node.output("r1", 0, assistant("one"))], T0)
    state.apply([node.failed("r1", ErrorType.RATE_LIMITED, retryable=True, attempt=1)], T0)
    state.apply([node.started("r1", attempt=2), node.output("r1", 0, assistant("two"))], T0)
    view = state.snapshot(T0)
    assert view["runs"][0]["attempt"] == 2
    assert view["runs"][0]["output"] == [["stdout", "two\n"]], "chunks number from 0 again"
    (row,) = view["recent"]
    assert (row["outcome"], row["retried"], row["attempt"]) == ("RateLimited", True, 1)


def test_a_cancel_request_marks_the_card_until_the_run_ends() -> None:
    state, node = DashboardState(), Node()
    state.apply([node.started("r1")], T0)
    operator = {
        "event_type": "CancelRequested",
        "node_id": "operator",
        "node_name": "me",
        "sequence": 1,
        "timestamp": iso(T0),
        "data": {"run_id": "r1"},
    }
    state.apply([operator], T0)
    assert state.snapshot(T0)["runs"][0]["cancelling"] is True
    state.apply([node.failed("r1", ErrorType.CANCELLED)], T0)
    assert state.snapshot(T0)["recent"][0]["outcome"] == "Cancelled"


def test_a_heartbeat_that_no_longer_lists_a_run_drops_its_card() -> None:
    """A run whose end was never heard (its node was killed and came back)."""
    state, node = DashboardState(), Node()
    state.apply([node.started("r1"), node.started("r2")], T0)
    state.apply([node.heartbeat(["r2"])], T0)
    assert [run["run_id"] for run in state.snapshot(T0)["runs"]] == ["r2"]


def test_a_record_replaces_the_buses_row_of_the_same_attempt() -> None:
    state, node = DashboardState(), Node()
    state.apply([node.started("r1"), node.completed("r1", cost=0.5)], T0)
    assert state.add_records([record("r1", usage={"total_cost_usd": 0.75})])
    (row,) = state.snapshot(T0)["recent"]
    assert (row["cost_usd"], row["task"]) == (0.75, "from-record")
    assert not state.add_records([record("r1", usage={"total_cost_usd": 0.75})]), "unchanged"
    # A redelivered event does not override the node's record.
    state.apply([node.completed("r1", cost=0.5)], T0)
    assert state.snapshot(T0)["recent"][0]["cost_usd"] == 0.75


def test_a_record_replaces_a_row_the_bus_could_not_number() -> None:
    """TaskCompleted names no attempt: without its TaskStarted the row has none."""
    state, node = DashboardState(), Node()
    state.apply([node.completed("r1")], T0)
    assert state.snapshot(T0)["recent"][0]["attempt"] is None
    state.add_records([record("r1", attempt=2)])
    assert [(r["run_id"], r["attempt"]) for r in state.snapshot(T0)["recent"]] == [("r1", 2)]


def test_records_give_history_newest_first_and_capped() -> None:
    state = DashboardState()
    records = [
        record(f"r{i}", ended_at=iso(T0 + i), outcome="TaskFailed", error_type="Timeout")
        for i in range(MAX_RECENT_RUNS + 10)
    ]
    state.add_records([*records, {"run_id": "bad", "ended_at": "yesterday"}, {"x": 1}])
    recent = state.snapshot(T0)["recent"]
    assert len(recent) == MAX_RECENT_RUNS
    assert recent[0]["run_id"] == f"r{MAX_RECENT_RUNS + 9}"
    assert recent[-1]["run_id"] == "r10"
    assert recent[0]["outcome"] == "Timeout"


def test_a_malformed_event_is_skipped_and_the_rest_applied() -> None:
    state, node = DashboardState(), Node()
    bad = node.heartbeat([])
    bad["sequence"] = "not a number"
    state.apply([bad, node.registered()], T0)
    assert state.snapshot(T0)["nodes"][0]["status"] == "idle"


def test_the_caps_are_stated_in_the_snapshot() -> None:
    caps = DashboardState().snapshot(T0)["caps"]
    assert caps == {
        "runs_in_progress": state_module.MAX_RUNS_IN_PROGRESS,
        "output_bytes": state_module.MAX_OUTPUT_BYTES,
        "recent_runs": state_module.MAX_RECENT_RUNS,
    }
