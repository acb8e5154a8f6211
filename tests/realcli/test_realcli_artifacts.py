"""What a run of the genuine CLI leaves comes back: a real-mode node (root, a uid
per run slot) runs the pinned CLI against the scripted API stand-in, and the
run's transcript.jsonl is the CLI's own session file, result.json holds its
result line, and in a git workspace the scripted Write, Edit and
Bash(git commit) tool calls come back as a changes.patch that applies to a
fresh clone and reproduces them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.realcli import test_node_real_mode as real_mode
from tests.realcli.anthropic_standin import AnthropicStandin, Text, ToolUse
from tests.realcli.claude_cli import stream_json_lines
from tests.realcli.test_node_real_mode import Launch
from tests.unprivileged import let_other_users_through

launch, api = real_mode.launch, real_mode.api

RUN_UID = 10100  # slot 0 of the default --run-uid-base
SECRET = "realcli-artifact-secret-5150"
# Shorter than redaction's minimum: a commit's author, not a secret.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "cc",
    "GIT_AUTHOR_EMAIL": "c@e.x",
    "GIT_COMMITTER_NAME": "cc",
    "GIT_COMMITTER_EMAIL": "c@e.x",
}

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not IN_CI, reason="a node gives runs uids of their own only as root"
)


def artifacts_of(node: real_mode.RealNode, terminal: dict[str, Any]) -> dict[str, bytes]:
    stack, run_id = node.stack, terminal["data"]["run_id"]
    found = {}
    for artifact in terminal["data"]["artifacts"]:
        key = artifact["uri"].removeprefix(f"s3://{stack.bucket}/")
        found[artifact["name"]] = stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    assert set(found) >= {"result.json", "transcript.jsonl"}, terminal["data"]
    prefix = f"s3://{stack.bucket}/runs/{run_id}/"
    assert all(a["uri"] == prefix + a["name"] for a in terminal["data"]["artifacts"])
    return found


def test_the_transcript_is_the_clis_session_file_and_result_json_its_result(
    launch: Launch, api: AnthropicStandin
) -> None:
    api.add(ToolUse("Bash", {"command": "echo token=$REPORT_TOKEN"}), Text("all done"))
    node = launch(api)
    run_id, terminal = node.run(
        prompt="print the token", allowed_tools=["Bash"], env={"REPORT_TOKEN": SECRET}
    )
    assert terminal["event_type"] == "TaskCompleted", terminal
    assert api.main_requests[1].tool_result_text().strip() == f"token={SECRET}", "the control"
    stored = artifacts_of(node, terminal)
    session_id = terminal["data"]["result"]["session_id"]
    transcript = [json.loads(line) for line in stored["transcript.jsonl"].splitlines()]
    # The CLI's own file: its entries carry the session id, the cwd and the
    # prompt, and the tool's output, redacted.
    assert {entry.get("sessionId") for entry in transcript if "sessionId" in entry} == {session_id}
    assert any(entry.get("type") == "user" for entry in transcript)
    text = stored["transcript.jsonl"].decode()
    assert "print the token" in text
    assert "token=***" in text
    assert SECRET not in text
    result = json.loads(stored["result.json"])
    log_result = next(
        line for line in stream_json_lines(node.stack.log_text(run_id)) if line["type"] == "result"
    )
    assert result["result"] == log_result, "the whole result line, as the log has it"
    assert result["result"]["result"] == "all done"
    assert result["outcome"] == {"event_type": "TaskCompleted", "error_type": None}
    assert "changes.patch" not in stored, "no git workspace, no patch"


def git(cwd: Path, *args: str) -> None:
    identity = ["-c", "user.name=T", "-c", "user.email=t@example.com"]
    subprocess.run(["git", *identity, *args], cwd=cwd, check=True, capture_output=True)


def make_origin(tmp_path: Path) -> tuple[Path, Path]:
    """A repository the run slot's uid can clone, and a fresh clone of it."""
    origin = let_other_users_through(tmp_path) / "origin"
    origin.mkdir()
    git(origin, "init", "-q", "-b", "main")
    (origin / "README.md").write_text("# Project\n\nbase text\n")
    (origin / "old.txt").write_text("to be removed\n")
    git(origin, "add", ".")
    git(origin, "commit", "-q", "-m", "base")
    fresh = tmp_path / "fresh"
    git(tmp_path, "clone", "-q", str(origin), str(fresh))
    # git clones only from a repository of the cloning uid's own.
    subprocess.run(["chown", "-R", f"{RUN_UID}:{RUN_UID}", str(origin)], check=True)
    return origin, fresh


def test_tool_calls_in_a_git_workspace_come_back_as_a_patch_that_applies(
    launch: Launch, api: AnthropicStandin, tmp_path: Path
) -> None:
    origin, fresh = make_origin(tmp_path)
    api.add(
        ToolUse("Write", {"file_path": "src/hello.py", "content": "print('hello')\n"}),
        ToolUse("Bash", {"command": "git add src/hello.py && git commit -q -m 'add hello'"}),
        ToolUse("Read", {"file_path": "README.md"}),
        ToolUse(
            "Edit",
            {"file_path": "README.md", "old_string": "base text", "new_string": "edited text"},
        ),
        ToolUse("Bash", {"command": "git rm -q old.txt"}),
        Text("changed the project"),
    )
    node = launch(api)
    _, terminal = node.run(
        prompt="change the project",
        allowed_tools=["Write", "Read", "Edit", "Bash"],
        env=GIT_IDENTITY,
        workspace={"git": {"url": f"file://{origin}"}},
    )
    assert terminal["event_type"] == "TaskCompleted", terminal
    stored = artifacts_of(node, terminal)
    base = json.loads(stored["result.json"])["workspace"]["commit"]
    patch = tmp_path / "changes.patch"
    patch.write_bytes(stored["changes.patch"])
    git(fresh, "checkout", "-q", base)
    git(fresh, "apply", "--check", str(patch))
    git(fresh, "am", "-q", str(patch))
    assert (fresh / "src" / "hello.py").read_text() == "print('hello')\n"
    assert (fresh / "README.md").read_text() == "# Project\n\nedited text\n"
    assert not (fresh / "old.txt").exists()


def test_a_run_that_fails_midway_still_leaves_its_patch_and_transcript(
    launch: Launch, api: AnthropicStandin, tmp_path: Path
) -> None:
    origin, fresh = make_origin(tmp_path)
    api.add(
        ToolUse("Write", {"file_path": "half.txt", "content": "half done\n"}),
        ToolUse("Write", {"file_path": "never.txt", "content": "never\n"}),
        Text("never reached"),
    )
    node = launch(api)
    _, terminal = node.run(
        prompt="keep going",
        permission_mode="acceptEdits",
        max_turns=1,
        workspace={"git": {"url": f"file://{origin}"}},
    )
    assert terminal["event_type"] == "TaskFailed", terminal
    stored = artifacts_of(node, terminal)
    assert b"half done" in stored["transcript.jsonl"]
    patch = tmp_path / "changes.patch"
    patch.write_bytes(stored["changes.patch"])
    git(fresh, "apply", str(patch))
    assert (fresh / "half.txt").read_text() == "half done\n"
    assert not (fresh / "never.txt").exists()
