"""An archive workspace: the node fetches s3://<log bucket>/inputs/... into
the run's folder and a child process under the run's uid unpacks it into the
working folder (unpack.py), before the CLI starts (docs/workspaces.md).

Both steps count against the run's timeout and say what they do in the run's
log. A failure is a WorkspaceError that says whose fault it is: the
command's (elsewhere than inputs/, missing, forbidden, too big, hostile or
unreadable: not retryable) or the moment's (S3 down past the outage retries,
a full disk: retryable); a deadline or a shutdown is Stopped, as for git.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import botocore.exceptions
import tenacity

from claude_code_scheduler.aws.errors import describe_error, error_code, is_transient
from claude_code_scheduler.aws.objects import DownloadStopped, ObjectReader, ObjectTooLarge
from claude_code_scheduler.aws.retry import through_outage
from claude_code_scheduler.node.process.environment import RunDirs
from claude_code_scheduler.node.process.supervisor import ProcessResult
from claude_code_scheduler.node.workspace import ChildRunner, Stopped, WorkspaceError, unpack
from claude_code_scheduler.protocol.workspace import ArchiveWorkspace

# The only prefix of the log bucket a command may name: the node's role may
# read it (s3:GetObject on <bucket>/inputs/*) and nothing else in the bucket,
# so a command cannot have the node fetch another run's log or artifacts.
INPUT_PREFIX = "inputs/"
# The archive as stored; what it unpacks to is bounded by unpack.Limits.
MAX_ARCHIVE_BYTES = 1024**3
_T = TypeVar("_T")
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_DENIED = frozenset({"403", "AccessDenied", "Forbidden"})


def check_location(spec: ArchiveWorkspace, log_bucket: str) -> None:
    """Refuses an archive anywhere but the log bucket's inputs/ prefix."""
    if spec.bucket != log_bucket or not spec.key.startswith(INPUT_PREFIX):
        raise WorkspaceError(
            f"task.workspace.s3 {spec.uri}: this node reads archives only from "
            f"s3://{log_bucket}/{INPUT_PREFIX} (its log bucket's input prefix)",
            retryable=False,
        )


class ArchivePreparer:
    """Fetches and unpacks one run's archive, its programs run by the run's
    ChildRunner (as the run's uid, in its log, within its timeout).

    Raises WorkspaceError, or Stopped when the deadline or a shutdown ended it."""

    def __init__(
        self, objects: ObjectReader, log_bucket: str, *, max_archive_bytes: int = MAX_ARCHIVE_BYTES
    ) -> None:
        self._objects = objects
        self._log_bucket = log_bucket
        self._max_archive_bytes = max_archive_bytes

    def prepare(self, spec: ArchiveWorkspace, dirs: RunDirs, runner: ChildRunner) -> None:
        check_location(spec, self._log_bucket)
        archive = dirs.tmp / f"input{_suffix(spec.key)}"
        try:
            _Fetch(self._objects, self._max_archive_bytes, spec, runner).into(archive)
            runner.say(f"workspace: unpacking {spec.uri} into {dirs.cwd}")
            result = runner.run(unpack_argv(archive, dirs.cwd))
        finally:
            # Root removes a file in a folder of the run's: no process of the
            # run is alive now, and unlink does not follow a link.
            with contextlib.suppress(FileNotFoundError):
                archive.unlink()
        if result.spawn_error is not None:
            raise WorkspaceError(f"could not start unpacking: {result.spawn_error}", retryable=True)
        if result.exit_code != 0:
            words = _last_line(result.stderr_tail) or f"exit status {result.exit_code}"
            # A write that failed (a full disk) may succeed on another node.
            retryable = result.exit_code == unpack.EXIT_WRITE_FAILED
            raise WorkspaceError(f"{spec.uri}: {words}", retryable=retryable)


class _Fetch:
    """One archive's download: HeadObject, then the bounded transfer, each
    retried through an outage until the run's deadline or a shutdown."""

    def __init__(
        self, objects: ObjectReader, max_bytes: int, spec: ArchiveWorkspace, runner: ChildRunner
    ) -> None:
        self._objects = objects
        self._max_bytes = max_bytes
        self._spec = spec
        self._runner = runner
        self._started = runner.clock()

    def into(self, path: Path) -> None:
        """The archive into `path`, a new file the run's uid may read."""
        spec = self._spec
        size = self._call(f"reading the size of {spec.uri}", self._objects.size)
        if size > self._max_bytes:
            raise WorkspaceError(
                f"{spec.uri} has {size} bytes, more than the {self._max_bytes} an "
                "archive workspace may have",
                retryable=False,
            )
        self._runner.say(f"workspace: downloading {spec.uri} ({size} bytes)")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        identity = self._runner.identity
        if identity.uid is not None and identity.gid is not None:
            os.fchown(fd, identity.uid, identity.gid)
        with os.fdopen(fd, "wb") as file:

            def download(bucket: str, key: str) -> None:
                file.seek(0)
                file.truncate()
                self._objects.download(
                    bucket, key, file, max_bytes=size, should_stop=self._should_stop
                )

            self._call(f"downloading {spec.uri}", download)

    def _should_stop(self) -> bool:
        return self._runner.cancel.is_set() or self._runner.time_left() <= 0

    def _call(self, what: str, call: Callable[[str, str], _T]) -> _T:
        spec = self._spec
        retrying = through_outage(
            what,
            interrupt=self._runner.cancel,
            stop=tenacity.stop_after_delay(self._runner.time_left()),
        )
        try:
            return retrying(call, spec.bucket, spec.key)
        except ObjectTooLarge as exc:
            raise WorkspaceError(
                f"{spec.uri}: {exc} (it grew while read)", retryable=False
            ) from exc
        except DownloadStopped as exc:
            raise self._stopped() from exc
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if self._should_stop():
                raise self._stopped() from exc
            raise _s3_failure(spec, what, exc) from exc

    def _stopped(self) -> Stopped:
        """What stands for a child's result when the deadline or a shutdown
        ended the download (runs.TaskRun reads it as it reads the CLI's)."""
        cancelled = self._runner.cancel.is_set()
        return Stopped(
            ProcessResult(
                exit_code=None,
                duration_seconds=self._runner.clock() - self._started,
                output_bytes=0,
                stderr_tail="",
                timed_out=not cancelled,
                cancelled=cancelled,
            )
        )


def _s3_failure(spec: ArchiveWorkspace, what: str, exc: Exception) -> WorkspaceError:
    code = error_code(exc)
    if code in _MISSING:
        return WorkspaceError(f"{spec.uri} does not exist ({code})", retryable=False)
    if code in _DENIED:
        return WorkspaceError(
            f"{spec.uri}: access denied ({code}); without s3:ListBucket S3 also answers "
            "so for a key that does not exist",
            retryable=False,
        )
    return WorkspaceError(f"{what} failed: {describe_error(exc)}", retryable=is_transient(exc))


def unpack_argv(archive: Path, dest: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "claude_code_scheduler.node.workspace.unpack",
        str(archive),
        str(dest),
    ]


def _suffix(key: str) -> str:
    return ".zip" if key.endswith(".zip") else ".tar"


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
