"""node/messages.py: every row of the decision tables, with the real lease keeper
on a fake queue, stepped by hand (no thread, no clock)."""

from __future__ import annotations

from typing import Any

import pytest
from unit_support import FakeOutbox, FakeQueue, assert_event_valid, message, run_task_body

from claude_code_scheduler.node import messages as messages_module
from claude_code_scheduler.node.leases import LeaseKeeper
from claude_code_scheduler.node.messages import (
    Admission,
    Ending,
    MessageAction,
    MessageLifecycle,
    action_after_run,
)
from claude_code_scheduler.node.outbox import Delivery
from claude_code_scheduler.node.retries import RetryPolicy

# No jitter: the delays below are exact.
RETRIES = RetryPolicy(first_delay=30, max_attempts=3, uniform=lambda low, high: low)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lifecycle:
    def __init__(self, remembered: int = 1024) -> None:
        self.queue = FakeQueue()
        self.clock = Clock()
        self.leases = LeaseKeeper(self.queue, 30, clock=self.clock)
        self.outbox = FakeOutbox()
        self.messages = MessageLifecycle(
            self.leases, self.outbox.publish, remembered=remembered, retries=RETRIES
        )

    def take(self, body: str, message_id: str, receipt: str, **state: bool) -> Admission:
        state = {"stopping": False, "has_slot": True, **state}
        received = self.messages.receive(message(body, message_id, receipt), **state)
        return received.admission

    def writes(self) -> list[tuple[Any, ...]]:
        """What reached the queue once the keeper made the writes due now."""
        self.leases.tick()
        return sorted(self.queue.calls)

    def end(self, run_id: str, ending: Ending, delivered: bool = True) -> None:
        delivery = Delivery()
        self.messages.run_ended(run_id, ending, delivery)
        delivery.settle(delivered)


@pytest.fixture
def lc() -> Lifecycle:
    return Lifecycle()


RELEASED = "change_visibility"


# --- when a message is received ------------------------------------------------------


def test_a_valid_command_starts_its_run_and_is_held(lc: Lifecycle) -> None:
    received = lc.messages.receive(
        message(run_task_body("run-1"), "m-1", "r-1"), stopping=False, has_slot=True
    )
    assert received.admission is Admission.START
    assert received.command is not None and received.command.run_id == "run-1"
    assert lc.writes() == []
    lc.clock.now += 10
    assert lc.writes() == [(RELEASED, "r-1", 30)], "extended while the run lasts"


@pytest.mark.parametrize("body", ["not json", run_task_body("bad-1", prompt="")])
def test_an_invalid_command_is_reported_then_deleted(lc: Lifecycle, body: str) -> None:
    assert lc.take(body, "m-bad", "r-bad") is Admission.INVALID
    (event,) = lc.outbox.events
    assert event.data["error"]["type"] == "InvalidCommand"
    assert_event_valid(lc.outbox.bodies[0])
    assert lc.writes() == [("delete", "r-bad")]


def test_an_invalid_command_waits_hidden_for_the_bus_then_goes_back_if_refused(
    lc: Lifecycle,
) -> None:
    lc.outbox.held = []
    assert lc.take("[]", "m-bad", "r-bad") is Admission.INVALID
    lc.clock.now += 10
    assert lc.writes() == [(RELEASED, "r-bad", 30)], "extended while the bus is slow"
    lc.outbox.held[0].settle(False, "bus down")
    assert lc.writes() == [(RELEASED, "r-bad", 0), (RELEASED, "r-bad", 30)]
    assert lc.leases.holding() == set()


def test_a_command_the_parser_chokes_on_is_still_an_invalid_command(
    lc: Lifecycle, monkeypatch: pytest.MonkeyPatch
) -> None:
    def choke(body: str) -> None:
        raise RecursionError("deep")

    monkeypatch.setattr(messages_module, "parse_command", choke)
    assert lc.take(run_task_body("run-1"), "m-1", "r-1") is Admission.INVALID
    assert lc.outbox.events[0].data["error"]["message"] == "the node could not read this command"
    assert lc.writes() == [("delete", "r-1")]


def test_while_stopping_a_valid_command_is_released(lc: Lifecycle) -> None:
    assert lc.take(run_task_body("run-1"), "m-1", "r-1", stopping=True) is Admission.STOPPING
    assert lc.writes() == [(RELEASED, "r-1", 0)]
    assert lc.outbox.events == []


