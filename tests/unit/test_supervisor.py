"""node/process/supervisor.py: real tiny subprocesses under a deadline, a cancel
event and a group kill, their output read in order."""

from __future__ import annotations

import io
import json
import os
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import IN_CI
from tests.unprivileged import let_other_users_through

from claude_code_scheduler.node.output import OutputBatcher, OutputRecorder
from claude_code_scheduler.node.process.claude import mock_argv
from claude_code_scheduler.node.process.isolation import SHARED, RunIdentity
from claude_code_scheduler.node.process.reaper import RUN_MARKER
from claude_code_scheduler.node.process.result import (
    ResultTracker,
    failure_message,
    succeeded,
    summarize_result,
)
from claude_code_scheduler.node.process.supervisor import STDIN_LIMIT, ProcessResult, ProcessRun
from claude_code_scheduler.protocol import MockSpec, TaskSpec

RESULT = {"type": "result", "subtype": "success", "is_error": False, "result": "done"}
# --- ProcessRun with real processes --------------------------------------------------------


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.chunks: list[tuple[str, str]] = []
        self.log = io.BytesIO()
        self.recorder = OutputRecorder(
            self.log, OutputBatcher(lambda s, t: self.chunks.append((s, t)))
        )
        self.cancel = threading.Event()
        self.interrupt = threading.Event()
        self.cwd = tmp_path
        self.result: dict[str, Any] | None = None

    def run(
        self,
        argv: list[str],
        *,
        timeout: float = 20.0,
        kill_grace: float = 0.5,
        env: dict[str, str] | None = None,
        run_marker: str | None = None,
        identity: RunIdentity = SHARED,
        stdin_data: bytes | None = None,
        cancel_grace: float = 0.5,
    ) -> ProcessResult:
        """Runs argv; the Claude result line it printed, if any, is in `result`."""
        tracker = ResultTracker()
        ended = ProcessRun(
            argv,
            cwd=self.cwd,
            env=dict(os.environ) if env is None else env,
            recorder=self.recorder,
            timeout=timeout,
            kill_grace=kill_grace,
            cancel=self.cancel,
            stdout_reader=tracker,
            run_marker=run_marker,
            identity=identity,
            stdin_data=stdin_data,
            interrupt=self.interrupt,
            cancel_grace=cancel_grace,
        ).run()
        self.result = tracker.result
        return ended

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
    assert succeeded(run, harness.result)
    assert harness.result is not None and harness.result["result"] == "ok"
    assert run.stderr_tail == "err 1\n"
    expected = f"out 1\nerr 1\ncwd={harness.cwd} X=from-task\n{result_line}\n"
    assert harness.text() == expected
    assert harness.log.getvalue() == expected.encode()
    assert run.output_bytes == len(expected.encode())
    assert [s for s, _ in harness.chunks] == ["stdout", "stderr", "stdout"]


