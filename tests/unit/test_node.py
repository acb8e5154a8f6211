"""node/worker.py with fakes: heartbeat status, command intake, polling and the
shutdown order, with the real message lifecycle and lease keeper on a fake queue.

TaskRun is replaced by a fake whose run ends when the test says so (or when
it is cancelled), so no process, S3 or SNS is involved.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from tests.conftest import wait_until
from unit_support import (
    FakeLogs,
    FakeOutbox,
    FakeQueue,
    assert_event_valid,
    make_config,
    message,
    run_task_body,
)

from claude_code_scheduler.aws.queue import ReceivedMessage
from claude_code_scheduler.node import worker as node_module
from claude_code_scheduler.node.control import RunControl, RunSettler
from claude_code_scheduler.node.leases import LeaseKeeper
from claude_code_scheduler.node.messages import Ending
from claude_code_scheduler.node.outbox import EventSink
from claude_code_scheduler.node.outcome import RunOutcome
from claude_code_scheduler.node.retries import RetryPolicy
from claude_code_scheduler.node.worker import Node, receive_backoff
from claude_code_scheduler.protocol import RunTask
from claude_code_scheduler.protocol.events import (
    ErrorType,
    Event,
    node_registered,
    task_failed,
)


class FakeRun:
    """runs.TaskRun's surface and its contract with the lifecycle: it ends when
    `finish_ok` is set (completed, or failed when `completes` is False) or is
    handed back when the node cancels it, and reports its ending as the real
    run does. What then becomes of its message is the node's own doing."""

    instances: ClassVar[list[FakeRun]] = []

    def __init__(
        self,
        config: Any,
        command: RunTask,
        attempt: int,
        *,
        outbox: EventSink,
        logs: Any,
        messages: RunSettler,
        control: RunControl,
        clock: Any,
        identity: Any = None,
        secret_source: Any = None,
        objects: Any = None,
        retries: Any = None,
        cancels: Any = None,
        sent_at: float | None = None,
    ) -> None:
        self.command = command
        self.identity = identity
        self.attempt = attempt
        self.outbox = outbox
        self.messages = messages
        self.control = control
        self.finish_ok = threading.Event()
        self.completes = True
        self.done = threading.Event()
        FakeRun.instances.append(self)

    @property
    def run_id(self) -> str:
        return self.command.run_id

    def execute(self) -> RunOutcome:
        try:
            while not self.finish_ok.wait(0.01):
                if self.control.cancel.is_set():
                    return self._end(Ending.HANDED_BACK, ErrorType.NODE_SHUTDOWN)
            return self._end(
                Ending.COMPLETED if self.completes else Ending.FAILED, ErrorType.CLAUDE_ERROR
            )
        finally:
            self.done.set()

    def _end(self, ending: Ending, error: ErrorType) -> RunOutcome:
        event = task_failed(self.run_id, error, "fake", retryable=ending is Ending.HANDED_BACK)
        outcome = RunOutcome(ending, event)
        delivery = self.outbox.publish(event)
        self.messages.run_ended(self.run_id, ending, delivery)
        delivery.wait()
        return outcome


class ScriptedQueue(FakeQueue):
    """Receive returns the scripted batches, then nothing, each after `delay`."""

    def __init__(self, delay: float = 0.02) -> None:
        super().__init__()
        self.batches: list[list[ReceivedMessage]] = []
        self.delay = delay
        self.on_receive: Callable[[], list[ReceivedMessage] | None] | None = None

    def receive(self, max_messages: int, wait_seconds: int) -> list[ReceivedMessage]:
        self._record("receive", max_messages, wait_seconds)
        time.sleep(self.delay)
        if self.on_receive is not None:
            scripted = self.on_receive()
            if scripted is not None:
                return scripted
        with self.lock:
            return self.batches.pop(0) if self.batches else []


