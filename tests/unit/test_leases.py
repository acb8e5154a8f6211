"""node/leases.py: renewing, deleting and releasing messages, with a fake queue and clock."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import botocore.exceptions
import pytest
from tests.conftest import wait_until
from unit_support import FakeQueue, client_error, message

from claude_code_scheduler.aws.clients import (
    LEASE_CALLS,
    POLL_CALLS,
    PUBLISH_CALLS,
    UPLOAD_CALLS,
    CallBounds,
    make_node_clients,
)
from claude_code_scheduler.aws.limits import MAX_POLL_WAIT_SECONDS
from claude_code_scheduler.aws.queue import QueueClient
from claude_code_scheduler.node.leases import (
    DELETE_RETRY_SECONDS,
    LEASE_CALL_SECONDS,
    MIN_VISIBILITY_SECONDS,
    RENEW_MARGIN_SECONDS,
    RENEW_RETRY_SECONDS,
    LeaseKeeper,
    lease_threads,
    min_visibility_timeout,
    renewal_interval,
)


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


def test_a_release_can_hide_the_message_a_while_first(queue: FakeQueue, clock: Clock) -> None:
    leases = keeper(queue, clock)
    leases.hold(message("b", "m-1", "r-1"))
    leases.release(["m-1"], after=120)
    leases.tick()
    assert queue.calls == [("change_visibility", "r-1", 120)]
    assert leases.holding() == set()


def test_a_redelivery_during_a_write_keeps_the_new_delivery_held(clock: Clock) -> None:
    """The write was for the old receipt: the new delivery is the lifecycle's
    to decide, and stays held (and renewed) meanwhile."""

    class RedeliveredDuringRelease(FakeQueue):
        def change_visibility(self, receipt_handle: str, seconds: int) -> None:
            super().change_visibility(receipt_handle, seconds)
            if receipt_handle == "r-old":
                leases.hold(message("b", "m-1", "r-new"))

    queue = RedeliveredDuringRelease()
    leases = keeper(queue, clock)
    leases.hold(message("b", "m-1", "r-old"))
    leases.release(["m-1"])
    leases.tick()
    assert queue.calls == [("change_visibility", "r-old", 0)]
    assert leases.holding() == {"m-1"}
    clock.now += 10
    leases.tick()
    assert queue.calls[-1] == ("change_visibility", "r-new", 30)


# --- the renewal schedule and the call bound ----------------------------------------


def test_call_bounds_add_up_every_attempt_and_the_longest_backoff() -> None:
    assert CallBounds(connect=2, read=3, attempts=1).seconds == 5
    assert CallBounds(connect=3, read=10, attempts=2).seconds == 2 * 13 + 1
    assert CallBounds(connect=5, read=30, attempts=3).seconds == 3 * 35 + 1 + 2
    assert LEASE_CALLS.seconds == LEASE_CALL_SECONDS


def test_the_minimum_visibility_leaves_room_for_one_hung_renewal() -> None:
    """Renewed at a third of the step, a renewal may hang for the whole call
    bound and its retry still land before the lease ends; one second less
    and it may not."""
    need = LEASE_CALL_SECONDS + RENEW_MARGIN_SECONDS
    for step in [*range(MIN_VISIBILITY_SECONDS, MIN_VISIBILITY_SECONDS + 1000), 43200]:
        assert step - renewal_interval(step) >= need, step
    below = MIN_VISIBILITY_SECONDS - 1
    assert below - renewal_interval(below) < need
    assert min_visibility_timeout(LEASE_CALL_SECONDS) == MIN_VISIBILITY_SECONDS
    # The number docs/semantics.md gives.
    assert MIN_VISIBILITY_SECONDS == 11


def test_min_visibility_grows_with_the_call_bound() -> None:
    assert min_visibility_timeout(5) < min_visibility_timeout(10) < min_visibility_timeout(60)
    # botocore's default read timeout of 60 s would need a queue timeout of 93 s.
    assert min_visibility_timeout(60) == 93


def test_every_message_a_node_can_hold_gets_a_call_thread() -> None:
    assert lease_threads(1) == 3
    assert lease_threads(8) == 10


def test_a_renewal_that_failed_fast_is_tried_again_a_second_later(
    queue: FakeQueue, clock: Clock
) -> None:
    leases = keeper(queue, clock, step=30)
    leases.hold(message("b", "m-1", "r-1"))
    queue.fail_with = client_error("ServiceUnavailable", 503, "ChangeMessageVisibility")
    clock.now += 10
    leases.tick()
    queue.fail_with = None
    clock.now += RENEW_RETRY_SECONDS / 2
    leases.tick()
    assert len(queue.calls) == 1, "not at once: a refused connection would loop hot"
    clock.now += RENEW_RETRY_SECONDS / 2
    leases.tick()
    assert queue.calls == [("change_visibility", "r-1", 30)] * 2


def test_a_renewal_refused_for_good_waits_for_the_next_interval(
    queue: FakeQueue, clock: Clock
) -> None:
    leases = keeper(queue, clock, step=30)
    leases.hold(message("b", "m-1", "r-1"))
    queue.fail_with = client_error("ReceiptHandleIsInvalid", 400, "ChangeMessageVisibility")
    clock.now += 10
    leases.tick()
    clock.now += 5
    leases.tick()
    assert len(queue.calls) == 1
    clock.now += 5
    leases.tick()
    assert len(queue.calls) == 2


def read_timeout() -> Exception:
    return botocore.exceptions.ReadTimeoutError(endpoint_url="https://sqs.example")


class TimingOutQueue(FakeQueue):
    """The first renewal hangs for the whole call bound (on the keeper's
    clock) and then times out, as on a network that drops every packet."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.hangs = 1

    def change_visibility(self, receipt_handle: str, seconds: int) -> None:
        if self.hangs:
            self.hangs -= 1
            self._record("timed out", receipt_handle, seconds)
            self.clock.now += LEASE_CALL_SECONDS
            raise read_timeout()
        super().change_visibility(receipt_handle, seconds)