def test_a_slow_bus_after_the_cli_exited_loses_no_output(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The pipes' drain bound counts idle pipes, not time spent handing output
    on: with a bus that takes 0.2 s a chunk, the CLI is long gone before its
    output is all out, and every byte still reaches the log."""

    def slow_bus(stream: str, text: str) -> None:
        time.sleep(0.2)
        harness.chunks.append((stream, text))

    harness.recorder = OutputRecorder(harness.log, OutputBatcher(slow_bus))
    lines = 20  # each switch of stream ends a chunk: 40 chunks, 8 s of bus
    run = harness.run(
        python(
            f"""
            import sys, time
            for i in range({lines}):
                print("out", i, flush=True)
                time.sleep(0.02)
                print("err", i, file=sys.stderr, flush=True)
                time.sleep(0.02)
            """
        )
    )
    assert run.exit_code == 0
    by_stream = {
        name: "".join(text for stream, text in harness.chunks if stream == name)
        for name in ("stdout", "stderr")
    }
    assert by_stream == {
        "stdout": "".join(f"out {i}\n" for i in range(lines)),
        "stderr": "".join(f"err {i}\n" for i in range(lines)),
    }
    assert len(harness.chunks) > 10, "the bus was slow for longer than the drain bound"
    assert harness.log.getvalue() == harness.text().encode()
    assert "holds its output open" not in caplog.text


def test_stdin_is_dev_null(harness: Harness) -> None:
    run = harness.run(python("import sys; print(len(sys.stdin.read()))"), timeout=10)
    assert run.exit_code == 0
    assert harness.text() == "0\n"


def test_stdin_data_is_read_whole_from_a_pipe(harness: Harness) -> None:
    """How an ssh key reaches ssh-add: a pipe, never a file or an argument."""
    data = b"-----BEGIN KEY-----\n" + b"k" * (STDIN_LIMIT - 40) + b"\n"
    script = "import os, stat, sys; s = os.fstat(0); d = sys.stdin.buffer.read()"
    script += "; print(stat.S_ISFIFO(s.st_mode), len(d), d == sys.argv[1].encode())"
    run = harness.run([*python(script), data.decode()], timeout=10, stdin_data=data)
    assert run.exit_code == 0
    assert harness.text() == f"True {len(data)} True\n"
    with pytest.raises(ValueError):
        harness.run(python("pass"), stdin_data=b"x" * (STDIN_LIMIT + 1))


def test_non_zero_exit_keeps_stderr(harness: Harness) -> None:
    run = harness.run(python("import sys; sys.stderr.write('bad flag\\n'); sys.exit(2)"))
    assert run.exit_code == 2
    assert harness.result is None
    assert failure_message(run, harness.result) == "bad flag"


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


def test_the_run_ends_when_the_process_exits_after_closing_its_output(harness: Harness) -> None:
    """Once both pipes are at end of file nothing more can arrive on them: the
    run waits on the process, not for the next tick of its output queue."""
    code = """
        import os, time
        os.close(1)
        os.close(2)
        time.sleep(0.02)
        open("exited", "w").write(repr(time.time()))
        """
    lags = []
    for _ in range(3):
        run = harness.run(python(code))
        returned = time.time()
        assert run.exit_code == 0
        lags.append(returned - float((harness.cwd / "exited").read_text()))
    assert min(lags) < 0.1, f"the run ended {min(lags):.3f} s after the process"


def test_cancel_terminates_the_run(harness: Harness) -> None:
    threading.Timer(0.3, harness.cancel.set).start()
    started = time.monotonic()
    run = harness.run(python("import time; print('up', flush=True); time.sleep(60)"))
    assert run.cancelled
    assert not run.timed_out
    assert run.exit_code == -15, "SIGTERM first; it ends a well-behaved CLI"
    assert time.monotonic() - started < 10


# --- an operator's cancel: SIGINT, then SIGTERM, then SIGKILL -------------------------

# Each line the child prints names a signal that reached it, in order.
SIGNAL_LOGGER = """
import signal, sys, time
def seen(signum, _frame):
    print(signal.Signals(signum).name, flush=True)
    if signal.Signals(signum).name in {exits_on}:
        sys.exit(7)
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, seen)
print("up", flush=True)
while True:
    time.sleep(0.05)
