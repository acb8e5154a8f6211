"""Sessions that continue on any node: task.resume (docs/task-options.md).

Every run's transcript is stored once, as its artifact
runs/<run_id>/transcript.jsonl (node.artifacts). What makes a session findable
from its id alone is a small pointer, sessions/<session_id>.json, naming the
run that stored the session's latest transcript; it is written after that
transcript is uploaded and before the terminal event that reports the
session id goes out, so a client that saw the event finds the session.

A pointer rather than a second copy under sessions/: the transcript (up to
64 MiB) is uploaded and kept once; every run's own transcript stays where it
was stored, never overwritten, so a resume of an older state or of another
branch is still there by its run id. Two runs that resume the same session
without a fork both continue its id, and the pointer names the one whose
transcript was stored last (S3 writes are atomic: a pointer names a whole
transcript, never a mix); a fork gets a session id of its own and a pointer
of its own, and leaves the original's alone.

A resume reads the pointer, then the transcript, bounded in size, into this
run's CLI config folder where the CLI looks for it:
CLAUDE_CONFIG_DIR/projects/<the CLI's escaping of the run's cwd>/<id>.jsonl,
owned by the run's uid, mode 0600, before any process of the run exists.
The restored file is the redacted transcript: secrets the first run knew are
*** in it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import botocore.exceptions
import tenacity

from claude_code_scheduler.aws.errors import describe_error, error_code, is_transient
from claude_code_scheduler.aws.logstore import LogUploader
from claude_code_scheduler.aws.objects import DownloadStopped, ObjectReader, ObjectTooLarge
from claude_code_scheduler.aws.retry import through_outage
from claude_code_scheduler.node.artifacts import TRANSCRIPT_NAME, artifact_key
from claude_code_scheduler.node.process.environment import PRIVATE_MODE, RunDirs
from claude_code_scheduler.node.process.isolation import RunIdentity
from claude_code_scheduler.protocol.commands import RUN_ID_PATTERN, SESSION_ID_PATTERN
from claude_code_scheduler.protocol.events import iso

log = logging.getLogger(__name__)

POINTER_PREFIX = "sessions/"
# A pointer is about 200 bytes; anything much larger is not one.
MAX_POINTER_BYTES = 4096
POINTER_VERSION = 1
# The CLI's folder name for a cwd (2.1.332, tests/realcli/FINDINGS.md): every
# UTF-16 code unit outside [a-zA-Z0-9] becomes "-"; past 200 characters the
# name is cut there and a hash of the whole path is appended.
_MAX_FOLDER_NAME = 200
_T = TypeVar("_T")
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_DENIED = frozenset({"403", "AccessDenied", "Forbidden"})
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class SessionError(Exception):
    """A task.resume session that cannot be restored; the message names the
    session id and why, never any of its content. `interrupted`: the node is
    stopping, so the run goes back to the queue rather than failing."""

    def __init__(self, message: str, *, interrupted: bool = False) -> None:
        super().__init__(message)
        self.interrupted = interrupted


def is_session_id(value: object) -> bool:
    return isinstance(value, str) and SESSION_ID_PATTERN.fullmatch(value) is not None


def pointer_key(session_id: str) -> str:
    if not is_session_id(session_id):
        raise ValueError("not a session id")
    return f"{POINTER_PREFIX}{session_id}.json"


def project_folder_name(cwd: Path) -> str:
    """What the CLI names the folder of a working directory's sessions under
    CLAUDE_CONFIG_DIR/projects (its sanitizer, 2.1.332: JavaScript strings, so
    a character past U+FFFF counts as two)."""
    path = str(cwd)
    units = [
        int.from_bytes(pair, "little")
        for pair in _pairs(path.encode("utf-16-le", errors="surrogatepass"))
    ]
    name = "".join(chr(u) if _is_alnum(u) else "-" for u in units)
    if len(name) <= _MAX_FOLDER_NAME:
        return name
    return f"{name[:_MAX_FOLDER_NAME]}-{_base36(abs(_java_hash(units)))}"


def session_file(dirs: RunDirs, session_id: str) -> Path:
    """Where the CLI of a run in `dirs` keeps (and looks for) the session."""
    return dirs.config / "projects" / project_folder_name(dirs.cwd) / f"{session_id}.jsonl"


# --- the pointer, written after the transcript is stored -------------------------------


def pointer_document(session_id: str, run_id: str, now: float | None = None) -> str:
    document = {
        "version": POINTER_VERSION,
        "session_id": session_id,
        "run_id": run_id,
        "transcript": artifact_key(run_id, TRANSCRIPT_NAME),
        "stored_at": iso(now),
    }
    return json.dumps(document) + "\n"


def record_session(
    session_id: str, run_id: str, scratch: Path, uploader: LogUploader, give_up: threading.Event
) -> bool:
    """Writes sessions/<session_id>.json naming this run's stored transcript,
    through the log's retry path; False (logged) when it could not be."""
    if not is_session_id(session_id):
        log.warning(
            "the transcript's session id is not a UUID: no pointer", extra={"run_id": run_id}
        )
        return False
    scratch.write_text(pointer_document(session_id, run_id), encoding="utf-8")
    try:
        through_outage("recording the session", interrupt=give_up)(
            uploader.upload, scratch, pointer_key(session_id)
        )
    except Exception as exc:
        log.error(
            "could not record session %s: %s", session_id, error_code(exc), extra={"run_id": run_id}
        )
        return False
    return True


