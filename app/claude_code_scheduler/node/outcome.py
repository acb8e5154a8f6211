"""How a run ended: the one place that turns what happened to a run into an
Ending and the terminal event that says so. The first row that applies:

  | what happened                              | event, error type  | ending       |
  |--------------------------------------------|--------------------|--------------|
  | a shutdown stopped the run                 | NodeShutdown       | handed back  |
  | a shutdown came before the log was stored  | NodeShutdown       | handed back  |
  | the CLI could not be started               | NodeError          | failed       |
  | the run passed its timeout                 | Timeout            | failed       |
  | the workspace failed, transiently          | WorkspaceError     | retry later  |
  | the workspace (or the push) failed         | WorkspaceError     | failed       |
  | the log could not be stored                | NodeError          | failed       |
  | the CLI succeeded                          | TaskCompleted      | completed    |
  | otherwise                                  | ClaudeError        | failed       |

A run whose task.secrets cannot be read ends before its CLI starts
(`unresolved`): SecretError, failed (a missing or forbidden secret stays so),
or NodeShutdown, handed back, when a shutdown interrupted the reading.

What becomes of the message for each ending is `messages`' decision. No I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from claude_code_scheduler.node.messages import Ending, MessageAction, action_after_run
from claude_code_scheduler.node.process.claude import failure_message, succeeded, summarize_result
from claude_code_scheduler.node.process.supervisor import ProcessResult
from claude_code_scheduler.node.secrets import SecretError
from claude_code_scheduler.node.workspace.steps import WorkspaceSteps
from claude_code_scheduler.protocol.events import (
    ErrorType,
    Event,
    TaskResult,
    task_completed,
    task_failed,
)


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: what happened, the event that says so, and what
    becomes of its message once the bus has that event."""

    ending: Ending
    event: Event

    @property
    def message(self) -> MessageAction:
        return action_after_run(self.ending)

    @property
    def completed(self) -> bool:
        return self.ending is Ending.COMPLETED


@dataclass(frozen=True)
class RunEnd:
    """What a run knows once its CLI is gone and its log is (or is not) stored."""

    run_id: str
    process: ProcessResult
    result_line: dict[str, Any] | None
    timeout: float
    log_uri: str | None  # None: the log was not stored
    gave_up: bool  # the node stopped waiting for the run's uploads
    workspace: WorkspaceSteps


def conclude(end: RunEnd, redact: Callable[[str], str]) -> RunOutcome:
    """The table at the top; `redact` cleans what the run said of secrets."""
    process = end.process

    def failed(error_type: ErrorType, message: str, ending: Ending = Ending.FAILED) -> RunOutcome:
        event = task_failed(
            end.run_id,
            error_type,
            redact(message),
            exit_code=process.exit_code,
            duration_seconds=process.duration_seconds,
            log_uri=end.log_uri,
            retryable=ending.retryable,
            workspace_commit=end.workspace.commit,
        )
        return RunOutcome(ending, event)

    if process.cancelled:
        reason = (
            "the node stopped before the run finished; the run was terminated and "
            "handed back to the queue"
        )
        return failed(ErrorType.NODE_SHUTDOWN, reason, Ending.HANDED_BACK)
    if end.log_uri is None and end.gave_up:
        reason = "the node stopped before the run's log was uploaded; handed back"
        return failed(ErrorType.NODE_SHUTDOWN, reason, Ending.HANDED_BACK)
    if process.spawn_error is not None:
        return failed(ErrorType.NODE_ERROR, f"could not start the run: {process.spawn_error}")
    if process.timed_out:
        message = f"the run passed its timeout of {end.timeout:g} s and was killed"
        return failed(ErrorType.TIMEOUT, message)
    if end.workspace.error is not None:
        # Transient (a server down): tried again after a delay that grows with
        # each attempt, not at once, so an outage does not loop hot.
        error = end.workspace.error
        ending = Ending.RETRY_LATER if error.retryable else Ending.FAILED
        return failed(ErrorType.WORKSPACE_ERROR, str(error), ending)
    if end.log_uri is None:
        return failed(ErrorType.NODE_ERROR, "the run's log could not be uploaded")
    if succeeded(process, end.result_line):
        event = task_completed(
            end.run_id,
            exit_code=0,  # succeeded() says so
            duration_seconds=process.duration_seconds,
            log_uri=end.log_uri,
            output_bytes=process.output_bytes,
            result=_redacted(summarize_result(end.result_line), redact),
            workspace_commit=end.workspace.commit,
            push=end.workspace.push,
        )
        return RunOutcome(Ending.COMPLETED, event)
    return failed(ErrorType.CLAUDE_ERROR, failure_message(process, end.result_line))


def unresolved(
    run_id: str, exc: SecretError, duration_seconds: float, redact: Callable[[str], str]
) -> RunOutcome:
    """The SecretError row of the docstring. The message names the reference
    and the AWS error, never a value."""
    ending = Ending.HANDED_BACK if exc.interrupted else Ending.FAILED
    error_type = ErrorType.NODE_SHUTDOWN if exc.interrupted else ErrorType.SECRET_ERROR
    event = task_failed(
        run_id,
        error_type,
        redact(str(exc)),
        duration_seconds=duration_seconds,
        retryable=ending.retryable,
    )
    return RunOutcome(ending, event)


def _redacted(result: TaskResult | None, redact: Callable[[str], str]) -> TaskResult | None:
    if result is None or result.text is None:
        return result
    return dataclasses.replace(result, text=redact(result.text))
