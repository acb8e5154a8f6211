"""Turning an untrusted message body into a RunTask, or an InvalidCommand that
says what is wrong in one bounded line.

Every string a command carries must be text a process can be given: no NUL
(an argv or environment string ends at one) and no lone surrogate (not
encodable as UTF-8); both are legal JSON escapes, so both are checked here,
and the schema says the same. A message quotes at most a short, escaped
excerpt of a value, and never an env value, so the TaskFailed that carries it
is always publishable. No I/O here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from typing import Any

from claude_code_scheduler.aws.names import SecretRef, parse_secret_ref
from claude_code_scheduler.protocol.commands import (
    ENV_NAME_PATTERN,
    EXECUTION_ID_PATTERN,
    MAX_ARGUMENT_BYTES,
    MAX_ARTIFACT_PATTERN_CHARS,
    MAX_ARTIFACT_PATTERNS,
    MAX_ENV_NAME_CHARS,
    MAX_LABEL_CHARS,
    MAX_MOCK_OUTPUT_BYTES,
    MAX_SCHEDULE_ARN_CHARS,
    MAX_TASK_SECRETS,
    MAX_TIMEOUT_SECONDS,
    MAX_TOOL_PATTERN_CHARS,
    MODEL_PATTERN,
    NODE_SETTINGS_BYTES,
    PERMISSION_MODES,
    PROTOCOL_VERSION,
    RUN_ID_PATTERN,
    SCHEDULE_NAME_PATTERN,
    SCHEDULED_TIME_PATTERN,
    TOOL_PATTERN,
    Firing,
    InvalidCommand,
    MockSpec,
    RunTask,
    TaskSpec,
)
from claude_code_scheduler.protocol.controls import (
    budget,
    effort,
    fallback_model,
    json_argument,
    mcp_servers,
    resume,
    retry,
)
from claude_code_scheduler.protocol.fields import (
    check_text,
    is_integer,
    json_type,
    optional,
    optional_number,
    optional_text,
    quote,
    reject_unknown,
)
from claude_code_scheduler.protocol.workspace import parse_mock_files, parse_workspace

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
        "secrets",
        "mock",
        "workspace",
        "artifacts",
        "max_budget_usd",
        "system_prompt",
        "append_system_prompt",
        "json_schema",
        "mcp_servers",
        "fallback_model",
        "effort",
        "settings",
        "retry",
        "resume",
    }
)
_MOCK_KEYS = frozenset({"duration_seconds", "exit_code", "output_bytes", "write_files"})


def unwrap_body(body: str) -> Any:
    """The command JSON from an SQS body: raw, or inside an SNS notification."""
    document = _json(body, "message body")
    if (
        isinstance(document, dict)
        and document.get("Type") == "Notification"
        and isinstance(document.get("Message"), str)
    ):
        return _json(document["Message"], "SNS notification Message")
    return document


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidCommand(f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and ints past the digit limit
        raise InvalidCommand(f"{what} is not JSON: {str(exc)[:200]}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_command(body: str, verify: Callable[[dict[str, Any]], object] | None = None) -> RunTask:
    """Parse and validate a command body; raises InvalidCommand saying what is wrong.

    `verify`, when given, sees the command object (unwrapped from any SNS
    envelope) before anything else is read from it, and raises InvalidCommand
    to refuse it (protocol.signing: a node that requires signatures)."""
    document = unwrap_body(body)
    if not isinstance(document, dict):
        raise InvalidCommand("command must be a JSON object")
    run_id = document.get("run_id")
    readable_run_id = (
        run_id if isinstance(run_id, str) and RUN_ID_PATTERN.fullmatch(run_id) else None
    )
    try:
        if verify is not None:
            verify(document)
        return _parse_document(document)
    except InvalidCommand as exc:
        exc.run_id = readable_run_id
        raise


def _parse_document(document: dict[str, Any]) -> RunTask:
    reject_unknown(
        document,
        frozenset({"type", "version", "run_id", "task", "signature", "schedule"}),
        "command",
    )
    # Checked by `verify` where the node requires signatures, ignored elsewhere.
    if "signature" in document and not isinstance(document["signature"], str):
        raise InvalidCommand("signature must be a string (a compact JWS)")
    if document.get("type") != "RunTask":
        raise InvalidCommand(f"type must be 'RunTask', got {quote(document.get('type'))}")
    version = document.get("version")
    if not is_integer(version) or version != PROTOCOL_VERSION:
        raise InvalidCommand(
            f"version {quote(version)} is not supported "
            f"(this node speaks version {PROTOCOL_VERSION})"
        )
    run_id = document.get("run_id")
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise InvalidCommand("run_id must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', '-'")
    task = document.get("task")
    if not isinstance(task, dict):
        raise InvalidCommand("task must be an object")
    schedule = _firing(document["schedule"], run_id) if "schedule" in document else None
    return RunTask(run_id=run_id, task=_parse_task(task), schedule=schedule)


def _firing(value: Any, run_id: str) -> Firing:
    """The `schedule` object of a command a schedule sent (protocol.schedules)."""
    if not isinstance(value, dict):
        raise InvalidCommand("schedule must be an object")
    reject_unknown(value, frozenset({"name", "execution_id", "scheduled_time", "arn"}), "schedule")
    fields = {}
    for key in ("name", "execution_id", "scheduled_time", "arn"):
        if not isinstance(value.get(key), str):
            raise InvalidCommand(f"schedule.{key} must be a string")
        fields[key] = value[key]
    if not SCHEDULE_NAME_PATTERN.fullmatch(fields["name"]):
        raise InvalidCommand(
            "schedule.name must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-'"
        )
    if not EXECUTION_ID_PATTERN.fullmatch(fields["execution_id"]):
        raise InvalidCommand(
            "schedule.execution_id must be 1 to 63 characters of A-Z, a-z, 0-9, '.', '_', '-'"
        )
    if not SCHEDULED_TIME_PATTERN.fullmatch(fields["scheduled_time"]) or not _is_day(
        fields["scheduled_time"][:10]
    ):
        got = quote(fields["scheduled_time"])
        raise InvalidCommand(
            f"schedule.scheduled_time must be a time like 2027-01-04T09:00:00Z, got {got}"
        )
    check_text(fields["arn"], "schedule.arn", max_chars=MAX_SCHEDULE_ARN_CHARS)
    if not fields["arn"].startswith("arn:"):
        raise InvalidCommand(f"schedule.arn must be an ARN, got {quote(fields['arn'])}")
    # One firing, one run id: the run id is the schedule's name and the
    # firing's execution id, so that no firing can take another's.
    if run_id != f"{fields['name']}-{fields['execution_id']}":
        raise InvalidCommand("run_id of a scheduled command must be schedule.name-execution_id")
    return Firing(**fields)


def _is_day(text: str) -> bool:
    """YYYY-MM-DD names a day that exists (the pattern allows February 31)."""
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _parse_task(task: dict[str, Any]) -> TaskSpec:
    reject_unknown(task, _TASK_KEYS, "task")
    prompt = optional_text(task, "prompt", max_bytes=MAX_ARGUMENT_BYTES)
    if prompt is None or not prompt.strip():
        raise InvalidCommand("task.prompt must be a non-empty string")
    permission_mode = optional(task, "permission_mode", str)
    if permission_mode is not None and permission_mode not in PERMISSION_MODES:
        raise InvalidCommand(
            f"task.permission_mode must be one of {', '.join(PERMISSION_MODES)}; "
            f"got {quote(permission_mode)}"
        )
    max_turns = optional(task, "max_turns", int)
    if max_turns is not None and max_turns < 1:
        raise InvalidCommand("task.max_turns must be at least 1")
    timeout = optional_number(task, "timeout_seconds")
    if timeout is not None and not 0 < timeout <= MAX_TIMEOUT_SECONDS:
        raise InvalidCommand(
            f"task.timeout_seconds must be above 0 and at most {MAX_TIMEOUT_SECONDS}"
        )
    env = _env(task)
    secrets = _secrets(task, env)
    return TaskSpec(
        prompt=prompt,
        name=optional_text(task, "name", max_chars=MAX_LABEL_CHARS),
        task_id=optional_text(task, "task_id", max_chars=MAX_LABEL_CHARS),
        model=_model(task),
        permission_mode=permission_mode,
        allowed_tools=_tool_list(task, "allowed_tools"),
        disallowed_tools=_tool_list(task, "disallowed_tools"),
        max_turns=max_turns,
        timeout_seconds=timeout,
        env=env,
        secrets=secrets,
        mock=_mock(task),
        artifacts=_artifact_patterns(task),
        workspace=(
            parse_workspace(task["workspace"], {*env, *secrets}) if "workspace" in task else None
        ),
        max_budget_usd=budget(task),
        system_prompt=optional_text(task, "system_prompt", max_bytes=MAX_ARGUMENT_BYTES),
        append_system_prompt=optional_text(
            task, "append_system_prompt", max_bytes=MAX_ARGUMENT_BYTES
        ),
        json_schema=json_argument(task, "json_schema"),
        mcp_servers=mcp_servers(task),
        fallback_model=fallback_model(task),
        effort=effort(task),
        settings=json_argument(task, "settings", reserved=NODE_SETTINGS_BYTES),
        retry=retry(task),
        resume=resume(task),
    )


# --- text ------------------------------------------------------------------------


def _model(task: dict[str, Any]) -> str | None:
    model = optional_text(task, "model", max_chars=MAX_LABEL_CHARS)
    if model is not None and not model.strip():
        raise InvalidCommand("task.model must not be empty")
    if model is not None and not MODEL_PATTERN.fullmatch(model):
        raise InvalidCommand(
            f"task.model {quote(model)} is not a model name (letters, digits and ._:/@[]-, "
            "starting with a letter or digit)"
        )
    return model


def _tool_list(task: dict[str, Any], key: str) -> tuple[str, ...]:
    if key not in task:
        return ()
    value = task[key]
    if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value):
        raise InvalidCommand(f"task.{key} must be a list of non-empty strings")
    for index, pattern in enumerate(value):
        what = f"task.{key}[{index}]"
        check_text(pattern, what, max_chars=MAX_TOOL_PATTERN_CHARS)
        if not TOOL_PATTERN.fullmatch(pattern):
            # The CLI would read "-..." as a flag of its own.
            raise InvalidCommand(
                f"{what} {quote(pattern)} is not a tool pattern such as Read, "
                "mcp__server__tool or Bash(git log:*)"
            )
    return tuple(value)


def _artifact_patterns(task: dict[str, Any]) -> tuple[str, ...]:
    """task.artifacts: glob patterns relative to the working folder, which can
    only name something inside it (node.artifacts looks there and nowhere else;
    this refuses a command that asks for more, instead of quietly ignoring it)."""
    if "artifacts" not in task:
        return ()
    value = task["artifacts"]
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise InvalidCommand("task.artifacts must be a list of non-empty glob patterns")
    if len(value) > MAX_ARTIFACT_PATTERNS:
        raise InvalidCommand(f"task.artifacts may hold at most {MAX_ARTIFACT_PATTERNS} patterns")
    for index, pattern in enumerate(value):
        what = f"task.artifacts[{index}]"
        check_text(pattern, what, max_chars=MAX_ARTIFACT_PATTERN_CHARS)
        if any(ord(char) < 0x20 or char == "\x7f" for char in pattern):
            raise InvalidCommand(f"{what} must not contain control characters")
        if pattern.startswith("/"):
            raise InvalidCommand(f"{what} {quote(pattern)} must be relative to the working folder")
        if ".." in pattern.split("/"):
            raise InvalidCommand(f"{what} {quote(pattern)} must not step out with '..'")
    return tuple(value)


def _env(task: dict[str, Any]) -> dict[str, str]:
    if "env" not in task:
        return {}
    value = task["env"]
    if not isinstance(value, dict):
        raise InvalidCommand("task.env must be an object of NAME: value strings")
    for name, item in value.items():
        _check_env_name(name, "task.env")
        if not isinstance(item, str):
            # Name the variable, never its value: env values may be secrets.
            raise InvalidCommand(f"task.env[{quote(name)}] must be a string")
        check_text(item, f"task.env[{quote(name)}]", max_bytes=MAX_ARGUMENT_BYTES - len(name) - 1)
    return dict(value)


def _check_env_name(name: str, where: str) -> None:
    if not ENV_NAME_PATTERN.fullmatch(name):
        raise InvalidCommand(f"{where} name {quote(name)} is not a valid environment name")
    if len(name) > MAX_ENV_NAME_CHARS:
        raise InvalidCommand(f"{where} name {quote(name)} is longer than {MAX_ENV_NAME_CHARS}")


def _secrets(task: dict[str, Any], env: dict[str, str]) -> dict[str, SecretRef]:
    """task.secrets: NAME -> a Secrets Manager ARN, or an SSM parameter name or
    ARN. Whether the node may read it (its --secrets-prefix) is the node's
    decision at run time (node.secrets)."""
    if "secrets" not in task:
        return {}
    value = task["secrets"]
    if not isinstance(value, dict):
        raise InvalidCommand("task.secrets must be an object of NAME: reference strings")
    if len(value) > MAX_TASK_SECRETS:
        raise InvalidCommand(f"task.secrets may name at most {MAX_TASK_SECRETS} secrets")
    refs = {}
    for name, item in value.items():
        what = f"task.secrets[{quote(name)}]"
        _check_env_name(name, "task.secrets")
        if name in env:
            raise InvalidCommand(f"{quote(name)} is in both task.env and task.secrets")
        if not isinstance(item, str):
            raise InvalidCommand(f"{what} must be a string, got {json_type(item)}")
        try:
            refs[name] = parse_secret_ref(item)
        except ValueError:
            raise InvalidCommand(
                f"{what} {quote(item)} is neither a Secrets Manager secret ARN nor an SSM "
                "parameter name or ARN"
            ) from None
    return refs


# --- shapes ----------------------------------------------------------------------


def _mock(task: dict[str, Any]) -> MockSpec:
    if "mock" not in task:
        return MockSpec()
    value = task["mock"]
    if not isinstance(value, dict):
        raise InvalidCommand("task.mock must be an object")
    reject_unknown(value, _MOCK_KEYS, "task.mock")
    duration = optional_number(value, "duration_seconds", "task.mock")
    exit_code = optional(value, "exit_code", int, "task.mock")
    output_bytes = optional(value, "output_bytes", int, "task.mock")
    spec = MockSpec(
        duration_seconds=1.0 if duration is None else duration,
        exit_code=0 if exit_code is None else exit_code,
        output_bytes=2000 if output_bytes is None else output_bytes,
        write_files=parse_mock_files(value["write_files"]) if "write_files" in value else {},
    )
    if not 0 <= spec.duration_seconds <= 3600:
        raise InvalidCommand("task.mock.duration_seconds must be from 0 to 3600")
    if not 0 <= spec.exit_code <= 255:
        raise InvalidCommand("task.mock.exit_code must be from 0 to 255")
    if not 0 <= spec.output_bytes <= MAX_MOCK_OUTPUT_BYTES:
        raise InvalidCommand(f"task.mock.output_bytes must be from 0 to {MAX_MOCK_OUTPUT_BYTES}")
    return spec
