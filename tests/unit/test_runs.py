"""node/runs.py: one run from TaskStarted to its outcome, with the mock CLI as
the child, fakes for the bus and the bucket, and the real message lifecycle.

Every test checks the order the protocol promises: the log is uploaded, then
the terminal event is published, then (once the bus took it) the message is
deleted or released.
"""

from __future__ import annotations

import json
import os
import threading
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

from claude_code_scheduler import logsetup
from claude_code_scheduler.node.control import RunControl
from claude_code_scheduler.node.leases import LeaseKeeper
from claude_code_scheduler.node.messages import Ending, MessageAction, MessageLifecycle
from claude_code_scheduler.node.outbox import Delivery
from claude_code_scheduler.node.outcome import RunOutcome
from claude_code_scheduler.protocol import MockSpec, RunTask, TaskSpec
from claude_code_scheduler.protocol.events import Event


class Timeline:
    """One list of what happened, in order, across the bucket, the bus and the queue."""

    def __init__(self) -> None:
        self.entries: list[str] = []
        self.lock = threading.Lock()

    def add(self, entry: str) -> None:
        with self.lock:
            self.entries.append(entry)

    def index(self, entry: str) -> int:
        return self.entries.index(entry)


class TimedQueue(FakeQueue):
    def __init__(self, timeline: Timeline) -> None:
        super().__init__()
        self.timeline = timeline

    def _record(self, *call: Any) -> None:
        self.timeline.add(" ".join(str(part) for part in call))
        super()._record(*call)


class TimedOutbox(FakeOutbox):
    def __init__(self, timeline: Timeline) -> None:
        super().__init__()
        self.timeline = timeline

    def publish(self, event: Event, **options: Any) -> Delivery:
        self.timeline.add(f"publish {event.event_type}")
        return super().publish(event, **options)


QUICK = MockSpec(duration_seconds=0.0)


class Harness:
    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.timeline = Timeline()
        self.queue = TimedQueue(self.timeline)
        self.outbox = TimedOutbox(self.timeline)
        self.logs = FakeLogs()
        self.logs.on_upload = lambda key: self.timeline.add(f"upload {key}")
        self.leases = LeaseKeeper(self.queue, 30)
        self.messages = MessageLifecycle(self.leases, self.outbox.publish)
        self.control = RunControl()
        self.config = make_config(tmp_path, **config)

    def run(self, mock: MockSpec = QUICK, **task: Any) -> RunOutcome:
        return self.run_with_environ(None, mock=mock, **task)

    def run_with_environ(
        self, environ: dict[str, str] | None, mock: MockSpec = QUICK, **task: Any
    ) -> RunOutcome:
        """Runs run-1 with `environ` as the node's environment (None: the real one)."""
        command = RunTask("run-1", TaskSpec(prompt="hi", mock=mock, **task))
        run = received_run(
            self.config,
            command,
            messages=self.messages,
            outbox=self.outbox,
            logs=self.logs,
            control=self.control,
            environ=environ,
        )
        outcome = run.execute()
        self.leases.tick()  # the keeper makes the write the lifecycle decided
        return outcome

    def types(self) -> list[str]:
        return self.outbox.types()

    def assert_ordered(self, *entries: str) -> None:
        positions = [self.timeline.index(entry) for entry in entries]
        assert positions == sorted(positions), self.timeline.entries


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


LOG = "upload logs/run-1.log"


def test_a_completed_run_uploads_then_reports_then_deletes(harness: Harness) -> None:
    outcome = harness.run(MockSpec(duration_seconds=0.0, output_bytes=3000))
    assert outcome.ending is Ending.COMPLETED
    assert outcome.completed
    assert outcome.message is MessageAction.DELETE
    assert outcome.event.event_type == "TaskCompleted"
    types = harness.types()
    assert types[0] == "TaskStarted"
    assert set(types[1:-1]) == {"TaskOutput"}
    assert types[-1] == "TaskCompleted"
    harness.assert_ordered("publish TaskStarted", LOG, "publish TaskCompleted", "delete r-1")
    chunks = "".join(e.data["data"] for e in harness.outbox.events if e.event_type == "TaskOutput")
    assert harness.logs.uploads["logs/run-1.log"] == chunks.encode()
    data = outcome.event.data
    assert data["log_uri"] == "s3://logs-bucket/logs/run-1.log"
    assert data["output_bytes"] == 3000
    assert data["result"]["text"] == "Mock reply to: hi"
    for body in harness.outbox.bodies:
        assert_event_valid(body)


def test_a_failed_cli_is_a_claude_error_and_its_message_is_deleted(harness: Harness) -> None:
    outcome = harness.run(MockSpec(duration_seconds=0.0, exit_code=3))
    assert outcome.ending is Ending.FAILED
    assert outcome.event.data["error"] == {
        "type": "ClaudeError",
        "message": "mock run failed with exit code 3",
    }
    assert outcome.event.data["exit_code"] == 3
    assert outcome.event.data["retryable"] is False
    harness.assert_ordered(LOG, "publish TaskFailed", "delete r-1")


def test_a_run_past_its_timeout_fails_with_timeout(harness: Harness) -> None:
    outcome = harness.run(MockSpec(duration_seconds=30.0), timeout_seconds=0.5)
    assert outcome.ending is Ending.FAILED
    assert outcome.event.data["error"]["type"] == "Timeout"
    assert "0.5 s" in outcome.event.data["error"]["message"]
    assert outcome.event.data["log_uri"] == "s3://logs-bucket/logs/run-1.log"
    harness.assert_ordered(LOG, "publish TaskFailed", "delete r-1")


