"""What a run starts from (task.workspace) and what it publishes: a git
clone (git.py) or an archive (archive.py), prepared in the run's working
folder before the CLI starts, as the run's own identity.

`ChildRunner` is how both run their programs: as the run's uid, in its
environment without the node's credentials, with their output in the run's
log (redacted, as the CLI's is), within what is left of the run's timeout and
stopped by a shutdown like the CLI.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from claude_code_scheduler.node.output import OutputRecorder
from claude_code_scheduler.node.process.isolation import RunIdentity
from claude_code_scheduler.node.process.supervisor import ProcessResult, ProcessRun, StreamReader


class WorkspaceError(Exception):
    """The workspace could not be prepared, or the work not published; `str()`
    is the message for TaskFailed (git's own words). `retryable`: the cause
    is transient (the network, a server error), not the command's fault."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Stopped(Exception):
    """A child was stopped by the run's deadline or a shutdown; `result` says which."""

    def __init__(self, result: ProcessResult) -> None:
        super().__init__("timed out" if result.timed_out else "cancelled")
        self.result = result


class Captured:
    """A child's stdout, kept (a commit name, a config value): small by nature."""

    LIMIT = 64 * 1024

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> None:
        self._data += data[: max(0, self.LIMIT - len(self._data))]

    def finish(self) -> None:
        pass

    @property
    def text(self) -> str:
        return self._data.decode("utf-8", errors="replace").strip()


@dataclass(frozen=True)
class ChildRunner:
    """Runs the run's preparation and publishing programs as the run would run
    them (see the top)."""

    cwd: Path
    env: dict[str, str]
    recorder: OutputRecorder
    identity: RunIdentity
    time_left: Callable[[], float]
    cancel: threading.Event
    kill_grace: float
    run_marker: str
    clock: Callable[[], float]

    def run(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        stdout_reader: StreamReader | None = None,
        stdin_data: bytes | None = None,
    ) -> ProcessResult:
        """The child's result; raises Stopped if the deadline or a shutdown
        stopped it. `env` replaces the run's environment for this child;
        `stdin_data` is what it reads on stdin (ProcessRun)."""
        result = ProcessRun(
            argv,
            cwd=self.cwd,
            env=self.env if env is None else env,
            recorder=self.recorder,
            timeout=self.time_left(),
            kill_grace=self.kill_grace,
            cancel=self.cancel,
            stdout_reader=stdout_reader,
            run_marker=self.run_marker,
            identity=self.identity,
            clock=self.clock,
            stdin_data=stdin_data,
        ).run()
        if result.timed_out or result.cancelled:
            raise Stopped(result)
        return result

    def say(self, line: str) -> None:
        """One line of the node's own in the run's log (and its output events)."""
        now = self.clock()
        self.recorder.feed("stderr", f"[claude-code-scheduler] {line}\n".encode(), now)
        # Released now: a redactor holds back what could begin a secret.
        self.recorder.finish(now)
