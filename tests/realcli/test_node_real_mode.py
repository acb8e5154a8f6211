"""The node in real mode, end to end: a node process on the moto server runs the
genuine Claude Code CLI, which talks to the scripted API stand-in on loopback.

Each test sends a RunTask to the node's queue and asserts on the events of the
control bus, the run's log in S3, the requests the stand-in got, and the
processes and files the run left behind (none).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.integration.conftest import NodeProcess, Stack, command, node_env
from tests.realcli.anthropic_standin import AnthropicStandin, ApiError, Text, ToolUse
from tests.realcli.claude_cli import (
    INVALID_API_KEY,
    NOT_LOGGED_IN,
    stream_json_lines,
)
from tests.unprivileged import (
    UNPRIVILEGED,
    as_unprivileged,
    let_other_users_through,
    owned_dirs,
    unprivileged_user,
)

RUN_MARKER = "CLAUDE_CODE_SCHEDULER_RUN_ID"
TERMINAL = ("TaskCompleted", "TaskFailed")


# --- a real-mode node -----------------------------------------------------------------


@dataclass
class RealNode:
    process: NodeProcess
    stack: Stack
    api: AnthropicStandin
    home: Path

    def run(self, wait: float = 60.0, **task: Any) -> tuple[str, dict[str, Any]]:
        """Sends one task and returns its run id and its terminal event."""
        cmd = command(**task)
        self.stack.send(cmd)
        return cmd["run_id"], self.terminal(cmd["run_id"], wait)

    def terminal(self, run_id: str, wait: float = 60.0) -> dict[str, Any]:
        try:
            return self.stack.wait_for(
                lambda e: e["event_type"] in TERMINAL and e["data"].get("run_id") == run_id, wait
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nnode stderr:\n{self.process.stderr[-6000:]}") from None

    def log_lines(self, run_id: str) -> list[dict[str, Any]]:
        """The stream-json lines of the run's log in S3."""
        return stream_json_lines(self.stack.log_text(run_id))

    def output_text(self, run_id: str) -> str:
        self.stack.drain_events(1.0)  # TaskOutput may trail the terminal event on the queue
        chunks = sorted(self.stack.of("TaskOutput", run_id), key=lambda e: e["data"]["chunk_index"])
        return "".join(c["data"]["data"] for c in chunks)

    def init_line(self, run_id: str) -> dict[str, Any]:
        return next(
            o
            for o in self.log_lines(run_id)
            if o.get("type") == "system" and o.get("subtype") == "init"
        )

    def leftovers(self) -> list[str]:
        """What the node's runs left in its work dir and in HOME."""
        left = [p.name for p in self.process.work_dir.iterdir() if p.name.startswith("run-")]
        spool = self.process.work_dir / ".logs"
        left += [f".logs/{p.name}" for p in spool.iterdir()] if spool.exists() else []
        left += [f"~/{p.name}" for p in self.home.iterdir()]
        return left


Launch = Callable[..., RealNode]


def assert_nothing_left(node: RealNode) -> None:
    # The spooled log goes just after the terminal event is out: allow a moment.
    assert wait_until(lambda: node.leftovers() == [], 10), node.leftovers()


