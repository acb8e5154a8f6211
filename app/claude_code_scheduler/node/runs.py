"""One run, from TaskStarted to its terminal event, and how it ended.

The order is the protocol's promise: output events while the run lasts, then
the log upload, then the terminal event, and only then is the message
settled, by `messages`, once the bus has taken that event. A run stopped by a
node shutdown is handed back to the queue instead.

An operator's cancel (node.cancels) is looked up once before the run starts
(a cancelled run never starts), and then arrives through RunControl while it
runs: it interrupts whatever the run is waiting on (its secrets, its session,
its workspace, its CLI), and the run ends Cancelled with its log and artifacts.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import botocore.exceptions

from claude_code_scheduler import logsetup
from claude_code_scheduler.aws.cancels import CancelRequest
from claude_code_scheduler.aws.errors import error_code
from claude_code_scheduler.aws.logstore import LogUploader
from claude_code_scheduler.aws.objects import ObjectReader
from claude_code_scheduler.aws.retry import through_outage
from claude_code_scheduler.aws.secrets import SecretSource
from claude_code_scheduler.node.artifacts import DEFAULT_LIMITS, ArtifactLimits
from claude_code_scheduler.node.artifacts.collect import (
    RunFolder,
    RunRecord,
    collect,
    result_document,
    store,
)
from claude_code_scheduler.node.artifacts.staging import Staging
from claude_code_scheduler.node.config import NodeConfig, log_key
from claude_code_scheduler.node.control import CancelLookup, RunControl, RunSettler
from claude_code_scheduler.node.metrics import METRICS
from claude_code_scheduler.node.outbox import EventSink
from claude_code_scheduler.node.outcome import (
    RunEnd,
    RunOutcome,
    cancelled,
    conclude,
    unresolved,
)
from claude_code_scheduler.node.output import OutputBatcher, OutputRecorder, open_spool
from claude_code_scheduler.node.process import reaper
from claude_code_scheduler.node.process.claude import claude_argv, mock_argv
from claude_code_scheduler.node.process.environment import RunDirs, child_environment
from claude_code_scheduler.node.process.isolation import SHARED, RunIdentity, remove_files_of
from claude_code_scheduler.node.process.result import ResultTracker, succeeded
from claude_code_scheduler.node.process.supervisor import ProcessResult, ProcessRun
from claude_code_scheduler.node.records import run_record, store_record
from claude_code_scheduler.node.retries import RetryPolicy
from claude_code_scheduler.node.secrets import SecretError, SecretResolver
from claude_code_scheduler.node.sessions import SessionError, SessionRestorer
from claude_code_scheduler.node.workspace import ChildRunner
from claude_code_scheduler.node.workspace.credentials import without_credentials
from claude_code_scheduler.node.workspace.steps import WorkspaceSteps
from claude_code_scheduler.protocol import RunTask
from claude_code_scheduler.protocol.events import (
    task_output,
    task_started,
    with_artifacts,
)

log = logging.getLogger(__name__)


class TaskRun:
    def __init__(
        self,
        config: NodeConfig,
        command: RunTask,
        attempt: int,
        *,
        outbox: EventSink,
        logs: LogUploader,
        messages: RunSettler,
        control: RunControl,
        environ: Mapping[str, str] | None = None,
        identity: RunIdentity = SHARED,
        secret_source: SecretSource | None = None,
        objects: ObjectReader | None = None,
        retries: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        artifact_limits: ArtifactLimits = DEFAULT_LIMITS,
        cancels: CancelLookup | None = None,
        sent_at: float | None = None,
    ) -> None:
        """`identity`: the run slot's uid and gid, which the run's processes
        and folders get (isolation.py). `secret_source` reads task.secrets
        (None: a task that names any fails with SecretError). `cancels`:
        where the run's cancel request is looked up before it starts (None:
        not looked up). `sent_at`: when SQS took the command's message
        (aws.queue.ReceivedMessage.sent_at), for the run record's queue wait."""
        self._config = config
        self._command = command
        self._attempt = attempt
        # Whether a retryable failure of this run is retried (node.retries).
        self._retries = retries or RetryPolicy(config.retry_delay, config.retry_max_attempts)
        self._outbox = outbox
        self._logs = logs
        self._messages = messages
        self._control = control
        self._environ = dict(os.environ) if environ is None else dict(environ)
        self._identity = identity
        self._secret_source = secret_source
        self._cancels = cancels
        # The task's own variables for the CLI: task.env, then the resolved
        # task.secrets (execute); held in memory only.
        self._task_env = dict(command.task.env)
        self._redactor = logsetup.SECRETS.redactor(None)
        self._clock = clock
        self._chunk_index = 0
        self._timeout = command.task.timeout_seconds or config.task_timeout
        self._deadline = float("inf")
        self._started_at = time.time()
        self._sent_at = sent_at
        # What the run made, staged redacted between the CLI's end and the
        # terminal event (node.artifacts).
        self._artifact_limits = artifact_limits
        self._staging: Staging | None = None
        # task.resume: restores a transcript within the bound it was stored with.
        self._sessions = SessionRestorer(
            objects, config.log_bucket, max_bytes=artifact_limits.max_transcript_bytes
        )
        # task.workspace: what it checked out, pushed, or why it failed.
        self._workspace = WorkspaceSteps(
            command.task.workspace,
            run_id=command.run_id,
            task_env=self._task_env,
            objects=objects,
            log_bucket=config.log_bucket,
            clock=clock,
        )

    @property
    def run_id(self) -> str:
        return self._command.run_id

    def execute(self) -> RunOutcome:
        request = self._cancel_before_start()
        if request is not None:
            return self._ended_before_cli(
                cancelled(request, 0.0, self._redact, attempt=self._attempt)
            )
        task = self._command.task
        log.info("run started (attempt %d)", self._attempt, extra={"run_id": self.run_id})
        self._outbox.publish(
            task_started(
                self.run_id,
                task_id=task.task_id,
                task_name=task.name,
                attempt=self._attempt,
                started_at=self._started_at,
            )
        )
        METRICS.run_started()
        self._deadline = self._clock() + self._timeout
        # The node's credentials as they are now: a rotated set is redacted too.
        logsetup.SECRETS.refresh_credentials()
        try:
            self._task_env.update(self._resolve_secrets())
        except SecretError as exc:
            return self._unresolved(exc)
        spool = self._config.work_dir / ".logs" / f"{self.run_id}-{uuid.uuid4().hex[:8]}.log"
        with logsetup.SECRETS.for_run(self.run_id, self._task_env.values()):
            # The run's output, its log and its events are redacted with the
            # task's values and secrets, from the first byte.
            self._redactor = logsetup.SECRETS.redactor(self.run_id)
            try:
                process, result_line = self._run_process(spool)
                outcome = self._conclude(process, result_line, spool)
                outcome = self._store_artifacts(outcome, process, result_line)
            except SessionError as exc:
                return self._unresolved(exc)
            finally:
                spool.unlink(missing_ok=True)
                if self._staging is not None:
                    self._staging.remove()
            self._report(outcome, process)
        return outcome

    def _cancel_before_start(self) -> CancelRequest | None:
        """The run's cancel request, if one was made before its command came
        (or before a node restart that released it). A lookup that fails
        starts the run: the watcher looks again every few seconds while it
        runs (node.cancels)."""
        if self._cancels is None:
            return None
        try:
            request = self._cancels.lookup(self.run_id)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            log.warning(
                "could not look up the run's cancel request: %s; starting it",
                error_code(exc),
                extra={"run_id": self.run_id},
            )
            return None
        if request is not None:
            log.info("the run was cancelled before it started", extra={"run_id": self.run_id})
        return request

    def _resolve_secrets(self) -> dict[str, str]:
        """task.secrets, read with the node's role (node.secrets); the time it
        takes counts against the run's timeout."""
        secrets = self._command.task.secrets
        if not secrets:
            return {}
        if self._secret_source is None:
            raise SecretError("task.secrets: this node has no secret reader")
        resolver = SecretResolver(self._secret_source, self._config.secrets_prefix)
        return resolver.resolve(
            secrets, interrupt=self._control.stopping, time_left=self._time_left
        )

    def _time_left(self) -> float:
        return max(0.0, self._deadline - self._clock())

    def _unresolved(self, exc: SecretError | SessionError) -> RunOutcome:
        """The run ends before its CLI starts (node.outcome.unresolved)."""
        duration = self._clock() - (self._deadline - self._timeout)
        with logsetup.SECRETS.for_run(self.run_id, self._task_env.values()):
            outcome = unresolved(
                self.run_id,
                exc,
                duration,
                self._redact,
                attempt=self._attempt,
                cancel_request=self._control.cancel_request,
            )
            return self._ended_before_cli(outcome, duration)

    def _ended_before_cli(self, outcome: RunOutcome, duration: float = 0.0) -> RunOutcome:
        process = ProcessResult(
            exit_code=None, duration_seconds=duration, output_bytes=0, stderr_tail=""
        )
        self._report(outcome, process)
        return outcome

    def _run_process(self, spool: Path) -> tuple[ProcessResult, dict[str, Any] | None]:
        task = self._command.task
        dirs = RunDirs.create(self._config.work_dir, self.run_id, self._identity)
        argv = (
            mock_argv(task)
            if self._config.mock_mode
            else claude_argv(self._config.claude_bin, task, bash_sandbox=self._config.bash_sandbox)
        )
        marker = reaper.new_marker(self.run_id)
        env = child_environment(
            self._environ,
            # git's credentials are git's: not the CLI's to see (docs/workspaces.md).
            without_credentials(self._task_env, task.workspace),
            run_marker=marker,
            dirs=dirs,
            identity=self._identity,
            keep_aws_credentials=self._config.pass_aws_credentials,
            claude_max_retries=self._config.claude_max_retries,
        )
        # git's and the workspace programs': the run's environment without the
        # task's variables (git gets its credentials its own way).
        tool_env = child_environment(
            self._environ, {}, run_marker=marker, dirs=dirs, identity=self._identity
        )
        tracker = ResultTracker()
        try:
            with open_spool(spool) as log_file:
                batcher = OutputBatcher(self._emit_output)
                recorder = OutputRecorder(log_file, batcher, self._redactor)
                runner = self._child_runner(dirs, recorder, marker, tool_env)
                self._restore_session(dirs, runner)
                stopped = self._workspace.prepare(runner)
                if stopped is not None:
                    return stopped, None
                process = ProcessRun(
                    argv,
                    cwd=dirs.cwd,
                    env=env,
                    recorder=recorder,
                    # What is left of the run's timeout after reading its secrets.
                    timeout=self._time_left(),
                    kill_grace=self._config.kill_grace,
                    # A shutdown's stop (SIGTERM) and an operator's (SIGINT first).
                    cancel=self._control.cancel,
                    interrupt=self._control.interrupt,
                    cancel_grace=self._config.cancel_grace,
                    stdout_reader=tracker,
                    run_marker=marker,
                    identity=self._identity,
                    clock=self._clock,
                ).run()
                completed = not process.stopped and succeeded(
                    process,
                    tracker.result,
                    wants_structured_output=task.json_schema is not None,
                )
                return self._workspace.push_work(runner, process, completed), tracker.result
        finally:
            self._collect_artifacts(marker, dirs, tool_env, tracker.result)
            self._clear_slot(marker, dirs)

    def _restore_session(self, dirs: RunDirs, runner: ChildRunner) -> None:
        """task.resume: the session's transcript where the CLI looks for it
        (node.sessions), or SessionError. First: no process of the run exists
        yet, so nothing of the run's can redirect the node's writes."""
        resume = self._command.task.resume
        if resume is None:
            return
        restored = self._sessions.restore(
            resume.session_id,
            dirs,
            self._identity,
            interrupt=self._control.stopping,
            time_left=self._time_left,
        )
        runner.say(restored.describe())

    def _child_runner(
        self, dirs: RunDirs, recorder: OutputRecorder, marker: str, env: dict[str, str]
    ) -> ChildRunner:
        """How the workspace's programs run: as the run, in its folder and log,
        within its timeout, with `env`."""
        return ChildRunner(
            cwd=dirs.cwd,
            env=env,
            recorder=recorder,
            identity=self._identity,
            time_left=self._time_left,
            # git and the archive's download stop for a shutdown and a cancel alike.
            cancel=self._control.stopping,
            kill_grace=self._config.kill_grace,
            run_marker=marker,
            clock=self._clock,
        )

    def _collect_artifacts(
        self,
        marker: str,
        dirs: RunDirs,
        tool_env: dict[str, str],
        result_line: dict[str, Any] | None,
    ) -> None:
        """What the run made, copied out of its folder redacted before the
        folder goes, whatever the run's end: partial work is what an operator
        wants to see. Its processes go first, so that nothing of the run
        changes the folder while the node reads it."""
        reaper.kill_run(marker, uid=self._identity.uid)
        task = self._command.task
        session_id = result_line.get("session_id") if result_line else None
        folder = RunFolder(
            run_id=self.run_id,
            dirs=dirs,
            identity=self._identity,
            env=tool_env,
            patterns=task.artifacts,
            base_commit=self._workspace.commit,
            session_id=session_id if isinstance(session_id, str) else None,
        )
        try:
            self._staging = collect(
                folder, self._config.work_dir / ".logs", self._redactor, self._artifact_limits
            )
        except OSError as exc:
            log.error("could not stage the run's artifacts: %s", exc, extra={"run_id": self.run_id})

    def _clear_slot(self, marker: str, dirs: RunDirs) -> None:
        """Nothing of the run may be left for the slot's next run: its
        processes (the supervisor killed them; again here for a run the pump
        left by an exception), then its folder and, under a uid of its own,
        what that uid left in /tmp, /var/tmp and /dev/shm."""
        reaper.kill_run(marker, uid=self._identity.uid)
        dirs.remove()
        if self._identity.uid is not None:
            removed = remove_files_of(self._identity.uid)
            if removed:
                log.info("removed %d file(s) the run left in shared folders", removed)

    def _emit_output(self, stream: str, text: str) -> None:
        event = task_output(self.run_id, self._chunk_index, stream, text)
        self._chunk_index += 1
        self._outbox.publish(event, backpressure=True, stop_waiting=self._stop_waiting)

    def _stop_waiting(self) -> bool:
        """A slow bus must not hold the run past its deadline, a shutdown or a
        cancel: the pump that waits here is the one that enforces them."""
        return (
            self._control.stopping.is_set()
            or self._control.give_up.is_set()
            or self._clock() >= self._deadline
        )

    def _conclude(
        self, process: ProcessResult, result_line: dict[str, Any] | None, spool: Path
    ) -> RunOutcome:
        """Uploads the log, then says how the run ended (node.outcome)."""
        uploaded = self._upload(spool)
        end = RunEnd(
            run_id=self.run_id,
            process=process,
            result_line=result_line,
            timeout=self._timeout,
            log_uri=self._config.log_uri(self.run_id) if uploaded else None,
            gave_up=self._control.give_up.is_set(),
            workspace=self._workspace,
            attempt=self._attempt,
            final_attempt=self._final_attempt(),
            wants_structured_output=self._command.task.json_schema is not None,
            cancel=self._control.cancel_request,
        )
        return conclude(end, self._redact)

    def _final_attempt(self) -> bool:
        retry = self._command.task.retry
        return self._retries.is_final(self._attempt, retry.max_attempts if retry else None)

    def _store_artifacts(
        self, outcome: RunOutcome, process: ProcessResult, result_line: dict[str, Any] | None
    ) -> RunOutcome:
        """result.json (the outcome is known now), then every artifact staged,
        uploaded under runs/<run_id>/ before the terminal event that lists
        them goes out, as the log is."""
        if self._staging is None:
            return outcome
        error = outcome.event.data.get("error")
        record = RunRecord(
            node_id=self._config.node_id,
            run_id=self.run_id,
            attempt=self._attempt,
            started_at=self._started_at,
            ended_at=time.time(),
            duration_seconds=process.duration_seconds,
            exit_code=process.exit_code,
            event_type=outcome.event.event_type.value,
            error_type=error["type"] if isinstance(error, dict) else None,
            workspace_commit=self._workspace.commit,
            # Whether the command runs again: `cancel` tells an ended run by it.
            retryable=outcome.ending.retryable,
        )
        self._staging.add_text("result.json", result_document(record, result_line, self._redactor))
        report = store(
            self._staging, self._logs, self._config.log_bucket, self.run_id, self._control.give_up
        )
        return RunOutcome(outcome.ending, with_artifacts(outcome.event, report))

    def _redact(self, text: str) -> str:
        """What the run said, without the secrets the node knows (the CLI's
        words can quote the task's env or the node's API key)."""
        return logsetup.SECRETS.redact(text, self.run_id)

    def _report(self, outcome: RunOutcome, process: ProcessResult) -> None:
        """Publish the terminal event, hand its delivery to the lifecycle, and
        keep the run's slot until the bus took it: during an outage the node
        takes no more work than it can report on. The wait ends at the latest
        when the outbox gives up, at the end of a shutdown."""
        log.info(
            "run ended: %s",
            outcome.event.event_type,
            extra={
                "run_id": self.run_id,
                "exit_code": process.exit_code,
                "duration_seconds": round(process.duration_seconds, 3),
            },
        )
        # Before the event, as the log: whoever sees the event finds the record.
        self._store_record(outcome)
        delivery = self._outbox.publish(outcome.event)
        self._messages.run_ended(self.run_id, outcome.ending, delivery)
        delivery.wait()

    def _store_record(self, outcome: RunOutcome) -> None:
        """The run's record (node.records), whatever its end."""
        ended_at = time.time()
        record = run_record(
            outcome.event,
            command=self._command,
            node_id=self._config.node_id,
            attempt=self._attempt,
            started_at=self._started_at,
            ended_at=ended_at,
            sent_at=self._sent_at,
        )
        store_record(
            self._logs,
            self._config.work_dir / ".logs",
            record,
            ended_at=ended_at,
            give_up=self._control.give_up,
        )

    def _upload(self, spool: Path) -> bool:
        try:
            through_outage("uploading the log", interrupt=self._control.give_up)(
                self._logs.upload, spool, log_key(self.run_id)
            )
        except Exception as exc:
            log.error("log upload failed: %s", error_code(exc), extra={"run_id": self.run_id})
            return False
        return True
