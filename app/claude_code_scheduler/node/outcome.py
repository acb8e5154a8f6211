"""How a run ended: the one place that turns what happened to a run into an
Ending and the terminal event that says so. The first row that applies:

  | what happened                              | event, error type    | ending       |
  |--------------------------------------------|----------------------|--------------|
  | an operator cancelled the run (`cancel`)   | Cancelled            | failed       |
  |   while it ran: the CLI or the workspace   |                      |              |
  |   was stopped for it (RunEnd.cancel)       |                      |              |
  | a shutdown stopped the run                 | NodeShutdown         | handed back  |
  | a shutdown came before the log was stored  | NodeShutdown         | handed back  |
  | the CLI could not be started               | NodeError            | failed       |
  | the run passed its timeout                 | Timeout              | failed       |
  | the workspace failed, transiently          | WorkspaceError       | retry later* |
  | the workspace (or the push) failed         | WorkspaceError       | failed       |
  | the log could not be stored                | NodeError            | failed       |
  | the CLI succeeded, but without the         | ClaudeError          | failed       |
  |   structured output its json_schema asked  |                      |              |
  | the CLI succeeded                          | TaskCompleted        | completed    |
  | and otherwise, from the CLI's result line (`result.failure_type`):              |
  | subtype error_max_budget_usd               | BudgetExceeded       | failed       |
  | subtype error_max_turns                    | MaxTurns             | failed       |
  | api_error_status 401 or 403, a credential  | AuthenticationFailed | failed       |
  |   api_error kind, or "Not logged in"       |                      |              |
  | api_error_status 429                       | RateLimited          | retry later* |
  | api_error_status 529                       | Overloaded           | retry later* |
  | api_error_status 5xx; or none, the API not | ServerError          | retry later* |
  |   reached (api_error connection_failed ...)|                      |              |
  | anything else, or no result line           | ClaudeError          | failed       |

* On the last attempt the retry policy allows (RunEnd.final_attempt), failed
  instead, and the event says final_attempt: true. Every TaskFailed of this
  table names its attempt; it and TaskCompleted carry the result line's
  `usage`. The message of a failure is the CLI's own words
  (`result.failure_message`).

A Cancelled run's event carries the request (`cancel`: who asked, why, when)
and, as any end does, its log and artifacts. A run whose CLI had ended on its
own when the cancel came ends as it ended: only a stop that the cancel caused
makes it Cancelled. A run cancelled before it started (`cancelled`: the
request was there when its command came, or came while its secrets or
session were read) is Cancelled too, with no log.

A run whose task.secrets cannot be read ends before its CLI starts
(`unresolved`): SecretError, failed (a missing or forbidden secret stays so),
or NodeShutdown, handed back, when a shutdown interrupted the reading. So
does a run whose task.resume session cannot be restored (node.sessions):
SessionError, failed (unknown, unreadable, too large or forbidden stays so),
or NodeShutdown, handed back; Cancelled, failed, when an operator's cancel
interrupted the reading.

What becomes of the message for each ending is `messages`' decision. No I/O.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from claude_code_scheduler.aws.cancels import CancelRequest
from claude_code_scheduler.node.messages import Ending, MessageAction, action_after_run
from claude_code_scheduler.node.process.result import (
    NO_STRUCTURED_OUTPUT,
    failure_message,
    failure_type,
    lacks_structured_output,
    succeeded,
    summarize_result,
    usage_of,
)
from claude_code_scheduler.node.process.supervisor import ProcessResult
from claude_code_scheduler.node.secrets import SecretError
from claude_code_scheduler.node.sessions import SessionError
from claude_code_scheduler.node.workspace.steps import WorkspaceSteps
from claude_code_scheduler.protocol.events import (
    ErrorType,
    Event,
    TaskResult,
    encode_event,
    task_completed,
    task_failed,
)

# The kinds of failure the fleet tries again later (besides a transient
# WorkspaceError): the API's passing troubles, not the task's.
RETRIED_LATER = frozenset({ErrorType.RATE_LIMITED, ErrorType.OVERLOADED, ErrorType.SERVER_ERROR})


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

    @property
    def cost_usd(self) -> float:
        """What the run's result line said it cost, as its event says (0
        without one): what the node's running total adds up."""
        usage = self.event.data.get("usage")
        cost = usage.get("total_cost_usd") if isinstance(usage, dict) else None
        return float(cost) if isinstance(cost, int | float) else 0.0


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
    attempt: int = 1  # which attempt at the command this run is, from 1
    final_attempt: bool = False  # the last attempt the retry policy allows
    wants_structured_output: bool = False  # the task set json_schema
    # The operator's request, if one came before the run's end (RunControl).
    cancel: CancelRequest | None = None


