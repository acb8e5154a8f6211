"""node/leases.py: renewing, deleting and releasing messages, with a fake queue and clock."""

from __future__ import annotations

import time

import pytest
from unit_support import FakeQueue, client_error, message

from claude_code_scheduler.node.leases import DELETE_RETRY_SECONDS, LeaseKeeper, renewal_interval


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
    return LeaseKeeper(queue, step, clock=clock)


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
    leases.hold(message("body", "m-1", "r-1"))
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
    leases.hold(message("b", "m-a", "r-a"))
    clock.now += 0.5
    leases.hold(message("b", "m-b", "r-b"))
    clock.now += 0.5
    leases.tick()
    assert queue.calls == [("change_visibility", "r-a", 3)]
    clock.now += 0.5
    leases.tick()
    assert queue.calls[-1] == ("change_visibility", "r-b", 3)
    assert len(queue.calls) == 2


def test_step_is_at_least_one_second(queue: FakeQueue, clock: Clock) -> None:
    leases = keeper(queue, clock, step=0)
    leases.hold(message("b", "m", "r"))
    clock.now += 1
    leases.tick()
    assert queue.calls == [("change_visibility", "r", 1)]


def test_a_redelivery_replaces_the_receipt_and_keeps_the_schedule(
    queue: FakeQueue, clock: Clock
) -> None:
    leases = keeper(queue, clock, step=30)
    leases.hold(message("b", "m-1", "old-receipt"))
    clock.now += 5
    leases.hold(message("b", "m-1", "new-receipt"))
    assert leases.holding() == {"m-1"}
    clock.now += 5
    leases.tick()
    assert queue.calls == [("change_visibility", "new-receipt", 30)]


def test_delete_deletes_and_stops_renewing(queue: FakeQueue, clock: Clock) -> None:
    leases = keeper(queue, clock)
    leases.hold(message("b", "m-1", "r-1"))
    leases.hold(message("b", "m-2", "r-2"))
    leases.delete(["m-1", "m-2"])
    assert leases.holding() == {"m-1", "m-2"}, "held until the delete went through"
    leases.tick()
    assert sorted(queue.calls) == [("delete", "r-1"), ("delete", "r-2")]
    assert leases.holding() == set()
    clock.now += 1000
    leases.tick()
    assert len(queue.calls) == 2


def test_writes_for_messages_not_held_do_nothing(queue: FakeQueue, clock: Clock) -> None:
    leases = keeper(queue, clock)
    leases.delete(["nope"])
    leases.release(["nope"])
    leases.tick()
    assert queue.calls == []


def test_release_makes_every_message_visible_at_once(queue: FakeQueue, clock: Clock) -> None:
    leases = keeper(queue, clock)
    leases.hold(message("b", "m-1", "r-1"))
    leases.hold(message("b", "m-2", "r-2"))
    leases.release(["m-1", "m-2"])
    clock.now += 1000  # no renewal of a message being released
    leases.tick()
    assert sorted(queue.calls) == [("change_visibility", "r-1", 0), ("change_visibility", "r-2", 0)]
    assert leases.holding() == set()
    clock.now += 1000
    leases.tick()
    assert len(queue.calls) == 2


def test_a_failed_release_is_not_retried(queue: FakeQueue, clock: Clock) -> None:
    queue.fail_with = client_error("InternalError", 500, "ChangeMessageVisibility")
    leases = keeper(queue, clock)
    leases.hold(message("b", "m-9", "r-9"))
    leases.release(["m-9"])
    leases.tick()
    clock.now += 1000
    leases.tick()
    assert queue.calls == [("change_visibility", "r-9", 0)]
    assert leases.holding() == set()


def test_a_redelivery_cancels_a_pending_release(queue: FakeQueue, clock: Clock) -> None:
    """A release still queued must not make the new delivery visible: the
    lifecycle decides about that one anew (it may be running it)."""
    leases = keeper(queue, clock)
    leases.hold(message("b", "m-1", "r-1"))
    leases.release(["m-1"])
    leases.hold(message("b", "m-1", "r-1-again"))
    leases.tick()
    assert queue.calls == []
    clock.now += 10
    leases.tick()
    assert queue.calls == [("change_visibility", "r-1-again", 30)]


