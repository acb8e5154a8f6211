"""`submit --wait` over a run's events, with a scripted reader: it waits on
through a failure the fleet retries, ends on one it does not, and prints what
the run cost at the end."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from claude_code_scheduler.client import follow as follow_module
from claude_code_scheduler.client.bus import BusEvent
from claude_code_scheduler.client.follow import follow_run
from claude_code_scheduler.errors import EXIT_FAILURE, EXIT_OK
from claude_code_scheduler.protocol.events import (
    ErrorType,
    Event,
    TaskUsage,
    task_completed,
    task_failed,
    task_output,
    task_started,
)

RUN = "r-1"
LOG_URI = "s3://bucket/logs/r-1.log"
USAGE = TaskUsage(total_cost_usd=0.0008, input_tokens=100, output_tokens=20, num_turns=1)


class ScriptedReader:
    """Hands out one batch of events per receive, then nothing."""

    def __init__(self, *batches: list[Event]) -> None:
        self._batches = [
            [BusEvent(event.body("node-1", "n", seq), {}) for seq, event in enumerate(batch, 1)]
            for batch in batches
        ]

    def receive(self, wait_seconds: int) -> list[BusEvent]:
        return self._batches.pop(0) if self._batches else []


def stdout_line(text: str) -> str:
    line = {"type": "assistant", "message": {"content": [{"type": "text", "text": text}]}}
    return json.dumps(line) + "\n"


def attempt(number: int, text: str) -> list[Event]:
    return [
        task_started(RUN, task_id=None, task_name=None, attempt=number, started_at=0),
        task_output(RUN, 0, "stdout", stdout_line(text)),
    ]


def rate_limited(number: int, *, final: bool) -> Event:
    return task_failed(
        RUN,
        ErrorType.RATE_LIMITED,
        "API Error: Request rejected (429)",
        retryable=not final,
        attempt=number,
        final_attempt=final,
        usage=TaskUsage(total_cost_usd=0.0),
    )


def follow(reader: ScriptedReader, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    # A wait timeout, so a wait that never ends fails the test instead of hanging it.
    options = {"raw": False, "wait_timeout": 10}
    code = follow_run(reader, RUN, options, threading.Event())
    return code, capsys.readouterr()


@pytest.fixture(autouse=True)
def no_late_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow_module, "LATE_OUTPUT_SECONDS", 0.0)


def test_a_retried_failure_is_waited_through_and_the_cost_adds_up(
    capsys: pytest.CaptureFixture[str],
) -> None:
    done = task_completed(
        RUN,
        exit_code=0,
        duration_seconds=1,
        log_uri=LOG_URI,
        output_bytes=10,
        result=None,
        usage=USAGE,
    )
    reader = ScriptedReader(
        [*attempt(1, "first try"), rate_limited(1, final=False)],
        [*attempt(2, "second try"), done],
    )
    code, out = follow(reader, capsys)
    assert code == EXIT_OK
    # Each attempt's output, though both number their chunks from 0.
    assert out.out.splitlines() == ["first try", "second try"]
    assert "attempt 1 failed on node-1: RateLimited" in out.err
    assert "the command runs again, still waiting" in out.err
    assert "completed on node-1" in out.err
    assert out.err.rstrip().endswith("run r-1: cost $0.0008 (2 attempts)")


def test_the_final_attempt_ends_the_wait(capsys: pytest.CaptureFixture[str]) -> None:
    """Control: the same failure, on the last attempt, is the end."""
    reader = ScriptedReader([*attempt(3, "last try"), rate_limited(3, final=True)])
    code, out = follow(reader, capsys)
    assert code == EXIT_FAILURE
    assert "runs again" not in out.err
    assert "failed on node-1: RateLimited: API Error: Request rejected (429)" in out.err
    assert out.err.rstrip().endswith("run r-1: cost $0")
