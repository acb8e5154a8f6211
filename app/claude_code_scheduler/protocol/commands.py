"""The RunTask command: its typed form, its wire form and its limits.

`parsing` turns an untrusted message body into one. No I/O here.
`schemas/RunTask.json` describes the same shape.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from claude_code_scheduler.aws.limits import MAX_VISIBILITY_SECONDS
from claude_code_scheduler.aws.names import SecretRef

if TYPE_CHECKING:  # protocol.workspace imports InvalidCommand from here
    from claude_code_scheduler.protocol.workspace import Workspace

PROTOCOL_VERSION = 1
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
# EventBridge Scheduler's own rule for a schedule's name. A fired command's
# run id is "<name>-<execution id>" (protocol.schedules), so the execution id
# keeps to the run id's characters and leaves room for the longest name.
SCHEDULE_NAME_PATTERN = re.compile(r"^[0-9A-Za-z_.-]{1,64}$")
EXECUTION_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,63}$")
# <aws.scheduler.scheduled-time> as the scheduler fills it in, e.g.
# 2022-03-22T18:59:43Z; an offset and fractions are taken too.
SCHEDULED_TIME_PATTERN = re.compile(
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
MAX_SCHEDULE_ARN_CHARS = 512
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# No real variable's name comes near it; bounded so that a name can never
# leave a negative room for its value below MAX_ARGUMENT_BYTES.
MAX_ENV_NAME_CHARS = 1024
PERMISSION_MODES = ("default", "acceptEdits", "auto", "bypassPermissions", "dontAsk", "plan")
# A run holds its message invisible for as long as it lasts.
MAX_TIMEOUT_SECONDS = MAX_VISIBILITY_SECONDS
MAX_MOCK_OUTPUT_BYTES = 100 * 1024 * 1024
# mock.write_files reaches the mock CLI as one JSON argument (MAX_ARGUMENT_BYTES).
MAX_MOCK_FILES = 64
MAX_MOCK_FILE_CHARS = 65536
MAX_MOCK_PATH_CHARS = 1024
MAX_MOCK_FILES_BYTES = 100 * 1024
# Linux refuses an argument or environment string longer than 32 pages with its
# NUL (MAX_ARG_STRLEN): a longer prompt, or env entry NAME=value, cannot reach
# the CLI ("Argument list too long").
MAX_ARGUMENT_BYTES = 128 * 1024 - 1
# task.settings shares its --settings argument with the node's own settings
# (the Bash sandbox's, about 130 bytes), merged in: room kept for them.
NODE_SETTINGS_BYTES = 1024
# name, task_id and model: echoed in events, so bounded well below SNS's limit.
MAX_LABEL_CHARS = 256
# task.secrets: each one is a GetSecretValue or GetParameter call made one
# after another before the run starts, within its timeout, and every value
# must fit the CLI's environment with the rest (Linux's ARG_MAX, about 2 MiB
# with the argv, against Secrets Manager's 64 KiB per secret). 64 covers a
# task's real needs (GitHub Actions lets a job read 100) and bounds both the
# wait and the command's size.
MAX_TASK_SECRETS = 64
MAX_TOOL_PATTERN_CHARS = 1024
# task.artifacts: glob patterns relative to the working folder. Each pattern is
# matched against every file the run left, so the count is bounded, and a
# pattern can only ever name something inside the folder (no absolute path,
# no "..").
MAX_ARTIFACT_PATTERNS = 32
MAX_ARTIFACT_PATTERN_CHARS = 512
# A model name or a tool pattern: what the CLI can take for one, and never
# something it reads as a flag (a value that starts with "-").
MODEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@\[\]-]*$")
TOOL_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_*-]*(\([^\x00-\x1f]*\))?$")
# task.max_budget_usd: far above what any one run costs, and so a number every
# JSON reader reads alike (never past a double's range, which Python reads as
# infinity and the CLI as no limit).
MAX_BUDGET_USD = 1_000_000
# What `claude --help` (2.1.332) lists for --effort.
EFFORT_LEVELS = ("low", "medium", "high", "xhigh", "max")
# task.retry.max_attempts: the node keeps it below the queue's maxReceiveCount
# anyway (node.retries); this only refuses a number no queue would allow.
MAX_RETRY_ATTEMPTS = 100
# A session id as the CLI writes it (2.1.332: a lowercase UUID) and as
# --resume takes it: the CLI looks for the file named exactly so, case and
# all, and the node builds an S3 key and a file name from it (node.sessions),
# so nothing else is let through.
SESSION_ID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def compact_json(value: Any) -> str:
    """An object as the CLI takes it in one argument. ASCII only: a NUL or a lone
    surrogate anywhere in it is an escape, never a byte the argv cannot hold."""
    return json.dumps(value, separators=(",", ":"))


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
    # Relative path -> text, written into the working folder by the mock CLI.
    write_files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ResumeSpec:
    """task.resume: continue the CLI session `session_id` (node.sessions
    restores its transcript); `fork` starts a new session id from it."""

    session_id: str
    fork: bool = False


@dataclass(frozen=True)
class RetrySpec:
    """task.retry: how many attempts a retryable failure gets (node.retries)."""

    max_attempts: int


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
    # Environment names mapped to where their values are kept; the node reads
    # them at run time (node.secrets). References are not secret.
    secrets: dict[str, SecretRef] = field(default_factory=dict)
    mock: MockSpec = field(default_factory=MockSpec)
    workspace: Workspace | None = None
    # Glob patterns of files to keep from the working folder (node.artifacts).
    artifacts: tuple[str, ...] = ()
    # The CLI's own controls, each passed as the flag of the same name.
    max_budget_usd: float | None = None
    system_prompt: str | None = None
    append_system_prompt: str | None = None
    json_schema: dict[str, Any] | None = None
    # Server name -> server config, the "mcpServers" object of an MCP config.
    mcp_servers: dict[str, Any] | None = None
    fallback_model: str | None = None
    effort: str | None = None
    settings: dict[str, Any] | None = None
    retry: RetrySpec | None = None
    resume: ResumeSpec | None = None

    def __repr__(self) -> str:
        # Task env values are secrets as far as the node knows: never print them.
        # Secret references are not, but only the names are needed here too.
        return (
            f"TaskSpec(name={self.name!r}, task_id={self.task_id!r}, env={sorted(self.env)}, "
            f"secrets={sorted(self.secrets)})"
        )


@dataclass(frozen=True)
class Firing:
    """Which schedule sent this command, as EventBridge Scheduler filled it in
    when it fired (protocol.schedules): the name is the schedule's own, the
    rest is the firing's."""

    name: str
    execution_id: str
    scheduled_time: str
    arn: str

    def to_wire(self) -> dict[str, str]:
        return {
            "name": self.name,
            "execution_id": self.execution_id,
            "scheduled_time": self.scheduled_time,
            "arn": self.arn,
        }


