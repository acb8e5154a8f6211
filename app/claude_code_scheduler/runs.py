"""One run from TaskStarted to its terminal event, its log and its message.

The order is the protocol's promise: output events while the run lasts, then
the log upload, then the terminal event, and only once the bus has taken that
event is the command deleted. A run stopped by a node shutdown is handed back
to the queue instead.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from claude_code_scheduler import logsetup
from claude_code_scheduler.aws import LogStore, error_code
from claude_code_scheduler.config import NodeConfig, log_key
from claude_code_scheduler.execution import (
    ProcessRun,
    RunDirs,
    RunOutcome,
    child_environment,
    claude_argv,
    failure_message,
    mock_argv,
    succeeded,
    summarize_result,
)
from claude_code_scheduler.leases import LeaseKeeper
from claude_code_scheduler.outbox import Outbox
from claude_code_scheduler.output import OutputBatcher, OutputRecorder, open_spool
from claude_code_scheduler.protocol import ErrorType, Event, RunTask, iso, task_failed, task_output
from claude_code_scheduler.retry import through_outage

log = logging.getLogger(__name__)

# How long a terminal event may wait for the bus while the node is not stopping.
TERMINAL_EVENT_WAIT_SECONDS = 3600.0


@dataclass
class RunControl:
    """What the node can do to a run from outside: cancel it, and give up on
    retrying its log upload and terminal event when the stop budget is spent."""

    cancel: threading.Event = field(default_factory=threading.Event)
    give_up: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class RunReport:
    run_id: str
    completed: bool
    handed_back: bool


class TaskRun:
    def __init__(
        self,
        config: NodeConfig,
        command: RunTask,
        attempt: int,
        *,
        outbox: Outbox,
        logs: LogStore,
        leases: LeaseKeeper,
        control: RunControl,
        environ: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._command = command
        self._attempt = attempt
        self._outbox = outbox
        self._logs = logs
        self._leases = leases
        self._control = control
        self._environ = dict(os.environ) if environ is None else environ
        self._clock = clock
        self._chunk_index = 0
        self._timeout = command.task.timeout_seconds or config.task_timeout
        self._deadline = float("inf")

    @property
    def run_id(self) -> str:
        return self._command.run_id

    def execute(self) -> RunReport:
        task = self._command.task
        extra = {"run_id": self.run_id}
        log.info("run started (attempt %d)", self._attempt, extra=extra)
        self._outbox.publish(
            Event(
                "TaskStarted",
                {
                    "run_id": self.run_id,
                    "task_id": task.task_id,
                    "task_name": task.name,
                    "attempt": self._attempt,
                    "started_at": iso(time.time()),
                },
            )
        )
        logsetup.SECRETS.add(task.env.values())
        self._deadline = self._clock() + self._timeout
        spool = self._config.work_dir / ".logs" / f"{self.run_id}-{uuid.uuid4().hex[:8]}.log"
        try:
            outcome = self._run_process(spool)
            return self._finish(outcome, spool)
        finally:
            spool.unlink(missing_ok=True)

    def _run_process(self, spool: Path) -> RunOutcome:
        task = self._command.task
        dirs = RunDirs.create(self._config.work_dir, self.run_id)
        argv = (
            mock_argv(task)
            if self._config.mock_mode
            else claude_argv(self._config.claude_bin, task)
        )
        env = child_environment(
            self._environ,
            task.env,
            run_id=self.run_id,
            dirs=dirs,
            keep_aws_credentials=self._config.pass_aws_credentials,
            claude_max_retries=self._config.claude_max_retries,
        )
        try:
            with open_spool(spool) as log_file:
                batcher = OutputBatcher(self._emit_output)
                process = ProcessRun(
                    argv,
                    cwd=dirs.cwd,
                    env=env,
                    recorder=OutputRecorder(log_file, batcher),
                    timeout=self._timeout,
                    kill_grace=self._config.kill_grace,
                    cancel=self._control.cancel,
                    run_id=self.run_id,
                    clock=self._clock,
                )
                return process.run()
        finally:
            dirs.remove()

    def _emit_output(self, stream: str, text: str) -> None:
        event = task_output(self.run_id, self._chunk_index, stream, text)
        self._chunk_index += 1
        self._outbox.publish(event, backpressure=True, stop_waiting=self._stop_waiting)

    def _stop_waiting(self) -> bool:
        """A slow bus must not hold the run past its deadline or a shutdown: the
        pump that waits here is the one that enforces them."""
        return (
            self._control.cancel.is_set()
            or self._control.give_up.is_set()
            or self._clock() >= self._deadline
        )

    def _finish(self, outcome: RunOutcome, spool: Path) -> RunReport:
        extra = {
            "run_id": self.run_id,
            "exit_code": outcome.exit_code,
            "duration_seconds": round(outcome.duration_seconds, 3),
        }
        uploaded = self._upload(spool)
        log_uri = self._config.log_uri(self.run_id) if uploaded else None
        event, completed, handed_back = self._terminal_event(outcome, log_uri, uploaded)
        log.info("run ended: %s", event.event_type, extra=extra)
        delivered = self._outbox.publish(event).wait(self._terminal_wait())
        if handed_back or not delivered:
            # Whoever picks the message up next runs it again; better than losing it.
            self._leases.release(self.run_id)
            handed_back = True
        else:
            self._leases.finish(self.run_id)
        return RunReport(self.run_id, completed=completed, handed_back=handed_back)

    def _terminal_event(
        self, outcome: RunOutcome, log_uri: str | None, uploaded: bool
    ) -> tuple[Event, bool, bool]:
        """The run's last event, whether it completed, and whether its message
        goes back to the queue."""

        def failed(error_type: str, message: str, *, retryable: bool = False) -> Event:
            return task_failed(
                self.run_id,
                error_type,
                message,
                exit_code=outcome.exit_code,
                duration_seconds=outcome.duration_seconds,
                log_uri=log_uri,
                retryable=retryable,
            )

        if outcome.cancelled or (not uploaded and self._control.give_up.is_set()):
            reason = (
                "the node stopped before the run finished; the run was terminated and "
                "handed back to the queue"
                if outcome.cancelled
                else "the node stopped before the run's log was uploaded; handed back"
            )
            return failed(ErrorType.NODE_SHUTDOWN, reason, retryable=True), False, True
        if outcome.spawn_error is not None:
            message = f"could not start the run: {outcome.spawn_error}"
            return failed(ErrorType.NODE_ERROR, message), False, False
        if outcome.timed_out:
            message = f"the run passed its timeout of {self._timeout:g} s and was killed"
            return failed(ErrorType.TIMEOUT, message), False, False
        if not uploaded:
            return failed(ErrorType.NODE_ERROR, "the run's log could not be uploaded"), False, False
        if succeeded(outcome) and log_uri is not None:
            data = {
                "run_id": self.run_id,
                "exit_code": outcome.exit_code,
                "duration_seconds": round(outcome.duration_seconds, 3),
                "log_uri": log_uri,
                "output_bytes": outcome.output_bytes,
                "result": summarize_result(outcome.result),
            }
            return Event("TaskCompleted", data), True, False
        return failed(ErrorType.CLAUDE_ERROR, failure_message(outcome)), False, False

    def _upload(self, spool: Path) -> bool:
        try:
            through_outage("uploading the log", interrupt=self._control.give_up)(
                self._logs.upload, spool, log_key(self.run_id)
            )
        except Exception as exc:
            log.error("log upload failed: %s", error_code(exc), extra={"run_id": self.run_id})
            return False
        return True

    def _terminal_wait(self) -> float | None:
        # Bounded only by the node's stop budget, which ends with the outbox
        # giving up; the lease keeps the message hidden meanwhile.
        return None
