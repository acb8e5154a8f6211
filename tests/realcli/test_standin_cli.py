"""The genuine Claude Code CLI against the scripted API stand-in, without the node.

These pin down what the node relies on: the stream-json lines the CLI prints,
the words it uses for failures, and what its flags do. Each run takes about a
second. See FINDINGS.md for the facts behind each assertion.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.realcli.anthropic_standin import AnthropicStandin, ApiError, Text, ToolUse, Turn
from tests.realcli.claude_cli import (
    INVALID_API_KEY,
    NOT_LOGGED_IN,
    ROOT_BYPASS_REFUSAL,
    run_claude,
)
from tests.realcli.conftest import RunClaude, RunDirs
from tests.unprivileged import owned_dirs, unprivileged_user


def test_text_reply_ends_in_a_result_line_with_the_reply(
    claude: RunClaude, run_dirs: RunDirs
) -> None:
    reply = "Hello from the stand-in."
    with AnthropicStandin([Text(reply)]) as api:
        run = claude(
            api,
            ["--model", "claude-sonnet-4-5"],
            "Say hello",
        )
    assert run.returncode == 0, run.describe()
    init, result = run.init, run.result
    assert init is not None and result is not None, run.describe()
    assert init["model"] == "claude-sonnet-4-5"
    assert init["permissionMode"] == "default"
    assert init["cwd"] == str(run_dirs.cwd)
    assert "Write" in init["tools"] and "Bash" in init["tools"]
    assert [o["type"] for o in run.lines] == ["system", "assistant", "result"]
    assert result["subtype"] == "success"
    assert result["is_error"] is False
    assert result["result"] == reply
    assert result["session_id"] == init["session_id"]
    assert result["num_turns"] == 1
    assert result["total_cost_usd"] > 0
    assert isinstance(result["duration_ms"], int)
    # One main request, with the model the flag named and the CLI's tool list.
    assert [r.model for r in api.main_requests] == ["claude-sonnet-4-5"]
    assert "Write" in api.main_requests[0].tool_names
    assert api.overrun == 0 and api.remaining == 0
    # The key never reaches the recording; the CLI did send one.
    assert api.main_requests[0].headers["x-api-key"] == "<redacted>"


def test_tool_use_write_lands_in_the_working_directory(
    claude: RunClaude, run_dirs: RunDirs
) -> None:
    turns: list[Turn] = [
        ToolUse("Write", {"file_path": "hello.txt", "content": "written by the stand-in\n"}),
        Text("Wrote hello.txt."),
    ]
    with AnthropicStandin(turns) as api:
        run = claude(
            api,
            ["--permission-mode", "acceptEdits"],
            "Write hello.txt",
        )
    assert run.returncode == 0, run.describe()
    assert (run_dirs.cwd / "hello.txt").read_text() == "written by the stand-in\n"
    assert sorted(p.name for p in run_dirs.cwd.iterdir()) == ["hello.txt"]
    result = run.result
    assert result is not None
    assert (result["is_error"], result["result"], result["num_turns"]) == (
        False,
        "Wrote hello.txt.",
        2,
    )
    assert result["permission_denials"] == []
    # The tool result went back to the stand-in in the second request.
    assert len(api.main_requests) == 2
    assert "File created successfully" in api.main_requests[1].tool_result_text()


def test_write_is_denied_in_default_mode_unless_allowed(claude_bin: Path, tmp_path: Path) -> None:
    """--allowedTools does not change the tool list; it pre-approves the tool."""
    for allowed, written in (([], False), (["--allowedTools", "Write"], True)):
        cwd, home = tmp_path / f"work-{written}", tmp_path / f"home-{written}"
        cwd.mkdir()
        home.mkdir()
        turns: list[Turn] = [ToolUse("Write", {"file_path": "a.txt", "content": "x"}), Text("done")]
        with AnthropicStandin(turns) as api:
            run = run_claude(claude_bin, api, allowed, "write", cwd=cwd, home=home)
        assert run.returncode == 0, run.describe()
        assert (cwd / "a.txt").exists() is written
        result = run.result
        assert result is not None and result["is_error"] is False
        assert bool(result["permission_denials"]) is not written
        assert "Write" in api.main_requests[0].tool_names


def test_api_error_401_is_an_error_result_in_the_clis_words(claude: RunClaude) -> None:
    with AnthropicStandin([ApiError(401)]) as api:
        run = claude(
            api,
            [],
            "Say hello",
            # Without it the CLI retries a 401 ten times over about three minutes.
            env={"CLAUDE_CODE_MAX_RETRIES": "0"},
        )
    assert run.returncode == 1, run.describe()
    result = run.result
    assert result is not None, run.describe()
    # An API error is subtype success with is_error true: neither alone tells.
    assert result["subtype"] == "success"
    assert result["is_error"] is True
    assert result["result"] == INVALID_API_KEY
    assert result["api_error_status"] == 401
    assert len(api.main_requests) == 1


def test_api_error_retries_are_bounded_by_claude_code_max_retries(claude: RunClaude) -> None:
    with AnthropicStandin([ApiError(429)]) as api:
        run = claude(
            api,
            [],
            "Say hello",
            env={"CLAUDE_CODE_MAX_RETRIES": "1"},
        )
    assert run.returncode == 1, run.describe()
    retries = run.of_type("system", "api_retry")
    assert [(r["attempt"], r["max_retries"], r["error_status"]) for r in retries] == [(1, 1, 429)]
    assert len(api.main_requests) == 2
    result = run.result
    assert result is not None and result["is_error"] is True
    assert result["result"].startswith("API Error: Request rejected (429)")


def test_missing_api_key_says_not_logged_in(claude: RunClaude) -> None:
    with AnthropicStandin([Text("unused")]) as api:
        run = claude(
            api,
            [],
            "Say hello",
            api_key=None,
        )
    assert run.returncode == 1, run.describe()
    result = run.result
    assert result is not None
    assert (result["is_error"], result["result"]) == (True, NOT_LOGGED_IN)
    assert api.main_requests == []


def test_max_turns_ends_in_error_max_turns_without_a_result_text(claude: RunClaude) -> None:
    turns: list[Turn] = [
        ToolUse("Bash", {"command": f"echo {i}", "description": "echo"}) for i in range(3)
    ]
    with AnthropicStandin(turns) as api:
        run = claude(
            api,
            ["--allowedTools", "Bash", "--max-turns", "1"],
            "count",
        )
    assert run.returncode == 1, run.describe()
    result = run.result
    assert result is not None
    assert result["subtype"] == "error_max_turns"
    assert result["is_error"] is True
    assert "result" not in result
    assert result["errors"] == ["Reached maximum number of turns (1)"]
    assert len(api.main_requests) == 1


def test_task_flags_reach_the_cli(claude: RunClaude) -> None:
    with AnthropicStandin([Text("ok")]) as api:
        run = claude(
            api,
            [
                "--model",
                "claude-haiku-4-5",
                "--permission-mode",
                "acceptEdits",
                "--allowedTools",
                "Read",
                "Write",
                "--disallowedTools",
                "Bash",
                "WebFetch",
                "--max-turns",
                "3",
            ],
            "flags",
        )
    assert run.returncode == 0, run.describe()
    init = run.init
    assert init is not None
    assert (init["model"], init["permissionMode"]) == ("claude-haiku-4-5", "acceptEdits")
    assert "Bash" not in init["tools"] and "WebFetch" not in init["tools"]
    (request,) = api.main_requests
    assert request.model == "claude-haiku-4-5"
    assert "Bash" not in request.tool_names
    assert "Write" in request.tool_names and "Read" in request.tool_names
    # The prompt after `--` survived the variadic tool-list flags.
    assert run.result is not None and run.result["result"] == "ok"


@pytest.mark.skipif(os.geteuid() != 0, reason="the root guard only shows as root")
def test_bypass_permissions_as_root_is_refused(claude: RunClaude) -> None:
    with AnthropicStandin([Text("unused")]) as api:
        run = claude(
            api,
            ["--permission-mode", "bypassPermissions"],
            "go",
        )
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.strip() == ROOT_BYPASS_REFUSAL
    assert api.main_requests == []


def test_bypass_permissions_as_an_unprivileged_user_writes(claude_bin: Path) -> None:
    user = unprivileged_user()
    turns: list[Turn] = [
        ToolUse("Write", {"file_path": "out.txt", "content": "bypass\n"}),
        Text("done"),
    ]
    with owned_dirs(user, "work", "home", "tmp") as (cwd, home, tmp):
        with AnthropicStandin(turns) as api:
            run = run_claude(
                claude_bin,
                api,
                ["--permission-mode", "bypassPermissions"],
                "go",
                cwd=cwd,
                home=home,
                tmpdir=tmp,
                user=user,
            )
        assert run.returncode == 0, run.describe()
        assert run.init is not None and run.init["permissionMode"] == "bypassPermissions"
        assert (cwd / "out.txt").read_text() == "bypass\n"
        if user is not None:
            assert (cwd / "out.txt").stat().st_uid == user[0]


def test_a_second_tool_list_entry_is_read_as_a_flag_by_the_cli(claude: RunClaude) -> None:
    """Why the node refuses tool patterns that start with '-': `--` protects
    only the prompt, and the CLI takes `--dangerously-skip-permissions` from
    the second entry of --allowedTools even with --permission-mode default."""
    with AnthropicStandin([Text("ran")]) as api:
        run = claude(
            api,
            [
                "--permission-mode",
                "default",
                "--allowedTools",
                "Read",
                "--dangerously-skip-permissions",
            ],
            "hello",
        )
    if os.geteuid() == 0:
        # As root the CLI refuses the flag it was smuggled: proof that it took it.
        assert ROOT_BYPASS_REFUSAL in run.stderr, run.describe()
    else:
        assert run.init is not None, run.describe()
        assert run.init["permissionMode"] == "bypassPermissions"


def test_a_prompt_that_looks_like_flags_is_only_a_prompt(claude: RunClaude) -> None:
    prompt = "--dangerously-skip-permissions --add-dir=/etc -p"
    with AnthropicStandin([Text("just words")]) as api:
        run = claude(api, ["--permission-mode", "default"], prompt)
    assert run.returncode == 0, run.describe()
    assert run.init is not None and run.init["permissionMode"] == "default"
    [request] = api.main_requests
    assert prompt in json.dumps(request.body["messages"])
