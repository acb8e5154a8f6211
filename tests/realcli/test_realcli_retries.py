"""The fleet's retries of a rate-limited run, with the genuine CLI: a real-mode
node on the moto server runs the pinned CLI against the scripted API stand-in,
which answers 429 with `x-should-retry: false`, and the node lets the CLI make
no retries of its own (--claude-max-retries 0). The CLI gives up at once; the
node classifies its result line as RateLimited and puts the message back for
the retry policy's delay; the next attempt is the same command, received
again. One node for both cases: node start-ups are dear.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.conftest import wait_until
from tests.realcli import test_node_real_mode as real_mode
from tests.realcli.anthropic_standin import AnthropicStandin, ApiError, Text
from tests.realcli.test_node_real_mode import Launch, RealNode

launch, api = real_mode.launch, real_mode.api

RETRY_DELAY = 1


def seconds(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def events_of(node: RealNode, event_type: str, run_id: str) -> list[dict[str, Any]]:
    return sorted(node.stack.of(event_type, run_id), key=lambda e: e["data"]["attempt"])


def assert_rate_limited(event: dict[str, Any], attempt: int) -> None:
    data = event["data"]
    assert event["event_type"] == "TaskFailed", event
    assert data["error"]["type"] == "RateLimited", data["error"]
    assert "429" in data["error"]["message"], data["error"]
    assert data["attempt"] == attempt


def test_a_rate_limited_run_is_retried_later_and_the_last_attempt_says_so(
    launch: Launch, api: AnthropicStandin
) -> None:
    node = launch(api, "--claude-max-retries", "0", "--retry-delay", str(RETRY_DELAY))

    # The limit lifts after one answer: the second attempt completes.
    api.add(ApiError(429, should_retry=False, times=1))
    api.add(Text("done on the second try"))
    recovers, failed = node.run(prompt="hello")
    assert_rate_limited(failed, attempt=1)
    completed = node.stack.wait_event("TaskCompleted", recovers, timeout=60)
    assert completed["data"]["result"]["text"] == "done on the second try"
    assert len(node.stack.of("TaskFailed", recovers)) == 1
    assert (failed["data"]["retryable"], failed["data"]["final_attempt"]) == (True, False)
    started = events_of(node, "TaskStarted", recovers)
    assert [e["data"]["attempt"] for e in started] == [1, 2]
    # Hidden for at least the delay (a lower bound only).
    assert seconds(started[1]) - seconds(failed) >= RETRY_DELAY - 0.01
    assert len(api.main_requests) == 2, "--claude-max-retries 0: the CLI did not retry"

    # The limit stays: the task's own two attempts, then it gives up and says so.
    api.add(ApiError(429, should_retry=False))
    gives_up, first = node.run(prompt="hello again", retry={"max_attempts": 2})
    assert_rate_limited(first, attempt=1)
    assert (first["data"]["retryable"], first["data"]["final_attempt"]) == (True, False)
    last = node.stack.wait_for(
        lambda e: (
            e["event_type"] == "TaskFailed"
            and e["data"]["run_id"] == gives_up
            and e["data"]["attempt"] == 2
        ),
        60,
    )
    assert_rate_limited(last, attempt=2)
    assert (last["data"]["retryable"], last["data"]["final_attempt"]) == (False, True)
    # Deleted: nothing left in the queue to run a third time.
    assert wait_until(lambda: node.stack.queue_counts() == (0, 0), 15), node.stack.queue_counts()
    node.stack.drain_events(2.0)
    assert len(node.stack.of("TaskStarted", gives_up)) == 2
    assert len(api.main_requests) == 4
