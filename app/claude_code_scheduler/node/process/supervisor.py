"""One child process, watched: its own process group, its output read in
arrival order, a deadline, a cancel event (a shutdown's) and an interrupt
event (an operator's cancel), and a kill of the whole group.

How each stops the child (`_Stopping`): the deadline and a shutdown send the
child SIGTERM, then its group SIGKILL after kill_grace. An interrupt sends the
group SIGINT first, as Ctrl-C would (the Claude CLI then stops its own tools),
then SIGTERM after cancel_grace, then SIGKILL after kill_grace; a deadline or
a shutdown that comes during the interrupt's grace cuts it short.

Nothing here touches AWS or knows about the Claude CLI: the caller gives the
argv, the environment, a recorder for the output and a tracker that reads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from claude_code_scheduler.node.output import OutputRecorder
from claude_code_scheduler.node.process import reaper
from claude_code_scheduler.node.process.isolation import SHARED, RunIdentity

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
MAX_READS_PER_TURN = 32
# Reads waiting for the recorder (1 MiB): when the bus is slower than the CLI,
# the recorder waits for the outbox, this queue fills, the reader threads
# wait, and the pipe stops the CLI, instead of output piling up in memory.
MAX_QUEUED_READS = 16
STDERR_TAIL_CHARS = 4096
# How long to wait for the pipes to close after the CLI exits before giving up
# on a grandchild that holds them open. Time spent handing output on (a slow
# bus holds the pump back) does not count: the pipes are not idle meanwhile.
PIPE_DRAIN_SECONDS = 2.0
# What a child may be given on stdin (an ssh key for ssh-add): well within a
# pipe's 64 KiB buffer, so it is written whole before the child starts.
STDIN_LIMIT = 32 * 1024


class StreamReader(Protocol):
    """Reads a stream as it arrives (the Claude CLI's result line, for one)."""

    def feed(self, data: bytes) -> None: ...

    def finish(self) -> None: ...


@dataclass(frozen=True)
class ProcessResult:
    """How the process ended. At most one of timed_out, cancelled,
    interrupted and spawn_error is set: what stopped the process first, if
    anything did while it still ran."""

    exit_code: int | None
    duration_seconds: float
    output_bytes: int
    stderr_tail: str
    timed_out: bool = False
    cancelled: bool = False
    spawn_error: str | None = None
    interrupted: bool = False

    @property
    def stopped(self) -> bool:
        """Stopped from outside (a deadline, a shutdown, an interrupt) rather
        than ended on its own."""
        return self.timed_out or self.cancelled or self.interrupted


class StopReason(StrEnum):
    TIMED_OUT = "timed out"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


@dataclass
class _Stopping:
    """The signals that stop a child, in order, and when each is due (see
    the top): SIGINT to the group for an interrupt, then SIGTERM at `term_at`,
    then SIGKILL to the group from `kill_at` on, until the child is gone."""

    reason: StopReason | None = None
    term_at: float | None = None
    kill_at: float | None = None

    def wakes(self) -> list[float]:
        return [t for t in (self.term_at, self.kill_at) if t is not None]


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
        stdout_reader: StreamReader | None = None,
        run_marker: str | None = None,
        identity: RunIdentity = SHARED,
        clock: Callable[[], float] = time.monotonic,
        stdin_data: bytes | None = None,
        interrupt: threading.Event | None = None,
        cancel_grace: float = 0.0,
    ) -> None:
        """`identity`: the uid and gid the process runs as (isolation.py).
        `stdin_data`: what the process reads on stdin (at most STDIN_LIMIT
        bytes, held in a pipe: never on disk); None: nothing. `interrupt`:
        stops the process SIGINT first, and SIGTERM `cancel_grace` seconds
        later (see the top); None: nothing interrupts it."""
        if stdin_data is not None and len(stdin_data) > STDIN_LIMIT:
            raise ValueError(f"stdin_data is limited to {STDIN_LIMIT} bytes")
        self._argv = argv
        self._cwd = cwd
        self._env = env
        self._recorder = recorder
        self._timeout = timeout
        self._kill_grace = kill_grace
        self._cancel = cancel
        self._interrupt = interrupt or threading.Event()
        self._cancel_grace = cancel_grace
        self._stopping = _Stopping()
        self._run_marker = run_marker
        self._identity = identity
        self._clock = clock
        self._stdin_data = stdin_data
        self._chunks: queue.Queue[tuple[str, bytes | None]] = queue.Queue(maxsize=MAX_QUEUED_READS)
        self._stdout_reader = stdout_reader
        self._stderr_tail = ""

    def run(self) -> ProcessResult:
        started = self._clock()
        stdin = self._stdin()
        try:
            with reaper.spawning() as own_children:
                process = subprocess.Popen(
                    self._argv,
                    cwd=self._cwd,
                    env=self._env,
                    stdin=stdin,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,  # its own process group, killed as one
                    **self._identity.popen_options(),
                )
                own_children.add(process.pid)
        except OSError as exc:
            return ProcessResult(None, self._clock() - started, 0, "", spawn_error=str(exc))
        finally:
            if stdin != subprocess.DEVNULL:
                os.close(stdin)
        try:
            return self._watch(process, started)
        finally:
            reaper.forget(process.pid)

    def _stdin(self) -> int:
        """The child's stdin: /dev/null (with an open pipe the CLI waits for
        input), or a pipe already holding `stdin_data` and closed behind it."""
        if self._stdin_data is None:
            return subprocess.DEVNULL
        read_end, write_end = os.pipe()
        try:
            # Fits the pipe's buffer (STDIN_LIMIT), so the write cannot block.
            os.write(write_end, self._stdin_data)
        finally:
            os.close(write_end)
        return read_end

    def _watch(self, process: subprocess.Popen[bytes], started: float) -> ProcessResult:
        assert process.stdout is not None and process.stderr is not None
        readers = [
            self._start_reader("stdout", process.stdout.fileno()),
            self._start_reader("stderr", process.stderr.fileno()),
        ]
        reason = self._pump(process, started, open_streams=2)
        if self._stdout_reader is not None:
            self._stdout_reader.finish()
        self._recorder.finish(self._clock())
        for reader in readers:
            reader.join(timeout=0.1)
        process.stdout.close()
        process.stderr.close()
        return ProcessResult(
            exit_code=process.returncode,
            duration_seconds=self._clock() - started,
            output_bytes=self._recorder.bytes_written,
            stderr_tail=self._stderr_tail,
            timed_out=reason is StopReason.TIMED_OUT,
            cancelled=reason is StopReason.CANCELLED,
            interrupted=reason is StopReason.INTERRUPTED,
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
    ) -> StopReason | None:
        deadline = started + self._timeout
        drain_until: float | None = None
        # Until the output has ended and the CLI has exited: a CLI that closes
        # its pipes and goes on running is still held to its deadline.
        while open_streams or process.poll() is None:
            now = self._clock()
            self._stop_if_asked(process, now, deadline)
            if drain_until is None and process.poll() is not None:
                # The CLI is gone: whatever is left of the run has no business running.
                self._kill_leftovers(process)
                drain_until = now + PIPE_DRAIN_SECONDS
            if drain_until is not None and now >= drain_until:
                log.warning("a process outside the run's group holds its output open; moving on")
                break
            wait = self._next_wait(now, deadline)
            if open_streams:
                closed, handing_on = self._take_output(wait)
                open_streams -= closed
                if drain_until is not None:
                    drain_until += handing_on
            else:
                # Both pipes are at end of file, so nothing will arrive on the
                # chunk queue: the process's exit is what to wait for.
                self._wait_exit(process, wait)
        process.wait()
        if drain_until is None:
            # The CLI exited just after the loop last looked: its leftovers are still there.
            self._kill_leftovers(process)
        return self._stopping.reason

    def _stop_if_asked(self, process: subprocess.Popen[bytes], now: float, deadline: float) -> None:
        """The stop sequence at the top, one step at a time as each is due."""
        stopping = self._stopping
        hard_stop = now >= deadline or self._cancel.is_set()
        if stopping.reason is None:
            if hard_stop:
                stopping.reason = StopReason.TIMED_OUT if now >= deadline else StopReason.CANCELLED
                stopping.term_at = now
            elif self._interrupt.is_set() and process.poll() is None:
                # Only a child still running is interrupted: one that ended on
                # its own as the interrupt came ends as it ended.
                stopping.reason = StopReason.INTERRUPTED
                stopping.term_at = now + self._cancel_grace
                self._signal(process, signal.SIGINT, group=True)
        elif hard_stop and stopping.kill_at is None:
            # A deadline or a shutdown does not wait out an interrupt's grace.
            stopping.term_at = now
        if stopping.term_at is not None and stopping.kill_at is None and now >= stopping.term_at:
            stopping.kill_at = now + self._kill_grace
            # An interrupted run's tools may have stayed on after the CLI's
            # SIGINT: the whole group is asked to stop, then killed.
            interrupted = stopping.reason is StopReason.INTERRUPTED
            self._signal(process, signal.SIGTERM, group=interrupted)
        if stopping.kill_at is not None and now >= stopping.kill_at and process.poll() is None:
            self._signal(process, signal.SIGKILL, group=True)

    def _kill_leftovers(self, process: subprocess.Popen[bytes]) -> None:
        """The CLI's group, and the tool processes that left it (see reaper)."""
        self._signal(process, signal.SIGKILL, group=True)
        if self._run_marker is not None or self._identity.isolated:
            killed = reaper.kill_run(self._run_marker or "", uid=self._identity.uid)
            if killed:
                log.info("killed %d leftover process(es) of the run", killed)

    @staticmethod
    def _wait_exit(process: subprocess.Popen[bytes], timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)

    def _next_wait(self, now: float, deadline: float) -> float:
        wakes = [deadline, now + 0.2, *self._stopping.wakes()]
        return max(0.0, min(wakes) - now)

    def _take_output(self, wait: float) -> tuple[int, float]:
        """Records what arrived; returns how many streams reached end of file,
        and the seconds spent handing the output on.

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
        began = self._clock()
        for stream, data in items:
            if data is None:
                closed += 1
            else:
                self._record(stream, data)
        self._recorder.poll(self._clock())
        return closed, self._clock() - began

    def _record(self, stream: str, data: bytes) -> None:
        if stream == "stdout":
            if self._stdout_reader is not None:
                self._stdout_reader.feed(data)
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