class Fixture:
    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.queue = ScriptedQueue()
        self.outbox = FakeOutbox()
        self.leases = LeaseKeeper(self.queue, 30)
        self.leases.start()
        self.config = make_config(tmp_path, **config)
        self.node = Node(
            self.config,
            queue=self.queue,
            outbox=self.outbox,
            logs=FakeLogs(),
            leases=self.leases,
            registration=REGISTRATION,
            # No jitter: a delay in an assertion is exact.
            retries=RetryPolicy(
                self.config.retry_delay,
                self.config.retry_max_attempts,
                uniform=lambda low, high: low,
            ),
        )

    def runs(self) -> list[FakeRun]:
        return list(FakeRun.instances)

    def idle(self) -> bool:
        return bool(self.beat()["status"] == "idle")

    def beat(self) -> dict[str, Any]:
        return self.node.heartbeat().data

    def events(self, event_type: str) -> list[Event]:
        return [e for e in self.outbox.events if e.event_type == event_type]

    def calls(self, *expected: tuple[Any, ...]) -> bool:
        """The queue saw exactly `expected` (in any order), once the keeper wrote."""
        return wait_until(lambda: sorted(self.queue.calls) == sorted(expected), timeout=2)

    def holding(self) -> set[str]:
        return self.leases.holding()


REGISTRATION = node_registered(
    hostname="h",
    version="0",
    mock_mode=True,
    heartbeat_interval=1.0,
    max_concurrent_tasks=1,
    claude_version=None,
    started_at=0,
    ecs=None,
)


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Fixture]]:
    FakeRun.instances = []
    monkeypatch.setattr(node_module, "TaskRun", FakeRun)
    made: list[Fixture] = []

    def build(**config: Any) -> Fixture:
        made.append(Fixture(tmp_path, **config))
        return made[-1]

    yield build
    for run in FakeRun.instances:
        run.finish_ok.set()
        run.done.wait(2)
    for fixture in made:
        fixture.node.request_stop("teardown")
        fixture.leases.stop(time.monotonic())


@pytest.fixture
def fx(make: Callable[..., Fixture]) -> Fixture:
    return make()


def heartbeat_body(event: Event) -> dict[str, Any]:
    body = event.body("node-1", "Node One", 1)
    assert_event_valid(body)
    return body


# --- receive_backoff ------------------------------------------------------------


def test_receive_backoff_bounds() -> None:
    random.seed(5)
    for failures in range(1, 12):
        cap = min(30.0, 2.0**failures)
        samples = [receive_backoff(failures) for _ in range(300)]
        assert all(0 <= s <= cap for s in samples)
        assert max(samples) > cap / 2, "full jitter spreads over the whole range"
    assert max(receive_backoff(100) for _ in range(300)) <= 30.0


# --- heartbeat status ---------------------------------------------------------------


def test_heartbeat_goes_idle_busy_idle_draining(make: Callable[..., Fixture]) -> None:
    fx = make(max_concurrent_tasks=2)
    first = fx.beat()
    assert first["status"] == "idle"
    assert first["running"] == []
    assert (first["tasks_completed"], first["tasks_failed"]) == (0, 0)
    heartbeat_body(fx.node.heartbeat())

    fx.node.take(message(run_task_body("run-b"), "m-b", "r-b"))
    fx.node.take(message(run_task_body("run-a"), "m-a", "r-a"))
    busy = fx.beat()
    assert busy["status"] == "busy"
    assert busy["running"] == ["run-a", "run-b"]
    heartbeat_body(fx.node.heartbeat())

    for run in fx.runs():
        run.finish_ok.set()
    assert wait_until(fx.idle)
    after = fx.beat()
    assert after["running"] == []
    assert after["tasks_completed"] == 2
    assert after["uptime_seconds"] >= 0

    fx.node.request_stop("SIGTERM")
    draining = fx.beat()
    assert draining["status"] == "draining"
    heartbeat_body(fx.node.heartbeat())


def test_a_failed_run_counts_as_failed(fx: Fixture) -> None:
    fx.node.take(message(run_task_body("run-1")))
    run = fx.runs()[0]
    run.completes = False
    run.finish_ok.set()
    assert wait_until(fx.idle)
    assert fx.beat()["tasks_failed"] == 1
    assert fx.beat()["tasks_completed"] == 0


def test_draining_while_busy(fx: Fixture) -> None:
    fx.node.take(message(run_task_body("run-1")))
    fx.node.request_stop("SIGTERM")
    data = fx.beat()
    assert data["status"] == "draining"
    assert data["running"] == ["run-1"]


# --- command intake -----------------------------------------------------------------


def test_a_command_starts_a_run_with_its_attempt(fx: Fixture) -> None:
    fx.node.take(message(run_task_body("run-1", name="n"), receive_count=3))
    (run,) = fx.runs()
    assert run.command.run_id == "run-1"
    assert run.command.task.name == "n"
    assert run.attempt == 3
    assert fx.holding() == {"m-1"}