def test_a_cancelled_run_is_handed_back_with_its_log(harness: Harness) -> None:
    threading.Timer(0.5, harness.control.cancel.set).start()
    outcome = harness.run(MockSpec(duration_seconds=30.0))
    assert outcome.ending is Ending.HANDED_BACK
    assert outcome.message is MessageAction.RELEASE
    data = outcome.event.data
    assert data["error"]["type"] == "NodeShutdown"
    assert data["retryable"] is True
    assert data["log_uri"] == "s3://logs-bucket/logs/run-1.log"
    harness.assert_ordered(LOG, "publish TaskFailed", "change_visibility r-1 0")
    assert harness.queue.of("delete") == []


def test_a_log_that_cannot_be_uploaded_is_a_node_error(harness: Harness) -> None:
    harness.logs.fail_with = client_error("AccessDenied", 403, "PutObject")
    outcome = harness.run()
    assert outcome.ending is Ending.FAILED
    data = outcome.event.data
    assert data["error"] == {"type": "NodeError", "message": "the run's log could not be uploaded"}
    assert data["log_uri"] is None
    assert data["retryable"] is False
    harness.assert_ordered(LOG, "publish TaskFailed", "delete r-1")


def test_giving_up_on_the_upload_at_shutdown_hands_the_run_back(harness: Harness) -> None:
    """The stop budget ran out while the bucket was down: the run is not lost,
    and not reported as failed either."""
    harness.logs.fail_with = client_error("ServiceUnavailable", 503, "PutObject")
    threading.Timer(0.5, harness.control.give_up.set).start()
    outcome = harness.run()
    assert outcome.ending is Ending.HANDED_BACK
    data = outcome.event.data
    assert data["error"]["type"] == "NodeShutdown"
    assert "before the run's log was uploaded" in data["error"]["message"]
    assert data["log_uri"] is None
    assert data["retryable"] is True
    assert harness.timeline.entries.count(LOG) >= 2, "retried until the give-up"
    harness.assert_ordered(LOG, "publish TaskFailed", "change_visibility r-1 0")


def test_a_terminal_event_the_bus_never_took_hands_the_message_back(harness: Harness) -> None:
    harness.outbox.held = []

    def bus_gives_up() -> None:
        # As the outbox does when it closes: what is left is dropped.
        while not any(e.event_type == "TaskCompleted" for e in harness.outbox.events):
            threading.Event().wait(0.01)
        harness.outbox.close(0)

    threading.Thread(target=bus_gives_up, daemon=True).start()
    outcome = harness.run()
    assert outcome.ending is Ending.COMPLETED
    assert outcome.message is MessageAction.DELETE, "what would have happened had it arrived"
    harness.assert_ordered(LOG, "publish TaskCompleted", "change_visibility r-1 0")
    assert harness.queue.of("delete") == []


def test_a_cli_that_cannot_start_is_a_node_error(tmp_path: Path) -> None:
    harness = Harness(tmp_path, mock_mode=False, claude_bin=str(tmp_path / "no-claude"))
    outcome = harness.run()
    assert outcome.ending is Ending.FAILED
    data = outcome.event.data
    assert data["error"]["type"] == "NodeError"
    assert data["error"]["message"].startswith("could not start the run: ")
    assert data["exit_code"] is None
    harness.assert_ordered(LOG, "publish TaskFailed", "delete r-1")


LEAKY_CLI = """#!/usr/bin/env python3
import json, os, sys
secret = os.environ["DB_PASSWORD"]
print(json.dumps({"type": "result", "is_error": True, "result": "token " + secret}))
sys.stderr.write("key " + os.environ.get("NODE_KEY", "") + "\\n")
sys.exit(1)
"""


def test_a_failure_message_never_carries_the_secrets_the_node_knows(tmp_path: Path) -> None:
    """The CLI's own words may quote the task's env or the node's key; the bus
    must not (the attack: without redaction the event carries both)."""
    cli = tmp_path / "leaky-claude"
    cli.write_text(LEAKY_CLI)
    cli.chmod(0o755)
    harness = Harness(tmp_path, mock_mode=False, claude_bin=str(cli))
    logsetup.SECRETS.add_node_secrets(["node-key-0123456789"])
    try:
        outcome = harness.run_with_environ(
            {**os.environ, "NODE_KEY": "node-key-0123456789"},
            env={"DB_PASSWORD": "task-secret-abcdef"},
        )
    finally:
        logsetup.SECRETS.remove_node_secrets(["node-key-0123456789"])
    assert outcome.event.data["error"]["message"] == "token ***"
    terminal = json.dumps(harness.outbox.bodies[-1])
    assert "task-secret-abcdef" not in terminal
    assert "node-key-0123456789" not in terminal


def test_a_completed_runs_result_text_is_redacted_too(tmp_path: Path) -> None:
    cli = tmp_path / "echo-claude"
    cli.write_text(
        "#!/usr/bin/env python3\nimport json, os\n"
        'print(json.dumps({"type": "result", "is_error": False, '
        '"result": "done with " + os.environ["DB_PASSWORD"]}))\n'
    )
    cli.chmod(0o755)
    harness = Harness(tmp_path, mock_mode=False, claude_bin=str(cli))
    outcome = harness.run(env={"DB_PASSWORD": "task-secret-abcdef"})
    assert outcome.ending is Ending.COMPLETED
    assert outcome.event.data["result"]["text"] == "done with ***"
