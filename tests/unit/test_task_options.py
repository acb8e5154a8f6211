"""The CLI's own controls per task (issue 13): each task field parsed strictly,
in the wire form and the schema alike, and passed to the CLI as its flag.

What reached the genuine CLI is tests/realcli/test_realcli_task_options.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from unit_support import schema_errors

from claude_code_scheduler.client.commands import submit
from claude_code_scheduler.client.options import JSON_OBJECT
from claude_code_scheduler.client.tasks import build_command
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.node.process.claude import SANDBOX_SETTINGS, claude_argv
from claude_code_scheduler.protocol import InvalidCommand, RunTask, TaskSpec, parse_command
from claude_code_scheduler.protocol.commands import (
    MAX_ARGUMENT_BYTES,
    NODE_SETTINGS_BYTES,
    ResumeSpec,
    RetrySpec,
    command_body,
)

QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/claude-tasks"
SESSION = "0b6f8a52-5d43-4b8e-9f0e-2b1c3d4e5f60"
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
SERVER = {"command": "/usr/bin/python3", "args": ["-m", "server"], "env": {"LEVEL": "1"}}

EVERY_FIELD: dict[str, Any] = {
    "max_budget_usd": 0.25,
    "system_prompt": "You are terse.",
    "append_system_prompt": "Answer in French.",
    "json_schema": SCHEMA,
    "mcp_servers": {"db": SERVER},
    "fallback_model": "sonnet,haiku",
    "effort": "high",
    "settings": {"env": {"A": "1"}},
    "retry": {"max_attempts": 5},
    "resume": {"session_id": SESSION, "fork": True},
}


def command(**task: Any) -> dict[str, Any]:
    return {"type": "RunTask", "version": 1, "run_id": "run-1", "task": {"prompt": "hi", **task}}


def parsed(**task: Any) -> TaskSpec:
    return parse_command(json.dumps(command(**task))).task


def refusal(**task: Any) -> str:
    with pytest.raises(InvalidCommand) as info:
        parse_command(json.dumps(command(**task)))
    return str(info.value)


# --- parsing ------------------------------------------------------------------------


def test_every_field_is_parsed_into_the_task_spec() -> None:
    task = parsed(**EVERY_FIELD)
    assert task.max_budget_usd == 0.25
    assert task.system_prompt == "You are terse."
    assert task.append_system_prompt == "Answer in French."
    assert task.json_schema == SCHEMA
    assert task.mcp_servers == {"db": SERVER}
    assert task.fallback_model == "sonnet,haiku"
    assert task.effort == "high"
    assert task.settings == {"env": {"A": "1"}}
    assert task.retry == RetrySpec(max_attempts=5)
    assert task.resume == ResumeSpec(session_id=SESSION, fork=True)


def test_absent_fields_stay_unset() -> None:
    task = parsed()
    assert (task.max_budget_usd, task.json_schema, task.retry, task.resume) == (None,) * 4


def test_resume_forks_only_when_asked() -> None:
    assert parsed(resume={"session_id": SESSION}).resume == ResumeSpec(SESSION, fork=False)


def test_an_integer_budget_is_a_number_of_dollars() -> None:
    assert parsed(max_budget_usd=3).max_budget_usd == 3.0


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("max_budget_usd", 0, "positive number"),
        ("max_budget_usd", -1, "positive number"),
        ("max_budget_usd", "5", "must be a number"),
        ("max_budget_usd", True, "must be a number"),
        ("max_budget_usd", 10**400, "out of range"),
        ("max_budget_usd", 1_000_001, "at most 1000000"),
        ("system_prompt", 5, "must be a string"),
        ("system_prompt", "a\x00b", "NUL"),
        ("append_system_prompt", "\ud800", "lone surrogate"),
        ("system_prompt", "x" * (MAX_ARGUMENT_BYTES + 1), "at most 131071 bytes"),
        ("json_schema", [SCHEMA], "must be an object, got an array"),
        ("json_schema", "{}", "must be an object, got a string"),
        ("json_schema", {"description": "x" * MAX_ARGUMENT_BYTES}, "bytes as compact JSON"),
        ("settings", None, "must be an object, got null"),
        ("settings", {"x": "y" * (MAX_ARGUMENT_BYTES - NODE_SETTINGS_BYTES)}, "compact JSON"),
        ("mcp_servers", [], "must be an object"),
        ("mcp_servers", {"db": "db-mcp"}, "task.mcp_servers['db'] must be an object"),
        ("mcp_servers", {"db": {"command": "x" * MAX_ARGUMENT_BYTES}}, "compact JSON"),
        ("fallback_model", "-p", "not a model name"),
        ("fallback_model", "sonnet,-p", "not a model name"),
        ("fallback_model", "sonnet,", "not a model name"),
        ("fallback_model", "", "not a model name"),
        ("fallback_model", "son net", "not a model name"),
        ("fallback_model", "sonnet\n", "not a model name"),
        ("effort", "extreme", "must be one of low, medium, high, xhigh, max"),
        ("effort", 3, "must be a string"),
        ("retry", 3, "task.retry must be an object"),
        ("retry", {}, "must have max_attempts"),
        ("retry", {"max_attempts": 0}, "from 1 to 100"),
        ("retry", {"max_attempts": 101}, "from 1 to 100"),
        ("retry", {"max_attempts": 2.5}, "must be an integer"),
        ("retry", {"max_attempts": True}, "must be an integer"),
        ("retry", {"max_attempts": 2, "delay": 5}, "unknown field(s): 'delay'"),
        ("resume", SESSION, "task.resume must be an object"),
        ("resume", {}, "must have session_id"),
        ("resume", {"session_id": "latest"}, "is not a session id (a lowercase UUID)"),
        ("resume", {"session_id": SESSION + "\n"}, "is not a session id"),
        ("resume", {"session_id": "--fork-session"}, "is not a session id"),
        ("resume", {"session_id": SESSION, "fork": "yes"}, "fork must be a boolean"),
        ("resume", {"session_id": SESSION, "path": "/x"}, "unknown field(s): 'path'"),
    ],
)
def test_a_field_that_cannot_work_is_refused_in_one_bounded_line(
    field: str, value: Any, words: str
) -> None:
    message = refusal(**{field: value})
    assert words in message
    assert field in message
    assert "\n" not in message and len(message) <= 300


def test_a_budget_past_the_double_range_is_refused() -> None:
    """1e400 is JSON, and Python reads it as infinity (the CLI would run unbounded)."""
    document = json.dumps(command()).replace('"prompt"', '"max_budget_usd": 1e400, "prompt"')
    with pytest.raises(InvalidCommand, match="positive number"):
        parse_command(document)


def test_json_objects_are_bounded_as_the_argument_the_cli_gets() -> None:
    """Counted as compact, ASCII-escaped JSON: what claude_argv passes."""
    room = MAX_ARGUMENT_BYTES - len('{"d":""}')
    assert parsed(json_schema={"d": "x" * room}).json_schema is not None
    assert "compact JSON" in refusal(json_schema={"d": "x" * (room + 1)})
    # One character of UTF-8 text, six bytes as an escape.
    assert "compact JSON" in refusal(json_schema={"d": "é" * (room // 6 + 1)})


def test_a_nul_or_lone_surrogate_inside_an_object_is_carried_as_an_escape() -> None:
    task = parsed(settings={"env": {"A": "x\x00\ud800"}})
    argv = claude_argv("claude", task)
    value = argv[argv.index("--settings") + 1]
    assert value == r'{"env":{"A":"x\u0000\ud800"}}'
    value.encode("ascii")


# --- wire form and schema -------------------------------------------------------------


def test_every_field_round_trips_through_the_wire_form_and_the_schema() -> None:
    original = parse_command(json.dumps(command(**EVERY_FIELD)))
    body = command_body(original)
    assert body["task"] == {"prompt": "hi", **EVERY_FIELD}
    assert not schema_errors("RunTask", body)
    assert parse_command(original.to_json()) == original


def test_a_command_built_in_code_matches_the_schema() -> None:
    task = TaskSpec(
        prompt="p",
        max_budget_usd=1.5,
        json_schema={},
        mcp_servers={},
        settings={},
        retry=RetrySpec(1),
        resume=ResumeSpec(SESSION),
    )
    body = command_body(RunTask("r", task))
    assert body["task"]["resume"] == {"session_id": SESSION, "fork": False}
    assert body["task"]["json_schema"] == {}  # empty is set, not absent
    assert not schema_errors("RunTask", body)


def parser_accepts(document: Any) -> bool:
    try:
        parse_command(json.dumps(document))
    except InvalidCommand:
        return False
    return True


AGREEMENT: list[tuple[str, dict[str, Any], bool]] = [
    ("every-field", command(**EVERY_FIELD), True),
    ("budget-tiny", command(max_budget_usd=1e-6), True),
    ("budget-max", command(max_budget_usd=1_000_000), True),
    ("budget-above-max", command(max_budget_usd=1_000_000.01), False),
    ("budget-huge", command(max_budget_usd=10**400), False),
    ("budget-zero", command(max_budget_usd=0), False),
    ("budget-negative", command(max_budget_usd=-0.5), False),
    ("budget-string", command(max_budget_usd="1"), False),
    ("budget-null", command(max_budget_usd=None), False),
    ("system-empty", command(system_prompt=""), True),
    ("system-nul", command(system_prompt="\x00"), False),
    ("system-at-the-limit", command(system_prompt="s" * 131071), True),
    ("system-past-the-limit", command(append_system_prompt="s" * 131072), False),
    ("schema-empty", command(json_schema={}), True),
    ("schema-array", command(json_schema=[]), False),
    ("schema-true", command(json_schema=True), False),
    ("mcp-empty", command(mcp_servers={}), True),
    ("mcp-http", command(mcp_servers={"d": {"type": "http", "url": "https://x"}}), True),
    ("mcp-string-config", command(mcp_servers={"d": "x"}), False),
    ("mcp-null-config", command(mcp_servers={"d": None}), False),
    ("fallback-one", command(fallback_model="claude-sonnet-4-5"), True),
    ("fallback-bedrock", command(fallback_model="us.anthropic.claude-haiku-4-5:0,opus"), True),
    ("fallback-dash", command(fallback_model="-x"), False),
    ("fallback-second-dash", command(fallback_model="opus,-x"), False),
    ("fallback-empty", command(fallback_model=""), False),
    ("fallback-double-comma", command(fallback_model="a,,b"), False),
    ("fallback-space", command(fallback_model="a, b"), False),
    ("fallback-257", command(fallback_model="m" * 257), False),
    ("fallback-newline", command(fallback_model="opus\n"), False),
    *((f"effort-{level}", command(effort=level), True) for level in ("low", "max", "xhigh")),
    ("effort-upper", command(effort="HIGH"), False),
    ("effort-null", command(effort=None), False),
    ("settings-array", command(settings=[1]), False),
    ("retry-1", command(retry={"max_attempts": 1}), True),
    ("retry-100", command(retry={"max_attempts": 100}), True),
    ("retry-integral-float", command(retry={"max_attempts": 3.0}), True),
    ("retry-0", command(retry={"max_attempts": 0}), False),
    ("retry-101", command(retry={"max_attempts": 101}), False),
    ("retry-missing", command(retry={}), False),
    ("retry-unknown", command(retry={"max_attempts": 2, "x": 1}), False),
    ("retry-null", command(retry=None), False),
    ("resume-upper", command(resume={"session_id": SESSION.upper()}), False),
    # A name longer than the kernel's argument limit would leave its value a
    # negative room: bounded well below it, in both (the fuzzer found it).
    ("env-name-1024", command(env={"N" * 1024: "v"}), True),
    ("env-name-1025", command(env={"N" * 1025: "v"}), False),
    ("env-name-huge", command(env={"N" * 200_000: "v"}), False),
    ("secret-name-1025", command(secrets={"N" * 1025: "/claude-code-scheduler/x"}), False),
    ("resume-no-dashes", command(resume={"session_id": SESSION.replace("-", "")}), False),
    ("resume-title", command(resume={"session_id": "my session"}), False),
    ("resume-newline", command(resume={"session_id": SESSION + "\n"}), False),
    ("resume-fork-null", command(resume={"session_id": SESSION, "fork": None}), False),
    ("resume-missing", command(resume={"fork": True}), False),
    ("resume-unknown", command(resume={"session_id": SESSION, "x": 1}), False),
]


@pytest.mark.parametrize(
    ("document", "valid"), [c[1:] for c in AGREEMENT], ids=[c[0] for c in AGREEMENT]
)
def test_parser_and_schema_agree(document: dict[str, Any], valid: bool) -> None:
    assert parser_accepts(document) is valid
    assert (not schema_errors("RunTask", document)) is valid


# --- argv -------------------------------------------------------------------------------


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, item in enumerate(argv) if item == flag]


def test_every_field_becomes_its_flag_and_the_prompt_stays_last() -> None:
    task = parsed(**EVERY_FIELD)
    argv = claude_argv("claude", task)
    assert argv[-2:] == ["--", "hi"]
    assert flag_values(argv, "--max-budget-usd") == ["0.25"]
    assert flag_values(argv, "--system-prompt") == ["You are terse."]
    assert flag_values(argv, "--append-system-prompt") == ["Answer in French."]
    assert [json.loads(v) for v in flag_values(argv, "--json-schema")] == [SCHEMA]
    assert [json.loads(v) for v in flag_values(argv, "--mcp-config")] == [
        {"mcpServers": {"db": SERVER}}
    ]
    assert flag_values(argv, "--fallback-model") == ["sonnet,haiku"]
    assert flag_values(argv, "--effort") == ["high"]
    assert [json.loads(v) for v in flag_values(argv, "--settings")] == [{"env": {"A": "1"}}]
    assert flag_values(argv, "--resume") == [SESSION]
    assert "--fork-session" in argv
    # Compact: one argument, no spaces the CLI could split on.
    assert flag_values(argv, "--json-schema") == [
        '{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}'
    ]


def test_mcp_config_is_followed_by_the_double_dash() -> None:
    """--mcp-config is variadic: a prompt right after it would be read as a config."""
    argv = claude_argv("claude", parsed(mcp_servers={"db": SERVER}, prompt="--help"))
    assert argv[argv.index("--mcp-config") + 2 :] == ["--", "--help"]


def test_every_run_is_sealed_from_other_mcp_configs() -> None:
    assert "--strict-mcp-config" in claude_argv("claude", TaskSpec(prompt="p"))
    assert "--strict-mcp-config" in claude_argv("claude", parsed(mcp_servers={"db": SERVER}))


def test_resume_without_fork_does_not_fork() -> None:
    argv = claude_argv("claude", parsed(resume={"session_id": SESSION}))
    assert flag_values(argv, "--resume") == [SESSION]
    assert "--fork-session" not in argv


def test_unset_fields_pass_no_flags() -> None:
    argv = claude_argv("claude", TaskSpec(prompt="p"))
    for flag in ("--max-budget-usd", "--settings", "--mcp-config", "--effort", "--resume"):
        assert flag not in argv


def test_a_tiny_budget_is_a_number_the_cli_reads() -> None:
    argv = claude_argv("claude", parsed(max_budget_usd=1e-05))
    assert float(flag_values(argv, "--max-budget-usd")[0]) == 1e-05


@pytest.mark.parametrize(
    "task_settings",
    [
        None,
        {"env": {"A": "1"}},
        {"env": {"A": "1"}, "sandbox": {"enabled": False, "excludedCommands": ["*"]}},
    ],
)
def test_with_the_bash_sandbox_settings_are_one_argument_and_the_nodes_sandbox_wins(
    task_settings: dict[str, Any] | None,
) -> None:
    """The CLI reads only the last --settings (FINDINGS.md), so the node's and
    the task's go in one; the task cannot loosen the sandbox by any key of it."""
    task = TaskSpec(prompt="p", settings=task_settings)
    values = flag_values(claude_argv("claude", task, bash_sandbox=True), "--settings")
    assert len(values) == 1
    merged = json.loads(values[0])
    assert merged["sandbox"] == SANDBOX_SETTINGS["sandbox"]
    assert merged.get("env") == (task_settings or {}).get("env")