@pytest.mark.parametrize(
    ("body", "run_id"),
    [
        ("not json at all", None),
        ('{"type": "RunTask", "version": 1, "run_id": "bad-1", "task": {"prompt": ""}}', "bad-1"),
    ],
)
def test_an_invalid_command_gets_task_failed_and_is_deleted(
    fx: Fixture, body: str, run_id: str | None
) -> None:
    fx.node.take(message(body, "m-bad", "r-bad"))
    assert fx.runs() == []
    (event,) = fx.outbox.events
    assert event.event_type == "TaskFailed"
    assert event.data["run_id"] == run_id
    assert event.data["error"]["type"] == "InvalidCommand"
    assert event.data["error"]["message"]
    assert event.data["retryable"] is False
    assert_event_valid(fx.outbox.bodies[0])
    assert fx.calls(("delete", "r-bad"))
    assert fx.holding() == set()
    assert fx.beat()["tasks_failed"] == 1


def test_an_invalid_command_whose_event_is_refused_is_released(fx: Fixture) -> None:
    fx.outbox.close(0)
    fx.node.take(message("[]", "m-bad", "r-bad"))
    assert fx.calls(("change_visibility", "r-bad", 0))


def test_an_invalid_command_does_not_hold_up_the_poller_while_the_bus_is_slow(
    fx: Fixture,
) -> None:
    """The message waits, hidden, for the bus; the next one is taken meanwhile."""
    fx.outbox.held = []
    fx.node.take(message("[]", "m-bad", "r-bad"))
    fx.node.take(message(run_task_body("run-1"), "m-1", "r-1"))
    assert len(fx.runs()) == 1
    assert fx.holding() == {"m-bad", "m-1"}
    (delivery,) = fx.outbox.held
    delivery.settle(True)
    assert fx.calls(("delete", "r-bad"))


def test_a_duplicate_of_a_running_run_is_not_started_again(fx: Fixture) -> None:
    fx.node.take(message(run_task_body("run-1"), "m-1", "r-1"))
    fx.node.take(message(run_task_body("run-1"), "m-2", "r-2"))
    fx.node.take(message(run_task_body("run-1"), "m-1", "r-1-again"))
    assert len(fx.runs()) == 1
    fx.runs()[0].finish_ok.set()
    assert wait_until(fx.idle)
    assert fx.calls(("delete", "r-1-again"), ("delete", "r-2"))


def test_a_duplicate_of_a_finished_run_is_deleted_not_run(fx: Fixture) -> None:
    fx.node.take(message(run_task_body("run-1"), "m-1", "r-1"))
    fx.runs()[0].finish_ok.set()
    assert wait_until(fx.idle)
    assert fx.calls(("delete", "r-1"))
    fx.node.take(message(run_task_body("run-1"), "m-9", "r-9"))
    assert len(fx.runs()) == 1
    assert fx.calls(("delete", "r-1"), ("delete", "r-9"))
    terminal, duplicate = fx.outbox.events
    assert terminal.data["error"]["message"] == "fake", "the run's own terminal event"
    assert duplicate.data["error"]["type"] == "Duplicate", "and what became of the copy"


def test_a_handed_back_run_may_run_again(fx: Fixture) -> None:
    fx.node.take(message(run_task_body("run-1"), "m-1", "r-1"))
    fx.runs()[0].control.cancel.set()
    assert wait_until(fx.idle)
    assert fx.calls(("change_visibility", "r-1", 0))
    fx.node.take(message(run_task_body("run-1"), "m-1", "r-1b"))
    assert len(fx.runs()) == 2


def test_a_message_beyond_the_free_slots_is_released_at_once(fx: Fixture) -> None:
    fx.node.take(message(run_task_body("run-1"), "m-1", "r-1"))
    fx.node.take(message(run_task_body("run-2"), "m-2", "r-2"))
    assert [run.run_id for run in fx.runs()] == ["run-1"]
    assert fx.calls(("change_visibility", "r-2", 0))
    assert fx.holding() == {"m-1"}


def test_a_message_received_after_the_stop_is_released_at_once(fx: Fixture) -> None:
    fx.node.request_stop("SIGTERM")
    fx.node.take(message(run_task_body("run-1"), "m-1", "r-1"))
    assert fx.runs() == []
    assert fx.calls(("change_visibility", "r-1", 0))
    assert fx.holding() == set()


# --- polling ------------------------------------------------------------------------