@pytest.fixture
def launch(stack: Stack, claude_bin: Path, tmp_path: Path) -> Iterator[Launch]:
    """Starts a real-mode node against a given stand-in and waits for it to register.

    As root (CI), the node runs each run under a uid of its own, the way the
    image runs; `unprivileged=True` runs it as `nobody` from the installed
    wheel instead, the way a user starts it by hand (runs share its uid).
    """
    started: list[NodeProcess] = []
    cleanup = ExitStack()

    def start(
        api: AnthropicStandin,
        *args: str,
        api_key: str | None = "test-key",
        unprivileged: bool = False,
        installed: Path | None = None,
        env_extra: dict[str, str] | None = None,
        short_work_dir: bool = False,
        wrap: list[str] | None = None,
    ) -> RealNode:
        if unprivileged:
            assert installed is not None
            work_dir, home = cleanup.enter_context(owned_dirs(unprivileged_user(), "work", "home"))
            entry = as_unprivileged([str(installed / "bin" / "claude-code-scheduler")])
        else:
            # As root: each run under a uid of its own, which must reach its folder.
            work_dir, home = let_other_users_through(tmp_path) / "work", tmp_path / "home"
            home.mkdir()
            entry = None
            if wrap is not None:  # e.g. setpriv: the same node with fewer capabilities
                entry = [*wrap, sys.executable, "-m", "claude_code_scheduler"]
            if short_work_dir:
                # The sandbox's bridge sockets live under the run's tmp/, and a
                # socket path is at most 107 bytes: tmp_path is too deep.
                (work_dir,) = cleanup.enter_context(owned_dirs(None, "w"))
        env = {
            name: value
            for name, value in node_env(stack).items()
            if not name.startswith(("ANTHROPIC_", "CLAUDE_CODE_", "CLAUDE_CONFIG_DIR"))
        }
        env.update(api.cli_env(api_key))
        env.update({"HOME": str(home), "LANG": "C.UTF-8", **(env_extra or {})})
        argv = ["--claude-bin", str(claude_bin), "--poll-wait-seconds", "1", *args]
        process = NodeProcess(stack, tmp_path, argv, env, entry=entry, work_dir=work_dir)
        started.append(process)
        stack.wait_event("NodeRegistered", node_id=process.node_id)
        return RealNode(process, stack, api, home)

    with cleanup:
        yield start
        for process in started:
            process.kill()


@pytest.fixture
def api() -> Iterator[AnthropicStandin]:
    with AnthropicStandin() as standin:
        yield standin


# --- processes ----------------------------------------------------------------------


def unique_seconds() -> int:
    """A sleep length no other process on the machine has in its command line."""
    return random.randint(100_000, 999_999)


