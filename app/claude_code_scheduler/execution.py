"""Running one task as a child process: the Claude CLI, or the mock CLI.

Nothing here touches AWS. A run is a process in its own process group whose
stdout and stderr are read in arrival order, recorded through an
`OutputRecorder`, and watched against a deadline and a cancel event.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_code_scheduler import reaper
from claude_code_scheduler.output import OutputRecorder
from claude_code_scheduler.protocol import RESULT_TEXT_LIMIT, TaskSpec
from claude_code_scheduler.reaper import RUN_MARKER

log = logging.getLogger(__name__)

# The node's own credentials stay with the node: a task's tools must not act as
# it. These are every way the AWS SDKs find credentials through the environment
# (keys, a profile, a web identity, the ECS/Fargate container endpoint).
STRIPPED_ENV_NAMES = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
    }
)
STRIPPED_ENV_PREFIXES = ("AWS_CONTAINER_CREDENTIALS_", "AWS_CONTAINER_AUTHORIZATION_TOKEN")
# Set inside a Claude Code session; the CLI refuses to start nested when it sees it.
NESTED_SESSION_VAR = "CLAUDECODE"
# How often the CLI retries a failed API request (its default is 10, about 3 minutes).
MAX_RETRIES_VAR = "CLAUDE_CODE_MAX_RETRIES"
# Left unset, the CLI updates itself at run time: the node would then run a CLI
# other than the one it was tested with, changing under a fleet's feet.
AUTOUPDATER_VAR = "DISABLE_AUTOUPDATER"
# The CLI's words when it refuses bypassPermissions to root (2.1.332).
ROOT_REFUSAL_MARK = "cannot be used with root/sudo privileges"
ROOT_ADVICE = (
    "The node runs as root, and the Claude CLI refuses bypassPermissions to root: "
    "run the node as a non-root user (the image runs as uid 10001)."
)

READ_SIZE = 64 * 1024
MAX_READS_PER_TURN = 32
STDERR_TAIL_CHARS = 4096
# How long to wait for the pipes to close after the CLI exits before giving up
# on a grandchild that holds them open.
PIPE_DRAIN_SECONDS = 2.0


@dataclass(frozen=True)
class RunDirs:
    """A run's scratch: the CLI's working directory, its config and its temp files.

    The config and temp folders keep what the CLI writes outside its cwd (its
    session transcript, settings, tool output, sockets) inside the run, so
    that removing `root` after the run leaves nothing behind.
    """

    root: Path

    @classmethod
    def create(cls, work_dir: Path, run_id: str) -> RunDirs:
        work_dir.mkdir(parents=True, exist_ok=True)
        # Short on purpose: the CLI puts a unix socket under tmp, and socket
        # paths are limited to 107 bytes.
        root = Path(tempfile.mkdtemp(prefix=f"run-{run_id[:24]}-", dir=work_dir))
        dirs = cls(root)
        for path in (dirs.cwd, dirs.config, dirs.tmp):
            path.mkdir()
        return dirs

    @property
    def cwd(self) -> Path:
        return self.root / "work"

    @property
    def config(self) -> Path:
        return self.root / "claude"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def child_environment(
    base: Mapping[str, str],
    task_env: Mapping[str, str],
    *,
    run_id: str,
    dirs: RunDirs | None = None,
    keep_aws_credentials: bool = False,
    claude_max_retries: int | None = None,
) -> dict[str, str]:
    """The CLI's environment: the node's, without its AWS credentials unless the
    operator passes them on purpose, then the task's own, then the run marker.

    Where the node's environment names no config or temp folder of its own,
    the run's scratch folders are used, and the CLI's self-update is off
    unless the node's environment says otherwise.
    """
    env = {
        name: value
        for name, value in base.items()
        if name != NESTED_SESSION_VAR
        and (
            keep_aws_credentials
            or (name not in STRIPPED_ENV_NAMES and not name.startswith(STRIPPED_ENV_PREFIXES))
        )
    }
    env.setdefault(AUTOUPDATER_VAR, "1")
    if dirs is not None:
        env.setdefault("CLAUDE_CONFIG_DIR", str(dirs.config))
        env.setdefault("CLAUDE_CODE_TMPDIR", str(dirs.tmp))
        env.setdefault("TMPDIR", str(dirs.tmp))
    if claude_max_retries is not None:
        env[MAX_RETRIES_VAR] = str(claude_max_retries)
    env.update(task_env)
    env[RUN_MARKER] = run_id  # last: how the reaper finds the run's processes
    return env


def claude_argv(claude_bin: str, task: TaskSpec) -> list[str]:
    argv = [claude_bin, "-p", "--verbose", "--output-format", "stream-json"]
    if task.model:
        argv += ["--model", task.model]
    if task.permission_mode:
        argv += ["--permission-mode", task.permission_mode]
    if task.allowed_tools:
        argv += ["--allowedTools", *task.allowed_tools]
    if task.disallowed_tools:
        argv += ["--disallowedTools", *task.disallowed_tools]
    if task.max_turns is not None:
        argv += ["--max-turns", str(task.max_turns)]
    # The tool-list flags are variadic: without `--` they would swallow the prompt.
    return [*argv, "--", task.prompt]


def mock_argv(task: TaskSpec) -> list[str]:
    mock = task.mock
    return [
        sys.executable,
        "-m",
        "claude_code_scheduler.mockcli",
        "--duration",
        str(mock.duration_seconds),
        "--exit-code",
        str(mock.exit_code),
        "--output-bytes",
        str(mock.output_bytes),
        "--model",
        task.model or "mock",
        "--",
        task.prompt,
    ]


class ResultTracker:
    """Finds the CLI's final `{"type": "result", ...}` line in stdout.

    Lines can be megabytes long (a long answer is repeated in the assistant and
    the result line), so the only limit is the longest line; only lines that can
    be a result are parsed.
    """

    def __init__(self) -> None:
        self._partial = bytearray()
        self.result: dict[str, Any] | None = None

    def feed(self, data: bytes) -> None:
        self._partial += data
        start = 0
        while (end := self._partial.find(b"\n", start)) != -1:
            self._consider(bytes(self._partial[start:end]))
            start = end + 1
        del self._partial[:start]

    def finish(self) -> None:
        if self._partial:
            self._consider(bytes(self._partial))
            self._partial.clear()

    def _consider(self, line: bytes) -> None:
        if b'"result"' not in line:
            return
        try:
            obj = json.loads(line)
        except ValueError:
            return
        if isinstance(obj, dict) and obj.get("type") == "result":
            self.result = obj


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int | None
    duration_seconds: float
    output_bytes: int
    result: dict[str, Any] | None
    stderr_tail: str
    timed_out: bool = False
    cancelled: bool = False
    spawn_error: str | None = None


def summarize_result(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `result` object of TaskCompleted: the CLI's figures, its text cut to 4 KiB."""
    if result is None:
        return None
    text = result.get("result")

    def pick(key: str, kinds: tuple[type, ...]) -> Any:
        value = result.get(key)
        return value if isinstance(value, kinds) and not isinstance(value, bool) else None

    return {
        "session_id": pick("session_id", (str,)),
        "total_cost_usd": pick("total_cost_usd", (int, float)),
        "num_turns": pick("num_turns", (int,)),
        "duration_ms": pick("duration_ms", (int, float)),
        "is_error": bool(result.get("is_error", False)),
        "text": _cut_utf8(text, RESULT_TEXT_LIMIT) if isinstance(text, str) else None,
    }