def test_the_poller_never_asks_for_more_than_the_free_slots(
    make: Callable[..., Fixture],
) -> None:
    fx = make(max_concurrent_tasks=2, poll_wait_seconds=7)
    fx.queue.batches = [[message(run_task_body("run-1"), "m-1", "r-1")]]
    poller = threading.Thread(target=fx.node._poll_loop, daemon=True)
    poller.start()
    try:
        assert wait_until(lambda: len(fx.runs()) == 1)
        assert wait_until(lambda: len(fx.queue.of("receive")) >= 3)
        receives = fx.queue.of("receive")
        assert receives[0] == ("receive", 2, 7)
        assert set(receives[1:]) == {("receive", 1, 7)}

        fx.queue.batches = [[message(run_task_body("run-2"), "m-2", "r-2")]]
        assert wait_until(lambda: len(fx.runs()) == 2)
        time.sleep(0.1)
        count = len(fx.queue.of("receive"))
        time.sleep(0.3)
        assert len(fx.queue.of("receive")) == count, "no receive while every slot is taken"

        assert [run.identity.slot for run in fx.runs()] == [0, 1], "a slot of its own each"

        fx.runs()[0].finish_ok.set()
        assert wait_until(lambda: len(fx.queue.of("receive")) > count)
        assert fx.queue.of("receive")[-1] == ("receive", 1, 7)
        fx.queue.batches = [[message(run_task_body("run-3"), "m-3", "r-3")]]
        assert wait_until(lambda: len(fx.runs()) == 3)
        assert fx.runs()[2].identity.slot == 0, "the slot its run left"
    finally:
        fx.node.request_stop("test")
        poller.join(5)
        for run in fx.runs():
            run.finish_ok.set()
    assert not poller.is_alive()


def test_receive_failures_back_off_and_recover(
    make: Callable[..., Fixture], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_module, "receive_backoff", lambda failures: 0.01 * failures)
    fx = make()
    failures = [ConnectionError("down"), ConnectionError("down")]

    def on_receive() -> list[ReceivedMessage] | None:
        if failures:
            raise failures.pop()
        return None

    fx.queue.on_receive = on_receive
    fx.queue.batches = [[message(run_task_body("run-1"))]]
    poller = threading.Thread(target=fx.node._poll_loop, daemon=True)
    poller.start()
    try:
        assert wait_until(lambda: len(fx.runs()) == 1)
    finally:
        fx.node.request_stop("test")
        poller.join(5)
    assert len(fx.queue.of("receive")) >= 3


# --- the whole lifecycle --------------------------------------------------------------


def run_node(fx: Fixture) -> tuple[threading.Thread, list[int]]:
    exit_codes: list[int] = []
    thread = threading.Thread(target=lambda: exit_codes.append(fx.node.run()), daemon=True)
    thread.start()
    return thread, exit_codes


def run_node_with_one_run(fx: Fixture) -> tuple[threading.Thread, list[int]]:
    """The node running, with run-1 (message m-1, receipt r-1) started."""
    fx.queue.batches = [[message(run_task_body("run-1"), "m-1", "r-1")]]
    thread, exit_codes = run_node(fx)
    assert wait_until(lambda: len(fx.runs()) == 1)
    return thread, exit_codes


def test_idle_lifecycle_and_the_poll_in_flight_at_shutdown(fx: Fixture) -> None:
    """Registered first, heartbeats, Deregistered last; nothing after close; a
    message the last poll brings back is released, not run."""
    late = message(run_task_body("late"), "m-late", "r-late")
    fx.queue.on_receive = lambda: [late] if fx.node._stop.is_set() else None
    fx.queue.delay = 0.3
    thread, exit_codes = run_node(fx)
    assert wait_until(lambda: "NodeHeartbeat" in fx.outbox.types(), timeout=5)
    started = time.monotonic()
    fx.node.request_stop("SIGTERM")
    thread.join(10)
    assert not thread.is_alive()
    assert exit_codes == [0]
    assert time.monotonic() - started < 3

    types = fx.outbox.types()
    assert types[0] == "NodeRegistered"
    assert types[-1] == "NodeDeregistered"
    assert set(types[1:-1]) == {"NodeHeartbeat"}
    assert fx.outbox.events[0] is REGISTRATION
    deregistered = fx.outbox.events[-1].data
    assert deregistered["reason"] == "SIGTERM"
    assert (deregistered["tasks_completed"], deregistered["tasks_failed"]) == (0, 0)
    for body in fx.outbox.bodies[1:]:
        assert_event_valid(body)
    assert fx.outbox.closed
    assert fx.outbox.published_after_close == []
    assert fx.runs() == []
    assert ("change_visibility", "r-late", 0) in fx.queue.calls


