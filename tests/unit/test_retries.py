"""node/retries.py RetryPolicy, the two options that set it, and the queue's
RedrivePolicy it is bounded by."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from unit_support import QUEUE_URL, TOPIC_ARN, make_config

from claude_code_scheduler.aws.limits import MAX_VISIBILITY_SECONDS
from claude_code_scheduler.aws.queue import QueueAttributes, QueueClient
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.node.command import build_config, node
from claude_code_scheduler.node.retries import (
    BACKOFF_CAP_SECONDS,
    JITTER_FRACTION,
    MAX_FIRST_DELAY_SECONDS,
    MAX_RETRY_DELAY_SECONDS,
    RetryPolicy,
)


def lowest(low: float, high: float) -> float:
    return low


def highest(low: float, high: float) -> float:
    return high


# --- delays ----------------------------------------------------------------------------


def test_the_delay_starts_at_the_first_delay_and_doubles_with_each_attempt() -> None:
    policy = RetryPolicy(first_delay=30, max_attempts=3, uniform=lowest)
    assert [policy.delay(attempt) for attempt in range(1, 6)] == [30, 60, 120, 240, 480]


def test_the_jitter_only_adds_and_at_most_half_again() -> None:
    """Seeded: every delay lies between the backoff and one and a half times
    it, and they differ, so tasks that failed together come back apart."""
    rng = random.Random(13)
    policy = RetryPolicy(first_delay=10, max_attempts=3, uniform=rng.uniform)
    for attempt in range(1, 6):
        backoff = 10 * 2 ** (attempt - 1)
        delays = [policy.delay(attempt) for _ in range(200)]
        assert min(delays) >= backoff
        assert max(delays) <= backoff * (1 + JITTER_FRACTION)
        assert len(set(delays)) > backoff * JITTER_FRACTION / 2, "no spread"
    assert RetryPolicy(10, 3, uniform=highest).delay(2) == 30


def test_the_delay_is_capped_well_below_the_visibility_limit() -> None:
    policy = RetryPolicy(first_delay=MAX_FIRST_DELAY_SECONDS, max_attempts=3, uniform=highest)
    delays = [policy.delay(attempt) for attempt in (1, 2, 10, 64, 10_000)]
    assert all(delay == MAX_RETRY_DELAY_SECONDS for delay in delays)
    assert MAX_RETRY_DELAY_SECONDS <= MAX_VISIBILITY_SECONDS / 10
    # At the cap the jitter is kept: a storm at the cap still spreads out.
    capped = RetryPolicy(first_delay=30, max_attempts=3, uniform=lowest).delay(40)
    assert capped == BACKOFF_CAP_SECONDS < MAX_RETRY_DELAY_SECONDS


def test_the_delay_is_whole_seconds_and_a_zero_first_delay_retries_at_once() -> None:
    assert RetryPolicy(first_delay=1.2, max_attempts=3, uniform=lowest).delay(1) == 2
    assert RetryPolicy(first_delay=0, max_attempts=3).delay(5) == 0


# --- attempts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node_max", "task_max", "max_receive_count", "allowed"),
    [
        (3, None, None, 3),  # the node's default
        (3, 5, None, 5),  # a task's own max_attempts, above the node's
        (3, 1, None, 1),  # and below it
        (3, None, 10, 3),
        (20, None, 10, 9),  # kept below the dead-letter queue's maxReceiveCount
        (3, 50, 10, 9),  # a task's too
        (3, None, 3, 2),
        (3, None, 1, 1),  # the receive under way is always an attempt
    ],
)
def test_the_attempts_allowed(
    node_max: int, task_max: int | None, max_receive_count: int | None, allowed: int
) -> None:
    policy = RetryPolicy(first_delay=30, max_attempts=node_max, max_receive_count=max_receive_count)
    assert policy.attempts_allowed(task_max) == allowed
    assert [policy.is_final(attempt, task_max) for attempt in range(1, allowed + 1)] == [
        *[False] * (allowed - 1),
        True,
    ]
    # A receive count past the limit (hand-backs count too) is final as well.
    assert policy.is_final(allowed + 3, task_max)


# --- the options -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        ({"retry_delay": -1}, "--retry-delay"),
        ({"retry_delay": MAX_FIRST_DELAY_SECONDS + 1}, "--retry-delay"),
        ({"retry_delay": float("nan")}, "--retry-delay"),
        ({"retry_max_attempts": 0}, "--retry-max-attempts"),
    ],
)
def test_the_config_refuses_retry_settings_that_cannot_work(
    overrides: dict[str, Any], option: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^{option}: "):
        make_config(**overrides)


def test_the_retry_options_map_onto_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CLAUDE_NODE_RETRY_DELAY", "CLAUDE_NODE_RETRY_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    resources = ["--queue-url", QUEUE_URL, "--topic-arn", TOPIC_ARN, "--log-bucket", "logs"]
    with node.make_context("node", list(resources)) as ctx:
        defaults = build_config(ctx.params, None)
    assert (defaults.retry_delay, defaults.retry_max_attempts) == (30.0, 3)
    monkeypatch.setenv("CLAUDE_NODE_RETRY_DELAY", "2.5")
    with node.make_context("node", [*resources, "--retry-max-attempts", "7"]) as ctx:
        given = build_config(ctx.params, None)
    assert (given.retry_delay, given.retry_max_attempts) == (2.5, 7)


# --- the queue's RedrivePolicy -----------------------------------------------------------


class AttributesOnly:
    """The one SQS call QueueClient.attributes makes, answering as SQS does."""

    def __init__(self, attributes: dict[str, str]) -> None:
        self.attributes = attributes

    def get_queue_attributes(self, **_: Any) -> dict[str, Any]:
        return {"Attributes": self.attributes}


@pytest.mark.parametrize(
    ("attributes", "max_receive_count"),
    [
        ({"VisibilityTimeout": "30"}, None),
        ({"VisibilityTimeout": "30", "RedrivePolicy": ""}, None),
        # SQS returns the number as it was set: a number or a string of one.
        (
            {"VisibilityTimeout": "30", "RedrivePolicy": json.dumps({"maxReceiveCount": 10})},
            10,
        ),
        (
            {"VisibilityTimeout": "30", "RedrivePolicy": json.dumps({"maxReceiveCount": "4"})},
            4,
        ),
    ],
)
def test_the_queue_attributes_carry_the_redrive_policys_max_receive_count(
    attributes: dict[str, str], max_receive_count: int | None
) -> None:
    queue = QueueClient(AttributesOnly(attributes), QUEUE_URL)  # type: ignore[arg-type]
    assert queue.attributes() == QueueAttributes(30, max_receive_count)
