"""Real mode with a fake `claude` executable: the command line, the
environment, the working directory and how the CLI's outcome is read."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.integration.conftest import command
from tests.unprivileged import drop_box


def run_fake(stack, start_node, fake_claude, tmp_path, mode, node_env=None, **task):
    record = drop_box(tmp_path) / f"record-{mode}.json"
    env = {"FAKE_CLAUDE_MODE": mode, "FAKE_CLAUDE_RECORD": str(record), **task.pop("env", {})}
    node = start_node(
        stack, "--claude-bin", str(fake_claude), "--poll-wait-seconds", "1", env=node_env
    )
    cmd = command(env=env, **task)
    stack.send(cmd)
    terminal = stack.wait_for(
        lambda e: (
            e["event_type"] in ("TaskCompleted", "TaskFailed")
            and e["data"]["run_id"] == cmd["run_id"]
        )
    )
    seen = json.loads(record.read_text()) if record.exists() else None
    return node, cmd, terminal, seen


def test_flags_prompt_stdin_and_environment_reach_the_cli(stack, start_node, fake_claude, tmp_path):
    node_env = {
        "CLAUDECODE": "1",
        "AWS_SESSION_TOKEN": "node-session-token",
        "AWS_ROLE_SESSION_NAME": "node-session",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/abc",
        "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token",
    }
    node, _, terminal, seen = run_fake(
        stack,
        start_node,
        fake_claude,
        tmp_path,
        "ok",
        node_env=node_env,
        prompt="--looks-like-a-flag",
        model="opus",
        permission_mode="acceptEdits",
        allowed_tools=["Read", "Bash(git:*)"],
        disallowed_tools=["WebFetch"],
        max_turns=4,
        env={"TASK_VALUE": "from-the-task"},
    )
    assert terminal["event_type"] == "TaskCompleted", terminal
    assert seen["argv"] == [
        "-p",
        "--verbose",
        "--output-format",
        "stream-json",
        "--strict-mcp-config",
        "--setting-sources=user",
        "--add-dir=.",
        "--model",
        "opus",
        "--permission-mode",
        "acceptEdits",
        "--allowedTools",
        "Read",
        "Bash(git:*)",
        "--disallowedTools",
        "WebFetch",
        "--max-turns",
        "4",
        "--",
        "--looks-like-a-flag",
    ]
    assert seen["stdin"] == "" and seen["stdin_isatty"] is False
    env = seen["env"]
    assert env["TASK_VALUE"] == "from-the-task"
    for name in (*node_env, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert name not in env, name
    # Where to reach AWS is not a credential; the CLI's tools may need it.
    assert env["AWS_REGION"] == "us-east-1"
    # Its own process group, its own fresh directory under the work dir, gone afterwards,
    # with the CLI's config and temp folders beside it.
    assert seen["pgid"] == seen["pid"]
    workdir = Path(seen["cwd"])
    run_root = workdir.parent
    assert run_root.parent == node.work_dir
    assert env["CLAUDE_CONFIG_DIR"] == str(run_root / "claude")
    assert env["CLAUDE_CODE_TMPDIR"] == env["TMPDIR"] == str(run_root / "tmp")
    # The run's marker: its run id and a token of this attempt's own.
    run_id, _, token = env["CLAUDE_CODE_SCHEDULER_RUN_ID"].partition("/")
    assert run_id == terminal["data"]["run_id"] and len(token) == 32
    assert "CLAUDE_CODE_MAX_RETRIES" not in env
    assert env["DISABLE_AUTOUPDATER"] == "1"
    assert not run_root.exists()
    result = terminal["data"]["result"]
    assert result == {
        "session_id": "fake-session",
        "total_cost_usd": 0.0125,
        "num_turns": 1,
        "duration_ms": 12,
        "is_error": False,
        "text": "all done",
        "structured_output": None,
    }


def test_aws_credentials_and_max_retries_passed_on_purpose(
    stack, start_node, fake_claude, tmp_path
):
    record = drop_box(tmp_path) / "record.json"
    node = start_node(
        stack,
        "--claude-bin",
        str(fake_claude),
        "--poll-wait-seconds",
        "1",
        "--claude-max-retries",
        "2",
        env={
            "CLAUDE_NODE_PASS_AWS_CREDENTIALS": "true",
            "FAKE_CLAUDE_MODE": "ok",
            "FAKE_CLAUDE_RECORD": str(record),
        },
    )
    cmd = command()
    stack.send(cmd)
    terminal = stack.wait_for(
        lambda e: (
            e["event_type"] in ("TaskCompleted", "TaskFailed")
            and e["data"]["run_id"] == cmd["run_id"]
        )
    )
    assert terminal["event_type"] == "TaskCompleted", terminal
    env = json.loads(record.read_text())["env"]
    assert env["AWS_ACCESS_KEY_ID"] == "testing"
    assert env["AWS_SECRET_ACCESS_KEY"] == "testing-secret-key"
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "2"
    assert "--pass-aws-credentials: the CLI and every tool it runs act with" in node.stderr


def test_is_error_with_exit_zero_is_a_failure(stack, start_node, fake_claude, tmp_path):
    _, _, terminal, _ = run_fake(stack, start_node, fake_claude, tmp_path, "is-error-exit-0")
    assert terminal["event_type"] == "TaskFailed"
    assert terminal["data"]["error"] == {
        "type": "ClaudeError",
        "message": "API Error: 529 overloaded",
    }
    assert terminal["data"]["exit_code"] == 0


def test_api_error_uses_the_cli_words(stack, start_node, fake_claude, tmp_path):
    _, _, terminal, _ = run_fake(stack, start_node, fake_claude, tmp_path, "api-error")
    assert terminal["data"]["error"]["message"] == "API Error: 401 invalid x-api-key"
    assert terminal["data"]["exit_code"] == 1
    assert terminal["data"]["retryable"] is False


def test_max_turns_reports_the_errors_list(stack, start_node, fake_claude, tmp_path):
    _, _, terminal, _ = run_fake(stack, start_node, fake_claude, tmp_path, "max-turns", max_turns=2)
    assert terminal["data"]["error"] == {
        "type": "MaxTurns",
        "message": "Reached maximum number of turns (2)",
    }


def test_stderr_is_the_message_when_there_is_no_json(stack, start_node, fake_claude, tmp_path):
    _, cmd, terminal, _ = run_fake(stack, start_node, fake_claude, tmp_path, "stderr-only")
    assert terminal["data"]["error"]["message"] == "error: unknown option '--bogus'"
    assert terminal["data"]["exit_code"] == 2
    assert b"unknown option" in stack.log_text(cmd["run_id"])


def test_exit_zero_without_result_is_a_failure(stack, start_node, fake_claude, tmp_path):
    _, _, terminal, _ = run_fake(stack, start_node, fake_claude, tmp_path, "no-result")
    assert terminal["event_type"] == "TaskFailed"
    assert "without a result" in terminal["data"]["error"]["message"]


def test_multi_megabyte_result_line_is_whole_in_the_log(stack, start_node, fake_claude, tmp_path):
    _, cmd, terminal, _ = run_fake(
        stack, start_node, fake_claude, tmp_path, "big", env={"FAKE_CLAUDE_BYTES": "3000000"}
    )
    assert terminal["event_type"] == "TaskCompleted"
    assert len(terminal["data"]["result"]["text"].encode()) == 4096
    log = stack.log_text(cmd["run_id"])
    assert log.count(b"x" * 3_000_000) == 2  # the assistant line and the result line
    chunks = sorted(stack.of("TaskOutput", cmd["run_id"]), key=lambda e: e["data"]["chunk_index"])
    assert "".join(c["data"]["data"] for c in chunks).encode() == log


def test_timeout_kills_the_process_group(stack, start_node, fake_claude, tmp_path):
    pids = drop_box(tmp_path) / "pids.json"
    _, _, terminal, _ = run_fake(
        stack,
        start_node,
        fake_claude,
        tmp_path,
        "slow",
        timeout_seconds=2,
        env={"FAKE_CLAUDE_PIDS": str(pids)},
    )
    data = terminal["data"]
    assert data["error"]["type"] == "Timeout"
    assert data["retryable"] is False
    assert "timeout of 2 s" in data["error"]["message"]
    started = json.loads(pids.read_text())
    for pid in started.values():
        assert not _alive(pid), f"process {pid} survived the timeout"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not reaped by its (already dead) parent yet.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_missing_cli_fails_start_up(stack, start_node, tmp_path):
    node = start_node(stack, "--claude-bin", str(tmp_path / "nope" / "claude"))
    assert node.wait(30) == 2
    lines = node.stderr.strip().splitlines()
    missing = tmp_path / "nope" / "claude"
    assert lines == [
        f"error: --claude-bin: '{missing}' was not found or is not executable "
        "(install @anthropic-ai/claude-code or use --mock-mode)"
    ]