def test_without_a_free_slot_a_command_is_released(lc: Lifecycle) -> None:
    assert lc.take(run_task_body("run-1"), "m-1", "r-1", has_slot=False) is Admission.NO_SLOT
    assert lc.writes() == [(RELEASED, "r-1", 0)]


def test_duplicates_of_a_running_run_are_held_and_settled_with_it(lc: Lifecycle) -> None:
    assert lc.take(run_task_body("run-1"), "m-1", "r-1") is Admission.START
    assert lc.take(run_task_body("run-1"), "m-2", "r-2") is Admission.DUPLICATE
    assert lc.take(run_task_body("run-1"), "m-1", "r-1-again") is Admission.DUPLICATE
    assert lc.take(run_task_body("run-1"), "m-3", "r-3", has_slot=False) is Admission.DUPLICATE
    assert lc.writes() == []
    lc.end("run-1", Ending.COMPLETED)
    assert lc.writes() == [("delete", "r-1-again"), ("delete", "r-2"), ("delete", "r-3")]


def test_a_duplicate_while_the_terminal_event_is_in_flight_goes_with_the_run(
    lc: Lifecycle,
) -> None:
    lc.take(run_task_body("run-1"), "m-1", "r-1")
    delivery = Delivery()
    lc.messages.run_ended("run-1", Ending.COMPLETED, delivery)
    assert lc.take(run_task_body("run-1"), "m-2", "r-2") is Admission.DUPLICATE
    assert lc.writes() == []
    delivery.settle(True)
    assert lc.writes() == [("delete", "r-1"), ("delete", "r-2")]


def test_a_duplicate_of_a_finished_run_is_deleted_not_run(lc: Lifecycle) -> None:
    lc.take(run_task_body("run-1"), "m-1", "r-1")
    lc.end("run-1", Ending.FAILED)
    assert lc.take(run_task_body("run-1"), "m-9", "r-9") is Admission.FINISHED
    assert lc.writes() == [("delete", "r-1"), ("delete", "r-9")]
    (event,) = lc.outbox.events
    assert event.data["run_id"] == "run-1"
    assert event.data["error"]["type"] == "Duplicate"
    assert "already ended on this node (failed)" in event.data["error"]["message"]
    assert event.data["retryable"] is False
    assert_event_valid(lc.outbox.bodies[0])


def test_a_finished_duplicate_is_deleted_even_when_its_report_is_refused(lc: Lifecycle) -> None:
    """Released, it would run again on a node that does not remember the run."""
    lc.take(run_task_body("run-1"), "m-1", "r-1")
    lc.end("run-1", Ending.COMPLETED)
    lc.outbox.close(0)
    assert lc.take(run_task_body("run-1"), "m-9", "r-9") is Admission.FINISHED
    assert lc.writes() == [("delete", "r-1"), ("delete", "r-9")]


def test_while_stopping_duplicates_are_still_settled_with_their_run(lc: Lifecycle) -> None:
    """Released, a duplicate would run again on another node."""
    lc.take(run_task_body("done"), "m-1", "r-1")
    lc.end("done", Ending.COMPLETED)
    lc.take(run_task_body("running"), "m-2", "r-2")
    assert lc.take(run_task_body("done"), "m-3", "r-3", stopping=True) is Admission.FINISHED
    assert lc.take(run_task_body("running"), "m-4", "r-4", stopping=True) is Admission.DUPLICATE
    assert lc.writes() == [("delete", "r-1"), ("delete", "r-3")]
    lc.end("running", Ending.HANDED_BACK)
    assert lc.writes() == [
        (RELEASED, "r-2", 0),
        (RELEASED, "r-4", 0),
        ("delete", "r-1"),
        ("delete", "r-3"),
    ]


def test_only_the_newest_runs_are_remembered() -> None:
    lc = Lifecycle(remembered=2)
    for run_id in ("a", "b", "c"):
        lc.take(run_task_body(run_id), f"m-{run_id}", f"r-{run_id}")
        lc.end(run_id, Ending.COMPLETED)
    assert lc.take(run_task_body("c"), "m-c2", "r-c2") is Admission.FINISHED
    assert lc.take(run_task_body("b"), "m-b2", "r-b2") is Admission.FINISHED
    assert lc.take(run_task_body("a"), "m-a2", "r-a2") is Admission.START