def test_a_failed_renewal_is_tried_again_next_interval(queue: FakeQueue, clock: Clock) -> None:
    leases = keeper(queue, clock, step=30)
    leases.hold(message("b", "m-1", "r-1"))
    queue.fail_with = client_error("InternalError", 500, "ChangeMessageVisibility")
    clock.now += 10
    leases.tick()
    queue.fail_with = None
    clock.now += 10
    leases.tick()
    assert queue.calls == [("change_visibility", "r-1", 30)] * 2


class FlakyQueue(FakeQueue):
    """Deletes fail with `failures` (in order) before they succeed."""

    def __init__(self, *failures: Exception) -> None:
        super().__init__()
        self.failures = list(failures)

    def delete(self, receipt_handle: str) -> None:
        if self.failures:
            self._record("delete-failed", receipt_handle)
            raise self.failures.pop(0)
        super().delete(receipt_handle)


def test_delete_is_retried_through_a_transient_failure_and_renewed_meanwhile(
    clock: Clock,
) -> None:
    queue = FlakyQueue(client_error("ServiceUnavailable", 503, "DeleteMessage"))
    leases = keeper(queue, clock)
    leases.hold(message("b", "m-1", "r-1"))
    leases.delete(["m-1"])
    leases.tick()
    assert queue.calls == [("delete-failed", "r-1")]
    assert leases.holding() == {"m-1"}
    clock.now += 30
    leases.tick()
    assert queue.calls[1:] == [("change_visibility", "r-1", 30), ("delete", "r-1")]
    assert leases.holding() == set()


def test_a_permanent_delete_error_gives_up_at_once(queue: FakeQueue, clock: Clock) -> None:
    queue.fail_with = client_error("AccessDenied", 403, "DeleteMessage")
    leases = keeper(queue, clock)
    leases.hold(message("b", "m-1", "r-1"))
    leases.delete(["m-1"])
    leases.tick()
    clock.now += 1000
    leases.tick()
    assert queue.calls == [("delete", "r-1")]
    assert leases.holding() == set()


def test_a_delete_gives_up_after_its_retry_budget(clock: Clock) -> None:
    outage = [client_error("ServiceUnavailable", 503, "DeleteMessage")] * 1000
    queue = FlakyQueue(*outage)
    leases = keeper(queue, clock)
    leases.hold(message("b", "m-1", "r-1"))
    leases.delete(["m-1"])
    while leases.holding() and clock.now < 1000 + 10 * DELETE_RETRY_SECONDS:
        clock.now += 1
        leases.tick()
    assert leases.holding() == set()
    assert 1000 + DELETE_RETRY_SECONDS <= clock.now < 1000 + DELETE_RETRY_SECONDS + 30
    assert queue.of("delete") == []


def test_stop_ends_a_delete_retrying_through_an_outage_by_its_deadline() -> None:
    queue = FlakyQueue(*[client_error("ServiceUnavailable", 503, "DeleteMessage")] * 1000)
    leases = LeaseKeeper(queue, 30)
    leases.hold(message("b", "m-1", "r-1"))
    leases.start()
    leases.delete(["m-1"])
    time.sleep(0.3)
    started = time.monotonic()
    leases.stop(time.monotonic() + 1.0)
    assert not leases._thread.is_alive()
    assert time.monotonic() - started < 3
    assert queue.of("delete-failed")


def test_stop_finishes_the_pending_writes_first() -> None:
    queue = FakeQueue()
    leases = LeaseKeeper(queue, 30)
    leases.start()
    for index in range(5):
        leases.hold(message("b", f"m-{index}", f"r-{index}"))
    leases.release([f"m-{index}" for index in range(5)])
    leases.stop(time.monotonic() + 5)
    assert len(queue.of("change_visibility")) == 5


def test_the_keeper_thread_renews_on_its_own(queue: FakeQueue) -> None:
    leases = LeaseKeeper(queue, 1)
    leases.hold(message("b", "m-1", "r-1"))
    leases.start()
    try:
        deadline = time.monotonic() + 5
        while len(queue.of("change_visibility")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        leases.stop(time.monotonic())
    assert queue.of("change_visibility")[:2] == [("change_visibility", "r-1", 1)] * 2


def test_the_keeper_thread_writes_at_once_when_told(queue: FakeQueue) -> None:
    leases = LeaseKeeper(queue, 3600)
    leases.hold(message("b", "m-1", "r-1"))
    leases.start()
    try:
        leases.delete(["m-1"])
        deadline = time.monotonic() + 5
        while not queue.of("delete") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert queue.of("delete") == [("delete", "r-1")]
    finally:
        leases.stop(time.monotonic())