def processes_with(token: str) -> list[int]:
    """Live processes whose command line, its arguments joined by spaces, contains `token`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if token.encode() in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def sweep() -> Iterator[list[str]]:
    """Tokens of processes a test started; whatever survives is killed afterwards."""
    tokens: list[str] = []
    yield tokens
    for token in tokens:
        for pid in processes_with(token):
            os.kill(pid, signal.SIGKILL)


# --- a run and its result ---------------------------------------------------------------


def test_a_text_reply_completes_with_the_cli_result(launch: Launch, api: AnthropicStandin) -> None:
    reply = "Hello from the stand-in."
    api.add(Text(reply))
    node = launch(api)
    run_id, terminal = node.run(prompt="Say hello")
    assert terminal["event_type"] == "TaskCompleted", terminal
    lines = node.log_lines(run_id)
    assert [o["type"] for o in lines] == ["system", "assistant", "result"]
    init, result_line = lines[0], lines[-1]
    result = terminal["data"]["result"]
    assert result["session_id"] == init["session_id"] == result_line["session_id"]
    assert result["num_turns"] == 1
    assert result["total_cost_usd"] == result_line["total_cost_usd"] > 0
    assert result["text"] == reply
    assert result["is_error"] is False
    # The TaskOutput chunks are the CLI's stream-json lines, whole and in order.
    assert node.output_text(run_id).encode() == node.stack.log_text(run_id)
    assert [r.model for r in api.main_requests] == ["claude-opus-5-5"]  # the CLI's default
    assert_nothing_left(node)


def test_a_three_megabyte_reply_is_whole_in_the_log_and_cut_in_the_event(
    launch: Launch, api: AnthropicStandin
) -> None:
    reply = "".join(f"{i:09d}\n" for i in range(300_000))  # 3,000,000 bytes
    api.add(Text(reply))
    node = launch(api)
    run_id, terminal = node.run(prompt="a long answer")
    assert terminal["event_type"] == "TaskCompleted", terminal
    text = terminal["data"]["result"]["text"]
    assert len(text.encode()) == 4096 and reply.startswith(text)
    log = node.stack.log_text(run_id)
    # The CLI repeats the reply in the assistant line and the result line.
    assert log.count(json.dumps(reply).encode()) == 2
    assert terminal["data"]["output_bytes"] == len(log)
    assert node.output_text(run_id).encode() == log


# --- what the task asks for reaches the CLI ---------------------------------------------


def test_model_permission_mode_and_disallowed_tools_reach_the_cli(
    launch: Launch, api: AnthropicStandin
) -> None:
    api.add(Text("planned"))
    node = launch(api)
    run_id, terminal = node.run(
        prompt="make a plan",
        model="claude-sonnet-4-5",
        permission_mode="plan",
        disallowed_tools=["Bash", "WebFetch"],
    )
    assert terminal["event_type"] == "TaskCompleted", terminal
    init = node.init_line(run_id)
    assert init["model"] == "claude-sonnet-4-5"
    assert init["permissionMode"] == "plan"
    assert "Bash" not in init["tools"] and "WebFetch" not in init["tools"]
    assert "Read" in init["tools"]
    [request] = api.main_requests
    assert request.model == "claude-sonnet-4-5"
    assert "Bash" not in request.tool_names and request.tool_names


def test_allowed_tools_let_a_tool_write_inside_the_run_directory_only(
    launch: Launch, api: AnthropicStandin
) -> None:
    api.add(
        ToolUse("Write", {"file_path": "hello.txt", "content": "written by the run"}),
        ToolUse("Bash", {"command": "cat hello.txt; echo; pwd"}),
        Text("done"),
    )
    node = launch(api)
    # No permission mode: without --allowedTools the CLI would deny both tools.
    run_id, terminal = node.run(prompt="write a file", allowed_tools=["Write", "Bash"])
    assert terminal["event_type"] == "TaskCompleted", terminal
    assert terminal["data"]["result"]["num_turns"] == 3
    cwd = Path(node.init_line(run_id)["cwd"])
    assert cwd.name == "work" and cwd.parent.parent == node.process.work_dir
    content, pwd = api.main_requests[2].tool_result_text().strip().splitlines()
    assert content == "written by the run"
    assert pwd == str(cwd), "the tool ran in the run's own directory"
    # Gone with its directory, and written nowhere else: not in HOME, not beside it.
    assert not cwd.exists()
    assert_nothing_left(node)


def test_max_turns_ends_in_max_turns_in_the_cli_words(
    launch: Launch, api: AnthropicStandin
) -> None:
    api.add(
        ToolUse("Write", {"file_path": "one.txt", "content": "1"}),
        ToolUse("Write", {"file_path": "two.txt", "content": "2"}),
        Text("never reached"),
    )
    node = launch(api)
    _, terminal = node.run(prompt="keep going", permission_mode="acceptEdits", max_turns=1)
    assert terminal["event_type"] == "TaskFailed", terminal
    assert terminal["data"]["error"] == {
        "type": "MaxTurns",
        "message": "Reached maximum number of turns (1)",
    }
    assert api.remaining >= 1, "the CLI stopped asking for turns"


# --- failures in the CLI's own words -----------------------------------------------------


def test_an_invalid_key_is_an_authentication_failure_in_the_cli_words(
    launch: Launch, api: AnthropicStandin
) -> None:
    api.add(ApiError(401))
    node = launch(api, "--claude-max-retries", "0")
    _, terminal = node.run(prompt="hello")
    assert terminal["event_type"] == "TaskFailed", terminal
    assert terminal["data"]["error"] == {"type": "AuthenticationFailed", "message": INVALID_API_KEY}
    assert terminal["data"]["exit_code"] == 1
    assert len(api.main_requests) == 1, "--claude-max-retries 0: no retry"


def test_claude_max_retries_bounds_the_cli_retries(launch: Launch, api: AnthropicStandin) -> None:
    api.add(ApiError(429))  # every request from here on
    node = launch(api, "--claude-max-retries", "2")
    _, terminal = node.run(prompt="hello")
    assert terminal["event_type"] == "TaskFailed", terminal
    message = terminal["data"]["error"]["message"]
    assert message.startswith("API Error: Request rejected (429)"), message
    assert len(api.main_requests) == 3, "one request and two retries"


def test_a_cli_that_keeps_retrying_is_stopped_by_the_run_timeout(
    launch: Launch, api: AnthropicStandin
) -> None:
    # Left to itself the CLI retries a 401 ten times over about three minutes.
    api.add(ApiError(401))
    node = launch(api)
    _, terminal = node.run(prompt="hello", timeout_seconds=6)
    assert terminal["event_type"] == "TaskFailed", terminal
    assert terminal["data"]["error"]["type"] == "Timeout"
    assert terminal["data"]["duration_seconds"] < 60
    assert len(api.main_requests) >= 2, "the CLI was retrying"


def test_a_missing_api_key_is_an_authentication_failure_in_the_cli_words(
    launch: Launch, api: AnthropicStandin
) -> None:
    node = launch(api, api_key=None)
    _, terminal = node.run(prompt="hello")
    assert terminal["event_type"] == "TaskFailed", terminal
    assert terminal["data"]["error"] == {"type": "AuthenticationFailed", "message": NOT_LOGGED_IN}
    assert api.main_requests == []
    assert "no Claude credentials in the environment" in node.process.stderr


# --- the node's credentials -------------------------------------------------------------


@pytest.mark.parametrize("passed", [False, True], ids=["stripped", "passed-on-purpose"])
def test_the_nodes_aws_credentials_reach_the_cli_only_on_purpose(
    launch: Launch, api: AnthropicStandin, passed: bool
) -> None:
    api.add(ToolUse("Bash", {"command": "env"}), Text("done"))
    node = launch(api, *(["--pass-aws-credentials"] if passed else []))
    run_id, terminal = node.run(prompt="print the environment", allowed_tools=["Bash"])
    assert terminal["event_type"] == "TaskCompleted", terminal
    env = dict(
        line.split("=", 1)
        for line in api.main_requests[1].tool_result_text().splitlines()
        if "=" in line
    )
    assert env[RUN_MARKER].startswith(f"{run_id}/"), "the attempt's own marker"
    assert env["AWS_REGION"] == "us-east-1"  # where AWS is, not who the node is
    if passed:
        assert env["AWS_ACCESS_KEY_ID"] == "testing"
        assert env["AWS_SECRET_ACCESS_KEY"] == "testing-secret-key"
    else:
        assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env
        assert "testing-secret-key" not in node.stack.log_text(run_id).decode()


# --- no process outlives its run ---------------------------------------------------------


def test_a_process_backgrounded_by_a_tool_is_killed_after_a_clean_exit(
    launch: Launch, api: AnthropicStandin, sweep: list[str]
) -> None:
    token = f"sleep {unique_seconds()}"
    sweep.append(token)
    api.add(ToolUse("Bash", {"command": f"nohup {token} >/dev/null 2>&1 & echo $!"}), Text("done"))
    node = launch(api)
    _, terminal = node.run(prompt="start something", allowed_tools=["Bash"])
    assert terminal["event_type"] == "TaskCompleted", terminal
    pid = int(api.main_requests[1].tool_result_text())  # it was started
    assert wait_until(lambda: not processes_with(token), 10), processes_with(token)
    assert pid not in processes_with(token)


def start_blocking_tool(node: RealNode, sweep: list[str], **task: Any) -> tuple[str, str]:
    """A run whose Bash tool backgrounds one process and blocks on another; returns
    the run id and the token, once both processes are seen running."""
    seconds = unique_seconds()
    token = str(seconds)
    sweep.append(token)
    command_line = f"nohup sleep {seconds} >/dev/null 2>&1 & tail -f /dev/null -s {seconds}"
    node.api.add(ToolUse("Bash", {"command": command_line}), Text("never reached"))
    cmd = command(prompt="block", allowed_tools=["Bash"], **task)
    node.stack.send(cmd)
    # The tool's bash, the sleep and the tail.
    running = wait_until(lambda: len(processes_with(f" {seconds}")) >= 3, 60)
    assert running, f"the tool processes never started\n{node.process.stderr[-4000:]}"
    return cmd["run_id"], token


def test_a_timeout_leaves_no_process_behind(
    launch: Launch, api: AnthropicStandin, sweep: list[str]
) -> None:
    # No grace: the CLI is killed outright and cannot stop its own tools.
    node = launch(api, "--kill-grace", "0")
    run_id, token = start_blocking_tool(node, sweep, timeout_seconds=8)
    terminal = node.terminal(run_id)
    assert terminal["event_type"] == "TaskFailed", terminal
    assert terminal["data"]["error"]["type"] == "Timeout"
    assert wait_until(lambda: not processes_with(token), 10), processes_with(token)
    assert_nothing_left(node)


def test_a_node_shutdown_leaves_no_process_behind(
    launch: Launch, api: AnthropicStandin, sweep: list[str]
) -> None:
    node = launch(api, "--shutdown-timeout", "0", "--kill-grace", "1")
    run_id, token = start_blocking_tool(node, sweep)
    node.process.signal(signal.SIGTERM)
    terminal = node.terminal(run_id)
    assert terminal["data"]["error"]["type"] == "NodeShutdown", terminal
    assert node.process.wait(60) == 0
    assert not processes_with(token)
    assert_nothing_left(node)


# --- root ---------------------------------------------------------------------------------


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: the refusal itself is checked in test_standin_cli.py",
)
def test_bypass_permissions_works_for_a_root_node_whose_runs_are_not_root(
    launch: Launch, api: AnthropicStandin
) -> None:
    """The CLI refuses bypassPermissions to root; a root node's run is not root."""
    api.add(ToolUse("Bash", {"command": "id -u"}), Text("done"))
    node = launch(api)
    assert "refuses" not in node.process.stderr
    _, terminal = node.run(prompt="anything", permission_mode="bypassPermissions")
    assert terminal["event_type"] == "TaskCompleted", terminal
    assert api.main_requests[1].tool_result_text().strip() == "10100", "slot 0's uid"
    assert_nothing_left(node)


