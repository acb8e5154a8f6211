"""retry.py and aws.is_transient: what is retried, and that a stop interrupts it."""

from __future__ import annotations

import threading
import time
from typing import Any

import botocore.exceptions
import pytest
import tenacity
from unit_support import client_error

from claude_code_scheduler.aws.errors import error_code, is_transient
from claude_code_scheduler.aws.retry import through_outage


@pytest.mark.parametrize(
    "exc",
    [
        client_error("Throttling"),
        client_error("ThrottlingException"),
        client_error("RequestLimitExceeded"),
        client_error("SlowDown", 503),
        client_error("InternalError", 500),
        client_error("ServiceUnavailable", 503),
        client_error("SomethingNew", 500),
        client_error("", 502),
        client_error("", 504),
        botocore.exceptions.EndpointConnectionError(endpoint_url="http://localhost:1"),
        botocore.exceptions.ConnectTimeoutError(endpoint_url="http://localhost:1"),
        botocore.exceptions.ReadTimeoutError(endpoint_url="http://localhost:1"),
        botocore.exceptions.ConnectionClosedError(endpoint_url="http://localhost:1"),
    ],
    ids=lambda e: error_code(e) or type(e).__name__,
)
def test_transient(exc: Exception) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        client_error("AccessDenied", 403),
        client_error("AccessDeniedException", 400),
        client_error("QueueDoesNotExist", 400),
        client_error("AWS.SimpleQueueService.NonExistentQueue", 400),
        client_error("NotFound", 404),
        client_error("InvalidParameter", 400),
        client_error("ReceiptHandleIsInvalid", 400),
        botocore.exceptions.NoCredentialsError(),
        ValueError("boom"),
        KeyError("x"),
    ],
    ids=lambda e: error_code(e) or type(e).__name__,
)
def test_not_transient(exc: Exception) -> None:
    assert not is_transient(exc)


def test_error_code() -> None:
    assert error_code(client_error("Throttling")) == "Throttling"
    assert error_code(ValueError("x")) == "ValueError"


class Flaky:
    def __init__(self, failures: list[Exception], always: Exception | None = None) -> None:
        self.failures = failures
        self.always = always
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        if self.always is not None:
            raise self.always
        return f"ok {args} {kwargs}"


def test_transient_failures_are_retried_until_success() -> None:
    call = Flaky([client_error("Throttling"), client_error("InternalError", 500)])
    result = through_outage("x", interrupt=threading.Event())(call, 1, key="v")
    assert result == "ok (1,) {'key': 'v'}"
    assert call.calls == 3


@pytest.mark.parametrize(
    "exc",
    [client_error("AccessDenied", 403), client_error("QueueDoesNotExist"), ValueError("bad")],
)
def test_non_transient_errors_are_not_retried(exc: Exception) -> None:
    call = Flaky([], always=exc)
    with pytest.raises(type(exc)):
        through_outage("x", interrupt=threading.Event())(call)
    assert call.calls == 1


def test_a_set_interrupt_stops_after_the_first_failure() -> None:
    interrupt = threading.Event()
    interrupt.set()
    call = Flaky([], always=client_error("Throttling"))
    with pytest.raises(botocore.exceptions.ClientError):
        through_outage("x", interrupt=interrupt)(call)
    assert call.calls == 1


def test_the_interrupt_cuts_a_long_backoff_short() -> None:
    interrupt = threading.Event()
    call = Flaky([], always=client_error("ServiceUnavailable", 503))
    retrying = through_outage("x", interrupt=interrupt).copy(wait=tenacity.wait_fixed(30))
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            retrying(call)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    interrupt.set()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 2
    assert isinstance(outcome[0], botocore.exceptions.ClientError)
    assert call.calls <= 2


def test_an_extra_stop_condition_is_honoured() -> None:
    call = Flaky([], always=client_error("Throttling"))
    retrying = through_outage(
        "x", interrupt=threading.Event(), stop=tenacity.stop_after_attempt(3)
    ).copy(wait=tenacity.wait_none())
    with pytest.raises(botocore.exceptions.ClientError):
        retrying(call)
    assert call.calls == 3


def test_backoff_is_bounded_by_max_wait() -> None:
    retrying = through_outage("x", interrupt=threading.Event(), max_wait=0.05)
    call = Flaky([client_error("Throttling")] * 4)
    started = time.monotonic()
    retrying(call)
    assert call.calls == 5
    assert time.monotonic() - started < 1