def _cut_utf8(text: str, limit: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", errors="ignore")


def succeeded(outcome: RunOutcome) -> bool:
    """Exit 0 with a result line that is not an error; the exit code alone lies
    (API errors come as subtype success with is_error true)."""
    return (
        outcome.exit_code == 0
        and outcome.result is not None
        and not outcome.result.get("is_error", False)
        and not outcome.timed_out
        and not outcome.cancelled
    )


def failure_message(outcome: RunOutcome) -> str:
    """The CLI's own words for why a run failed, and what to do where the
    words alone do not say."""
    message = _cli_words(outcome)
    if ROOT_REFUSAL_MARK in outcome.stderr_tail:
        message = f"{message}\n{ROOT_ADVICE}"
    return message


def _cli_words(outcome: RunOutcome) -> str:
    result = outcome.result
    if result is not None:
        text = result.get("result")
        if isinstance(text, str) and text.strip():
            return _cut_utf8(text.strip(), RESULT_TEXT_LIMIT)
        errors = result.get("errors")
        if isinstance(errors, list) and errors:
            return _cut_utf8("; ".join(str(e) for e in errors), RESULT_TEXT_LIMIT)
        subtype = result.get("subtype")
        if subtype and subtype != "success":
            return f"claude ended with {subtype}"
    if outcome.stderr_tail.strip():
        return outcome.stderr_tail.strip()
    if outcome.exit_code == 0:
        return "claude exited 0 without a result line"
    return f"claude exited with status {outcome.exit_code}"


class ProcessRun:
    """One child process, watched until it ends, times out or is cancelled."""

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        recorder: OutputRecorder,
        timeout: float,
        kill_grace: float,
        cancel: threading.Event,
        run_id: str | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self._argv = argv
        self._cwd = cwd
        self._env = env
        self._recorder = recorder
        self._timeout = timeout
        self._kill_grace = kill_grace
        self._cancel = cancel
        self._run_id = run_id
        self._clock = clock
        self._chunks: queue.Queue[tuple[str, bytes | None]] = queue.Queue(maxsize=64)
        self._tracker = ResultTracker()
        self._stderr_tail = ""

    def run(self) -> RunOutcome:
        started = self._clock()
        try:
            with reaper.spawning() as own_children:
                process = subprocess.Popen(
                    self._argv,
                    cwd=self._cwd,
                    env=self._env,
                    stdin=subprocess.DEVNULL,  # with an open pipe the CLI waits for input
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,  # its own process group, killed as one
                )
                own_children.add(process.pid)
        except OSError as exc:
            return RunOutcome(None, self._clock() - started, 0, None, "", spawn_error=str(exc))
        try:
            return self._watch(process, started)
        finally:
            reaper.forget(process.pid)

    def _watch(self, process: subprocess.Popen[bytes], started: float) -> RunOutcome:
        assert process.stdout is not None and process.stderr is not None
        readers = [
            self._start_reader("stdout", process.stdout.fileno()),
            self._start_reader("stderr", process.stderr.fileno()),
        ]
        timed_out, cancelled = self._pump(process, started, open_streams=2)
        self._tracker.finish()
        self._recorder.finish(self._clock())
        for reader in readers:
            reader.join(timeout=0.1)
        process.stdout.close()
        process.stderr.close()
        return RunOutcome(
            exit_code=process.returncode,
            duration_seconds=self._clock() - started,
            output_bytes=self._recorder.bytes_written,
            result=self._tracker.result,
            stderr_tail=self._stderr_tail,
            timed_out=timed_out,
            cancelled=cancelled,
        )

    def _start_reader(self, stream: str, pipe_fd: int) -> threading.Thread:
        # The reader owns a duplicate of the pipe and closes it itself: if a
        # stray process keeps the pipe open past the run, the run can close
        # its own end without the fd number being reused under a blocked read.
        fd = os.dup(pipe_fd)

        def read() -> None:
            try:
                while data := os.read(fd, READ_SIZE):
                    self._chunks.put((stream, data))
            except OSError:
                pass
            finally:
                os.close(fd)
                self._chunks.put((stream, None))

        thread = threading.Thread(target=read, name=f"read-{stream}", daemon=True)
        thread.start()
        return thread

    def _pump(
        self, process: subprocess.Popen[bytes], started: float, open_streams: int
    ) -> tuple[bool, bool]:
        deadline = started + self._timeout
        timed_out = cancelled = False
        kill_at: float | None = None
        drain_until: float | None = None
        # Until the output has ended and the CLI has exited: a CLI that closes
        # its pipes and goes on running is still held to its deadline.
        while open_streams or process.poll() is None:
            now = self._clock()
            if kill_at is None and (now >= deadline or self._cancel.is_set()):
                timed_out = now >= deadline
                cancelled = not timed_out
                kill_at = now + self._kill_grace
                self._signal(process, signal.SIGTERM, group=False)
            if kill_at is not None and now >= kill_at and process.poll() is None:
                self._signal(process, signal.SIGKILL, group=True)
            if drain_until is None and process.poll() is not None:
                # The CLI is gone: whatever is left of the run has no business running.
                self._kill_leftovers(process)
                drain_until = now + PIPE_DRAIN_SECONDS
            if drain_until is not None and now >= drain_until:
                log.warning("a process outside the run's group holds its output open; moving on")
                break
            open_streams -= self._take_output(self._next_wait(now, deadline, kill_at))
        process.wait()
        if drain_until is None:
            # The CLI exited just after the loop last looked: its leftovers are still there.
            self._kill_leftovers(process)
        return timed_out, cancelled

    def _kill_leftovers(self, process: subprocess.Popen[bytes]) -> None:
        """The CLI's group, and the tool processes that left it (see reaper)."""
        self._signal(process, signal.SIGKILL, group=True)
        if self._run_id is not None:
            killed = reaper.kill_run(self._run_id)
            if killed:
                log.info("killed %d leftover process(es)", killed, extra={"run_id": self._run_id})

    def _next_wait(self, now: float, deadline: float, kill_at: float | None) -> float:
        wakes = [deadline, now + 0.2]
        if kill_at is not None:
            wakes.append(kill_at)
        return max(0.0, min(wakes) - now)

    def _take_output(self, wait: float) -> int:
        """Records what arrived; returns how many streams reached end of file.

        Takes a bounded number of reads at a time so that a fast writer cannot
        keep the deadline from being looked at."""
        items: list[tuple[str, bytes | None]] = []
        try:
            items.append(self._chunks.get(timeout=wait))
            while len(items) < MAX_READS_PER_TURN:
                items.append(self._chunks.get_nowait())
        except queue.Empty:
            pass
        closed = 0
        for stream, data in items:
            if data is None:
                closed += 1
            else:
                self._record(stream, data)
        self._recorder.poll(self._clock())
        return closed

    def _record(self, stream: str, data: bytes) -> None:
        if stream == "stdout":
            self._tracker.feed(data)
        else:
            tail = self._stderr_tail + data.decode("utf-8", errors="replace")
            self._stderr_tail = tail[-STDERR_TAIL_CHARS:]
        self._recorder.feed(stream, data, self._clock())

    @staticmethod
    def _signal(process: subprocess.Popen[bytes], sig: signal.Signals, *, group: bool) -> None:
        try:
            if group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass  # already gone
