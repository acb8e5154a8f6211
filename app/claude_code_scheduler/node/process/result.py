"""What the Claude Code CLI's stream-json says of a run: its final result
line found in stdout, the figures and usage in it, whether the run
succeeded, what kind of failure it was and the CLI's own words for why.

Nothing here starts a process or touches AWS.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

from claude_code_scheduler.node.process.supervisor import ProcessResult
from claude_code_scheduler.protocol.events import (
    MODEL_USAGE_FIGURES,
    MODEL_USAGE_MODELS,
    MODEL_USAGE_NAME_LIMIT,
    RESULT_TEXT_LIMIT,
    ErrorType,
    TaskResult,
    TaskUsage,
    cut_utf8,
    publishable,
)

# The CLI's words when it refuses bypassPermissions to root (2.1.332).
ROOT_REFUSAL_MARK = "cannot be used with root/sudo privileges"
# A node never starts the CLI as root (a root node gives each run slot a uid of
# its own), so the CLI ran as root through something between them.
ROOT_ADVICE = (
    "The CLI ran as root, and it refuses bypassPermissions to root; a node never "
    "starts it as root (a root node runs each slot under a uid of its own), so look "
    "for a --claude-bin wrapper that makes it root, such as sudo."
)


class ResultTracker:
    """Finds the CLI's final `{"type": "result", ...}` line in stdout.

    Lines can be megabytes long (a long answer is repeated in the assistant and
    the result line), so the only limit is the longest line; only lines that can
    be a result are parsed.
    """

    def __init__(self) -> None:
        self._partial = bytearray()
        self.result: dict[str, Any] | None = None

    def feed(self, data: bytes) -> None:
        # Only the new bytes can hold the next newline: a megabyte line fed in
        # 64 KiB reads is scanned once, not once per read.
        scan_from = len(self._partial)
        self._partial += data
        start = 0
        while (end := self._partial.find(b"\n", scan_from)) != -1:
            self._consider(start, end)
            start = scan_from = end + 1
        if start:
            del self._partial[:start]

    def finish(self) -> None:
        if self._partial:
            self._consider(0, len(self._partial))
            self._partial.clear()

    def _consider(self, start: int, end: int) -> None:
        # Looked for in place: a line that cannot be a result is never copied.
        if self._partial.find(b'"result"', start, end) == -1:
            return
        try:
            obj = json.loads(self._partial[start:end])
        except (ValueError, RecursionError):  # not JSON, or nested past what json reads
            return
        if isinstance(obj, dict) and obj.get("type") == "result":
            self.result = obj


def summarize_result(result: dict[str, Any] | None) -> TaskResult | None:
    """TaskCompleted's `result`: the figures the CLI reported, where it reported them."""
    if result is None:
        return None
    text = result.get("result")
    session_id = result.get("session_id")
    return TaskResult(
        session_id=session_id if isinstance(session_id, str) else None,
        total_cost_usd=_figure(result.get("total_cost_usd")),
        num_turns=_count(result.get("num_turns")),
        duration_ms=_figure(result.get("duration_ms")),
        is_error=bool(result.get("is_error", False)),
        text=text if isinstance(text, str) else None,
        # Any JSON value; TaskResult.fields() leaves out one too big for an event.
        structured_output=result.get("structured_output"),
    )


def usage_of(result: dict[str, Any] | None) -> TaskUsage | None:
    """The `usage` of a run's terminal event, from its result line: what the
    run cost and used. Every figure is checked, so an odd or hostile line
    gives None for that figure, never an invalid event."""
    if result is None:
        return None
    tokens = result.get("usage")
    tokens = tokens if isinstance(tokens, dict) else {}
    return TaskUsage(
        total_cost_usd=_figure(result.get("total_cost_usd")),
        input_tokens=_count(tokens.get("input_tokens")),
        output_tokens=_count(tokens.get("output_tokens")),
        cache_read_input_tokens=_count(tokens.get("cache_read_input_tokens")),
        cache_creation_input_tokens=_count(tokens.get("cache_creation_input_tokens")),
        model_usage=_model_usage(result.get("modelUsage")),
        num_turns=_count(result.get("num_turns")),
        duration_api_ms=_figure(result.get("duration_api_ms")),
    )


