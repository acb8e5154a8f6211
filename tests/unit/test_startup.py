"""node/startup.py check_queue: waiting for an endpoint that is not up yet, failing
at once for a queue that is wrong, refusing a visibility timeout the leases
cannot keep, and reading the dead-letter queue's maxReceiveCount."""

from __future__ import annotations

import logging
import socket
import time

import botocore.exceptions
import pytest
import tenacity
from unit_support import FakeQueue, client_error

from claude_code_scheduler.aws.clients import make_node_clients
from claude_code_scheduler.aws.queue import QueueAttributes, QueueClient
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.node.leases import LEASE_CALL_SECONDS, MIN_VISIBILITY_SECONDS
from claude_code_scheduler.node.startup import STARTUP_BACKOFF_CAP, check_queue, startup_wait


class StartingQueue(FakeQueue):
    """GetQueueAttributes fails with `failures` (in order), then answers."""

    def __init__(self, *failures: Exception, visibility: int = 30) -> None:
        super().__init__()
        self.failures = list(failures)
        self.visibility = visibility

    def attributes(self) -> QueueAttributes:
        self._record("attributes")
        if self.failures:
            raise self.failures.pop(0)
        return QueueAttributes(self.visibility)


def refused() -> Exception:
    return botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9")


def no_sleep(seconds: float) -> None:
    raise AssertionError(f"slept {seconds}s: it should not have retried")


def test_an_endpoint_that_comes_up_late_is_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    queue = StartingQueue(refused(), refused())
    sleeps: list[float] = []
    with caplog.at_level(logging.WARNING):
        assert check_queue(queue, 60, sleep=sleeps.append) == QueueAttributes(30)
    assert len(queue.calls) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, "one line per failed try"
    for line in warnings:
        assert "the queue is not reachable" in line
        assert "Could not connect to the endpoint URL" in line
        assert "--startup-timeout" in line
    assert 0 < sleeps[0] <= sleeps[1] <= STARTUP_BACKOFF_CAP


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        ("AWS.SimpleQueueService.NonExistentQueue", "does not exist"),
        ("AccessDenied", "access denied"),
    ],
)
def test_a_wrong_queue_fails_at_once(code: str, fragment: str) -> None:
    queue = StartingQueue(client_error(code, 400, "GetQueueAttributes"))
    with pytest.raises(ConfigError, match=fragment) as raised:
        check_queue(queue, 60, sleep=no_sleep)
    assert str(raised.value).startswith("--queue-url: ")
    assert len(queue.calls) == 1


def test_an_endpoint_that_stays_down_fails_when_the_timeout_is_up() -> None:
    queue = StartingQueue(*[refused()] * 1000)
    started = time.monotonic()
    with pytest.raises(ConfigError) as raised:
        check_queue(queue, 1.5)
    took = time.monotonic() - started
    # The last try is made when the time is up, and a refusal is immediate.
    assert 1.5 <= took < 2.5
    line = str(raised.value)
    assert line.startswith("--queue-url: cannot reach the queue ")
    assert "--startup-timeout 1.5" in line
    assert "\n" not in line
    assert len(queue.calls) >= 3


def test_a_startup_timeout_of_zero_tries_once() -> None:
    queue = StartingQueue(*[refused()] * 5)
    with pytest.raises(ConfigError, match="1 try"):
        check_queue(queue, 0, sleep=no_sleep)
    assert len(queue.calls) == 1


def retry_state(attempt: int, elapsed: float) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = attempt
    state.outcome_timestamp = state.start_time + elapsed
    return state


def test_the_wait_backs_off_and_is_cut_short_at_the_timeout() -> None:
    wait = startup_wait(10.0)
    assert 0.5 <= wait(retry_state(1, 0.0)) <= 1.0
    assert 1.0 <= wait(retry_state(2, 1.0)) <= 1.5
    assert wait(retry_state(8, 2.0)) == STARTUP_BACKOFF_CAP
    assert wait(retry_state(8, 9.5)) == pytest.approx(0.5)
    assert wait(retry_state(8, 12.0)) == 0.0


def test_a_visibility_timeout_below_the_minimum_fails_with_the_numbers() -> None:
    too_short = MIN_VISIBILITY_SECONDS - 1
    with pytest.raises(ConfigError) as raised:
        check_queue(StartingQueue(visibility=too_short), 0)
    line = str(raised.value)
    assert line.startswith("--queue-url: ")
    assert f"VisibilityTimeout is {too_short}s" in line
    assert f"{MIN_VISIBILITY_SECONDS}s the node needs" in line
    accepted = check_queue(StartingQueue(visibility=MIN_VISIBILITY_SECONDS), 0)
    assert accepted.visibility_timeout == MIN_VISIBILITY_SECONDS


def test_the_check_through_the_real_client_gives_up_on_a_silent_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GetQueueAttributes goes through the lease client: one try on an
    endpoint that accepts and never answers ends within one call's bound."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    with socket.create_server(("127.0.0.1", 0), backlog=16) as server:
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        clients = make_node_clients(region="us-east-1", endpoint_url=endpoint)
        queue = QueueClient(clients.sqs_leases, f"{endpoint}/123456789012/tasks")
        started = time.monotonic()
        with pytest.raises(ConfigError, match="--queue-url: cannot reach the queue") as raised:
            check_queue(queue, 0)
        took = time.monotonic() - started
    assert took < LEASE_CALL_SECONDS + 1.0
    assert "Read timeout" in str(raised.value)