def test_bypass_permissions_works_for_a_node_that_is_not_root(
    launch: Launch, api: AnthropicStandin, installed_wheel: Path
) -> None:
    api.add(
        ToolUse("Write", {"file_path": "hello.txt", "content": "from nobody"}),
        ToolUse("Bash", {"command": "id -u; cat hello.txt; echo"}),
        Text("done"),
    )
    node = launch(api, unprivileged=True, installed=installed_wheel)
    assert "running as root" not in node.process.stderr
    _, terminal = node.run(prompt="write and check", permission_mode="bypassPermissions")
    assert terminal["event_type"] == "TaskCompleted", terminal
    uid, content = api.main_requests[2].tool_result_text().strip().splitlines()
    assert int(uid) == (UNPRIVILEGED if os.geteuid() == 0 else os.geteuid())
    assert content == "from nobody"
    assert_nothing_left(node)


# --- task values that look like flags -----------------------------------------------------


SMUGGLED = [
    pytest.param({"allowed_tools": ["Read", "--dangerously-skip-permissions"]}, id="allowed"),
    pytest.param({"disallowed_tools": ["Bash", "--add-dir=/etc"]}, id="disallowed"),
    pytest.param({"allowed_tools": ["-p"]}, id="short-flag"),
    pytest.param({"model": "--dangerously-skip-permissions"}, id="model"),
]


