"""An operator's cancel on the node's side: the outcome row (node/outcome.py),
the run's look before it starts and its stop while it runs (node/runs.py, with
the mock CLI as the child and the real message lifecycle), and the watcher
that finds a request for a running run (node/cancels.py), without a network:
the cancel store is a fake with CancelStore's surface."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from unit_support import (
    FakeLogs,
    FakeOutbox,
    FakeQueue,
    assert_event_valid,
    client_error,
    make_config,
    received_run,
)

from claude_code_scheduler.aws.cancels import CancelRequest
from claude_code_scheduler.aws.names import parse_secret_ref
from claude_code_scheduler.node.cancels import CancelWatcher
from claude_code_scheduler.node.control import RunControl
from claude_code_scheduler.node.leases import LeaseKeeper
from claude_code_scheduler.node.messages import Ending, MessageAction, MessageLifecycle
from claude_code_scheduler.node.outcome import RunEnd, RunOutcome, cancelled, conclude
from claude_code_scheduler.node.process.supervisor import ProcessResult
from claude_code_scheduler.node.workspace.steps import WorkspaceSteps
from claude_code_scheduler.protocol import MockSpec, RunTask, TaskSpec
from claude_code_scheduler.protocol.events import ErrorType

REQUEST = CancelRequest(
    "run-1", "runaway loop", "arn:aws:iam::123456789012:user/ops", "2030-01-02T03:04:05.000Z"
)
SUCCESS = {"type": "result", "subtype": "success", "is_error": False, "result": "done"}


class FakeCancels:
    """aws.cancels.CancelStore's lookup: the requests by run id; every
    lookup recorded; `fail_with` raised instead while set."""

    def __init__(self, **requests: CancelRequest) -> None:
        self.requests = dict(requests)
        self.lookups: list[str] = []
        self.fail_with: Exception | None = None
        self.on_lookup: Any = None

    def lookup(self, run_id: str) -> CancelRequest | None:
        self.lookups.append(run_id)
        if self.on_lookup is not None:
            self.on_lookup()
        if self.fail_with is not None:
            raise self.fail_with
        return self.requests.get(run_id)


# --- the outcome row ---------------------------------------------------------------


def run_end(process: ProcessResult, cancel: CancelRequest | None) -> RunEnd:
    return RunEnd(
        run_id="run-1",
        process=process,
        result_line=SUCCESS,
        timeout=60,
        log_uri="s3://logs-bucket/logs/run-1.log",
        gave_up=False,
        workspace=WorkspaceSteps(
            None, run_id="run-1", task_env={}, objects=None, log_bucket="b", clock=time.monotonic
        ),
        cancel=cancel,
    )


def event_body(outcome: RunOutcome) -> dict[str, Any]:
    body = outcome.event.body("node-1", "Node One", 1)
    assert_event_valid(body)
    data: dict[str, Any] = body["data"]
    return data


@pytest.mark.parametrize(
    "process",
    [
        ProcessResult(-2, 4.0, 100, "", interrupted=True),
        ProcessResult(-15, 4.0, 100, "", cancelled=True),
    ],
    ids=["interrupted by the cancel", "a shutdown stopped it too"],
)
def test_a_run_the_cancel_stopped_is_cancelled_failed_and_says_who_asked(
    process: ProcessResult,
) -> None:
    outcome = conclude(run_end(process, REQUEST), str)
    assert outcome.ending is Ending.FAILED
    assert outcome.message is MessageAction.DELETE
    data = event_body(outcome)
    assert data["error"]["type"] == "Cancelled"
    assert data["error"]["message"] == f"cancelled by {REQUEST.requested_by}: runaway loop"
    assert data["retryable"] is False
    assert data["cancel"] == {
        "reason": "runaway loop",
        "requested_by": REQUEST.requested_by,
        "requested_at": REQUEST.requested_at,
    }
    assert data["log_uri"] == "s3://logs-bucket/logs/run-1.log"


def test_a_run_that_ended_on_its_own_before_the_cancel_came_ends_as_it_ended() -> None:
    """The control: the same request, but the CLI was not stopped for it."""
    outcome = conclude(run_end(ProcessResult(0, 4.0, 100, ""), REQUEST), str)
    assert outcome.ending is Ending.COMPLETED
    assert "cancel" not in event_body(outcome)


def test_a_shutdown_without_a_cancel_still_hands_the_run_back() -> None:
    outcome = conclude(run_end(ProcessResult(-15, 4.0, 100, "", cancelled=True), None), str)
    assert outcome.ending is Ending.HANDED_BACK
    assert outcome.event.data["error"]["type"] == ErrorType.NODE_SHUTDOWN


def test_a_cancel_without_a_reason_says_who_asked() -> None:
    request = CancelRequest("run-1", None, "ops@host", "2030-01-02T03:04:05.000Z")
    data = event_body(cancelled(request, 0.0, str, attempt=1))
    assert data["error"]["message"] == "cancelled by ops@host"
    assert data["cancel"]["reason"] is None
    assert data["retryable"] is False and data["log_uri"] is None


# --- a run: looked up before it starts, stopped while it runs ------------------------


class Runs:
    """run-1 as the node runs it, with the mock CLI, fakes for the bus, the
    bucket and the cancel store, and the real message lifecycle."""

    def __init__(self, tmp_path: Path, cancels: FakeCancels, **config: Any) -> None:
        self.queue = FakeQueue()
        self.outbox = FakeOutbox()
        self.logs = FakeLogs()
        self.leases = LeaseKeeper(self.queue, 30)
        self.messages = MessageLifecycle(self.leases, self.outbox.publish)
        self.control = RunControl()
        self.cancels = cancels
        self.config = make_config(tmp_path, cancel_grace=0.5, **config)
        self.secret_source: Any = None

    def run(self, mock: MockSpec, **task: Any) -> RunOutcome:
        command = RunTask("run-1", TaskSpec(prompt="hi", mock=mock, **task))
        outcome = received_run(
            self.config,
            command,
            messages=self.messages,
            outbox=self.outbox,
            logs=self.logs,
            control=self.control,
            cancels=self.cancels,
            secret_source=self.secret_source,
        ).execute()
        self.leases.tick()
        return outcome

    def watched(self, interval: float = 0.05) -> CancelWatcher:
        watcher = CancelWatcher(self.cancels, lambda: {"run-1": self.control}, interval=interval)
        watcher.start()
        return watcher


def test_a_run_cancelled_before_its_command_came_never_starts(tmp_path: Path) -> None:
    runs = Runs(tmp_path, FakeCancels(**{"run-1": REQUEST}))
    outcome = runs.run(MockSpec(duration_seconds=30.0))
    assert runs.outbox.types() == ["TaskFailed"], "no TaskStarted, no output: never started"
    data = event_body(outcome)
    assert data["error"]["type"] == "Cancelled"
    assert data["retryable"] is False
    assert data["cancel"]["requested_by"] == REQUEST.requested_by
    assert runs.queue.of("delete"), "the message is deleted: no node runs it"
    assert [key.split("/")[0] for key in runs.logs.uploads] == ["records"], "no log, a record"
    assert not (tmp_path / "work" / "run-1").exists()


def test_a_lookup_that_fails_before_the_start_starts_the_run(tmp_path: Path) -> None:
    """The watcher looks again while it runs: an outage does not stop work."""
    cancels = FakeCancels()
    cancels.fail_with = client_error("ServiceUnavailable", 503, "GetObject")
    runs = Runs(tmp_path, cancels)
    outcome = runs.run(MockSpec(duration_seconds=0.0))
    assert outcome.ending is Ending.COMPLETED
    assert runs.outbox.types()[0] == "TaskStarted"


def test_a_cancel_while_the_run_runs_stops_it_and_keeps_its_log(tmp_path: Path) -> None:
    cancels = FakeCancels()
    runs = Runs(tmp_path, cancels)
    watcher = runs.watched()
    threading.Timer(0.5, lambda: cancels.requests.update({"run-1": REQUEST})).start()
    try:
        started = time.monotonic()
        outcome = runs.run(MockSpec(duration_seconds=30.0, output_bytes=200))
    finally:
        watcher.stop()
    assert time.monotonic() - started < 20, "stopped long before the mock's 30 s"
    data = event_body(outcome)
    assert data["error"]["type"] == "Cancelled"
    assert data["cancel"]["reason"] == "runaway loop"
    assert data["log_uri"] == "s3://logs-bucket/logs/run-1.log"
    assert "logs/run-1.log" in runs.logs.uploads
    assert runs.outbox.types()[0] == "TaskStarted"
    assert runs.outbox.types()[-1] == "TaskFailed"
    assert runs.queue.of("delete")


def test_a_cancel_while_the_secrets_are_read_stops_the_run_before_its_cli(
    tmp_path: Path,
) -> None:
    class OutageUntilCancelled:
        reads = 0

        def read(self, ref: Any) -> str:
            self.reads += 1
            runs.control.request_cancel(REQUEST)
            raise client_error("ServiceUnavailable", 503, "GetSecretValue")

    runs = Runs(tmp_path, FakeCancels())
    runs.secret_source = OutageUntilCancelled()
    outcome = runs.run(
        MockSpec(duration_seconds=30.0),
        secrets={"TOKEN": parse_secret_ref("/claude-code-scheduler/token")},
    )
    assert runs.secret_source.reads == 1, "the retries stopped at the cancel"
    assert outcome.ending is Ending.FAILED
    assert event_body(outcome)["error"]["type"] == "Cancelled"
    assert [key.split("/")[0] for key in runs.logs.uploads] == ["records"], "the CLI never started"


# --- the watcher ---------------------------------------------------------------------


def test_the_watcher_looks_up_only_running_runs_not_yet_cancelled() -> None:
    cancels = FakeCancels(**{"run-b": REQUEST})
    running = {"run-a": RunControl(), "run-b": RunControl()}
    watcher = CancelWatcher(cancels, lambda: running)
    assert watcher.poll() == 1
    assert sorted(cancels.lookups) == ["run-a", "run-b"]
    assert running["run-b"].cancel_request == REQUEST
    assert running["run-b"].interrupt.is_set() and running["run-b"].stopping.is_set()
    assert not running["run-b"].cancel.is_set(), "a cancel is not a shutdown"
    assert not running["run-a"].stopping.is_set()
    cancels.lookups.clear()
    running.pop("run-a")
    assert watcher.poll() == 0
    assert cancels.lookups == [], "an ended run, and a cancelled one, are not looked up"


def test_a_failed_lookup_is_tried_again_at_the_next_poll() -> None:
    cancels = FakeCancels(**{"run-a": REQUEST})
    cancels.fail_with = client_error("SlowDown", 503, "GetObject")
    control = RunControl()
    watcher = CancelWatcher(cancels, lambda: {"run-a": control})
    assert watcher.poll() == 0
    cancels.fail_with = None
    assert watcher.poll() == 1
    assert control.cancel_request == REQUEST


def test_the_watcher_stops_promptly_even_with_a_lookup_in_flight() -> None:
    in_flight, release = threading.Event(), threading.Event()
    cancels = FakeCancels()

    def slow_lookup() -> None:
        in_flight.set()
        release.wait(10)

    cancels.on_lookup = slow_lookup
    watcher = CancelWatcher(cancels, lambda: {"run-a": RunControl()}, interval=0.05)
    watcher.start()
    assert in_flight.wait(5)
    began = time.monotonic()
    watcher.stop()
    assert time.monotonic() - began < 0.5, "stop does not wait for the lookup"
    release.set()
    assert watcher.join(5)
    # And an idle watcher, between polls of a long interval, ends at once.
    idle = CancelWatcher(FakeCancels(), dict, interval=3600)
    idle.start()
    idle.stop()
    assert idle.join(2)