# --- when a run has ended ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("ending", "delivered", "action"),
    [
        (Ending.COMPLETED, True, MessageAction.DELETE),
        (Ending.FAILED, True, MessageAction.DELETE),
        (Ending.COMPLETED, False, MessageAction.RELEASE),
        (Ending.FAILED, False, MessageAction.RELEASE),
        (Ending.HANDED_BACK, True, MessageAction.RELEASE),
        (Ending.HANDED_BACK, False, MessageAction.RELEASE),
        (Ending.RETRY_LATER, True, MessageAction.RELEASE_LATER),
        (Ending.RETRY_LATER, False, MessageAction.RELEASE),
    ],
)
def test_the_run_table(ending: Ending, delivered: bool, action: MessageAction) -> None:
    assert action_after_run(ending, delivered=delivered) is action
    lc = Lifecycle()
    lc.take(run_task_body("run-1"), "m-1", "r-1")
    lc.end("run-1", ending, delivered)
    expected = {
        MessageAction.DELETE: ("delete", "r-1"),
        MessageAction.RELEASE: (RELEASED, "r-1", 0),
        # Not hot: a server that stays down is tried again 30 s later (the
        # retry policy's first delay), then twice as long each time.
        MessageAction.RELEASE_LATER: (RELEASED, "r-1", 30),
    }[action]
    assert lc.writes() == [expected]
    again = lc.take(run_task_body("run-1"), "m-1", "r-1b")
    assert again is (Admission.FINISHED if action is MessageAction.DELETE else Admission.START)


def test_nothing_is_settled_before_the_bus_answers(lc: Lifecycle) -> None:
    lc.take(run_task_body("run-1"), "m-1", "r-1")
    lc.messages.run_ended("run-1", Ending.COMPLETED, Delivery())
    lc.clock.now += 10
    assert lc.writes() == [(RELEASED, "r-1", 30)]


def test_a_run_the_node_failed_to_start_is_reported_and_goes_back_later(lc: Lifecycle) -> None:
    """Not at zero delay: a failure that repeats must not loop hot."""
    lc.messages.receive(
        message(run_task_body("run-1"), "m-1", "r-1", receive_count=3),
        stopping=False,
        has_slot=True,
    )
    lc.messages.run_crashed("run-1", "OSError: No space left on device")
    assert lc.writes() == [(RELEASED, "r-1", 120)]
    (event,) = lc.outbox.events
    assert event.data["error"]["type"] == "NodeError"
    assert "No space left on device" in event.data["error"]["message"]
    assert "it goes back in 120 s" in event.data["error"]["message"]
    assert event.data["retryable"] is True
    # The node failed, not the task: never the last attempt (the dead-letter
    # queue takes a command that fails every node).
    assert (event.data["attempt"], event.data["final_attempt"]) == (3, False)
    assert_event_valid(lc.outbox.bodies[0])
    assert lc.take(run_task_body("run-1"), "m-1", "r-1b") is Admission.START


def test_a_retry_waits_the_policys_delay_for_its_attempt(lc: Lifecycle) -> None:
    """The receive count is the attempt: the third waits four times the first."""
    lc.messages.receive(
        message(run_task_body("run-1"), "m-1", "r-1", receive_count=3),
        stopping=False,
        has_slot=True,
    )
    lc.end("run-1", Ending.RETRY_LATER)
    assert lc.writes() == [(RELEASED, "r-1", RETRIES.delay(3))]
    assert RETRIES.delay(3) == 120
    assert lc.take(run_task_body("run-1"), "m-1", "r-1b") is Admission.START


def test_a_crash_after_the_run_reported_its_end_changes_nothing(lc: Lifecycle) -> None:
    lc.take(run_task_body("run-1"), "m-1", "r-1")
    lc.end("run-1", Ending.COMPLETED)
    lc.messages.run_crashed("run-1", "late")
    assert lc.writes() == [("delete", "r-1")]
    assert lc.outbox.events == []


# --- at shutdown -------------------------------------------------------------------------


def test_close_releases_what_is_still_held(lc: Lifecycle) -> None:
    lc.take(run_task_body("run-1"), "m-1", "r-1")
    lc.take(run_task_body("run-1"), "m-2", "r-2")
    lc.take(run_task_body("run-2"), "m-3", "r-3")
    lc.end("run-2", Ending.COMPLETED)
    lc.messages.close()
    assert lc.writes() == [(RELEASED, "r-1", 0), (RELEASED, "r-2", 0), ("delete", "r-3")]