def test_without_the_bash_sandbox_the_tasks_settings_pass_as_they_are() -> None:
    settings = {"sandbox": {"enabled": False}, "env": {"A": "1"}}
    argv = claude_argv("claude", TaskSpec(prompt="p", settings=settings))
    assert [json.loads(v) for v in flag_values(argv, "--settings")] == [settings]


# --- submit ---------------------------------------------------------------------------


def submit_options(**options: Any) -> dict[str, Any]:
    return {"prompt": "hi", **options}


def test_submit_options_become_the_task_fields(tmp_path: Path) -> None:
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    command = build_command(
        submit_options(
            max_budget_usd=0.25,
            system_prompt="You are terse.",
            append_system_prompt="Answer in French.",
            json_schema=JSON_OBJECT.convert(f"@{schema_file}", None, None),
            mcp_servers=JSON_OBJECT.convert(json.dumps({"db": SERVER}), None, None),
            fallback_model="sonnet,haiku",
            effort="high",
            settings=JSON_OBJECT.convert('{"env": {"A": "1"}}', None, None),
            max_attempts=5,
            resume=SESSION,
            fork_session=True,
        )
    )
    assert command_body(command)["task"] == {"prompt": "hi", **EVERY_FIELD}


def test_mcp_config_takes_a_whole_config_file_too(tmp_path: Path) -> None:
    config = tmp_path / ".mcp.json"
    config.write_text(json.dumps({"mcpServers": {"db": SERVER}}))
    servers = JSON_OBJECT.convert(f"@{config}", None, None)
    assert build_command(submit_options(mcp_servers=servers)).task.mcp_servers == {"db": SERVER}


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"fork_session": True}, "--fork-session needs --resume"),
        ({"resume": "latest"}, "is not a session id"),
        ({"mcp_servers": {"mcpServers": []}}, "mcpServers must be an object"),
        ({"mcp_servers": {"db": "x"}}, "task.mcp_servers['db'] must be an object"),
        ({"fallback_model": "-p"}, "not a model name"),
    ],
)
def test_bad_submit_options_are_one_line_config_errors(
    options: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        build_command(submit_options(**options))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--json-schema", "{not json"], "Invalid value for '--json-schema': not JSON"),
        (["--settings", "[1, 2]"], "must be a JSON object, got list"),
        (["--mcp-config", "@/nonexistent/mcp.json"], "cannot read /nonexistent/mcp.json"),
        (["--effort", "extreme"], "Invalid value for '--effort'"),
        (["--max-budget-usd", "0"], "Invalid value for '--max-budget-usd'"),
        (["--max-budget-usd", "inf"], "Invalid value for '--max-budget-usd'"),
        (["--max-attempts", "0"], "Invalid value for '--max-attempts'"),
    ],
)
def test_bad_json_or_values_are_usage_errors(args: list[str], fragment: str) -> None:
    result = CliRunner().invoke(submit, ["--prompt", "hi", "--queue-url", QUEUE, *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.output