@pytest.mark.parametrize("step", [MIN_VISIBILITY_SECONDS, 30])
def test_a_renewal_that_hung_is_tried_again_at_once_and_lands_in_time(
    clock: Clock, step: int
) -> None:
    """Not a whole interval later: at 30 s that would be 10 s after the hung
    call gave up."""
    queue = TimingOutQueue(clock)
    leases = keeper(queue, clock, step=step)
    received = clock.now
    leases.hold(message("b", "m-1", "r-1"))
    clock.now += renewal_interval(step)
    leases.tick()
    leases.tick()
    assert queue.calls == [("timed out", "r-1", step), ("change_visibility", "r-1", step)]
    # Sent with the margin still left of the lease.
    assert clock.now <= received + step - RENEW_MARGIN_SECONDS


# --- a silent network: one hung call holds up nothing else -------------------------


class HangingQueue(FakeQueue):
    """ChangeMessageVisibility for one receipt hangs until `answer` is set,
    then times out, as a call does when packets are dropped without a reset."""

    def __init__(self, receipt: str) -> None:
        super().__init__()
        self.hung_receipt = receipt
        self.hanging = threading.Event()
        self.answer = threading.Event()

    def change_visibility(self, receipt_handle: str, seconds: int) -> None:
        if receipt_handle == self.hung_receipt:
            self._record("hung", receipt_handle, seconds)
            self.hanging.set()
            self.answer.wait(30)
            raise read_timeout()
        super().change_visibility(receipt_handle, seconds)


@contextlib.contextmanager
def running(leases: LeaseKeeper, queue: HangingQueue, clock: Callable[[], float]) -> Iterator[None]:
    leases.start()
    try:
        yield
    finally:
        queue.answer.set()
        leases.stop(clock())


def renewals(queue: FakeQueue) -> list[str]:
    return sorted(call[1] for call in queue.of("change_visibility"))


# On time: within a few of the keeper's naps (MAX_NAP_SECONDS) in real time.
ON_TIME = 3.0


def test_a_hung_renewal_holds_up_no_other_renewal_and_no_delete(clock: Clock) -> None:
    queue = HangingQueue("r-hung")
    leases = LeaseKeeper(queue, 30, clock=clock)
    for name in ("hung", "a", "b"):
        leases.hold(message("b", f"m-{name}", f"r-{name}"))
    with running(leases, queue, clock):
        clock.now += 10
        assert wait_until(lambda: renewals(queue) == ["r-a", "r-b"], timeout=ON_TIME)
        assert queue.hanging.is_set()
        leases.hold(message("b", "m-done", "r-done"))
        leases.delete(["m-done"])
        assert wait_until(lambda: queue.of("delete") == [("delete", "r-done")], timeout=ON_TIME)
        clock.now += 10
        assert wait_until(lambda: renewals(queue) == ["r-a", "r-a", "r-b", "r-b"], timeout=ON_TIME)
        # Due again, but its first renewal is still in flight: not stacked.
        assert queue.of("hung") == [("hung", "r-hung", 30)]
        assert leases.holding() == {"m-hung", "m-a", "m-b"}