@dataclass(frozen=True)
class RunTask:
    run_id: str
    task: TaskSpec
    schedule: Firing | None = None

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
        "secrets": {name: ref.ref for name, ref in task.secrets.items()} or None,
        "workspace": task.workspace.to_wire() if task.workspace is not None else None,
        "artifacts": list(task.artifacts) or None,
        "max_budget_usd": task.max_budget_usd,
        "system_prompt": task.system_prompt,
        "append_system_prompt": task.append_system_prompt,
        "json_schema": task.json_schema,
        "mcp_servers": task.mcp_servers,
        "fallback_model": task.fallback_model,
        "effort": task.effort,
        "settings": task.settings,
        "retry": {"max_attempts": task.retry.max_attempts} if task.retry is not None else None,
        "resume": (
            {"session_id": task.resume.session_id, "fork": task.resume.fork}
            if task.resume is not None
            else None
        ),
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if task.mock != MockSpec():
        body["mock"] = {
            "duration_seconds": task.mock.duration_seconds,
            "exit_code": task.mock.exit_code,
            "output_bytes": task.mock.output_bytes,
        }
        if task.mock.write_files:
            body["mock"]["write_files"] = dict(task.mock.write_files)
    wire: dict[str, Any] = {
        "type": "RunTask",
        "version": PROTOCOL_VERSION,
        "run_id": command.run_id,
        "task": body,
    }
    if command.schedule is not None:
        wire["schedule"] = command.schedule.to_wire()
    return wire
