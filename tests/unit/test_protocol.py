"""protocol/: command parsing, its agreement with the RunTask schema, and every
event constructor against its shipped schema."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from typing import Any

import pytest
from unit_support import make_config, schema_errors

from claude_code_scheduler.aws.cancels import CancelRequest
from claude_code_scheduler.node.main import registration
from claude_code_scheduler.node.process.result import summarize_result
from claude_code_scheduler.protocol import (
    EVENT_TYPES,
    PERMISSION_MODES,
    InvalidCommand,
    MockSpec,
    RunTask,
    TaskSpec,
    load_schema,
    parse_command,
)
from claude_code_scheduler.protocol.commands import command_body
from claude_code_scheduler.protocol.events import (
    EcsTask,
    ErrorType,
    Event,
    EventType,
    NodeCounters,
    NodeStatus,
    cancel_requested,
    encode_event,
    iso,
    node_deregistered,
    node_heartbeat,
    node_registered,
    task_completed,
    task_failed,
    task_output,
    task_started,
)

FULL_TASK: dict[str, Any] = {
    "prompt": "Write a haiku about queues",
    "name": "haiku",
    "task_id": "t-42",
    "model": "sonnet",
    "permission_mode": "acceptEdits",
    "allowed_tools": ["Read", "Bash(git:*)"],
    "disallowed_tools": ["Write"],
    "max_turns": 10,
    "timeout_seconds": 600,
    "env": {"FOO": "bar", "_X1": ""},
    "mock": {"duration_seconds": 0.5, "exit_code": 3, "output_bytes": 5000},
}


CANCEL = CancelRequest(
    "r-1", "runaway: € spent", "arn:aws:iam::123456789012:user/ops", "2024-01-01T00:00:00.000Z"
)


def command(run_id: Any = "run-1", **task: Any) -> dict[str, Any]:
    return {"type": "RunTask", "version": 1, "run_id": run_id, "task": {"prompt": "hi", **task}}


def sns_envelope(inner: str) -> str:
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": "0a1b2c3d-0000-4000-8000-000000000000",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:commands",
            "Message": inner,
            "Timestamp": "2024-01-01T00:00:00.000Z",
            "SignatureVersion": "1",
        }
    )


def rejection(body: str) -> InvalidCommand:
    with pytest.raises(InvalidCommand) as info:
        parse_command(body)
    return info.value


# --- parsing: accepted ------------------------------------------------------


def test_minimal_raw_command() -> None:
    parsed = parse_command(json.dumps(command()))
    assert parsed.run_id == "run-1"
    assert parsed.task.prompt == "hi"
    assert parsed.task.mock == MockSpec()
    assert parsed.task.env == {}
    assert parsed.task.allowed_tools == ()
    assert parsed.task.timeout_seconds is None


def test_full_raw_command() -> None:
    parsed = parse_command(json.dumps(command(run_id="A.b_c-9", **FULL_TASK)))
    task = parsed.task
    assert parsed.run_id == "A.b_c-9"
    assert task.prompt == "Write a haiku about queues"
    assert (task.name, task.task_id, task.model) == ("haiku", "t-42", "sonnet")
    assert task.permission_mode == "acceptEdits"
    assert task.allowed_tools == ("Read", "Bash(git:*)")
    assert task.disallowed_tools == ("Write",)
    assert task.max_turns == 10
    assert task.timeout_seconds == 600.0
    assert task.env == {"FOO": "bar", "_X1": ""}
    assert task.mock == MockSpec(duration_seconds=0.5, exit_code=3, output_bytes=5000)


def test_sns_envelope_is_unwrapped() -> None:
    inner = json.dumps(command(run_id="via-sns", **FULL_TASK))
    parsed = parse_command(sns_envelope(inner))
    assert parsed == parse_command(inner)
    assert parsed.run_id == "via-sns"


def test_sns_envelope_with_bad_inner_json_is_invalid() -> None:
    exc = rejection(sns_envelope("{not json"))
    assert "Message is not JSON" in str(exc)
    assert exc.run_id is None


def test_sns_envelope_inner_errors_recover_run_id() -> None:
    inner = json.dumps(command(run_id="inner-7", max_turns=0))
    exc = rejection(sns_envelope(inner))
    assert exc.run_id == "inner-7"
    assert "max_turns" in str(exc)


def test_run_id_of_128_characters_is_accepted() -> None:
    run_id = "a" * 128
    assert parse_command(json.dumps(command(run_id=run_id))).run_id == run_id


@pytest.mark.parametrize("mode", PERMISSION_MODES)
def test_every_permission_mode_is_accepted(mode: str) -> None:
    assert parse_command(json.dumps(command(permission_mode=mode))).task.permission_mode == mode


def test_mock_defaults_fill_missing_fields() -> None:
    parsed = parse_command(json.dumps(command(mock={"exit_code": 2})))
    assert parsed.task.mock == MockSpec(duration_seconds=1.0, exit_code=2, output_bytes=2000)


# --- parsing: rejected ------------------------------------------------------

INVALID_CASES: list[tuple[str, str, str]] = [
    # (id, body, a fragment the message must contain)
    ("not-json", "this is not json", "not JSON"),
    ("truncated-json", '{"type": "RunTask"', "not JSON"),
    ("empty-body", "", "not JSON"),
    ("array", json.dumps([command()]), "JSON object"),
    ("string", json.dumps("RunTask"), "JSON object"),
    ("number", "42", "JSON object"),
    ("null", "null", "JSON object"),
    ("wrong-type", json.dumps({**command(), "type": "StopTask"}), "type must be 'RunTask'"),
    ("missing-type", json.dumps({k: v for k, v in command().items() if k != "type"}), "type"),
    ("version-2", json.dumps({**command(), "version": 2}), "version 2 is not supported"),
    ("version-string", json.dumps({**command(), "version": "1"}), "version '1'"),
    ("version-true", json.dumps({**command(), "version": True}), "version True"),
    (
        "version-missing",
        json.dumps({k: v for k, v in command().items() if k != "version"}),
        "version None",
    ),
    ("run-id-129", json.dumps(command(run_id="a" * 129)), "run_id"),
    ("run-id-empty", json.dumps(command(run_id="")), "run_id"),
    ("run-id-slash", json.dumps(command(run_id="a/b")), "run_id"),
    ("run-id-space", json.dumps(command(run_id="a b")), "run_id"),
    ("run-id-number", json.dumps(command(run_id=12)), "run_id"),
    ("run-id-missing", json.dumps({k: v for k, v in command().items() if k != "run_id"}), "run_id"),
    ("task-missing", json.dumps({k: v for k, v in command().items() if k != "task"}), "task"),
    ("task-string", json.dumps({**command(), "task": "hi"}), "task must be an object"),
    ("prompt-missing", json.dumps({**command(), "task": {"name": "x"}}), "task.prompt"),
    ("prompt-empty", json.dumps(command(prompt="")), "task.prompt"),
    ("prompt-whitespace", json.dumps(command(prompt=" \n\t ")), "task.prompt"),
    ("prompt-number", json.dumps(command(prompt=5)), "task.prompt"),
    ("unknown-top", json.dumps({**command(), "priority": 1}), "command has unknown field"),
    ("unknown-task", json.dumps(command(retries=3)), "task has unknown field"),
    ("unknown-mock", json.dumps(command(mock={"speed": 1})), "task.mock has unknown field"),
    ("permission-bad", json.dumps(command(permission_mode="yolo")), "permission_mode"),
    ("permission-number", json.dumps(command(permission_mode=1)), "permission_mode"),
    ("max-turns-0", json.dumps(command(max_turns=0)), "max_turns"),
    ("max-turns-negative", json.dumps(command(max_turns=-1)), "max_turns"),
    ("max-turns-true", json.dumps(command(max_turns=True)), "max_turns"),
    ("max-turns-string", json.dumps(command(max_turns="3")), "max_turns"),
    ("max-turns-fraction", json.dumps(command(max_turns=1.5)), "max_turns"),
    ("timeout-0", json.dumps(command(timeout_seconds=0)), "timeout_seconds"),
    ("timeout-negative", json.dumps(command(timeout_seconds=-5)), "timeout_seconds"),
    ("timeout-above-12h", json.dumps(command(timeout_seconds=43201)), "timeout_seconds"),
    ("timeout-true", json.dumps(command(timeout_seconds=True)), "timeout_seconds"),
    ("timeout-string", json.dumps(command(timeout_seconds="60")), "timeout_seconds"),
    ("model-empty", json.dumps(command(model="")), "task.model"),
    ("model-number", json.dumps(command(model=4)), "task.model"),
    ("name-number", json.dumps(command(name=4)), "task.name"),
    ("task-id-list", json.dumps(command(task_id=["x"])), "task.task_id"),
    ("tools-string", json.dumps(command(allowed_tools="Read")), "allowed_tools"),
    ("tools-empty-item", json.dumps(command(allowed_tools=["Read", ""])), "allowed_tools"),
    ("tools-number-item", json.dumps(command(disallowed_tools=[1])), "disallowed_tools"),
    ("env-list", json.dumps(command(env=["A=b"])), "task.env"),
    ("mock-list", json.dumps(command(mock=[1])), "task.mock must be an object"),
    ("mock-duration-negative", json.dumps(command(mock={"duration_seconds": -1})), "duration"),
    ("mock-duration-too-long", json.dumps(command(mock={"duration_seconds": 3601})), "duration"),
    ("mock-duration-string", json.dumps(command(mock={"duration_seconds": "1"})), "duration"),
    ("mock-exit-256", json.dumps(command(mock={"exit_code": 256})), "exit_code"),
    ("mock-exit-negative", json.dumps(command(mock={"exit_code": -1})), "exit_code"),
    ("mock-exit-true", json.dumps(command(mock={"exit_code": True})), "exit_code"),
    ("mock-exit-float", json.dumps(command(mock={"exit_code": 1.5})), "exit_code"),
    ("mock-output-negative", json.dumps(command(mock={"output_bytes": -1})), "output_bytes"),
    (
        "mock-output-too-big",
        json.dumps(command(mock={"output_bytes": 100 * 1024 * 1024 + 1})),
        "output_bytes",
    ),
    ("mock-output-string", json.dumps(command(mock={"output_bytes": "10"})), "output_bytes"),
]


@pytest.mark.parametrize(
    ("body", "fragment"), [case[1:] for case in INVALID_CASES], ids=[c[0] for c in INVALID_CASES]
)
def test_invalid_command(body: str, fragment: str) -> None:
    exc = rejection(body)
    assert str(exc), "an InvalidCommand must say what is wrong"
    assert fragment in str(exc)


@pytest.mark.parametrize(
    "document",
    [
        command(max_turns=0),
        command(prompt=""),
        command(permission_mode="yolo"),
        command(unknown=1),
        command(mock={"exit_code": 999}),
        command(env={"1BAD": "x"}),
        {**command(), "version": 2},
        {**command(), "type": "Nope"},
        {**command(), "extra": True},
        {k: v for k, v in command().items() if k != "task"},
    ],
)
def test_run_id_is_recovered_when_readable(document: dict[str, Any]) -> None:
    assert rejection(json.dumps(document)).run_id == "run-1"


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[]",
        json.dumps(command(run_id="a" * 129, max_turns=0)),
        json.dumps(command(run_id="bad id", max_turns=0)),
        json.dumps(command(run_id=7, max_turns=0)),
        json.dumps({k: v for k, v in command(max_turns=0).items() if k != "run_id"}),
    ],
)
def test_run_id_is_none_when_unreadable(body: str) -> None:
    assert rejection(body).run_id is None


@pytest.mark.parametrize("run_id", ["run-1\n", "a" * 128 + "\n"])
def test_run_id_with_trailing_newline_is_rejected(run_id: str) -> None:
    rejection(json.dumps(command(run_id=run_id)))


def test_env_name_with_trailing_newline_is_rejected() -> None:
    rejection(json.dumps(command(env={"FOO\n": "x"})))


# --- env values never leak ----------------------------------------------------

SECRET = "sk-ant-very-secret-value-123"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"1BAD": SECRET}, "1BAD"),
        ({"BAD-NAME": SECRET}, "BAD-NAME"),
        ({"": SECRET}, "''"),
        ({"GOOD": SECRET, "API_KEY": 12345}, "API_KEY"),
        ({"API_KEY": None}, "API_KEY"),
        ({"API_KEY": [SECRET]}, "API_KEY"),
        ({"API_KEY": {"nested": SECRET}}, "API_KEY"),
    ],
)
def test_env_errors_name_the_variable_but_not_the_value(env: dict[str, Any], name: str) -> None:
    exc = rejection(json.dumps(command(env=env)))
    message = str(exc)
    assert name in message
    assert SECRET not in message
    assert "12345" not in message
    assert SECRET not in repr(exc)


def test_task_spec_repr_hides_env_values() -> None:
    parsed = parse_command(json.dumps(command(env={"ANTHROPIC_API_KEY": SECRET, "B": "v2"})))
    for text in (repr(parsed.task), repr(parsed), str(parsed)):
        assert SECRET not in text
        assert "'v2'" not in text
        assert "ANTHROPIC_API_KEY" in text


# --- round trip ---------------------------------------------------------------


@pytest.mark.parametrize(
    "task",
    [
        TaskSpec(prompt="only a prompt"),
        TaskSpec(prompt="-starts with a dash"),
        TaskSpec(
            prompt='naïve ☃ 😀 "quoted" \\ \x01',
            name="n",
            task_id="t",
            model="opus",
            permission_mode="plan",
            allowed_tools=("Read", "Grep"),
            disallowed_tools=("Bash",),
            max_turns=3,
            timeout_seconds=12.5,
            env={"A": "1", "B_2": "two words"},
            mock=MockSpec(duration_seconds=0.0, exit_code=7, output_bytes=0),
        ),
        TaskSpec(prompt="p", mock=MockSpec(duration_seconds=2.0)),
    ],
)
def test_command_body_round_trips(task: TaskSpec) -> None:
    original = RunTask(run_id="rt-1", task=task)
    body = command_body(original)
    assert not schema_errors("RunTask", body)
    assert parse_command(original.to_json()) == original
    assert parse_command(json.dumps(body)) == original
    assert parse_command(sns_envelope(original.to_json())) == original


def test_command_body_omits_unset_fields() -> None:
    body = command_body(RunTask(run_id="r", task=TaskSpec(prompt="p")))
    assert body == {"type": "RunTask", "version": 1, "run_id": "r", "task": {"prompt": "p"}}


# --- parser and schema agree ----------------------------------------------------

AGREEMENT: list[tuple[str, dict[str, Any] | list[Any] | str, bool]] = [
    ("minimal", command(), True),
    ("full", command(**FULL_TASK), True),
    ("run-id-128", command(run_id="x" * 128), True),
    ("run-id-dots", command(run_id="..."), True),
    ("timeout-max", command(timeout_seconds=43200), True),
    ("timeout-fraction", command(timeout_seconds=0.001), True),
    ("mock-empty", command(mock={}), True),
    ("mock-bounds", command(mock={"duration_seconds": 3600, "exit_code": 255}), True),
    ("mock-output-max", command(mock={"output_bytes": 100 * 1024 * 1024}), True),
    ("mock-zeroes", command(mock={"duration_seconds": 0, "exit_code": 0, "output_bytes": 0}), True),
    ("empty-tools", command(allowed_tools=[], disallowed_tools=[]), True),
    ("empty-env", command(env={}), True),
    ("empty-name", command(name="", task_id=""), True),
    ("not-object", [command()], False),
    ("string", "RunTask", False),
    ("wrong-type", {**command(), "type": "Other"}, False),
    ("version-2", {**command(), "version": 2}, False),
    ("version-string", {**command(), "version": "1"}, False),
    ("version-true", {**command(), "version": True}, False),
    ("run-id-129", command(run_id="x" * 129), False),
    ("run-id-empty", command(run_id=""), False),
    ("run-id-colon", command(run_id="a:b"), False),
    ("prompt-missing", {**command(), "task": {}}, False),
    ("prompt-empty", command(prompt=""), False),
    ("prompt-whitespace", command(prompt="   "), False),
    ("unknown-top", {**command(), "x": 1}, False),
    ("unknown-task", command(x=1), False),
    ("unknown-mock", command(mock={"x": 1}), False),
    ("permission-bad", command(permission_mode="root"), False),
    ("max-turns-0", command(max_turns=0), False),
    ("max-turns-true", command(max_turns=True), False),
    ("max-turns-fraction", command(max_turns=2.5), False),
    ("timeout-0", command(timeout_seconds=0), False),
    ("timeout-above", command(timeout_seconds=43200.5), False),
    ("timeout-true", command(timeout_seconds=True), False),
    ("env-bad-name", command(env={"9X": "v"}), False),
    ("env-dash-name", command(env={"A-B": "v"}), False),
    ("env-number-value", command(env={"A": 1}), False),
    ("model-empty", command(model=""), False),
    ("tools-empty-item", command(allowed_tools=[""]), False),
    ("mock-exit-256", command(mock={"exit_code": 256}), False),
    ("mock-duration-neg", command(mock={"duration_seconds": -0.1}), False),
    ("mock-output-big", command(mock={"output_bytes": 100 * 1024 * 1024 + 1}), False),
    ("mock-not-object", command(mock=1), False),
    # Text a process can be given: no NUL, no lone surrogate, bounded labels.
    ("prompt-nul", command(prompt="a\x00b"), False),
    ("prompt-lone-surrogate", command(prompt="a\ud800b"), False),
    ("prompt-emoji", command(prompt="😀 \u2028 é"), True),
    ("prompt-at-the-limit", command(prompt="x" * 131071), True),
    ("prompt-past-the-limit", command(prompt="x" * 131072), False),
    ("model-nul", command(model="sonnet\x00"), False),
    ("model-dash", command(model="-x"), False),
    ("model-space", command(model="son net"), False),
    ("model-bedrock", command(model="us.anthropic.claude-sonnet-4-5:0"), True),
    ("model-1m", command(model="claude-opus-4-1[1m]"), True),
    ("name-surrogate", command(name="\udcff"), False),
    ("name-256", command(name="n" * 256, task_id="t" * 256), True),
    ("name-257", command(name="n" * 257), False),
    ("task-id-257", command(task_id="t" * 257), False),
    ("env-value-nul", command(env={"A": "x\x00"}), False),
    ("env-value-surrogate", command(env={"A": "\ud83d"}), False),
    ("tools-flag", command(allowed_tools=["Read", "--dangerously-skip-permissions"]), False),
    ("tools-add-dir", command(disallowed_tools=["--add-dir=/etc"]), False),
    ("tools-dash", command(allowed_tools=["-p"]), False),
    (
        "tools-patterns",
        command(allowed_tools=["Bash(rm -rf:*)", "mcp__s-1__t_2", "Read(~/x)"]),
        True,
    ),
    ("tools-newline", command(allowed_tools=["Bash(a\nb)"]), False),
    # A pattern's `$` must not match before a final newline (Python's re does).
    ("run-id-trailing-newline", command(run_id="run-1\n"), False),
    ("model-trailing-newline", command(model="sonnet\n"), False),
    ("tool-trailing-newline", command(allowed_tools=["Read\n"]), False),
    ("env-name-trailing-newline", command(env={"A\n": "v"}), False),
    ("timeout-huge-integer", command(timeout_seconds=10**400), False),
    ("mock-duration-huge-integer", command(mock={"duration_seconds": 10**400}), False),
]


def test_the_node_counts_prompt_bytes_where_the_schema_counts_characters() -> None:
    """131,071 characters of a 3-byte character pass the schema but not the
    kernel: the node refuses them, saying the limit."""
    document = command(prompt="€" * 50_000)
    assert not schema_errors("RunTask", document)
    with pytest.raises(InvalidCommand, match=r"at most 131071 bytes of UTF-8.*got 150000"):
        parse_command(json.dumps(document))


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(command(**{"\ud800" * 3: 1})),
        json.dumps(command(**{"x" * 120_000: 1})),
        json.dumps(command(permission_mode="p" * 120_000)),
        json.dumps({**command(), "type": ["\ud800"] * 50_000}),
        json.dumps({**command(), "version": "v" * 120_000}),
        json.dumps(command(model="m" * 120_000)),
        json.dumps(command(allowed_tools=["-" + "x" * 120_000])),
        json.dumps(command(env={"-" + "A" * 5000: "v"})),
        '{"type": "RunTask", "version": ' + "9" * 5000 + "}",
        '{"type": "RunTask", "version": NaN}',
        "[" * 100_000,
    ],
    ids=[
        "surrogate-field",
        "huge-field-name",
        "huge-permission-mode",
        "huge-type",
        "huge-version",
        "huge-model",
        "huge-tool",
        "huge-env-name",
        "thousands-of-digits",
        "nan",
        "deep-nesting",
    ],
)
def test_every_refusal_is_short_and_publishable(body: str) -> None:
    """What InvalidCommand quotes of a command is bounded and escaped: the
    TaskFailed that carries it always fits SNS and encodes as UTF-8."""
    with pytest.raises(InvalidCommand) as info:
        parse_command(body)
    message = str(info.value)
    assert len(message) <= 300, message[:400]
    message.encode("utf-8")  # no lone surrogate
    event = task_failed(info.value.run_id, ErrorType.INVALID_COMMAND, message)
    assert len(encode_event(event.body("n", "n", 1)).encode()) < 2048


def test_an_env_value_is_never_quoted() -> None:
    for value in ("secret\x00", "secret\ud800", "s" * 140_000):
        with pytest.raises(InvalidCommand) as info:
            parse_command(json.dumps(command(env={"TOKEN": value})))
        assert "task.env['TOKEN']" in str(info.value)
        assert "secret" not in str(info.value) and "sss" not in str(info.value)


def parser_accepts(document: Any) -> bool:
    try:
        parse_command(json.dumps(document))
    except InvalidCommand:
        return False
    return True


@pytest.mark.parametrize(
    ("document", "valid"), [c[1:] for c in AGREEMENT], ids=[c[0] for c in AGREEMENT]
)
def test_parser_and_schema_agree(document: Any, valid: bool) -> None:
    schema_valid = not schema_errors("RunTask", document)
    assert parser_accepts(document) is valid
    assert schema_valid is valid


# Edge cases where a parser and a schema easily drift apart.
EDGE_CASES = [
    pytest.param(
        command(model=" "),
        id="model-whitespace",
    ),
    pytest.param(
        command(allowed_tools=["  "]),
        id="tool-whitespace",
    ),
    pytest.param(
        command(name=None),
        id="optional-null",
    ),
    pytest.param(
        command(max_turns=3.0),
        id="integral-float",
    ),
    pytest.param(
        {**command(), "version": 1.0},
        id="version-1.0",
    ),
]


@pytest.mark.parametrize("document", EDGE_CASES)
def test_parser_and_schema_agree_on_edge_cases(document: Any) -> None:
    assert parser_accepts(document) is (not schema_errors("RunTask", document))


# --- events ---------------------------------------------------------------------

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


COUNTERS = NodeCounters(uptime_seconds=12.5, tasks_completed=3, tasks_failed=1)


def test_timestamps_are_iso_utc_with_z() -> None:
    assert TIMESTAMP.match(iso())
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(1.5) == "1970-01-01T00:00:01.500Z"


def test_event_body_envelope() -> None:
    event = node_deregistered("SIGTERM", COUNTERS)
    body = event.body("node-1", "Node One", 7)
    assert body == {
        "event_type": "NodeDeregistered",
        "event_id": event.event_id,
        "version": 1,
        "timestamp": event.timestamp,
        "node_id": "node-1",
        "node_name": "Node One",
        "sequence": 7,
        "data": {"reason": "SIGTERM", **COUNTERS.fields()},
    }
    assert node_deregistered("SIGTERM", COUNTERS).event_id != event.event_id


def test_attributes_carry_run_id_for_task_events_only() -> None:
    assert task_output("r1", 0, "stdout", "x").attributes("n") == {
        "event_type": "TaskOutput",
        "node_id": "n",
        "run_id": "r1",
    }
    assert Event(EventType.NODE_HEARTBEAT, {"run_id": "r1"}).attributes("n") == {
        "event_type": "NodeHeartbeat",
        "node_id": "n",
    }
    unreadable = task_failed(None, ErrorType.INVALID_COMMAND, "bad")
    assert "run_id" not in unreadable.attributes("n")
    assert unreadable.run_id is None


def test_encode_event_keeps_utf8_unescaped() -> None:
    encoded = encode_event(task_output("r", 0, "stdout", "€😀").body("n", "n", 1))
    assert "€😀" in encoded
    assert "\\u" not in encoded
    assert json.loads(encoded)["data"]["data"] == "€😀"


def _events_as_the_code_builds_them() -> list[tuple[str, Event]]:
    """Every constructor, with the values the node gives it at the edges."""
    config = make_config()
    ecs = EcsTask(
        task_arn="arn:aws:ecs:us-east-1:123456789012:task/cluster/abc123",
        cluster="cluster",
        availability_zone="us-east-1a",
    )
    result_line = {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "result": "€" * 3000,
        "session_id": "s-1",
        "total_cost_usd": 0.0123,
        "num_turns": 2,
        "duration_ms": 1234,
    }
    return [
        ("registered-off-ecs", registration(config, claude_version=None, ecs_task=None)),
        ("registered-on-ecs", registration(config, claude_version="2.0.1", ecs_task=ecs)),
        (
            "registered-ecs-partial",
            node_registered(
                hostname="h",
                version="1.2.3",
                mock_mode=False,
                heartbeat_interval=1.5,
                max_concurrent_tasks=4,
                claude_version="2.1.332 (Claude Code)",
                started_at=0,
                ecs=EcsTask(task_arn=ecs.task_arn, cluster=None, availability_zone=None),
            ),
        ),
        ("heartbeat-idle", node_heartbeat(NodeStatus.IDLE, [], COUNTERS)),
        ("heartbeat-busy", node_heartbeat(NodeStatus.BUSY, ["r-1", "r.2"], COUNTERS)),
        ("heartbeat-draining", node_heartbeat(NodeStatus.DRAINING, ["r-1"], COUNTERS)),
        ("deregistered", node_deregistered("SIGTERM", COUNTERS)),
        (
            "started",
            task_started(
                "r-1", task_id=None, task_name="name", attempt=2, started_at=1_700_000_000.25
            ),
        ),
        ("started-ids", task_started("r-1", task_id="t", task_name=None, attempt=1, started_at=0)),
        ("output", task_output("r-1", 0, "stderr", "x" * 196608)),
        ("output-empty", task_output("r-1", 5, "stdout", "")),
        (
            "completed",
            task_completed(
                "r-1",
                exit_code=0,
                duration_seconds=1.2345678,
                log_uri=config.log_uri("r-1"),
                output_bytes=1024,
                result=summarize_result(result_line),
            ),
        ),
        (
            "completed-no-result",
            task_completed(
                "r-1",
                exit_code=0,
                duration_seconds=0,
                log_uri=config.log_uri("r-1"),
                output_bytes=0,
                result=summarize_result(None),
            ),
        ),
        (
            "completed-empty-result",
            task_completed(
                "r-1",
                exit_code=0,
                duration_seconds=0,
                log_uri=config.log_uri("r-1"),
                output_bytes=0,
                result=summarize_result({"type": "result", "num_turns": True}),
            ),
        ),
        (
            "failed-invalid-no-run-id",
            task_failed(None, ErrorType.INVALID_COMMAND, "bad", retryable=False),
        ),
        (
            "failed-claude",
            task_failed(
                "r-1",
                ErrorType.CLAUDE_ERROR,
                "API Error",
                exit_code=1,
                duration_seconds=3.14159,
                log_uri=config.log_uri("r-1"),
            ),
        ),
        ("failed-timeout", task_failed("r-1", ErrorType.TIMEOUT, "t", exit_code=-9)),
        (
            "failed-shutdown",
            task_failed("r-1", ErrorType.NODE_SHUTDOWN, "handed back", retryable=True),
        ),
        ("failed-node-error", task_failed("r-1", ErrorType.NODE_ERROR, "no upload")),
        (
            "failed-cancelled",
            task_failed(
                "r-1",
                ErrorType.CANCELLED,
                "cancelled by an operator",
                log_uri=config.log_uri("r-1"),
                cancel=CANCEL,
            ),
        ),
        ("cancel-requested", cancel_requested(CANCEL)),
        ("cancel-requested-no-reason", cancel_requested(replace(CANCEL, reason=None))),
    ]


EVENTS = _events_as_the_code_builds_them()


@pytest.mark.parametrize("event", [e[1] for e in EVENTS], ids=[e[0] for e in EVENTS])
def test_every_constructor_matches_its_schema(event: Event) -> None:
    body = json.loads(encode_event(event.body("node-1", "Node One", 3)))
    assert body["event_type"] in EVENT_TYPES
    assert schema_errors(event.event_type, body) == []


def test_every_event_type_is_covered_and_has_a_schema() -> None:
    assert {event.event_type for _, event in EVENTS} == set(EventType)
    assert set(EVENT_TYPES) == {t.value for t in EventType}
    for name in (*EVENT_TYPES, "RunTask"):
        assert load_schema(name)["title"] == name


def test_every_error_type_is_in_the_schema() -> None:
    enum = load_schema("TaskFailed")["properties"]["data"]["properties"]["error"]["properties"]
    assert set(enum["type"]["enum"]) == {t.value for t in ErrorType}


def test_constructors_round_and_cut_as_the_schema_says() -> None:
    data = task_failed("r", ErrorType.TIMEOUT, "m", duration_seconds=1.23456).data
    assert data["duration_seconds"] == 1.235
    assert data["retryable"] is False
    completed = dict(EVENTS)["completed"].data
    assert completed["duration_seconds"] == 1.235
    assert len(completed["result"]["text"].encode()) <= 4096
    assert completed["result"]["text"] == "€" * 1365, "cut on a character boundary"


@pytest.mark.parametrize(
    ("event_type", "mutate"),
    [
        ("TaskOutput", lambda b: b["data"].update(stream="both")),
        ("TaskOutput", lambda b: b["data"].update(chunk_index=-1)),
        ("TaskOutput", lambda b: b["data"].update(data="x" * 196609)),
        ("TaskOutput", lambda b: b.update(sequence=0)),
        ("TaskOutput", lambda b: b.update(event_id="not-a-uuid")),
        ("TaskOutput", lambda b: b.update(timestamp="2024-01-01 00:00:00")),
        ("TaskOutput", lambda b: b["data"].pop("run_id")),
        ("TaskOutput", lambda b: b["data"].update(extra=1)),
        ("TaskFailed", lambda b: b["data"]["error"].update(type="Oops")),
        ("TaskFailed", lambda b: b["data"].update(log_uri="s3://b/other/r.log")),
        ("NodeHeartbeat", lambda b: b["data"].update(status="sleeping")),
    ],
)
def test_schemas_reject_malformed_events(event_type: str, mutate: Any) -> None:
    """The schemas have teeth: the validation above could fail."""
    source = {
        "TaskOutput": task_output("r-1", 0, "stdout", "x"),
        "TaskFailed": task_failed("r-1", ErrorType.TIMEOUT, "t"),
        "NodeHeartbeat": node_heartbeat(NodeStatus.IDLE, [], COUNTERS),
    }[event_type]
    body = copy.deepcopy(source.body("n", "n", 1))
    assert schema_errors(event_type, body) == []
    mutate(body)
    assert schema_errors(event_type, body)


# --- task.secrets: references, not values ------------------------------------------

SM_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:claude-code-scheduler/db-AbCdEf"
SSM_ARN = "arn:aws:ssm:us-east-1:123456789012:parameter/claude-code-scheduler/token"


def test_secrets_take_secrets_manager_arns_and_ssm_names_and_arns() -> None:
    refs = {"DB": SM_ARN, "TOKEN": SSM_ARN, "KEY": "/claude-code-scheduler/key"}
    document = command(secrets=refs, env={"PLAIN": "x"})
    assert not schema_errors("RunTask", document)
    parsed = parse_command(json.dumps(document))
    assert {name: ref.service for name, ref in parsed.task.secrets.items()} == {
        "DB": "secretsmanager",
        "TOKEN": "ssm",
        "KEY": "ssm",
    }
    assert parsed.task.secrets["KEY"].name == "claude-code-scheduler/key"
    assert command_body(parsed)["task"]["secrets"] == refs
    assert parse_command(parsed.to_json()) == parsed


SECRETS_REFUSED = [
    ("not-an-object", command(secrets=["DB=x"]), "task.secrets must be an object"),
    ("not-a-string", command(secrets={"DB": 7}), "task.secrets['DB'] must be a string"),
    ("bad-name", command(secrets={"1DB": SM_ARN}), "is not a valid environment name"),
    ("s3-arn", command(secrets={"DB": "arn:aws:s3:::bucket"}), "neither a Secrets Manager"),
    ("short-account", command(secrets={"DB": SM_ARN.replace("123456789012", "1234")}), "neither"),
    ("double-slash", command(secrets={"DB": "a//b"}), "neither"),
    ("too-many", command(secrets={f"S{n}": f"/p/{n}" for n in range(65)}), "at most 64"),
]


@pytest.mark.parametrize(
    ("document", "fragment"), [c[1:] for c in SECRETS_REFUSED], ids=[c[0] for c in SECRETS_REFUSED]
)
def test_bad_secrets_are_invalid_commands_for_the_parser_and_the_schema(
    document: dict[str, Any], fragment: str
) -> None:
    assert fragment in str(rejection(json.dumps(document)))
    assert schema_errors("RunTask", document)


def test_a_name_in_both_env_and_secrets_is_an_invalid_command() -> None:
    """Which would win is nobody's guess to make. (The schema cannot compare
    the two objects' names; its description says so.)"""
    exc = rejection(json.dumps(command(env={"DB": "x"}, secrets={"DB": SM_ARN})))
    assert "'DB' is in both task.env and task.secrets" in str(exc)


def test_task_spec_repr_names_secrets_without_references() -> None:
    parsed = parse_command(json.dumps(command(secrets={"DB": SM_ARN})))
    assert "DB" in repr(parsed.task) and SM_ARN not in repr(parsed.task)


def test_a_secret_error_matches_the_task_failed_schema() -> None:
    event = task_failed("r-1", ErrorType.SECRET_ERROR, f"task.secrets[DB]: could not read {SM_ARN}")
    assert not schema_errors("TaskFailed", event.body("n", "n", 1))
