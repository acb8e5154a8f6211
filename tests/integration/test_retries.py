"""The fleet's own retries end to end: a mock-mode node process on the moto
server, its queue with a dead-letter queue, and runs whose failure is
retryable (a workspace whose git server refuses the connection: git's own
words, nothing simulated). Each attempt is a receive of the same message,
hidden for the retry policy's delay in between; the last one says so and its
message is deleted, so the dead-letter queue stays empty.

One node for every case: node start-ups are dear.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from tests.conftest import wait_until
from tests.gitserver import free_port, require_git
from tests.integration.conftest import NodeProcess, Stack, command

# maxReceiveCount 4: the fleet gives up after 3 attempts, whatever it is told.
MAX_RECEIVE_COUNT = 4
RETRY_DELAY = 1


def with_dead_letter_queue(stack: Stack, max_receive_count: int) -> str:
    dlq_url = stack.sqs.create_queue(QueueName=f"{stack.queue_url.rsplit('/', 1)[1]}-dlq")[
        "QueueUrl"
    ]
    dlq_arn = stack.sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    policy = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}
    stack.sqs.set_queue_attributes(
        QueueUrl=stack.queue_url, Attributes={"RedrivePolicy": json.dumps(policy)}
    )
    return str(dlq_url)


def unreachable_workspace(**task: Any) -> dict[str, Any]:
    """A clone that fails transiently: nothing listens on the port."""
    url = f"git://127.0.0.1:{free_port()}/nowhere.git"
    return command(workspace={"git": {"url": url}}, mock={"duration_seconds": 0.1}, **task)


def seconds(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def attempts_of(
    stack: Stack, node: NodeProcess, run_id: str, attempts: int
) -> list[dict[str, Any]]:
    """The run's TaskFailed events, once there are `attempts` of them."""
    try:
        stack.wait_for(
            lambda e: (
                e["event_type"] == "TaskFailed"
                and e["data"]["run_id"] == run_id
                and e["data"]["attempt"] == attempts
            ),
            60.0,
        )
    except AssertionError as exc:
        said = [line for line in node.stderr.splitlines() if run_id in line]
        raise AssertionError(f"{exc}\nthe node on {run_id}:\n" + "\n".join(said)) from None
    return sorted(stack.of("TaskFailed", run_id), key=lambda e: e["data"]["attempt"])


def test_a_retryable_failure_is_retried_with_a_growing_delay_until_the_last_attempt(
    stack: Stack, start_node: Any
) -> None:
    require_git()
    dlq_url = with_dead_letter_queue(stack, MAX_RECEIVE_COUNT)
    node = start_node(
        stack,
        "--mock-mode",
        "--poll-wait-seconds",
        "1",
        "--max-concurrent-tasks",
        "2",
        "--retry-delay",
        str(RETRY_DELAY),
        # More than the dead-letter queue allows: kept to 3.
        "--retry-max-attempts",
        "10",
    )
    by_node = unreachable_workspace()
    by_task = unreachable_workspace(retry={"max_attempts": 2})
    stack.send(by_node)
    stack.send(by_task)

    for cmd, attempts in ((by_node, MAX_RECEIVE_COUNT - 1), (by_task, 2)):
        run_id = cmd["run_id"]
        failed = attempts_of(stack, node, run_id, attempts)
        assert [e["data"]["attempt"] for e in failed] == list(range(1, attempts + 1))
        for event in failed:
            assert event["data"]["error"]["type"] == "WorkspaceError"
            assert "Connection refused" in event["data"]["error"]["message"]
        # Every attempt but the last goes back; the last one says it was.
        flags = [(e["data"]["retryable"], e["data"]["final_attempt"]) for e in failed]
        assert flags == [(True, False)] * (attempts - 1) + [(False, True)], flags
        started = sorted(stack.of("TaskStarted", run_id), key=lambda e: e["data"]["attempt"])
        assert [e["data"]["attempt"] for e in started] == list(range(1, attempts + 1))
        # Hidden for the delay after each failure, doubling: a lower bound
        # only (the message is released once the bus took the event, and the
        # node polls every second). Event times are in milliseconds.
        for retry, (failure, next_start) in enumerate(zip(failed, started[1:], strict=False)):
            waited = seconds(next_start) - seconds(failure)
            assert waited >= RETRY_DELAY * 2**retry - 0.01, (retry, waited)

    # The last attempt's message was deleted, not left for the dead-letter queue.
    assert wait_until(lambda: stack.queue_counts() == (0, 0), 15), stack.queue_counts()
    stack.drain_events(3.0)
    for cmd, attempts in ((by_node, MAX_RECEIVE_COUNT - 1), (by_task, 2)):
        assert len(stack.of("TaskStarted", cmd["run_id"])) == attempts, "ran after its last"
    dlq = stack.sqs.get_queue_attributes(
        QueueUrl=dlq_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert dlq == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}
    assert "--retry-max-attempts 10: the queue's dead-letter queue takes a message after 4" in (
        node.stderr
    )
