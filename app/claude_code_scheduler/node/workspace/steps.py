"""A run's workspace steps: prepared before the CLI starts, published after
it, and what became of both (the checked-out commit, the push, the error)
for the terminal event and the patch."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from claude_code_scheduler.aws.objects import ObjectReader
from claude_code_scheduler.node.process.environment import RunDirs
from claude_code_scheduler.node.process.supervisor import ProcessResult
from claude_code_scheduler.node.workspace import ChildRunner, Stopped, WorkspaceError, git
from claude_code_scheduler.node.workspace.archive import ArchivePreparer
from claude_code_scheduler.protocol.events import PushResult
from claude_code_scheduler.protocol.workspace import ArchiveWorkspace, GitWorkspace, Workspace


class WorkspaceSteps:
    def __init__(
        self,
        spec: Workspace | None,
        *,
        run_id: str,
        task_env: Mapping[str, str],
        objects: ObjectReader | None,
        log_bucket: str,
        clock: Callable[[], float],
    ) -> None:
        """`task_env`: the task's variables (env and resolved secrets), where
        git finds its credentials. `objects` reads an archive (None: a task
        that names one fails)."""
        self._spec = spec
        self._run_id = run_id
        self._task_env = task_env
        self._objects = objects
        self._log_bucket = log_bucket
        self._clock = clock
        self.checkout: git.Checkout | None = None
        self.push: PushResult | None = None
        self.error: WorkspaceError | None = None

    @property
    def commit(self) -> str | None:
        """The commit a git workspace checked out: what changes.patch is made against."""
        return self.checkout.commit if self.checkout is not None else None

    def prepare(self, runner: ChildRunner) -> ProcessResult | None:
        """task.workspace, in the working folder before the CLI starts; its
        time counts against the run's timeout. None when the CLI may start;
        otherwise what stands for the CLI's result: timed out or cancelled
        (Stopped), or failed with `error` set."""
        if self._spec is None:
            return None
        started = self._clock()
        try:
            if isinstance(self._spec, GitWorkspace):
                self.checkout = git.clone(self._spec, runner, self._task_env)
            elif isinstance(self._spec, ArchiveWorkspace):
                self._unpack(self._spec, runner)
        except Stopped as stop:
            return stop.result
        except WorkspaceError as exc:
            self.error = exc
            runner.say(f"the workspace could not be prepared: {exc}")
            return ProcessResult(None, self._clock() - started, runner.recorder.bytes_written, "")
        return None

    def _unpack(self, spec: ArchiveWorkspace, runner: ChildRunner) -> None:
        """task.workspace.s3 (node.workspace.archive): fetched into the run's
        tmp folder, unpacked into its cwd."""
        if self._objects is None:
            raise WorkspaceError("task.workspace.s3: this node has no S3 reader", retryable=False)
        preparer = ArchivePreparer(self._objects, self._log_bucket)
        preparer.prepare(spec, RunDirs(runner.cwd.parent), runner)

    def push_work(
        self, runner: ChildRunner, process: ProcessResult, completed: bool
    ) -> ProcessResult:
        """task.workspace.git.push, after a completed run only (a failed run's
        work comes back as changes.patch). A failed push is a WorkspaceError,
        not retried: the work is done, and in the patch."""
        spec = self._spec
        if not isinstance(spec, GitWorkspace) or spec.push is None or self.checkout is None:
            return process
        if not completed:
            return process
        try:
            self.push = git.push(spec, self.checkout, self._run_id, runner, self._task_env)
        except Stopped as stop:
            return dataclasses.replace(
                process, timed_out=stop.result.timed_out, cancelled=stop.result.cancelled
            )
        except WorkspaceError as exc:
            self.error = WorkspaceError(str(exc), retryable=False)
            runner.say(f"the work could not be pushed: {exc}")
        # The log grew by git's words.
        return dataclasses.replace(process, output_bytes=runner.recorder.bytes_written)
