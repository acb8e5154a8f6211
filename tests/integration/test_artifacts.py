"""What a run made comes back: a real node process (mock mode) against the moto
server stores result.json and the files task.artifacts names under
runs/<run_id>/ in the log bucket, for a run that completes, one that fails and
one that times out, and its terminal event lists them with the size and
SHA-256 of what is in S3; the message is deleted only after that."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.integration.conftest import command, node_env
from tests.unprivileged import let_other_users_through

SECRET = "integration-artifact-secret-4242"


def stored_objects(stack: Any, run_id: str) -> dict[str, bytes]:
    listing = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=f"runs/{run_id}/")
    return {
        item["Key"].removeprefix(f"runs/{run_id}/"): stack.s3.get_object(
            Bucket=stack.bucket, Key=item["Key"]
        )["Body"].read()
        for item in listing.get("Contents", [])
    }


def test_artifacts_of_completed_failed_and_timed_out_runs(stack, start_node):
    node = start_node(
        stack, "--mock-mode", "--poll-wait-seconds", "1", "--max-concurrent-tasks", "3"
    )
    files = {
        "dist/app.txt": "the build\n",
        "report.md": f"# Report\nthe token is {SECRET}\n",
        "scratch/ignored.txt": "not asked for\n",
    }
    runs = {
        "completed": command(mock={"duration_seconds": 0.2, "write_files": files}),
        "failed": command(mock={"duration_seconds": 0.2, "exit_code": 1, "write_files": files}),
        "timed_out": command(
            timeout_seconds=2, mock={"duration_seconds": 60, "write_files": files}
        ),
    }
    for cmd in runs.values():
        cmd["task"]["artifacts"] = ["dist/**", "report.md", "missing/*"]
        cmd["task"]["env"] = {"REPORT_TOKEN": SECRET}
        stack.send(cmd)
    terminal = {
        kind: stack.wait_for(
            lambda e, run_id=cmd["run_id"]: (
                e["event_type"] in ("TaskCompleted", "TaskFailed") and e["data"]["run_id"] == run_id
            ),
            timeout=60,
        )
        for kind, cmd in runs.items()
    }
    assert terminal["completed"]["event_type"] == "TaskCompleted"
    assert terminal["failed"]["data"]["error"]["type"] == "ClaudeError"
    assert terminal["timed_out"]["data"]["error"]["type"] == "Timeout"
    for kind, event in terminal.items():
        run_id = event["data"]["run_id"]
        stored = stored_objects(stack, run_id)
        listed = {a["name"]: a for a in event["data"]["artifacts"]}
        assert set(listed) == {"result.json", "files/dist/app.txt", "files/report.md"}, kind
        assert set(stored) == set(listed), kind
        for name, artifact in listed.items():
            assert artifact["uri"] == f"s3://{stack.bucket}/runs/{run_id}/{name}"
            assert artifact["bytes"] == len(stored[name])
            assert artifact["sha256"] == hashlib.sha256(stored[name]).hexdigest()
        assert stored["files/dist/app.txt"] == b"the build\n"
        assert stored["files/report.md"] == b"# Report\nthe token is ***\n", "redacted"
        omitted = {o["name"]: o["reason"] for o in event["data"]["artifacts_omitted"]}
        # The mock CLI writes no session file; nothing matched missing/* (not an omission).
        assert omitted == {"transcript.jsonl": "the CLI left no session file"}
        result = json.loads(stored["result.json"])
        assert result["run_id"] == run_id and result["node_id"] == node.node_id
        assert result["outcome"]["event_type"] == event["event_type"]
        assert result["attempt"] == 1
        assert result["workspace"] is None
        assert result["exit_code"] == event["data"]["exit_code"]
        if kind == "timed_out":
            assert result["result"] is None, "killed before its result line"
            assert result["outcome"]["error_type"] == "Timeout"
        else:
            assert result["result"]["type"] == "result"
            assert result["result"]["session_id"]
    # Deleted once the event was out: nothing waits in the queue, nothing is in flight.
    assert wait_until(lambda: stack.queue_counts() == (0, 0), 15), stack.queue_counts()
    assert SECRET not in json.dumps(stack.events)


def test_a_git_workspace_brings_back_a_patch_that_applies(stack, start_node, tmp_path):
    """A file:// clone, files the mock CLI writes into it, and changes.patch in
    S3 that applies to a fresh clone of the same commit."""
    if os.geteuid() != 0:
        pytest.skip("the origin is handed to the run slot's uid, which needs root")
    origin = let_other_users_through(tmp_path) / "origin"
    origin.mkdir()
    for argv in (
        ["init", "-q", "-b", "main"],
        [
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "base",
        ],
    ):
        subprocess.run(["git", *argv], cwd=origin, check=True)
    (origin / "README").write_text("base\n")
    subprocess.run(["git", "add", "README"], cwd=origin, check=True)
    subprocess.run(
        ["git", "-c", "user.name=T", "-c", "user.email=t@example.com", "commit", "-q", "-m", "r"],
        cwd=origin,
        check=True,
    )
    fresh = tmp_path / "fresh"
    subprocess.run(["git", "clone", "-q", str(origin), str(fresh)], check=True)
    # git clones only from a repository of the cloning uid's own: the node's
    # one run slot, 10100 (a real remote would be a server).
    subprocess.run(["chown", "-R", "10100:10100", str(origin)], check=True)
    start_node(stack, "--mock-mode", "--poll-wait-seconds", "1")
    cmd = command(
        workspace={"git": {"url": f"file://{origin}"}},
        mock={
            "duration_seconds": 0.2,
            "write_files": {"README": "changed\n", "new/file.txt": "new\n"},
        },
    )
    stack.send(cmd)
    event = stack.wait_for(
        lambda e: (
            e["event_type"] in ("TaskCompleted", "TaskFailed")
            and e["data"]["run_id"] == cmd["run_id"]
        ),
        timeout=60,
    )
    assert event["event_type"] == "TaskCompleted", event["data"].get("error")
    stored = stored_objects(stack, cmd["run_id"])
    listed = {a["name"]: a for a in event["data"]["artifacts"]}
    assert listed["changes.patch"]["sha256"] == hashlib.sha256(stored["changes.patch"]).hexdigest()
    base = json.loads(stored["result.json"])["workspace"]["commit"]
    subprocess.run(["git", "checkout", "-q", base], cwd=fresh, check=True)
    subprocess.run(["git", "apply", "-"], cwd=fresh, input=stored["changes.patch"], check=True)
    assert (fresh / "README").read_text() == "changed\n"
    assert (fresh / "new" / "file.txt").read_text() == "new\n"


def test_submit_wait_prints_the_artifact_uris(stack, start_node):
    start_node(stack, "--mock-mode", "--poll-wait-seconds", "1")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "claude_code_scheduler", "submit", "--prompt", "p"),
            *("--run-id", "kept-1", "--artifact", "dist/**", "--artifact", "*.md"),
            *("--queue-url", stack.queue_url, "--control-bus-arn", stack.topic_arn, "--wait"),
        ],
        capture_output=True,
        text=True,
        env=node_env(stack),
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    uri = f"s3://{stack.bucket}/runs/kept-1/result.json"
    assert f"run kept-1: artifact {uri} (" in done.stderr
    assert "run kept-1: not kept: transcript.jsonl: the CLI left no session file" in done.stderr
