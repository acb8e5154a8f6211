"""node/process/claude.py and result.py: the CLI's argv, finding its result line, its figures,
and the words that say why a run failed."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from typing import Any

import pytest

from claude_code_scheduler.node.process import mockcli
from claude_code_scheduler.node.process.claude import claude_argv, mock_argv
from claude_code_scheduler.node.process.result import (
    ROOT_ADVICE,
    ResultTracker,
    failure_message,
    succeeded,
    summarize_result,
)
from claude_code_scheduler.node.process.supervisor import ProcessResult
from claude_code_scheduler.protocol import MockSpec, TaskSpec

# --- argv -------------------------------------------------------------------------

BASE_ARGV = [
    "claude",
    "-p",
    "--verbose",
    "--output-format",
    "stream-json",
    "--strict-mcp-config",
    "--setting-sources=user",
    "--add-dir=.",
]


def test_claude_argv_minimal() -> None:
    assert claude_argv("claude", TaskSpec(prompt="hello")) == [*BASE_ARGV, "--", "hello"]


def test_claude_argv_puts_flags_then_double_dash_then_prompt() -> None:
    task = TaskSpec(
        prompt="--help me",
        model="sonnet",
        permission_mode="plan",
        allowed_tools=("Read", "Bash(ls:*)"),
        disallowed_tools=("Write", "Edit"),
        max_turns=4,
    )
    assert claude_argv("/usr/bin/claude", task) == [
        "/usr/bin/claude",
        *BASE_ARGV[1:],
        "--model",
        "sonnet",
        "--permission-mode",
        "plan",
        "--allowedTools",
        "Read",
        "Bash(ls:*)",
        "--disallowedTools",
        "Write",
        "Edit",
        "--max-turns",
        "4",
        "--",
        "--help me",
    ]


def test_mock_argv_passes_the_prompt_after_double_dash() -> None:
    task = TaskSpec(prompt="-x", mock=MockSpec(duration_seconds=0.5, exit_code=2))
    argv = mock_argv(task)
    assert argv[:3] == [sys.executable, "-m", "claude_code_scheduler.node.process.mockcli"]
    assert argv[-2:] == ["--", "-x"]
    assert argv[argv.index("--exit-code") + 1] == "2"
    assert argv[argv.index("--duration") + 1] == "0.5"


def test_a_mock_run_of_a_json_schema_task_gives_structured_output(capsys: Any) -> None:
    """Mock mode has no model to fill the schema; without the object the node
    would fail every json_schema task in mock mode (node.outcome). Control:
    a task without json_schema gets none."""
    for schema, expected in (({"type": "object"}, {}), (None, None)):
        task = TaskSpec(prompt="p", json_schema=schema, mock=MockSpec(duration_seconds=0))
        argv = mock_argv(task)
        assert mockcli.main(argv[3:]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert lines[-1]["type"] == "result"
        assert lines[-1].get("structured_output") == expected


def test_a_mock_run_stopped_by_sigint_ends_as_the_real_cli_does() -> None:
    """SIGINT (a cancel's first signal): an aborted result line, exit 0 and no
    traceback in the run's log, as CLI 2.1.332 does (FINDINGS.md, "Cancel")."""
    # 13 lines over 20 s: the init line comes after 1.5 s, the rest would take 18 s more.
    task = TaskSpec(prompt="p", mock=MockSpec(duration_seconds=20, output_bytes=100_000))
    child = subprocess.Popen(mock_argv(task), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None
    child.stdout.readline()  # the init line: the mock is running its loop
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0
    assert err == b""
    result = json.loads(out.splitlines()[-1])
    assert result["type"] == "result"
    assert (result["subtype"], result["is_error"]) == ("error_during_execution", True)
    assert "result" not in result


# --- ResultTracker ----------------------------------------------------------------------


def stream_json(*objects: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(obj).encode() + b"\n" for obj in objects)


RESULT = {"type": "result", "subtype": "success", "is_error": False, "result": "done"}


def feed_in_pieces(data: bytes, rng: random.Random, max_piece: int) -> ResultTracker:
    tracker = ResultTracker()
    offset = 0
    while offset < len(data):
        size = rng.randint(1, max_piece)
        tracker.feed(data[offset : offset + size])
        offset += size
    tracker.finish()
    return tracker


def test_result_tracker_finds_the_last_result_across_any_boundaries() -> None:
    data = stream_json(
        {"type": "system", "subtype": "init"},
        {"type": "assistant", "message": {"content": [{"type": "text", "text": '"result"'}]}},
        {**RESULT, "result": "first"},
        {"type": "user", "result": "not a result line"},
        {**RESULT, "result": "last €"},
    )
    rng = random.Random(7)
    for max_piece in (1, 2, 3, 17, 64, len(data)):
        tracker = feed_in_pieces(data, rng, max_piece)
        assert tracker.result is not None
        assert tracker.result["result"] == "last €"


def test_result_tracker_without_trailing_newline_and_garbage() -> None:
    tracker = ResultTracker()
    tracker.feed(b'not json "result"\n{"type": "result", "resu')
    tracker.feed(b'lt": "tail"}')
    assert tracker.result is None
    tracker.finish()
    assert tracker.result == {"type": "result", "result": "tail"}


def test_result_tracker_none_without_result() -> None:
    tracker = ResultTracker()
    tracker.feed(stream_json({"type": "system"}, {"type": "assistant"}))
    tracker.finish()
    assert tracker.result is None


def test_result_tracker_handles_a_five_megabyte_line() -> None:
    long_text = "x" * (5 * 1024 * 1024)
    data = stream_json(
        {"type": "assistant", "message": {"content": [{"type": "text", "text": long_text}]}},
        {**RESULT, "result": long_text},
    )
    tracker = feed_in_pieces(data, random.Random(3), 65536)
    assert tracker.result is not None
    assert tracker.result["result"] == long_text


# --- summarize_result ------------------------------------------------------------------


def test_summarize_result_picks_the_figures() -> None:
    summary = summarize_result(
        {
            **RESULT,
            "session_id": "s",
            "total_cost_usd": 0.5,
            "num_turns": 3,
            "duration_ms": 1200,
            "extra": "ignored",
        }
    )
    assert summary is not None
    assert summary.fields() == {
        "session_id": "s",
        "total_cost_usd": 0.5,
        "num_turns": 3,
        "duration_ms": 1200,
        "is_error": False,
        "text": "done",
        "structured_output": None,
    }
    assert summarize_result(None) is None


def test_summarize_result_drops_values_of_the_wrong_type() -> None:
    summary = summarize_result(
        {"type": "result", "session_id": 5, "total_cost_usd": True, "num_turns": "3"}
    )
    assert summary is not None
    assert summary.session_id is None
    assert summary.total_cost_usd is None
    assert summary.num_turns is None
    assert summary.text is None
    assert summary.is_error is False


@pytest.mark.parametrize("char", ["a", "é", "€", "😀"])
def test_summarize_result_cuts_text_to_4096_bytes_on_a_character_boundary(char: str) -> None:
    text = char * 5000
    summary = summarize_result({**RESULT, "result": text})
    assert summary is not None
    cut = summary.fields()["text"]
    encoded = cut.encode("utf-8")
    assert len(encoded) <= 4096
    assert 4096 - len(encoded) < len(char.encode())
    assert text.startswith(cut)
    assert "\ufffd" not in cut


def test_summarize_result_keeps_short_text() -> None:
    summary = summarize_result({**RESULT, "result": "€" * 1365})
    assert summary is not None
    assert summary.fields()["text"] == "€" * 1365


# --- succeeded and failure_message ---------------------------------------------------------


Ended = tuple[ProcessResult, dict[str, Any] | None]


def outcome(
    exit_code: int | None = 0,
    result: dict[str, Any] | None = None,
    stderr: str = "",
    **flags: Any,
) -> Ended:
    """A process that ended so, and the result line the CLI printed."""
    return ProcessResult(exit_code, 1.0, 100, stderr, **flags), result


def test_exit_zero_with_a_clean_result_succeeds() -> None:
    assert succeeded(*outcome(0, RESULT))


def test_api_error_reported_as_success_subtype_fails_with_its_text() -> None:
    api_error = {
        "type": "result",
        "subtype": "success",
        "is_error": True,
        "result": "API Error: 529 overloaded",
    }
    run = outcome(0, api_error)
    assert not succeeded(*run)
    assert failure_message(*run) == "API Error: 529 overloaded"


def test_max_turns_result_fails_with_its_errors_list() -> None:
    max_turns = {
        "type": "result",
        "subtype": "error_max_turns",
        "is_error": True,
        "errors": ["Reached maximum number of turns (1)", "second"],
    }
    run = outcome(1, max_turns)
    assert not succeeded(*run)
    assert failure_message(*run) == "Reached maximum number of turns (1); second"


def test_error_subtype_without_text_or_errors_names_the_subtype() -> None:
    run = outcome(1, {"type": "result", "subtype": "error_during_execution", "is_error": True})
    assert failure_message(*run) == "claude ended with error_during_execution"


def test_no_json_but_stderr_gives_the_stderr_text() -> None:
    run = outcome(1, None, "  error: unknown option '--bogus'\n")
    assert not succeeded(*run)
    assert failure_message(*run) == "error: unknown option '--bogus'"


def test_exit_zero_without_a_result_line_fails() -> None:
    run = outcome(0, None)
    assert not succeeded(*run)
    assert failure_message(*run) == "claude exited 0 without a result line"


def test_non_zero_exit_with_nothing_said() -> None:
    run = outcome(3, None)
    assert not succeeded(*run)
    assert failure_message(*run) == "claude exited with status 3"


@pytest.mark.parametrize(
    "run",
    [
        outcome(1, RESULT),
        outcome(None, RESULT),
        outcome(0, RESULT, timed_out=True),
        outcome(0, RESULT, cancelled=True),
    ],
)
def test_a_clean_result_is_not_enough(run: Ended) -> None:
    assert not succeeded(*run)


def test_the_root_refusal_comes_with_what_to_do() -> None:
    refusal = (
        "--dangerously-skip-permissions cannot be used with root/sudo privileges "
        "for security reasons\n"
    )
    message = failure_message(ProcessResult(1, 0.3, 0, refusal), None)
    assert message.startswith(refusal.strip())
    assert message.endswith(ROOT_ADVICE)
    assert "never starts it as root" in message


def test_failure_message_is_cut_to_4096_bytes() -> None:
    run = outcome(1, {"type": "result", "is_error": True, "result": "😀" * 2000})
    message = failure_message(*run)
    assert len(message.encode()) <= 4096
    assert set(message) == {"😀"}


def test_result_tracker_ignores_a_result_line_nested_too_deeply() -> None:
    tracker = ResultTracker()
    tracker.feed(b'{"type": "result", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")
    tracker.feed(stream_json({"type": "result", "result": "after"}))
    assert tracker.result == {"type": "result", "result": "after"}
