"""The RunTask command: its typed form, its wire form, and the parser that
turns an untrusted message body into one or says what is wrong with it.

No I/O here. `schemas/RunTask.json` describes the same shape.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from claude_code_scheduler.aws.limits import MAX_VISIBILITY_SECONDS

PROTOCOL_VERSION = 1
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PERMISSION_MODES = ("default", "acceptEdits", "auto", "bypassPermissions", "dontAsk", "plan")
# A run holds its message invisible for as long as it lasts.
MAX_TIMEOUT_SECONDS = MAX_VISIBILITY_SECONDS
MAX_MOCK_OUTPUT_BYTES = 100 * 1024 * 1024


class InvalidCommand(ValueError):
    """A command that cannot be run; `run_id` is set when it could be read."""

    def __init__(self, message: str, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


@dataclass(frozen=True)
class MockSpec:
    duration_seconds: float = 1.0
    exit_code: int = 0
    output_bytes: int = 2000


@dataclass(frozen=True)
class TaskSpec:
    prompt: str
    name: str | None = None
    task_id: str | None = None
    model: str | None = None
    permission_mode: str | None = None
    allowed_tools: tuple[str, ...] = ()
    disallowed_tools: tuple[str, ...] = ()
    max_turns: int | None = None
    timeout_seconds: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    mock: MockSpec = field(default_factory=MockSpec)

    def __repr__(self) -> str:
        # Task env values are secrets as far as the node knows: never print them.
        return f"TaskSpec(name={self.name!r}, task_id={self.task_id!r}, env={sorted(self.env)})"


@dataclass(frozen=True)
class RunTask:
    run_id: str
    task: TaskSpec

    def to_json(self) -> str:
        return json.dumps(command_body(self), separators=(",", ":"))


def command_body(command: RunTask) -> dict[str, Any]:
    """The wire form of a RunTask, with only the fields that were set."""
    task = command.task
    body: dict[str, Any] = {"prompt": task.prompt}
    optional: dict[str, Any] = {
        "name": task.name,
        "task_id": task.task_id,
        "model": task.model,
        "permission_mode": task.permission_mode,
        "allowed_tools": list(task.allowed_tools) or None,
        "disallowed_tools": list(task.disallowed_tools) or None,
        "max_turns": task.max_turns,
        "timeout_seconds": task.timeout_seconds,
        "env": dict(task.env) or None,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if task.mock != MockSpec():
        body["mock"] = {
            "duration_seconds": task.mock.duration_seconds,
            "exit_code": task.mock.exit_code,
            "output_bytes": task.mock.output_bytes,
        }
    return {"type": "RunTask", "version": PROTOCOL_VERSION, "run_id": command.run_id, "task": body}


# --- parsing -----------------------------------------------------------------

_TASK_KEYS = frozenset(
    {
        "prompt",
        "name",
        "task_id",
        "model",
        "permission_mode",
        "allowed_tools",
        "disallowed_tools",
        "max_turns",
        "timeout_seconds",
        "env",
        "mock",
    }
)
_MOCK_KEYS = frozenset({"duration_seconds", "exit_code", "output_bytes"})


def unwrap_body(body: str) -> Any:
    """The command JSON from an SQS body: raw, or inside an SNS notification."""
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidCommand(f"message body is not JSON: {exc}") from None
    if (
        isinstance(document, dict)
        and document.get("Type") == "Notification"
        and isinstance(document.get("Message"), str)
    ):
        try:
            return json.loads(document["Message"])
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InvalidCommand(f"SNS notification Message is not JSON: {exc}") from None
    return document


def parse_command(body: str) -> RunTask:
    """Parse and validate a command body; raises InvalidCommand saying what is wrong."""
    document = unwrap_body(body)
    if not isinstance(document, dict):
        raise InvalidCommand("command must be a JSON object")
    run_id = document.get("run_id")
    readable_run_id = (
        run_id if isinstance(run_id, str) and RUN_ID_PATTERN.fullmatch(run_id) else None
    )
    try:
        return _parse_document(document)
    except InvalidCommand as exc:
        exc.run_id = readable_run_id
        raise


def _parse_document(document: dict[str, Any]) -> RunTask:
    _reject_unknown(document, frozenset({"type", "version", "run_id", "task"}), "command")
    if document.get("type") != "RunTask":
        raise InvalidCommand(f"type must be 'RunTask', got {document.get('type')!r}")
    version = document.get("version")
    if not _is_integer(version) or version != PROTOCOL_VERSION:
        raise InvalidCommand(
            f"version {version!r} is not supported (this node speaks version {PROTOCOL_VERSION})"
        )
    run_id = document.get("run_id")
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise InvalidCommand("run_id must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', '-'")
    task = document.get("task")
    if not isinstance(task, dict):
        raise InvalidCommand("task must be an object")
    return RunTask(run_id=run_id, task=_parse_task(task))


def _parse_task(task: dict[str, Any]) -> TaskSpec:
    _reject_unknown(task, _TASK_KEYS, "task")
    prompt = task.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidCommand("task.prompt must be a non-empty string")
    permission_mode = _optional(task, "permission_mode", str)
    if permission_mode is not None and permission_mode not in PERMISSION_MODES:
        raise InvalidCommand(
            f"task.permission_mode must be one of {', '.join(PERMISSION_MODES)}; "
            f"got {permission_mode!r}"
        )
    model = _optional(task, "model", str)
    if model is not None and not model.strip():
        raise InvalidCommand("task.model must not be empty")
    max_turns = _optional(task, "max_turns", int)
    if max_turns is not None and max_turns < 1:
        raise InvalidCommand("task.max_turns must be at least 1")
    timeout = _optional_number(task, "timeout_seconds")
    if timeout is not None and not 0 < timeout <= MAX_TIMEOUT_SECONDS:
        raise InvalidCommand(
            f"task.timeout_seconds must be above 0 and at most {MAX_TIMEOUT_SECONDS}"
        )
    return TaskSpec(
        prompt=prompt,
        name=_optional(task, "name", str),
        task_id=_optional(task, "task_id", str),
        model=model,
        permission_mode=permission_mode,
        allowed_tools=_tool_list(task, "allowed_tools"),
        disallowed_tools=_tool_list(task, "disallowed_tools"),
        max_turns=max_turns,
        timeout_seconds=timeout,
        env=_env(task),
        mock=_mock(task),
    )


def _reject_unknown(obj: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise InvalidCommand(f"{where} has unknown field(s): {', '.join(unknown)}")


def _optional(obj: dict[str, Any], key: str, kind: type[Any], where: str = "task") -> Any:
    """An optional field: absent is None; present, it must have the right type
    (null is not absent, as in the schema)."""
    if key not in obj:
        return None
    value = obj[key]
    if kind is str and isinstance(value, str):
        return value
    if kind is int and _is_integer(value):
        return int(value)
    raise InvalidCommand(f"{where}.{key} must be {_kind_name(kind)}, got {_json_type(value)}")


def _is_integer(value: Any) -> bool:
    # JSON Schema counts 3.0 as an integer; bool is an int in Python but
    # `"max_turns": true` is not a number of turns.
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _json_type(value: Any) -> str:
    names = {type(None): "null", bool: "a boolean", str: "a string", list: "an array"}
    return names.get(type(value), "an object" if isinstance(value, dict) else "a number")


def _optional_number(obj: dict[str, Any], key: str, where: str = "task") -> float | None:
    if key not in obj:
        return None
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidCommand(f"{where}.{key} must be a number, got {_json_type(value)}")
    return float(value)


def _kind_name(kind: type[Any]) -> str:
    return {str: "a string", int: "an integer"}.get(kind, kind.__name__)


def _tool_list(task: dict[str, Any], key: str) -> tuple[str, ...]:
    if key not in task:
        return ()
    value = task[key]
    if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value):
        raise InvalidCommand(f"task.{key} must be a list of non-empty strings")
    return tuple(value)


def _env(task: dict[str, Any]) -> dict[str, str]:
    if "env" not in task:
        return {}
    value = task["env"]
    if not isinstance(value, dict):
        raise InvalidCommand("task.env must be an object of NAME: value strings")
    for name, item in value.items():
        if not ENV_NAME_PATTERN.fullmatch(name):
            raise InvalidCommand(f"task.env name {name!r} is not a valid environment name")
        if not isinstance(item, str):
            # Name the variable, never its value: env values may be secrets.
            raise InvalidCommand(f"task.env[{name!r}] must be a string")
    return dict(value)


def _mock(task: dict[str, Any]) -> MockSpec:
    if "mock" not in task:
        return MockSpec()
    value = task["mock"]
    if not isinstance(value, dict):
        raise InvalidCommand("task.mock must be an object")
    _reject_unknown(value, _MOCK_KEYS, "task.mock")
    duration = _optional_number(value, "duration_seconds", "task.mock")
    exit_code = _optional(value, "exit_code", int, "task.mock")
    output_bytes = _optional(value, "output_bytes", int, "task.mock")
    spec = MockSpec(
        duration_seconds=1.0 if duration is None else duration,
        exit_code=0 if exit_code is None else exit_code,
        output_bytes=2000 if output_bytes is None else output_bytes,
    )
    if not 0 <= spec.duration_seconds <= 3600:
        raise InvalidCommand("task.mock.duration_seconds must be from 0 to 3600")
    if not 0 <= spec.exit_code <= 255:
        raise InvalidCommand("task.mock.exit_code must be from 0 to 255")
    if not 0 <= spec.output_bytes <= MAX_MOCK_OUTPUT_BYTES:
        raise InvalidCommand(f"task.mock.output_bytes must be from 0 to {MAX_MOCK_OUTPUT_BYTES}")
    return spec