def _figure(value: Any) -> float | int | None:
    """A non-negative finite number, else None (JSON's true is not 1, and
    Python's json reads NaN and Infinity, which no event can carry)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if value >= 0 else None


def _count(value: Any) -> int | None:
    figure = _figure(value)
    return figure if isinstance(figure, int) else None


def _model_usage(value: Any) -> dict[str, dict[str, float]] | None:
    """modelUsage, as model -> {figure name: number}: only its numbers (it
    also names the provider and cost basis, which are words), cut to the
    MODEL_USAGE_* bounds."""
    if not isinstance(value, dict):
        return None
    models: dict[str, dict[str, float]] = {}
    for model, figures in itertools.islice(value.items(), MODEL_USAGE_MODELS):
        if not isinstance(figures, dict):
            continue
        numbers = ((name, _figure(number)) for name, number in figures.items())
        kept = itertools.islice(((n, v) for n, v in numbers if v is not None), MODEL_USAGE_FIGURES)
        models[publishable(str(model), MODEL_USAGE_NAME_LIMIT)] = {
            publishable(str(name), MODEL_USAGE_NAME_LIMIT): number for name, number in kept
        }
    return models


def succeeded(
    process: ProcessResult, result: dict[str, Any] | None, *, wants_structured_output: bool = False
) -> bool:
    """Exit 0 with a result line that is not an error; the exit code alone lies
    (API errors come as subtype success with is_error true). A task that set
    json_schema succeeded only with the object it asked for."""
    return (
        process.exit_code == 0
        and result is not None
        and not result.get("is_error", False)
        and not process.timed_out
        and not process.cancelled
        and not (wants_structured_output and lacks_structured_output(result))
    )


def lacks_structured_output(result: dict[str, Any] | None) -> bool:
    """The CLI ends `success` when the model answered in text and never gave
    the structured output (2.1.332): the task did not get what it asked for."""
    return result is None or result.get("structured_output") is None


NO_STRUCTURED_OUTPUT = (
    "the task set json_schema, but the CLI's result has no structured_output: "
    "the model answered without giving the object"
)


# The result line's own names for how a run ended (2.1.332; FINDINGS.md,
# "Outcomes the CLI's own way").
BUDGET_SUBTYPE = "error_max_budget_usd"
MAX_TURNS_SUBTYPE = "error_max_turns"
NOT_LOGGED_IN_MARK = "Not logged in"
# `api_error`, the CLI's typed kind of an API error (its schema says to treat
# an unknown value as absent): the credential refused or unusable ...
CREDENTIAL_ERRORS = frozenset(
    {
        "provider_credentials",
        "api_key_auth_disabled",
        "org_disabled_credential",
        "invalid_credential_header",
        "stored_login_refused",
        "gateway_signin_required",
        "gateway_session_expired",
        "named_profile_unusable",
    }
)
# ... and the API not reached, or its answer not arriving: worth another try.
TRANSPORT_ERRORS = frozenset({"connection_failed", "no_response", "stream_idle_timeout"})
API_ERROR_ENDING = "api_error"
AUTHENTICATION_STATUSES = frozenset({401, 403})
RATE_LIMITED_STATUS = 429
OVERLOADED_STATUS = 529


def failure_type(result: dict[str, Any] | None) -> ErrorType:
    """What kind of failure a run's result line tells of (node.outcome's
    table has the rows); ClaudeError where it tells of none an operator can
    act on differently, or there is no result line."""
    if result is None:
        return ErrorType.CLAUDE_ERROR
    subtype = result.get("subtype")
    if subtype == BUDGET_SUBTYPE:
        return ErrorType.BUDGET_EXCEEDED
    if subtype == MAX_TURNS_SUBTYPE:
        return ErrorType.MAX_TURNS
    status = result.get("api_error_status")
    status = status if isinstance(status, int) and not isinstance(status, bool) else None
    kind = result.get("api_error")
    kind = kind if isinstance(kind, str) else None  # a list is no kind, and unhashable
    text = result.get("result")
    text = text if isinstance(text, str) else ""
    if (
        status in AUTHENTICATION_STATUSES
        or kind in CREDENTIAL_ERRORS
        or text.startswith(NOT_LOGGED_IN_MARK)
    ):
        return ErrorType.AUTHENTICATION_FAILED
    if status == RATE_LIMITED_STATUS:
        return ErrorType.RATE_LIMITED
    if status == OVERLOADED_STATUS:
        return ErrorType.OVERLOADED
    if status is not None and 500 <= status < 600:
        return ErrorType.SERVER_ERROR
    # With no status, a typed kind other than the transport's is the request's
    # own fault (too long, refused by policy, ...); an untyped one is the
    # client's timeout or a connection error the CLI could not name.
    no_answer = kind is None or kind in TRANSPORT_ERRORS
    if status is None and result.get("terminal_reason") == API_ERROR_ENDING and no_answer:
        return ErrorType.SERVER_ERROR
    return ErrorType.CLAUDE_ERROR


def failure_message(process: ProcessResult, result: dict[str, Any] | None) -> str:
    """The CLI's own words for why a run failed, and what to do where the
    words alone do not say."""
    message = _cli_words(process, result)
    if ROOT_REFUSAL_MARK in process.stderr_tail:
        message = f"{message}\n{ROOT_ADVICE}"
    return message


def _cli_words(process: ProcessResult, result: dict[str, Any] | None) -> str:
    if result is not None:
        text = result.get("result")
        if isinstance(text, str) and text.strip():
            return cut_utf8(text.strip(), RESULT_TEXT_LIMIT)
        errors = result.get("errors")
        if isinstance(errors, list) and errors:
            return cut_utf8("; ".join(str(e) for e in errors), RESULT_TEXT_LIMIT)
        subtype = result.get("subtype")
        if subtype and subtype != "success":
            return f"claude ended with {subtype}"
    if process.stderr_tail.strip():
        return process.stderr_tail.strip()
    if process.exit_code == 0:
        return "claude exited 0 without a result line"
    return f"claude exited with status {process.exit_code}"
