"""leases.py: renewing, deleting and releasing messages, with a fake queue and clock."""

from __future__ import annotations

import threading
import time

import pytest
from unit_support import FakeQueue, client_error, message

from claude_code_scheduler.leases import LeaseKeeper, renewal_interval


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue() -> FakeQueue:
    return FakeQueue()


def keeper(queue: FakeQueue, clock: Clock, step: int = 30) -> LeaseKeeper:
    return LeaseKeeper(queue, step, clock=clock)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("step", "interval"),
    [(30, 10.0), (2, 2 / 3), (1, 1 / 3), (43200, 14400.0)],
)
def test_renewal_interval(step: int, interval: float) -> None:
    assert renewal_interval(step) == pytest.approx(interval)
    assert renewal_interval(step) < step


def test_renewal_interval_has_a_floor() -> None:
    assert renewal_interval(0) == 0.2


def test_tick_renews_only_when_due_at_a_third_of_the_step(queue: FakeQueue, clock: Clock) -> None:
    leases = keeper(queue, clock, step=30)
    assert leases.hold("run-1", message("body", "m-1", "r-1")) is True
    leases.tick()
    clock.now += 9.9
    leases.tick()
    assert queue.calls == []
    clock.now += 0.1
    leases.tick()
    assert queue.calls == [("change_visibility", "r-1", 30)]
    leases.tick()
    clock.now += 5
    leases.tick()
    assert len(queue.calls) == 1, "not due again until another interval passed"
    clock.now += 5
    leases.tick()
    assert queue.calls == [("change_visibility", "r-1", 30)] * 2
    clock.now += 100
    leases.tick()
    assert len(queue.calls) == 3, "a late tick renews once, not once per missed interval"


def test_each_lease_has_its_own_schedule(queue: FakeQueue, clock: Clock) -> None:
    leases = keeper(queue, clock, step=3)
    leases.hold("a", message("b", "m-a", "r-a"))
    clock.now += 0.5
    leases.hold("b", message("b", "m-b", "r-b"))
    clock.now += 0.5
    leases.tick()
    assert queue.calls == [("change_visibility", "r-a", 3)]
    clock.now += 0.5
    leases.tick()
    assert queue.calls[-1] == ("change_visibility", "r-b", 3)
    assert len(queue.calls) == 2


def test_step_is_at_least_one_second(queue: FakeQueue, clock: Clock) -> None:
    leases = keeper(queue, clock, step=0)
    leases.hold("a", message("b", "m", "r"))
    clock.now += 1
    leases.tick()
    assert queue.calls == [("change_visibility", "r", 1)]


def test_duplicate_run_id_is_not_a_new_hold_and_the_newest_receipt_is_extended(
    queue: FakeQueue, clock: Clock
) -> None:
    leases = keeper(queue, clock, step=30)
    assert leases.hold("run-1", message("b", "m-1", "old-receipt")) is True
    assert leases.hold("run-1", message("b", "m-1", "new-receipt")) is False
    assert leases.held() == ["run-1"]
    clock.now += 10
    leases.tick()
    assert queue.calls == [("change_visibility", "new-receipt", 30)]


def test_a_second_message_for_the_same_run_is_extended_and_deleted_too(
    queue: FakeQueue, clock: Clock
) -> None:
    leases = keeper(queue, clock, step=30)
    leases.hold("run-1", message("b", "m-1", "r-1"))
    assert leases.hold("run-1", message("b", "m-2", "r-2")) is False
    clock.now += 10
    leases.tick()
    assert sorted(queue.of("change_visibility")) == [
        ("change_visibility", "r-1", 30),
        ("change_visibility", "r-2", 30),
    ]
    leases.finish("run-1")
    assert sorted(queue.of("delete")) == [("delete", "r-1"), ("delete", "r-2")]
    assert leases.held() == []