def test_a_message_whose_call_hangs_gets_its_delete_once_the_call_gives_up(
    clock: Clock,
) -> None:
    queue = HangingQueue("r-1")
    leases = LeaseKeeper(queue, 30, clock=clock)
    leases.hold(message("b", "m-1", "r-1"))
    with running(leases, queue, clock):
        clock.now += 10
        assert queue.hanging.wait(ON_TIME)
        leases.delete(["m-1"])
        assert not wait_until(lambda: bool(queue.of("delete")), timeout=1.0)
        queue.answer.set()
        assert wait_until(lambda: queue.of("delete") == [("delete", "r-1")], timeout=ON_TIME)
        assert wait_until(lambda: leases.holding() == set(), timeout=ON_TIME)


def test_stop_keeps_its_deadline_with_a_release_hanging() -> None:
    queue = HangingQueue("r-1")
    leases = LeaseKeeper(queue, 30)
    leases.hold(message("b", "m-1", "r-1"))
    leases.start()
    try:
        leases.release(["m-1"])
        assert queue.hanging.wait(ON_TIME)
        started = time.monotonic()
        leases.stop(time.monotonic() + 0.5)
        assert not leases._thread.is_alive()
        assert time.monotonic() - started < 2.0
    finally:
        queue.answer.set()


# --- the lease client on a silent network (real sockets on loopback) ---------------


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials to sign with, and nothing from the machine's AWS setup."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")


@contextlib.contextmanager
def silent_endpoint() -> Iterator[str]:
    """Accepts connections (the kernel does, from the backlog) and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as server:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


@contextlib.contextmanager
def unconnectable_endpoint() -> Iterator[str]:
    """A listener whose accept queue is full: Linux drops further SYNs, so a
    connect hangs as it does to a host behind a silent network."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        address = server.getsockname()
        fillers = [socket.socket() for _ in range(2)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(address)
            yield f"http://127.0.0.1:{address[1]}"
        finally:
            for filler in fillers:
                filler.close()


def lease_queue(endpoint: str) -> QueueClient:
    clients = make_node_clients(region="us-east-1", endpoint_url=endpoint)
    return QueueClient(clients.sqs_leases, f"{endpoint}/123456789012/tasks")


@pytest.mark.parametrize("call", ["change_visibility", "delete"])
def test_a_lease_call_to_a_silent_endpoint_gives_up_within_its_bound(
    aws_env: None, call: str
) -> None:
    with silent_endpoint() as endpoint:
        queue = lease_queue(endpoint)
        started = time.monotonic()
        with pytest.raises(botocore.exceptions.ReadTimeoutError):
            if call == "delete":
                queue.delete("r-1")
            else:
                queue.change_visibility("r-1", 30)
        took = time.monotonic() - started
    # One attempt: it waited out the read timeout once, not once per retry.
    assert LEASE_CALLS.read - 0.1 <= took < LEASE_CALL_SECONDS + 1.0


def test_a_lease_call_that_cannot_connect_gives_up_within_its_bound(aws_env: None) -> None:
    with unconnectable_endpoint() as endpoint:
        queue = lease_queue(endpoint)
        started = time.monotonic()
        with pytest.raises(
            (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError)
        ):
            queue.change_visibility("r-1", 30)
        took = time.monotonic() - started
    assert took < LEASE_CALL_SECONDS + 1.0


def test_each_kind_of_call_gets_its_own_bounds(aws_env: None) -> None:
    clients = make_node_clients(
        region="us-east-1", endpoint_url="http://127.0.0.1:9", lease_connections=25
    )
    for client, bounds in [
        (clients.sqs_leases, LEASE_CALLS),
        (clients.sqs, POLL_CALLS),
        (clients.sns, PUBLISH_CALLS),
        (clients.s3, UPLOAD_CALLS),
    ]:
        config: Any = client.meta.config  # botocore's Config sets these at run time
        assert (config.connect_timeout, config.read_timeout) == (bounds.connect, bounds.read)
        assert config.retries["total_max_attempts"] == bounds.attempts
    # A long poll must end on the server's side, never on the client's timeout.
    assert POLL_CALLS.read > MAX_POLL_WAIT_SECONDS
    lease_config: Any = clients.sqs_leases.meta.config
    assert lease_config.max_pool_connections == 25
    assert clients.sqs_leases is not clients.sqs