def test_busy_shutdown_waits_then_hands_the_run_back(make: Callable[..., Fixture]) -> None:
    fx = make(shutdown_timeout=0.5)
    thread, exit_codes = run_node_with_one_run(fx)
    started = time.monotonic()
    fx.node.request_stop("SIGTERM")
    time.sleep(0.2)
    assert not fx.runs()[0].control.cancel.is_set(), "the run gets its shutdown budget"
    thread.join(10)
    elapsed = time.monotonic() - started
    assert exit_codes == [0]
    assert 0.4 <= elapsed < 4
    assert fx.runs()[0].control.cancel.is_set()
    assert ("change_visibility", "r-1", 0) in fx.queue.calls
    assert fx.outbox.types()[-1] == "NodeDeregistered"
    assert fx.outbox.events[-1].data["tasks_failed"] == 1


def test_a_run_that_finishes_within_the_budget_is_not_cancelled(
    make: Callable[..., Fixture],
) -> None:
    fx = make(shutdown_timeout=5)
    thread, exit_codes = run_node_with_one_run(fx)
    fx.node.request_stop("SIGTERM")
    threading.Timer(0.3, fx.runs()[0].finish_ok.set).start()
    thread.join(10)
    assert exit_codes == [0]
    assert not fx.runs()[0].control.cancel.is_set()
    assert fx.queue.of("delete") == [("delete", "r-1")]
    assert fx.outbox.events[-1].data["tasks_completed"] == 1


def test_a_second_signal_skips_the_wait(make: Callable[..., Fixture]) -> None:
    fx = make(shutdown_timeout=60)
    thread, exit_codes = run_node_with_one_run(fx)
    started = time.monotonic()
    fx.node.request_stop("SIGTERM")
    time.sleep(0.1)
    fx.node.request_stop("SIGINT")
    thread.join(10)
    assert exit_codes == [0]
    assert time.monotonic() - started < 5
    assert fx.runs()[0].control.cancel.is_set()
    assert fx.outbox.events[-1].data["reason"] == "SIGTERM"


class SlowToReturnRun(FakeRun):
    """Reports its ending like the real run, so its message is deleted, then
    pauses before returning: the window in which the node still lists the run
    as active."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deleted = threading.Event()
        self.may_return = threading.Event()

    def execute(self) -> RunOutcome:
        self.finish_ok.wait(5)
        outcome = self._end(Ending.COMPLETED, ErrorType.CLAUDE_ERROR)
        self.deleted.set()
        self.may_return.wait(5)
        self.done.set()
        return outcome


def test_a_duplicate_arriving_as_the_run_ends_is_not_held_forever(
    make: Callable[..., Fixture], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_module, "TaskRun", SlowToReturnRun)
    fx = make()
    fx.node.take(message(run_task_body("run-1"), "m-1", "r-1"))
    (run,) = fx.runs()
    assert isinstance(run, SlowToReturnRun)
    run.finish_ok.set()
    assert run.deleted.wait(5)
    fx.node.take(message(run_task_body("run-1"), "m-2", "r-2"))
    run.may_return.set()
    assert wait_until(fx.idle)
    assert len(fx.runs()) == 1
    assert wait_until(lambda: fx.holding() == set(), timeout=1)
    assert fx.calls(("delete", "r-1"), ("delete", "r-2"))


class BrokenRun(FakeRun):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")


def test_a_run_that_cannot_start_is_reported_and_does_not_loop(
    fx: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_module, "TaskRun", BrokenRun)
    fx.node.take(message(run_task_body("run-1"), "m-1", "r-1", receive_count=2))
    (event,) = fx.outbox.events
    assert event.data["error"]["type"] == "NodeError"
    assert "No space left on device" in event.data["error"]["message"]
    assert event.data["retryable"] is True
    assert fx.calls(("change_visibility", "r-1", 60)), "back after a delay, not at once"
    assert fx.idle() and fx.beat()["tasks_failed"] == 1
    monkeypatch.setattr(node_module, "TaskRun", FakeRun)
    fx.node.take(message(run_task_body("run-2"), "m-2", "r-2"))
    assert [run.run_id for run in fx.runs()] == ["run-2"], "the node goes on"