@pytest.mark.parametrize("task", SMUGGLED)
def test_task_values_that_look_like_flags_never_reach_the_cli(
    launch: Launch, api: AnthropicStandin, task: dict[str, Any]
) -> None:
    node = launch(api)
    _, terminal = node.run(prompt="hello", permission_mode="default", **task)
    assert terminal["event_type"] == "TaskFailed", terminal
    assert terminal["data"]["error"]["type"] == "InvalidCommand"
    assert api.main_requests == [], "the CLI never ran"


def test_values_with_dashes_inside_reach_the_cli_as_values(
    launch: Launch, api: AnthropicStandin
) -> None:
    """A prompt, a tool pattern and a name made of flags stay what they are."""
    api.add(Text("fine"))
    node = launch(api)
    prompt = "--dangerously-skip-permissions -p --add-dir=/etc"
    run_id, terminal = node.run(
        prompt=prompt,
        permission_mode="default",
        allowed_tools=["Bash(rm -rf:*)"],
        name="--dangerously-skip-permissions",
        task_id="-p",
    )
    assert terminal["event_type"] == "TaskCompleted", terminal
    assert node.init_line(run_id)["permissionMode"] == "default"
    [request] = api.main_requests
    assert prompt in json.dumps(request.body["messages"])
    started = node.stack.of("TaskStarted", run_id)[0]["data"]
    assert (started["task_name"], started["task_id"]) == ("--dangerously-skip-permissions", "-p")
