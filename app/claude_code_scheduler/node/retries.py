"""The fleet's own retries: how many attempts a task gets, and how long its
message stays hidden between them.

An attempt is one receive of the task's message (SQS's ApproximateReceiveCount,
the run's `attempt`): every node counts the same way without sharing state, and
a receive that did not run (a full node, a shutdown's hand-back) counts too, as
it does for the dead-letter queue. The dead-letter queue takes a message on the
receive after its `maxReceiveCount`; the fleet gives up one receive before
that, so a healthy task that kept hitting a rate limit ends with a TaskFailed
that says so (`final_attempt`), not silently in the DLQ, and one receive is
left for a routine hand-back.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

# The longest nominal backoff (before jitter): a command that fails on every
# node still reaches a dead-letter queue of maxReceiveCount 10 within two
# hours. Well below SQS's 12 hours (aws.limits.MAX_VISIBILITY_SECONDS): that
# total counts from the receive that began the attempt, so a run that held its
# message for hours leaves less, and a release SQS refuses brings the task
# back after one lease step instead of after its backoff.
BACKOFF_CAP_SECONDS = 15 * 60
# Jitter adds up to this fraction of the nominal backoff on top of it.
JITTER_FRACTION = 0.5
# What RetryPolicy.delay can return: the cap with all of its jitter.
MAX_RETRY_DELAY_SECONDS = math.ceil(BACKOFF_CAP_SECONDS * (1 + JITTER_FRACTION))
# The first delay may be no longer than the cap, or it would not double.
MAX_FIRST_DELAY_SECONDS = BACKOFF_CAP_SECONDS


@dataclass(frozen=True)
class RetryPolicy:
    """`first_delay`: seconds before the first retry (--retry-delay);
    `max_attempts`: attempts of a task that does not set task.retry
    (--retry-max-attempts); `max_receive_count`: the queue's RedrivePolicy
    maxReceiveCount, None when it has no dead-letter queue."""

    first_delay: float
    max_attempts: int
    max_receive_count: int | None = None
    # random.uniform(low, high); injectable so that a test can pin it.
    uniform: Callable[[float, float], float] = field(
        default=random.uniform, compare=False, repr=False
    )

    def attempts_allowed(self, task_max: int | None) -> int:
        """The task's own max_attempts, else the node's; always below the
        dead-letter queue's maxReceiveCount, and at least the one attempt a
        received message has already begun."""
        allowed = task_max if task_max is not None else self.max_attempts
        if self.max_receive_count is not None:
            allowed = min(allowed, self.max_receive_count - 1)
        return max(1, allowed)

    def is_final(self, attempt: int, task_max: int | None) -> bool:
        """Whether attempt `attempt` (from 1) is the last one the policy allows."""
        return attempt >= self.attempts_allowed(task_max)

    def delay(self, attempt: int) -> int:
        """Whole seconds (what ChangeMessageVisibility takes) before attempt
        `attempt` is tried again: first_delay, doubling with each attempt, at
        most BACKOFF_CAP_SECONDS, plus jitter.

        The jitter is proportional and only ever adds ("at least --retry-delay":
        the operator's delay is a floor, for example the length of an API rate
        limit's window). A 429 storm fails many tasks at once; without jitter
        they would all come back in the same second and be limited together
        again. Up to half the backoff again spreads them over that much of the
        window. Full jitter (0 to the backoff) would retry some at once, and
        decorrelated jitter needs the previous delay, which no node knows: the
        attempt count is all the message carries."""
        doublings = max(0, min(attempt - 1, 32))
        backoff = min(float(BACKOFF_CAP_SECONDS), self.first_delay * 2.0**doublings)
        jittered = backoff * self.uniform(1.0, 1.0 + JITTER_FRACTION)
        return min(MAX_RETRY_DELAY_SECONDS, math.ceil(jittered))