def test_finish_deletes_and_stops_renewing(queue: FakeQueue, clock: Clock) -> None:
    leases = keeper(queue, clock)
    leases.hold("run-1", message("b", "m-1", "r-1"))
    leases.finish("run-1")
    assert queue.calls == [("delete", "r-1")]
    clock.now += 1000
    leases.tick()
    assert queue.calls == [("delete", "r-1")]


def test_finish_of_an_unknown_run_does_nothing(queue: FakeQueue, clock: Clock) -> None:
    keeper(queue, clock).finish("nope")
    assert queue.calls == []


def test_release_makes_every_message_visible_at_once(queue: FakeQueue, clock: Clock) -> None:
    leases = keeper(queue, clock)
    leases.hold("run-1", message("b", "m-1", "r-1"))
    leases.hold("run-1", message("b", "m-2", "r-2"))
    leases.release("run-1")
    assert sorted(queue.calls) == [("change_visibility", "r-1", 0), ("change_visibility", "r-2", 0)]
    assert leases.held() == []
    clock.now += 1000
    leases.tick()
    assert len(queue.calls) == 2


def test_release_message_swallows_errors(queue: FakeQueue, clock: Clock) -> None:
    queue.fail_with = client_error("ReceiptHandleIsInvalid")
    keeper(queue, clock).release_message("r-9", "run-9")
    assert queue.calls == [("change_visibility", "r-9", 0)]


def test_a_failed_renewal_is_tried_again_next_interval(queue: FakeQueue, clock: Clock) -> None:
    leases = keeper(queue, clock, step=30)
    leases.hold("run-1", message("b", "m-1", "r-1"))
    queue.fail_with = client_error("InternalError", 500, "ChangeMessageVisibility")
    clock.now += 10
    leases.tick()
    queue.fail_with = None
    clock.now += 10
    leases.tick()
    assert queue.calls == [("change_visibility", "r-1", 30)] * 2


def test_delete_is_retried_through_a_transient_failure(queue: FakeQueue, clock: Clock) -> None:
    failures = [client_error("ServiceUnavailable", 503, "DeleteMessage")]
    original = queue.delete

    def flaky_delete(receipt: str) -> None:
        if failures:
            queue.calls.append(("delete-failed", receipt))
            raise failures.pop()
        original(receipt)

    queue.delete = flaky_delete  # type: ignore[method-assign]
    leases = keeper(queue, clock)
    leases.hold("run-1", message("b", "m-1", "r-1"))
    leases.finish("run-1")
    assert queue.calls == [("delete-failed", "r-1"), ("delete", "r-1")]
    assert leases.held() == []


def test_a_permanent_delete_error_gives_up_at_once(queue: FakeQueue, clock: Clock) -> None:
    queue.fail_with = client_error("AccessDenied", 403, "DeleteMessage")
    leases = keeper(queue, clock)
    leases.hold("run-1", message("b", "m-1", "r-1"))
    leases.finish("run-1")
    assert queue.calls == [("delete", "r-1")]
    assert leases.held() == []


def test_stop_interrupts_a_delete_retrying_through_an_outage(queue: FakeQueue) -> None:
    queue.fail_with = client_error("ServiceUnavailable", 503, "DeleteMessage")
    leases = LeaseKeeper(queue, 30)  # type: ignore[arg-type]
    leases.hold("run-1", message("b", "m-1", "r-1"))
    finisher = threading.Thread(target=leases.finish, args=("run-1",))
    finisher.start()
    time.sleep(0.3)
    started = time.monotonic()
    leases.stop()
    finisher.join(5)
    assert not finisher.is_alive()
    assert time.monotonic() - started < 3
    assert queue.of("delete")


def test_the_keeper_thread_renews_on_its_own(queue: FakeQueue) -> None:
    leases = LeaseKeeper(queue, 1)  # type: ignore[arg-type]
    leases.hold("run-1", message("b", "m-1", "r-1"))
    leases.start()
    try:
        deadline = time.monotonic() + 5
        while len(queue.of("change_visibility")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        leases.stop()
    assert queue.of("change_visibility")[:2] == [("change_visibility", "r-1", 1)] * 2
