"""Sessions that continue on another node (task.resume), with the genuine CLI:
real-mode node processes (root, a uid per run slot) on the moto server, the
pinned CLI against the scripted API stand-in.

Run 1 on node A tells the model a fact; node A stops; node B, another
process with another work dir, runs run 2 resuming run 1's session, and the
stand-in's request for run 2 carries run 1's conversation. A fork of the same
session gets a session id of its own; an unknown session fails before any
CLI starts. And the folder the node restores a session into is the one the
CLI itself makes for the same cwd."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_code_scheduler.node.sessions import project_folder_name
from tests.conftest import IN_CI, wait_until
from tests.integration.conftest import NodeProcess, Stack, node_env
from tests.realcli import test_node_real_mode as real_mode
from tests.realcli.anthropic_standin import AnthropicStandin, Recorded, Text
from tests.realcli.claude_cli import run_claude
from tests.realcli.test_node_real_mode import RealNode

api = real_mode.api

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not IN_CI, reason="a node gives runs uids of their own only as root"
)

FACT = "the launch code is PURPLE-42"
# A task secret in run 1's prompt: the stored transcript, and so the resumed
# conversation, has *** in its place.
SECRET = "realcli-session-secret-2718"

StartNode = Callable[[], RealNode]


@pytest.fixture
def start_node(
    stack: Stack, claude_bin: Path, tmp_path: Path, api: AnthropicStandin
) -> Iterator[StartNode]:
    """A real-mode node of its own each call: its own process, work dir and HOME."""
    started: list[NodeProcess] = []

    def start() -> RealNode:
        home = tmp_path / f"home-{len(started)}"
        home.mkdir()
        env = {
            name: value
            for name, value in node_env(stack).items()
            if not name.startswith(("ANTHROPIC_", "CLAUDE_CODE_", "CLAUDE_CONFIG_DIR"))
        }
        env.update(api.cli_env())
        env.update({"HOME": str(home), "LANG": "C.UTF-8"})
        argv = ["--claude-bin", str(claude_bin), "--poll-wait-seconds", "1"]
        # NodeProcess gives each node a work dir of its own, named by its node id.
        process = NodeProcess(stack, tmp_path, argv, env)
        started.append(process)
        stack.wait_event("NodeRegistered", node_id=process.node_id)
        return RealNode(process, stack, api, home)

    yield start
    for process in started:
        process.kill()


def conversation_text(request: Recorded) -> str:
    """Every text block of the request's messages, joined."""
    texts = []
    for entry in request.body["messages"]:
        content = entry["content"]
        blocks = [{"text": content}] if isinstance(content, str) else content
        texts += [str(block.get("text", "")) for block in blocks if isinstance(block, dict)]
    return "\n".join(texts)


def completed(terminal: dict[str, Any]) -> dict[str, Any]:
    assert terminal["event_type"] == "TaskCompleted", terminal
    return dict(terminal["data"]["result"])


def pointer(stack: Stack, session_id: str) -> dict[str, Any]:
    body = stack.s3.get_object(Bucket=stack.bucket, Key=f"sessions/{session_id}.json")["Body"]
    return dict(json.loads(body.read()))


@pytest.mark.parametrize("name", ["My Project.v2_a~b@c", "dossier-é-\U0001f600-" * 12])
def test_the_node_names_the_sessions_folder_as_the_cli_does(
    claude_bin: Path, api: AnthropicStandin, tmp_path: Path, name: str
) -> None:
    """The CLI's own folder for a cwd with punctuation and non-ASCII, and for
    one past 200 characters (cut and hashed)."""
    cwd, home, config = tmp_path / name / "work", tmp_path / "home", tmp_path / "config"
    for folder in (cwd, home, config):
        folder.mkdir(parents=True)
    api.add(Text("ok"))
    run = run_claude(
        claude_bin, api, [], "hi", cwd=cwd, home=home, env={"CLAUDE_CONFIG_DIR": str(config)}
    )
    assert run.returncode == 0, run.describe()
    session_id = run.result["session_id"] if run.result else None
    made = [path.relative_to(config) for path in config.glob("projects/*/*.jsonl")]
    assert made == [Path("projects", project_folder_name(cwd), f"{session_id}.jsonl")]


def test_a_session_continues_on_another_node_after_the_first_is_gone(
    start_node: StartNode, api: AnthropicStandin, stack: Stack
) -> None:
    api.add(Text("Noted."), Text("You said the launch code is PURPLE-42."), Text("Forked."))
    node_a = start_node()
    run_1, terminal = node_a.run(
        prompt=f"Remember this: {FACT}. The token is {SECRET}.", env={"TOKEN": SECRET}
    )
    session_id = completed(terminal)["session_id"]
    assert pointer(stack, session_id)["run_id"] == run_1
    node_a.process.signal(signal.SIGTERM)
    assert node_a.process.wait(30) == 0
    node_b = start_node()
    assert node_b.process.work_dir != node_a.process.work_dir

    run_2, terminal = node_b.run(
        prompt="What is the launch code?", resume={"session_id": session_id}
    )
    result = completed(terminal)
    first, second = api.main_requests[0], api.main_requests[1]
    # The control: run 1's own request had the fact, and no reply yet.
    assert FACT in conversation_text(first) and "Noted." not in conversation_text(first)
    resumed = conversation_text(second)
    assert FACT in resumed, "run 1's prompt reached run 2's request"
    assert "Noted." in resumed, "and run 1's reply"
    assert "What is the launch code?" in resumed
    assert SECRET not in resumed and "The token is ***." in resumed, "the redacted transcript"
    assert result["session_id"] == session_id, "no fork: the same session goes on"
    assert pointer(stack, session_id)["run_id"] == run_2, "the latest transcript is run 2's"
    assert f"session: resuming {session_id} from the transcript of run {run_1}" in (
        stack.log_text(run_2).decode()
    )

    run_3, terminal = node_b.run(prompt="Fork it.", resume={"session_id": session_id, "fork": True})
    forked = completed(terminal)["session_id"]
    assert forked != session_id
    assert FACT in conversation_text(api.main_requests[2])
    assert pointer(stack, forked)["run_id"] == run_3
    assert pointer(stack, session_id)["run_id"] == run_2, "a fork leaves the original alone"


def test_an_unknown_session_fails_before_the_cli_starts(
    start_node: StartNode, api: AnthropicStandin, stack: Stack
) -> None:
    node = start_node()
    unknown = "00000000-0000-4000-8000-000000000000"
    run_id, terminal = node.run(prompt="continue", resume={"session_id": unknown})
    assert terminal["event_type"] == "TaskFailed", terminal
    data = terminal["data"]
    assert data["error"]["type"] == "SessionError"
    assert unknown in data["error"]["message"]
    assert data["retryable"] is False
    # The CLI started would have printed its own "No conversation found with
    # session ID" result line (tests/realcli/FINDINGS.md): output, and a log.
    stack.drain_events(1.0)
    assert stack.of("TaskOutput", run_id) == []
    listed = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=f"logs/{run_id}")
    assert listed.get("KeyCount", 0) == 0
    assert api.requests == []
    # Not retried: the message is deleted, not handed back.
    assert wait_until(lambda: stack.queue_counts() == (0, 0), 10), stack.queue_counts()
