"""The task fields for the Claude CLI's own controls (docs/task-options.md):
a budget, an effort level, fallback models, the objects the CLI takes as one
argument (json_schema, mcp_servers, settings), retries and the session to
resume. Each reads one field of an untrusted task for protocol.parsing, or
raises InvalidCommand saying what is wrong. No I/O here.
"""

from __future__ import annotations

from typing import Any

from claude_code_scheduler.protocol.commands import (
    EFFORT_LEVELS,
    MAX_ARGUMENT_BYTES,
    MAX_BUDGET_USD,
    MAX_LABEL_CHARS,
    MAX_RETRY_ATTEMPTS,
    MODEL_PATTERN,
    SESSION_ID_PATTERN,
    InvalidCommand,
    ResumeSpec,
    RetrySpec,
    compact_json,
)
from claude_code_scheduler.protocol.fields import (
    json_type,
    optional,
    optional_number,
    optional_object,
    optional_text,
    quote,
    reject_unknown,
)

RETRY_KEYS = frozenset({"max_attempts"})
RESUME_KEYS = frozenset({"session_id", "fork"})


def budget(task: dict[str, Any]) -> float | None:
    value = optional_number(task, "max_budget_usd")
    if value is not None and not 0 < value <= MAX_BUDGET_USD:
        raise InvalidCommand(
            f"task.max_budget_usd must be a positive number of US dollars, at most {MAX_BUDGET_USD}"
        )
    return value


def effort(task: dict[str, Any]) -> str | None:
    value: str | None = optional(task, "effort", str)
    if value is not None and value not in EFFORT_LEVELS:
        raise InvalidCommand(
            f"task.effort must be one of {', '.join(EFFORT_LEVELS)}; got {quote(value)}"
        )
    return value


def fallback_model(task: dict[str, Any]) -> str | None:
    """One model name, or several separated by commas (the CLI's --fallback-model
    takes a list), each a model name as task.model is."""
    value = optional_text(task, "fallback_model", max_chars=MAX_LABEL_CHARS)
    if value is None:
        return None
    if not all(MODEL_PATTERN.fullmatch(name) for name in value.split(",")):
        raise InvalidCommand(
            f"task.fallback_model {quote(value)} is not a model name, or a comma-separated "
            "list of them (letters, digits and ._:/@[]-, each starting with a letter or digit)"
        )
    return value


def json_argument(task: dict[str, Any], key: str, *, reserved: int = 0) -> dict[str, Any] | None:
    """An object the CLI takes as one argument of compact JSON, with `reserved`
    bytes of that argument left for what the node wraps around it."""
    value = optional_object(task, key)
    if value is None:
        return None
    try:
        size = len(compact_json(value))
    except RecursionError:
        raise InvalidCommand(f"task.{key} is nested too deeply") from None
    if size > MAX_ARGUMENT_BYTES - reserved:
        raise InvalidCommand(
            f"task.{key} must be at most {MAX_ARGUMENT_BYTES - reserved} bytes as compact "
            f"JSON (the kernel's limit on one argument of a process), got {size}"
        )
    return value


def mcp_servers(task: dict[str, Any]) -> dict[str, Any] | None:
    # --mcp-config takes {"mcpServers": ...} in one argument.
    servers = json_argument(task, "mcp_servers", reserved=len(compact_json({"mcpServers": {}})))
    for name, config in (servers or {}).items():
        if not isinstance(config, dict):
            raise InvalidCommand(
                f"task.mcp_servers[{quote(name)}] must be an object (a server's config), "
                f"got {json_type(config)}"
            )
    return servers


def retry(task: dict[str, Any]) -> RetrySpec | None:
    value = optional_object(task, "retry")
    if value is None:
        return None
    reject_unknown(value, RETRY_KEYS, "task.retry")
    if "max_attempts" not in value:
        raise InvalidCommand("task.retry must have max_attempts")
    attempts: int = optional(value, "max_attempts", int, "task.retry")
    if not 1 <= attempts <= MAX_RETRY_ATTEMPTS:
        raise InvalidCommand(f"task.retry.max_attempts must be from 1 to {MAX_RETRY_ATTEMPTS}")
    return RetrySpec(max_attempts=attempts)


def resume(task: dict[str, Any]) -> ResumeSpec | None:
    value = optional_object(task, "resume")
    if value is None:
        return None
    reject_unknown(value, RESUME_KEYS, "task.resume")
    session_id = optional(value, "session_id", str, "task.resume")
    if session_id is None:
        raise InvalidCommand("task.resume must have session_id")
    if not SESSION_ID_PATTERN.fullmatch(session_id):
        raise InvalidCommand(
            f"task.resume.session_id {quote(session_id)} is not a session id (a lowercase UUID)"
        )
    fork = value.get("fork", False)
    if not isinstance(fork, bool):
        raise InvalidCommand(f"task.resume.fork must be a boolean, got {json_type(fork)}")
    return ResumeSpec(session_id=session_id, fork=fork)