def _run_of_pointer(session_id: str, data: bytes) -> str:
    """The run id a pointer names, if the pointer is one for this session."""
    try:
        document = json.loads(data)
    except ValueError:
        document = None
    run_id = document.get("run_id") if isinstance(document, dict) else None
    if (
        not isinstance(document, dict)
        or document.get("session_id") != session_id
        or not isinstance(run_id, str)
        or not RUN_ID_PATTERN.fullmatch(run_id)
        or run_id in {".", ".."}
    ):
        raise SessionError(f"task.resume: the record of session {session_id} is unreadable")
    return run_id


# --- the restore, before the CLI starts -------------------------------------------------


@dataclass(frozen=True)
class RestoredSession:
    session_id: str
    run_id: str  # the run whose transcript it is
    path: Path
    size: int

    def describe(self) -> str:
        return (
            f"session: resuming {self.session_id} from the transcript of run "
            f"{self.run_id} ({self.size} bytes)"
        )


class SessionRestorer:
    """Reads a session's pointer and transcript from the node's own log
    bucket (the only one it reads sessions from) through `objects`."""

    def __init__(self, objects: ObjectReader | None, bucket: str, *, max_bytes: int) -> None:
        """`objects` None: the node cannot read S3, and every resume fails."""
        self._objects = objects
        self._bucket = bucket
        self._max_bytes = max_bytes

    def restore(
        self,
        session_id: str,
        dirs: RunDirs,
        identity: RunIdentity,
        *,
        interrupt: threading.Event,
        time_left: Callable[[], float],
    ) -> RestoredSession:
        """The session's transcript at session_file(dirs, session_id). Call it
        before any process of the run starts (then nothing of the run can
        swap a folder for a link). Raises SessionError: no such session,
        unreadable, too large, forbidden, the run's time up, or (interrupted)
        a shutdown; a partial file is removed."""
        if not is_session_id(session_id):
            raise SessionError(
                f"task.resume: {session_id!r} is not a session id as the CLI writes "
                "them (a lowercase UUID)"
            )
        if self._objects is None:
            raise SessionError(f"task.resume: this node cannot read session {session_id}")
        fetch = _Fetch(self._objects, self._bucket, session_id, interrupt, time_left)
        pointer = io.BytesIO()
        fetch.download(
            "reading the session's record", pointer_key(session_id), pointer, MAX_POINTER_BYTES
        )
        run_id = _run_of_pointer(session_id, pointer.getvalue())
        key = artifact_key(run_id, TRANSCRIPT_NAME)
        size = fetch.size("reading the transcript's size", key)
        if size > self._max_bytes:
            raise SessionError(
                f"task.resume: the transcript of session {session_id} has {size} bytes, "
                f"more than the {self._max_bytes} a node restores"
            )
        path = session_file(dirs, session_id)
        try:
            self._write(fetch, key, size, path, identity)
            _check_json_lines(session_id, path)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise SessionError(
                f"task.resume: the node could not write session {session_id} into the "
                f"run's folder: {exc.strerror or exc}"
            ) from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return RestoredSession(session_id, run_id, path, size)

    def _write(self, fetch: _Fetch, key: str, size: int, path: Path, identity: RunIdentity) -> None:
        """projects/<cwd>/<id>.jsonl inside the run's config folder, each new
        level private and the run's own, the file created, never followed."""
        for folder in (path.parent.parent, path.parent):
            folder.mkdir(mode=PRIVATE_MODE)
            _give(identity, folder)
        fd = os.open(path, _FILE_FLAGS, 0o600)
        if identity.uid is not None and identity.gid is not None:
            os.fchown(fd, identity.uid, identity.gid)
        with os.fdopen(fd, "wb") as file:
            fetch.download("downloading the transcript", key, file, size)