def conclude(end: RunEnd, redact: Callable[[str], str]) -> RunOutcome:
    """The table at the top; `redact` cleans what the run said of secrets."""
    process = end.process
    usage = usage_of(end.result_line)

    def failed(
        error_type: ErrorType,
        message: str,
        ending: Ending = Ending.FAILED,
        cancel: CancelRequest | None = None,
    ) -> RunOutcome:
        final_attempt = ending is Ending.RETRY_LATER and end.final_attempt
        if final_attempt:
            ending = Ending.FAILED
        event = task_failed(
            end.run_id,
            error_type,
            redact(message),
            exit_code=process.exit_code,
            duration_seconds=process.duration_seconds,
            log_uri=end.log_uri,
            retryable=ending.retryable,
            workspace_commit=end.workspace.commit,
            attempt=end.attempt,
            final_attempt=final_attempt,
            usage=usage,
            cancel=cancel,
        )
        return RunOutcome(ending, event)

    if end.cancel is not None and (process.interrupted or process.cancelled):
        # Cancelled even if a shutdown stopped it too: handed back, it would
        # only be cancelled by the next node to receive it.
        return failed(ErrorType.CANCELLED, cancel_message(end.cancel), cancel=end.cancel)
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
    if (
        end.wants_structured_output
        and succeeded(process, end.result_line)
        and lacks_structured_output(end.result_line)
    ):
        return failed(ErrorType.CLAUDE_ERROR, NO_STRUCTURED_OUTPUT)
    if succeeded(process, end.result_line):
        event = task_completed(
            end.run_id,
            exit_code=0,  # succeeded() says so
            duration_seconds=process.duration_seconds,
            log_uri=end.log_uri,
            output_bytes=process.output_bytes,
            result=_redacted(summarize_result(end.result_line), redact),
            usage=usage,
            workspace_commit=end.workspace.commit,
            push=end.workspace.push,
        )
        return RunOutcome(Ending.COMPLETED, event)
    error_type = failure_type(end.result_line)
    ending = Ending.RETRY_LATER if error_type in RETRIED_LATER else Ending.FAILED
    return failed(error_type, failure_message(process, end.result_line), ending)


def cancel_message(request: CancelRequest) -> str:
    """TaskFailed Cancelled's message: the event's `cancel` says the same, as fields."""
    why = f": {request.reason}" if request.reason else ""
    return f"cancelled by {request.requested_by}{why}"


def cancelled(
    request: CancelRequest,
    duration_seconds: float,
    redact: Callable[[str], str],
    *,
    attempt: int | None = None,
) -> RunOutcome:
    """A run cancelled before its CLI started (see the top): failed, so its
    message is deleted and no node runs it."""
    event = task_failed(
        request.run_id,
        ErrorType.CANCELLED,
        redact(cancel_message(request)),
        duration_seconds=duration_seconds,
        retryable=Ending.FAILED.retryable,
        attempt=attempt,
        cancel=request,
    )
    return RunOutcome(Ending.FAILED, event)


def unresolved(
    run_id: str,
    exc: SecretError | SessionError,
    duration_seconds: float,
    redact: Callable[[str], str],
    *,
    attempt: int | None = None,
    cancel_request: CancelRequest | None = None,
) -> RunOutcome:
    """The SecretError and SessionError rows of the docstring. The message
    names the reference or the session id and the AWS error, never a value
    or any of the session's content. Reading interrupted by an operator's
    cancel (`cancel_request`) is the Cancelled row instead."""
    if exc.interrupted and cancel_request is not None:
        return cancelled(cancel_request, duration_seconds, redact, attempt=attempt)
    ending = Ending.HANDED_BACK if exc.interrupted else Ending.FAILED
    failure = ErrorType.SESSION_ERROR if isinstance(exc, SessionError) else ErrorType.SECRET_ERROR
    error_type = ErrorType.NODE_SHUTDOWN if exc.interrupted else failure
    event = task_failed(
        run_id,
        error_type,
        redact(str(exc)),
        duration_seconds=duration_seconds,
        retryable=ending.retryable,
        attempt=attempt,
    )
    return RunOutcome(ending, event)


def _redacted(result: TaskResult | None, redact: Callable[[str], str]) -> TaskResult | None:
    if result is None:
        return result
    return dataclasses.replace(
        result,
        text=None if result.text is None else redact(result.text),
        structured_output=_redacted_json(result.structured_output, redact),
    )


def _redacted_json(value: Any, redact: Callable[[str], str]) -> Any:
    """A JSON value without the secrets the node knows: redacted as encoded
    (the redactor knows a secret's JSON-escaped forms too) and read back.
    Should a secret have spanned JSON's own syntax, the text no longer reads
    as JSON, and the value is left out rather than sent as it was."""
    if value is None:
        return None
    try:
        return json.loads(redact(encode_event(value)))
    except (ValueError, TypeError, RecursionError):
        return None