"""


def interrupted_run(harness: Harness, exits_on: set[str], **options: Any) -> ProcessResult:
    """The child above, interrupted once it is up."""

    def interrupt_when_up() -> None:
        deadline = time.monotonic() + 10
        while "up" not in harness.text() and time.monotonic() < deadline:
            time.sleep(0.02)
        harness.interrupt.set()

    threading.Thread(target=interrupt_when_up, daemon=True).start()
    return harness.run(python(SIGNAL_LOGGER.format(exits_on=exits_on or "set()")), **options)


def test_an_interrupt_sends_sigint_first_and_a_child_that_stops_on_it_ends_there(
    harness: Harness,
) -> None:
    run = interrupted_run(harness, {"SIGINT"}, cancel_grace=5.0)
    assert run.interrupted
    assert not run.cancelled and not run.timed_out
    assert run.exit_code == 7, "it ended on SIGINT, of its own accord"
    assert harness.text().split() == ["up", "SIGINT"]
    assert run.duration_seconds < 5.0, "no SIGTERM was needed"


def test_a_child_that_ignores_sigint_gets_sigterm_after_the_cancel_grace(
    harness: Harness,
) -> None:
    run = interrupted_run(harness, {"SIGTERM"}, cancel_grace=1.0, kill_grace=5.0)
    assert run.interrupted
    assert run.exit_code == 7
    assert harness.text().split() == ["up", "SIGINT", "SIGTERM"]
    assert run.duration_seconds >= 1.0, "SIGTERM waited for the grace"


def test_a_child_that_ignores_sigint_and_sigterm_gets_sigkill_after_the_kill_grace(
    harness: Harness,
) -> None:
    run = interrupted_run(harness, set(), cancel_grace=0.5, kill_grace=0.5)
    assert run.interrupted
    assert run.exit_code == -9
    assert harness.text().split() == ["up", "SIGINT", "SIGTERM"]
    assert run.duration_seconds >= 1.0


def test_a_shutdown_during_the_cancel_grace_does_not_wait_it_out(harness: Harness) -> None:
    """A node that must stop cannot give a cancelled run the rest of its grace."""

    def shut_down_after_sigint() -> None:
        deadline = time.monotonic() + 10
        while "SIGINT" not in harness.text() and time.monotonic() < deadline:
            time.sleep(0.02)
        harness.cancel.set()

    threading.Thread(target=shut_down_after_sigint, daemon=True).start()
    started = time.monotonic()
    run = interrupted_run(harness, {"SIGTERM"}, cancel_grace=30.0)
    assert run.interrupted, "what stopped it first"
    assert harness.text().split() == ["up", "SIGINT", "SIGTERM"]
    assert time.monotonic() - started < 20


def test_an_interrupt_after_the_child_ended_changes_nothing(harness: Harness) -> None:
    """The race with a run's natural end: a child that ended ends as it ended,
    even while its output is still being drained (here a process of a session
    of its own holds the pipes open for a second after the child exits)."""
    code = """
        import os, subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"],
                         start_new_session=True)
        open("exited", "w").close()
        """

    def interrupt_once_exited() -> None:
        deadline = time.monotonic() + 10
        while not (harness.cwd / "exited").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        harness.interrupt.set()

    interrupter = threading.Thread(target=interrupt_once_exited, daemon=True)
    interrupter.start()
    run = harness.run(python(code))
    interrupter.join(10)
    assert run.duration_seconds > 1.0, "the run was still draining when the interrupt came"
    assert run.exit_code == 0
    assert not run.stopped


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
    run = harness.run(python(ESCAPEE), env=env, run_marker="run-escapee")
    assert run.exit_code == 0
    assert (harness.cwd / "alive").exists(), "the escapee was running"
    assert wait_gone(int(harness.text().strip()))


def test_a_run_of_its_own_uid_runs_as_it_and_its_escapee_is_killed_by_uid(
    harness: Harness,
) -> None:
    """No marker in its environment: the uid alone finds the escapee."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI=true: changing uids needs root")
        pytest.skip("changing uids needs root")
    uid = 10978  # no node of another test uses it
    let_other_users_through(harness.cwd)
    os.chown(harness.cwd, uid, uid)
    report = "import os; print(os.getuid(), os.getgid(), os.getgroups(), flush=True)\n"
    run = harness.run(
        python(report + ESCAPEE),
        env={"PATH": os.environ["PATH"]},
        identity=RunIdentity(0, uid, uid),
    )
    assert run.exit_code == 0, run.stderr_tail
    ids, pid = harness.text().strip().splitlines()
    assert ids == f"{uid} {uid} []"
    assert (harness.cwd / "alive").exists(), "the escapee was running"
    assert wait_gone(int(pid))


def test_spawn_error_for_a_missing_binary(harness: Harness, tmp_path: Path) -> None:
    run = harness.run([str(tmp_path / "no-such-claude"), "-p"])
    assert run.spawn_error is not None
    assert "no-such-claude" in run.spawn_error
    assert run.exit_code is None
    assert not succeeded(run, harness.result)
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
    assert harness.result is not None
    assert len(harness.result["result"]) == 5 * 1024 * 1024
    assert succeeded(run, harness.result)
    assert harness.log.getvalue() == harness.text().encode()
    assert run.output_bytes == len(harness.log.getvalue())


def test_mock_cli_runs_on_the_same_path(harness: Harness) -> None:
    task = TaskSpec(prompt="-a prompt", mock=MockSpec(duration_seconds=0.1, output_bytes=4000))
    run = harness.run(mock_argv(task))
    assert run.exit_code == 0
    assert succeeded(run, harness.result)
    assert run.output_bytes == 4000
    summary = summarize_result(harness.result)
    assert summary is not None and summary.text == "Mock reply to: -a prompt"


def test_mock_cli_failure_is_a_claude_error(harness: Harness) -> None:
    task = TaskSpec(prompt="p", mock=MockSpec(duration_seconds=0.0, exit_code=3))
    run = harness.run(mock_argv(task))
    assert run.exit_code == 3
    assert not succeeded(run, harness.result)
    assert failure_message(run, harness.result) == "mock run failed with exit code 3"


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
        received: list[bytes | None] = []
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
