"""Where a run's artifacts wait for their upload: a folder of the node's own
(inside its spool folder, mode 0700), each artifact already redacted. And how
the node opens a file of the run's without being led elsewhere."""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from claude_code_scheduler.protocol.events import OmittedArtifact
from claude_code_scheduler.redaction import Redactor

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Unreadable(Exception):
    """A file of the run's the node will not copy; the message says why."""


@contextmanager
def open_run_file(root: Path, path: Path, owner_uid: int | None) -> Iterator[tuple[BinaryIO, int]]:
    """`path` opened for reading with its size, if it is a regular file that
    resolves inside `root` and (under a uid of the run's own) belongs to it.

    The run's processes are all gone by now, so nothing swaps a folder for a
    link between the check and the open; O_NOFOLLOW still refuses a final
    link, and the owner check refuses a hard link to a file the run could not
    read itself (the node reads as root)."""
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(os.path.realpath(root)):
        raise Unreadable("a link to outside the folder")
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as exc:
        raise Unreadable(f"cannot be opened: {exc.strerror}") from None
    source = os.fdopen(fd, "rb")
    with source:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable("not a regular file")
        if owner_uid is not None and st.st_uid != owner_uid:
            raise Unreadable(f"not the run's own file (owner uid {st.st_uid})")
        yield source, st.st_size


class _Bounded:
    """A reader that stops after `limit` bytes (a file that grew after its stat)."""

    def __init__(self, source: BinaryIO, limit: int) -> None:
        self._source = source
        self._left = limit

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        size = self._left if size < 0 else min(size, self._left)
        data = self._source.read(size)
        self._left -= len(data)
        return data


@dataclass(frozen=True)
class Staged:
    name: str  # the key under runs/<run_id>/
    path: Path


@dataclass
class Staging:
    """One run's staged artifacts and the ones left out."""

    folder: Path
    redactor: Redactor
    staged: list[Staged] = field(default_factory=list)
    omitted: list[OmittedArtifact] = field(default_factory=list)
    # The session whose file transcript.jsonl is (its name), for its pointer.
    session_id: str | None = None

    @classmethod
    def create(cls, spool_folder: Path, run_id: str, redactor: Redactor) -> Staging:
        folder = spool_folder / f"{run_id}-{uuid.uuid4().hex[:8]}.artifacts"
        folder.mkdir(mode=0o700, parents=True)
        return cls(folder, redactor)

    def scratch(self, label: str) -> Path:
        """A file of the node's own for an artifact being made."""
        return self.folder / f"{len(self.staged)}-{uuid.uuid4().hex[:6]}.{label}"

    def omit(self, name: str, reason: str) -> None:
        self.omitted.append(OmittedArtifact(name, reason))

    def add_redacted(self, name: str, source: BinaryIO, limit: int | None = None) -> Path:
        """Copies `source` (at most `limit` bytes) redacted into the staging."""
        path = self.scratch("staged")
        reader: BinaryIO = source if limit is None else _Bounded(source, limit)  # type: ignore[assignment]
        with path.open("xb") as target:
            self.redactor.redact_file(reader, target)
        self.staged.append(Staged(name, path))
        return path

    def add_text(self, name: str, text: str) -> Path:
        """A document the node wrote itself, redacted by the caller."""
        path = self.scratch("staged")
        path.write_text(text, encoding="utf-8")
        self.staged.append(Staged(name, path))
        return path

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
