"""execution.py: the child's environment and argv, reading its result, and
running real tiny subprocesses under a deadline, a cancel event and group kill."""

from __future__ import annotations

import io
import json
import os
import random
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from claude_code_scheduler.execution import (
    MAX_RETRIES_VAR,
    ROOT_ADVICE,
    ProcessRun,
    ResultTracker,
    RunDirs,
    RunOutcome,
    child_environment,
    claude_argv,
    failure_message,
    mock_argv,
    succeeded,
    summarize_result,
)
from claude_code_scheduler.output import OutputBatcher, OutputRecorder
from claude_code_scheduler.protocol import MockSpec, TaskSpec
from claude_code_scheduler.reaper import RUN_MARKER

# --- environment ----------------------------------------------------------------


def test_child_environment_strips_node_credentials_and_adds_task_env() -> None:
    base = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIA...",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "token",
        "AWS_SECURITY_TOKEN": "legacy-token",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.23/v1/credentials",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/abc",
        "CLAUDECODE": "1",
        "ANTHROPIC_API_KEY": "sk-ant",
    }
    env = child_environment(base, {"FOO": "bar", "PATH": "/opt/bin"}, run_id="r1")
    assert env == {
        "PATH": "/opt/bin",
        "HOME": "/root",
        "AWS_REGION": "us-east-1",
        "ANTHROPIC_API_KEY": "sk-ant",
        "FOO": "bar",
        "DISABLE_AUTOUPDATER": "1",
        RUN_MARKER: "r1",
    }
    assert base["AWS_ACCESS_KEY_ID"] == "AKIA...", "the node's own environment is untouched"


def test_the_cli_does_not_update_itself_unless_the_node_says_so() -> None:
    assert child_environment({}, {}, run_id="r")["DISABLE_AUTOUPDATER"] == "1"
    base = {"DISABLE_AUTOUPDATER": "0"}
    assert child_environment(base, {}, run_id="r")["DISABLE_AUTOUPDATER"] == "0"


def test_pass_aws_credentials_keeps_them_on_purpose() -> None:
    base = {
        "AWS_ACCESS_KEY_ID": "AKIA...",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/abc",
        "CLAUDECODE": "1",
    }
    env = child_environment(base, {}, run_id="r1", keep_aws_credentials=True)
    assert env == {
        "AWS_ACCESS_KEY_ID": "AKIA...",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/abc",
        "DISABLE_AUTOUPDATER": "1",
        RUN_MARKER: "r1",
    }


def test_run_dirs_are_the_default_config_and_temp_folders(tmp_path: Path) -> None:
    dirs = RunDirs.create(tmp_path / "work-root", "run-" + "x" * 120)
    assert dirs.cwd.is_dir() and dirs.config.is_dir() and dirs.tmp.is_dir()
    assert dirs.root.parent == tmp_path / "work-root"
    assert len(dirs.root.name) < 40, "a long run id must not make the socket path too long"
    env = child_environment({"PATH": "/bin"}, {}, run_id="r1", dirs=dirs)
    assert env["CLAUDE_CONFIG_DIR"] == str(dirs.config)
    assert env["CLAUDE_CODE_TMPDIR"] == str(dirs.tmp)
    assert env["TMPDIR"] == str(dirs.tmp)
    dirs.remove()
    assert not dirs.root.exists()


def test_the_operators_own_config_folder_wins(tmp_path: Path) -> None:
    dirs = RunDirs.create(tmp_path, "r1")
    base = {"CLAUDE_CONFIG_DIR": "/etc/claude", "TMPDIR": "/scratch"}
    env = child_environment(base, {}, run_id="r1", dirs=dirs)
    assert env["CLAUDE_CONFIG_DIR"] == "/etc/claude"
    assert env["TMPDIR"] == "/scratch"
    assert env["CLAUDE_CODE_TMPDIR"] == str(dirs.tmp)