def _give(identity: RunIdentity, folder: Path) -> None:
    if identity.uid is not None and identity.gid is not None:
        os.chown(folder, identity.uid, identity.gid, follow_symlinks=False)


class _Fetch:
    """The restore's S3 calls, each retried through an outage until the
    run's deadline or a shutdown, each failure said as a SessionError."""

    def __init__(
        self,
        objects: ObjectReader,
        bucket: str,
        session_id: str,
        interrupt: threading.Event,
        time_left: Callable[[], float],
    ) -> None:
        self._objects = objects
        self._bucket = bucket
        self._session_id = session_id
        self._interrupt = interrupt
        self._time_left = time_left

    def _should_stop(self) -> bool:
        return self._interrupt.is_set() or self._time_left() <= 0

    def size(self, what: str, key: str) -> int:
        return self._retrying(what, lambda: self._objects.size(self._bucket, key))

    def download(self, what: str, key: str, into: BinaryIO, max_bytes: int) -> None:
        def once() -> None:
            into.seek(0)
            into.truncate()
            self._objects.download(
                self._bucket, key, into, max_bytes=max_bytes, should_stop=self._should_stop
            )

        self._retrying(what, once)

    def _retrying(self, what: str, call: Callable[[], _T]) -> _T:
        session_id = self._session_id
        retrying = through_outage(
            f"{what} (session {session_id})",
            interrupt=self._interrupt,
            stop=tenacity.stop_after_delay(max(0.0, self._time_left())),
        )
        try:
            return retrying(call)
        except DownloadStopped as exc:
            raise self._stopped() from exc
        except ObjectTooLarge as exc:
            raise SessionError(
                f"task.resume: {what} of session {session_id}: {exc} (not a session "
                "record, or the transcript grew while read)"
            ) from exc
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if self._should_stop():
                raise self._stopped() from exc
            raise self._failure(what, exc) from exc

    def _stopped(self) -> SessionError:
        session_id = self._session_id
        if self._interrupt.is_set():
            return SessionError(
                f"the node stopped while restoring session {session_id}", interrupted=True
            )
        return SessionError(
            f"task.resume: session {session_id} could not be restored before the run's timeout"
        )

    def _failure(self, what: str, exc: Exception) -> SessionError:
        session_id, code = self._session_id, error_code(exc)
        if code in _MISSING:
            return SessionError(
                f"task.resume: no session {session_id} in s3://{self._bucket}/{POINTER_PREFIX} "
                f"({what}: {code})"
            )
        if code in _DENIED:
            return SessionError(
                f"task.resume: session {session_id}: access denied ({what}: {code}); "
                "without s3:ListBucket S3 also answers so for a key that does not exist"
            )
        when = " before the run's timeout" if is_transient(exc) else ""
        return SessionError(
            f"task.resume: session {session_id}: {what} failed{when}: {describe_error(exc)}"
        )


def _check_json_lines(session_id: str, path: Path) -> None:
    """A transcript is JSON objects, one a line (what the CLI writes); the
    CLI takes anything else for no conversation at all, so say it here."""
    entries = 0
    with path.open("rb") as transcript:
        for line in transcript:
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if not isinstance(entry, dict):
                raise SessionError(
                    f"task.resume: the transcript of session {session_id} is not JSON lines "
                    f"(line {entries + 1})"
                )
            entries += 1
    if entries == 0:
        raise SessionError(f"task.resume: the transcript of session {session_id} is empty")


# --- the CLI's folder naming --------------------------------------------------------


def _pairs(data: bytes) -> list[bytes]:
    return [data[i : i + 2] for i in range(0, len(data), 2)]


def _is_alnum(unit: int) -> bool:
    return (
        0x30 <= unit <= 0x39  # 0-9
        or 0x41 <= unit <= 0x5A  # A-Z
        or 0x61 <= unit <= 0x7A  # a-z
    )


def _java_hash(units: list[int]) -> int:
    """The CLI's string hash: h = h * 31 + unit, in signed 32 bits."""
    value = 0
    for unit in units:
        value = (value * 31 + unit) & 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, rest = divmod(number, 36)
        text = digits[rest] + text
        if number == 0:
            return text
