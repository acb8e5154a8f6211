"""Retrying through an outage, on top of botocore's per-call retries.

botocore's standard mode already retries each call a few times within seconds;
these policies cover what outlasts that (the bus or the bucket down for
minutes). They retry only transient errors, with full-jitter exponential
backoff, and sleep on an Event so that a stopping node is never stuck in one.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import tenacity

from claude_code_scheduler.aws.errors import error_code, is_transient

log = logging.getLogger(__name__)


def _log_retry(what: str) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s failed (%s); retrying, attempt %d",
            what,
            error_code(exc) if exc else "?",
            state.attempt_number,
        )

    return before_sleep


def through_outage(
    what: str,
    *,
    interrupt: threading.Event,
    stop: Any = None,
    max_wait: float = 20.0,
) -> tenacity.Retrying:
    """Retry transient failures until `stop` says so or `interrupt` is set."""

    def sleep(seconds: float) -> None:
        interrupt.wait(seconds)

    give_up = tenacity.stop_any(
        tenacity.stop_when_event_set(interrupt),
        *([stop] if stop is not None else []),
    )
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        wait=tenacity.wait_random_exponential(multiplier=0.5, max=max_wait),
        stop=give_up,
        sleep=sleep,
        before_sleep=_log_retry(what),
        reraise=True,
    )


def full_jitter(attempt: int, *, base: float, cap: float) -> float:
    """Seconds to wait before retry number `attempt` (from 1): anywhere from 0
    to base * 2**attempt, at most `cap` ("full jitter")."""
    return random.uniform(0, min(cap, base * 2.0 ** min(attempt, 30)))