def test_max_retries_option_is_a_default_the_task_may_override() -> None:
    base = {"CLAUDE_CODE_MAX_RETRIES": "7"}
    assert child_environment(base, {}, run_id="r", claude_max_retries=2)[MAX_RETRIES_VAR] == "2"
    assert child_environment(base, {}, run_id="r")[MAX_RETRIES_VAR] == "7"
    task_env = {MAX_RETRIES_VAR: "0"}
    assert (
        child_environment(base, task_env, run_id="r", claude_max_retries=2)[MAX_RETRIES_VAR] == "0"
    )


def test_the_task_cannot_change_the_run_marker() -> None:
    env = child_environment({}, {RUN_MARKER: "someone-else"}, run_id="mine")
    assert env[RUN_MARKER] == "mine"


@pytest.mark.parametrize(
    "name",
    [
        "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    ],
)
def test_child_environment_strips_other_credential_sources(name: str) -> None:
    assert child_environment({name: "x", "KEEP": "y"}, {}, run_id="r") == {
        "KEEP": "y",
        "DISABLE_AUTOUPDATER": "1",
        RUN_MARKER: "r",
    }


def test_task_env_may_set_its_own_credentials() -> None:
    env = child_environment(
        {"AWS_ACCESS_KEY_ID": "node"}, {"AWS_ACCESS_KEY_ID": "task"}, run_id="r"
    )
    assert env == {"AWS_ACCESS_KEY_ID": "task", "DISABLE_AUTOUPDATER": "1", RUN_MARKER: "r"}


# --- argv -------------------------------------------------------------------------

BASE_ARGV = ["claude", "-p", "--verbose", "--output-format", "stream-json"]


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
    assert argv[:3] == [sys.executable, "-m", "claude_code_scheduler.mockcli"]
    assert argv[-2:] == ["--", "-x"]
    assert argv[argv.index("--exit-code") + 1] == "2"
    assert argv[argv.index("--duration") + 1] == "0.5"


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
    assert summary == {
        "session_id": "s",
        "total_cost_usd": 0.5,
        "num_turns": 3,
        "duration_ms": 1200,
        "is_error": False,
        "text": "done",
    }
    assert summarize_result(None) is None


def test_summarize_result_drops_values_of_the_wrong_type() -> None:
    summary = summarize_result(
        {"type": "result", "session_id": 5, "total_cost_usd": True, "num_turns": "3"}
    )
    assert summary is not None
    assert summary["session_id"] is None
    assert summary["total_cost_usd"] is None
    assert summary["num_turns"] is None
    assert summary["text"] is None
    assert summary["is_error"] is False


@pytest.mark.parametrize("char", ["a", "é", "€", "😀"])
def test_summarize_result_cuts_text_to_4096_bytes_on_a_character_boundary(char: str) -> None:
    text = char * 5000
    summary = summarize_result({**RESULT, "result": text})
    assert summary is not None
    cut = summary["text"]
    encoded = cut.encode("utf-8")
    assert len(encoded) <= 4096
    assert 4096 - len(encoded) < len(char.encode())
    assert text.startswith(cut)
    assert "\ufffd" not in cut


def test_summarize_result_keeps_short_text() -> None:
    summary = summarize_result({**RESULT, "result": "€" * 1365})
    assert summary is not None
    assert summary["text"] == "€" * 1365


# --- succeeded and failure_message ---------------------------------------------------------


def outcome(
    exit_code: int | None = 0,
    result: dict[str, Any] | None = None,
    stderr: str = "",
    **flags: Any,
) -> RunOutcome:
    return RunOutcome(exit_code, 1.0, 100, result, stderr, **flags)


def test_exit_zero_with_a_clean_result_succeeds() -> None:
    assert succeeded(outcome(0, RESULT))


def test_api_error_reported_as_success_subtype_fails_with_its_text() -> None:
    api_error = {
        "type": "result",
        "subtype": "success",
        "is_error": True,
        "result": "API Error: 529 overloaded",
    }
    run = outcome(0, api_error)
    assert not succeeded(run)
    assert failure_message(run) == "API Error: 529 overloaded"


def test_max_turns_result_fails_with_its_errors_list() -> None:
    max_turns = {
        "type": "result",
        "subtype": "error_max_turns",
        "is_error": True,
        "errors": ["Reached maximum number of turns (1)", "second"],
    }
    run = outcome(1, max_turns)
    assert not succeeded(run)
    assert failure_message(run) == "Reached maximum number of turns (1); second"


def test_error_subtype_without_text_or_errors_names_the_subtype() -> None:
    run = outcome(1, {"type": "result", "subtype": "error_during_execution", "is_error": True})
    assert failure_message(run) == "claude ended with error_during_execution"


def test_no_json_but_stderr_gives_the_stderr_text() -> None:
    run = outcome(1, None, "  error: unknown option '--bogus'\n")
    assert not succeeded(run)
    assert failure_message(run) == "error: unknown option '--bogus'"


def test_exit_zero_without_a_result_line_fails() -> None:
    run = outcome(0, None)
    assert not succeeded(run)
    assert failure_message(run) == "claude exited 0 without a result line"


def test_non_zero_exit_with_nothing_said() -> None:
    run = outcome(3, None)
    assert not succeeded(run)
    assert failure_message(run) == "claude exited with status 3"


@pytest.mark.parametrize(
    "run",
    [
        outcome(1, RESULT),
        outcome(None, RESULT),
        outcome(0, RESULT, timed_out=True),
        outcome(0, RESULT, cancelled=True),
    ],
)
def test_a_clean_result_is_not_enough(run: RunOutcome) -> None:
    assert not succeeded(run)


def test_the_root_refusal_comes_with_what_to_do() -> None:
    refusal = (
        "--dangerously-skip-permissions cannot be used with root/sudo privileges "
        "for security reasons\n"
    )
    message = failure_message(RunOutcome(1, 0.3, 0, None, refusal))
    assert message.startswith(refusal.strip())
    assert message.endswith(ROOT_ADVICE)
    assert "non-root user" in message


def test_failure_message_is_cut_to_4096_bytes() -> None:
    run = outcome(1, {"type": "result", "is_error": True, "result": "😀" * 2000})
    message = failure_message(run)
    assert len(message.encode()) <= 4096
    assert set(message) == {"😀"}


# --- ProcessRun with real processes --------------------------------------------------------


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.chunks: list[tuple[str, str]] = []
        self.log = io.BytesIO()
        self.recorder = OutputRecorder(
            self.log, OutputBatcher(lambda s, t: self.chunks.append((s, t)))
        )
        self.cancel = threading.Event()
        self.cwd = tmp_path

    def run(
        self,
        argv: list[str],
        *,
        timeout: float = 20.0,
        kill_grace: float = 0.5,
        env: dict[str, str] | None = None,
        run_id: str | None = None,
    ) -> RunOutcome:
        return ProcessRun(
            argv,
            cwd=self.cwd,
            env=dict(os.environ) if env is None else env,
            recorder=self.recorder,
            timeout=timeout,
            kill_grace=kill_grace,
            cancel=self.cancel,
            run_id=run_id,
        ).run()

    def text(self) -> str:
        return "".join(t for _, t in self.chunks)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def process_state(pid: int) -> str | None:
    """The process's state letter, or None when it no longer exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """Gone, or a zombie nobody reaped yet (dead either way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_state(pid) in (None, "Z", "X"):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_normal_exit_records_output_in_order(harness: Harness) -> None:
    result_line = json.dumps({**RESULT, "result": "ok"})
    run = harness.run(
        python(
            f"""
            import os, sys, time
            print("out 1", flush=True)
            time.sleep(0.15)
            print("err 1", file=sys.stderr, flush=True)
            time.sleep(0.15)
            print("cwd=" + os.getcwd() + " X=" + os.environ.get("X", "?"), flush=True)
            print({result_line!r}, flush=True)
            """
        ),
        env={**os.environ, "X": "from-task"},
    )
    assert run.exit_code == 0
    assert not run.timed_out and not run.cancelled and run.spawn_error is None
    assert succeeded(run)
    assert run.result is not None and run.result["result"] == "ok"
    assert run.stderr_tail == "err 1\n"
    expected = f"out 1\nerr 1\ncwd={harness.cwd} X=from-task\n{result_line}\n"
    assert harness.text() == expected
    assert harness.log.getvalue() == expected.encode()
    assert run.output_bytes == len(expected.encode())
    assert [s for s, _ in harness.chunks] == ["stdout", "stderr", "stdout"]


def test_stdin_is_dev_null(harness: Harness) -> None:
    run = harness.run(python("import sys; print(len(sys.stdin.read()))"), timeout=10)
    assert run.exit_code == 0
    assert harness.text() == "0\n"


def test_non_zero_exit_keeps_stderr(harness: Harness) -> None:
    run = harness.run(python("import sys; sys.stderr.write('bad flag\\n'); sys.exit(2)"))
    assert run.exit_code == 2
    assert run.result is None
    assert failure_message(run) == "bad flag"


def test_timeout_kills_a_process_that_ignores_sigterm(harness: Harness) -> None:
    started = time.monotonic()
    run = harness.run(
        python(
            """
            import signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("ignoring SIGTERM", flush=True)
            time.sleep(60)
            """
        ),
        timeout=1.0,
        kill_grace=0.5,
    )
    elapsed = time.monotonic() - started
    assert run.timed_out
    assert not run.cancelled
    assert run.exit_code == -9
    assert elapsed < 15
    assert run.duration_seconds >= 1.4
    assert harness.text() == "ignoring SIGTERM\n"


def test_a_cli_that_closes_its_output_is_still_held_to_its_deadline(harness: Harness) -> None:
    started = time.monotonic()
    run = harness.run(
        python(
            """
            import os, time
            os.close(1)
            os.close(2)
            time.sleep(60)
            """
        ),
        timeout=1.0,
        kill_grace=0.2,
    )
    assert run.timed_out
    assert run.exit_code is not None and run.exit_code < 0
    assert time.monotonic() - started < 20


def test_cancel_terminates_the_run(harness: Harness) -> None:
    threading.Timer(0.3, harness.cancel.set).start()
    started = time.monotonic()
    run = harness.run(python("import time; print('up', flush=True); time.sleep(60)"))
    assert run.cancelled
    assert not run.timed_out
    assert run.exit_code == -15, "SIGTERM first; it ends a well-behaved CLI"
    assert time.monotonic() - started < 10


GRANDCHILD = """
import os, subprocess, sys, time
sleeper = "open('alive', 'w').close(); import time; time.sleep(60)"
child = subprocess.Popen([sys.executable, "-c", sleeper]{redirect})
while not os.path.exists("alive"):
    time.sleep(0.01)
print(child.pid, flush=True)
"""


def test_a_grandchild_holding_the_pipes_is_killed_with_the_group(harness: Harness) -> None:
    started = time.monotonic()
    run = harness.run(python(GRANDCHILD.format(redirect="")))
    assert run.exit_code == 0
    assert time.monotonic() - started < 10, "the run did not wait for the grandchild"
    assert (harness.cwd / "alive").exists(), "the grandchild was running"
    assert wait_gone(int(harness.text().strip()))


def test_a_detached_grandchild_in_the_group_is_killed_at_the_end(harness: Harness) -> None:
    redirect = ", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL"
    run = harness.run(python(GRANDCHILD.format(redirect=redirect)))
    assert run.exit_code == 0
    assert (harness.cwd / "alive").exists(), "the grandchild was running"
    assert wait_gone(int(harness.text().strip()))


# A tool process the way the CLI starts one: a session of its own, outside
# the CLI's process group, and left running when the CLI exits.
ESCAPEE = """
import os, subprocess, sys, time
sleeper = "import os, time; open('alive', 'w').close(); time.sleep(300)"
child = subprocess.Popen(
    [sys.executable, "-c", sleeper], start_new_session=True,
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
while not os.path.exists("alive"):
    time.sleep(0.01)
print(child.pid, flush=True)
"""


def test_a_process_in_a_session_of_its_own_outlives_the_group_kill(harness: Harness) -> None:
    # Without the run's marker the group kill alone misses it: why the reaper exists.
    run = harness.run(python(ESCAPEE))
    pid = int(harness.text().strip())
    try:
        assert run.exit_code == 0
        assert process_state(pid) not in (None, "Z", "X"), "the group kill reached it"
    finally:
        os.kill(pid, 9)


def test_the_runs_marker_finds_a_process_in_a_session_of_its_own(harness: Harness) -> None:
    env = {**os.environ, RUN_MARKER: "run-escapee"}
    run = harness.run(python(ESCAPEE), env=env, run_id="run-escapee")
    assert run.exit_code == 0
    assert (harness.cwd / "alive").exists(), "the escapee was running"
    assert wait_gone(int(harness.text().strip()))


def test_spawn_error_for_a_missing_binary(harness: Harness, tmp_path: Path) -> None:
    run = harness.run([str(tmp_path / "no-such-claude"), "-p"])
    assert run.spawn_error is not None
    assert "no-such-claude" in run.spawn_error
    assert run.exit_code is None
    assert not succeeded(run)
    assert harness.chunks == []


def test_a_long_line_and_a_result_through_a_real_pipe(harness: Harness) -> None:
    run = harness.run(
        python(
            """
            import json, sys
            text = "y" * (5 * 1024 * 1024)
            out = sys.stdout
            out.write(json.dumps({"type": "assistant", "text": text}) + "\\n")
            out.write(json.dumps({"type": "result", "is_error": False, "result": text}) + "\\n")
            """
        )
    )
    assert run.exit_code == 0
    assert run.result is not None
    assert len(run.result["result"]) == 5 * 1024 * 1024
    assert succeeded(run)
    assert harness.log.getvalue() == harness.text().encode()
    assert run.output_bytes == len(harness.log.getvalue())


def test_mock_cli_runs_on_the_same_path(harness: Harness) -> None:
    task = TaskSpec(prompt="-a prompt", mock=MockSpec(duration_seconds=0.1, output_bytes=4000))
    run = harness.run(mock_argv(task))
    assert run.exit_code == 0
    assert succeeded(run)
    assert run.output_bytes == 4000
    summary = summarize_result(run.result)
    assert summary is not None and summary["text"] == "Mock reply to: -a prompt"


def test_mock_cli_failure_is_a_claude_error(harness: Harness) -> None:
    task = TaskSpec(prompt="p", mock=MockSpec(duration_seconds=0.0, exit_code=3))
    run = harness.run(mock_argv(task))
    assert run.exit_code == 3
    assert not succeeded(run)
    assert failure_message(run) == "mock run failed with exit code 3"


ESCAPED_GRANDCHILD = """
import subprocess, sys
late = (
    "import pathlib, sys, time; time.sleep(3); sys.stdout.write('late'); sys.stdout.flush(); "
    "pathlib.Path('wrote').touch()"
)
subprocess.Popen([sys.executable, "-c", late], start_new_session=True)
print("child done", flush=True)
"""


def test_an_escaped_process_does_not_steal_from_files_opened_after_the_run(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    thread_errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: thread_errors.append(args.exc_value))
    started = time.monotonic()
    run = harness.run(python(ESCAPED_GRANDCHILD))
    assert run.exit_code == 0
    assert time.monotonic() - started < 10, "the run gave up on the escaped process's pipe"
    pipes = [os.pipe() for _ in range(8)]
    try:
        assert wait_for_file(harness.cwd / "wrote", timeout=10)
        time.sleep(0.3)
        for _, write_end in pipes:
            os.write(write_end, b"mine")
        time.sleep(0.3)
        received = []
        for read_end, _ in pipes:
            os.set_blocking(read_end, False)
            try:
                received.append(os.read(read_end, 16))
            except BlockingIOError:
                received.append(None)  # a stale reader thread took it
        assert received == [b"mine"] * len(pipes)
        assert thread_errors == [], "a reader thread outlived its run and read a closed fd"
    finally:
        for read_end, write_end in pipes:
            os.close(read_end)
            os.close(write_end)


def wait_for_file(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return False
