"""node/process/mockcli.py: realistic stream-json, padded to the requested size."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from typing import Any

import pytest

import claude_code_scheduler
from claude_code_scheduler.node.process.mockcli import main, session_lines
from claude_code_scheduler.node.process.result import (
    ResultTracker,
    failure_message,
    summarize_result,
)
from claude_code_scheduler.node.process.supervisor import ProcessResult


def parsed(lines: list[bytes]) -> list[dict[str, Any]]:
    objects = []
    for line in lines:
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1
        objects.append(json.loads(line))
    return objects


def test_session_shape() -> None:
    objects = parsed(session_lines("Fix the bug", "sonnet", 2000, 0))
    init, first, *_, result = objects
    assert init["type"] == "system"
    assert init["subtype"] == "init"
    assert init["model"] == "sonnet"
    assert first["type"] == "assistant"
    assert first["message"]["content"][0]["text"] == "Mock reply to: Fix the bug"
    assert result["type"] == "result"
    assert result["subtype"] == "success"
    assert result["is_error"] is False
    assert result["result"] == "Mock reply to: Fix the bug"
    assert "errors" not in result
    session_ids = {obj["session_id"] for obj in objects}
    assert len(session_ids) == 1
    assert all(obj["type"] == "assistant" for obj in objects[1:-1])


@pytest.mark.parametrize("output_bytes", [2000, 5000, 100_000, 1_000_000])
def test_total_size_equals_output_bytes(output_bytes: int) -> None:
    lines = session_lines("prompt with ünïcödé 😀", "mock", output_bytes, 0)
    assert sum(len(line) for line in lines) == output_bytes
    assert len(lines) <= 2 + 10 + 1


@pytest.mark.parametrize("output_bytes", [0, 10])
def test_small_sizes_still_give_a_whole_session(output_bytes: int) -> None:
    objects = parsed(session_lines("p", "mock", output_bytes, 0))
    assert [o["type"] for o in objects] == ["system", "assistant", "result"]


def test_non_zero_exit_gives_an_error_result_without_text() -> None:
    lines = session_lines("p", "mock", 3000, 4)
    result = parsed(lines)[-1]
    assert result["is_error"] is True
    assert result["subtype"] != "success"
    assert "result" not in result
    assert result["errors"] == ["mock run failed with exit code 4"]
    assert sum(len(line) for line in lines) == 3000
    tracker = ResultTracker()
    tracker.feed(b"".join(lines))
    ended = ProcessResult(4, 0.1, 3000, "")
    assert failure_message(ended, tracker.result) == "mock run failed with exit code 4"
    summary = summarize_result(tracker.result)
    assert summary is not None and summary.is_error is True


def test_main_writes_the_session_and_returns_the_exit_code(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    code = main(["--duration", "0", "--output-bytes", "2500", "--exit-code", "7", "--", "-dash"])
    captured = capsysbinary.readouterr()
    assert code == 7
    assert len(captured.out) == 2500
    objects = [json.loads(line) for line in captured.out.splitlines()]
    assert objects[1]["message"]["content"][0]["text"] == "Mock reply to: -dash"
    assert objects[-1]["is_error"] is True
    assert captured.err == b"mock run failed with exit code 7\n"


def test_main_success(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["--duration", "0", "--model", "opus", "hello"]) == 0
    captured = capsysbinary.readouterr()
    assert len(captured.out) == 2000
    assert captured.err == b""
    assert json.loads(captured.out.splitlines()[0])["model"] == "opus"


def test_session_ids_are_version_4_uuids() -> None:
    objects = parsed(session_lines("p", "mock", 2000, 0))
    session = uuid.UUID(objects[0]["session_id"])
    assert session.version == 4 and session.variant == uuid.RFC_4122
    assert str(session) == objects[0]["session_id"]
    assert re.fullmatch(r"msg_mock_[0-9a-f]{20}", objects[1]["message"]["id"])


def modules_after(code: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(done.stdout.split())


def test_the_mock_child_imports_only_what_it_uses() -> None:
    """Every mock run starts one: the package's version lookup
    (importlib.metadata), typing and uuid would cost it tens of milliseconds."""
    added = modules_after("import claude_code_scheduler.node.process.mockcli") - modules_after("")
    assert not added & {"importlib.metadata", "typing", "uuid"}


def test_the_version_is_there_when_asked_for() -> None:
    from claude_code_scheduler import __version__  # noqa: PLC0415

    assert __version__ == claude_code_scheduler.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", __version__)
    with pytest.raises(AttributeError):
        _ = claude_code_scheduler.no_such_name
