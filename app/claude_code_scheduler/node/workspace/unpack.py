"""Unpacking an input archive into the run's working folder, refusing what
would reach outside it (docs/workspaces.md, "An archive workspace").

The node runs this as a child process under the run's own uid
(`python -m claude_code_scheduler.node.workspace.unpack ARCHIVE DEST`), so
a hostile archive meets an unprivileged process that could not write outside
the run's folder anyway; the checks here are what keeps it inside even so.

tarfile's `extractall(filter="data")` is not used: Python 3.11.2 (Debian 12)
has no filters, and the filter of Pythons before 3.13.4 / 3.12.11 could be
walked out of by chains of links (CVE-2025-4517, CVE-2025-4138). Instead every
entry is written here, by rules that do not depend on the Python:

- a name that is absolute, holds `..` or NUL is refused;
- regular files and folders are written first, with O_NOFOLLOW and O_EXCL,
  and no folder on their way may be a link; links are made only after them,
  so nothing is ever written through a link;
- a symbolic link must point inside by its own text (relative, not above
  the folder) and, once every link exists, by what it resolves to;
- a hard link must name a file this archive wrote; devices, FIFOs and zip
  symlink entries are refused;
- modes lose setuid, setgid, sticky and group/other write bits; ownership in
  the archive is ignored (the files belong to whoever runs this);
- the bytes written and the entries read are counted as they are written,
  so a decompression bomb stops at the bound, not at a full disk.

On a refusal everything already written is removed. Standard library only:
it is a child of every archive run.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
import sys
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

# Bounds on what one archive may unpack to: a working copy of a large code base
# fits, and a bomb stops long before a node's disk (ECS's default 20 GiB
# ephemeral storage, shared by every slot) fills.
MAX_UNPACKED_BYTES = 1024**3
MAX_ENTRIES = 100_000
COPY_CHUNK = 1024 * 1024
# Exit statuses the node reads (archive.py): the archive's fault, or a write
# that failed on this node (a full disk: another node may have room).
EXIT_REFUSED = 65  # EX_DATAERR
EXIT_WRITE_FAILED = 74  # EX_IOERR
ZIP_SUFFIX = ".zip"


class Refused(Exception):
    """The archive itself is at fault: hostile, too big, or unreadable."""


class WriteFailed(Exception):
    """Writing to the working folder failed for a reason of this node's."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int = MAX_UNPACKED_BYTES
    max_entries: int = MAX_ENTRIES


@dataclass
class Unpacked:
    """What has been written so far, and the budget it counts against."""

    limits: Limits
    files: int = 0
    folders: int = 0
    links: int = 0
    entries: int = 0
    bytes: int = 0
    written: set[tuple[str, ...]] = field(default_factory=set)

    def count_entry(self, name: str) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise Refused(f"more than {self.limits.max_entries} entries (at {name!r})")

    def take(self, size: int, name: str) -> None:
        if self.bytes + size > self.limits.max_bytes:
            raise Refused(f"unpacks to more than {self.limits.max_bytes} bytes (at {name!r})")
        self.bytes += size

    def describe(self) -> str:
        return (
            f"{self.files} file(s), {self.folders} folder(s), {self.links} link(s), "
            f"{self.bytes} bytes"
        )


def unpack(archive: Path, dest: Path, limits: Limits = Limits(), *, clean: bool = True) -> Unpacked:
    """Unpacks `archive` (.zip by its name, any tar otherwise) into the
    existing folder `dest`; raises Refused or WriteFailed, after removing what
    was written unless `clean` is False (the tests look at it)."""
    done = Unpacked(limits)
    try:
        if archive.name.endswith(ZIP_SUFFIX):
            _unpack_zip(archive, _Writer(dest, done))
        else:
            _unpack_tar(archive, _Writer(dest, done))
    except BaseException:
        if clean:
            _empty(dest)
        raise
    return done


# --- names --------------------------------------------------------------------------


def member_parts(name: str) -> tuple[str, ...]:
    """The path an entry names, as components below the folder; () for the
    folder itself ("./")."""
    if "\x00" in name:
        raise Refused(f"{name!r}: a NUL in the name")
    if name.startswith("/"):
        raise Refused(f"{name!r}: an absolute path")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise Refused(f"{name!r}: '..' in the path")
    return parts


def safe_mode(mode: int) -> int:
    """A file's mode without setuid, setgid, sticky or group/other write; the
    owner may always read and write (what tarfile's data filter does)."""
    mode &= 0o755
    if not mode & 0o100:
        mode &= ~0o111
    return mode | 0o600


# --- writing ------------------------------------------------------------------------


class _Writer:
    """Writes entries below `dest`, never through a link. Links wait in
    `pending_links` until every file and folder is written."""

    def __init__(self, dest: Path, done: Unpacked) -> None:
        self.dest = dest
        self.real_dest = os.path.realpath(dest)
        self.done = done
        self.pending_links: list[tuple[tuple[str, ...], str, str]] = []

    def path(self, parts: tuple[str, ...]) -> str:
        return os.path.join(self.dest, *parts)

    def folder(self, parts: tuple[str, ...], name: str) -> None:
        """Makes the folder and those on its way; each must be a real folder."""
        for depth in range(1, len(parts) + 1):
            path = self.path(parts[:depth])
            try:
                os.mkdir(path, 0o755)
                if depth == len(parts):
                    self.done.folders += 1
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    raise Refused(f"{name!r}: {'/'.join(parts[:depth])} is not a folder") from None
            except OSError as exc:
                raise WriteFailed(f"{name!r}: {exc}") from exc

    def file(
        self, parts: tuple[str, ...], name: str, source: IO[bytes], mode: int, mtime: float
    ) -> None:
        """Copies `source` in, counting each chunk before it is written. Read
        errors (a damaged archive) pass through; write errors are WriteFailed."""
        self.folder(parts[:-1], name)
        fd = self._create(self.path(parts), name)
        try:
            while chunk := source.read(COPY_CHUNK):
                self.done.take(len(chunk), name)
                _write_all(fd, chunk, name)
            try:
                os.fchmod(fd, safe_mode(mode))
            except OSError as exc:
                raise WriteFailed(f"{name!r}: {exc}") from exc
            with contextlib.suppress(OSError, OverflowError, ValueError):
                os.utime(fd, (mtime, mtime))  # a nonsense date in the archive is no harm
        finally:
            os.close(fd)
        self.done.files += 1
        self.done.written.add(parts)

    def _create(self, path: str, name: str) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                return os.open(path, flags, 0o600)
            except FileExistsError:
                # The same name twice (tar -r appends): the later entry wins,
                # as with tar, but only over a regular file.
                self._replaceable(path, name)
                return os.open(path, flags, 0o600)
        except OSError as exc:
            raise WriteFailed(f"{name!r}: {exc}") from exc

    @staticmethod
    def _replaceable(path: str, name: str) -> None:
        """Removes the regular file at `path`; anything else there is refused."""
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise Refused(f"{name!r}: the name of another entry that is not a file")
        os.unlink(path)

    def hard_link(self, parts: tuple[str, ...], name: str, target: str) -> None:
        target_parts = member_parts(target)
        if target_parts not in self.done.written:
            raise Refused(f"{name!r}: a hard link to {target!r}, not a file of the archive")
        self.folder(parts[:-1], name)
        path = self.path(parts)
        try:
            if os.path.lexists(path):
                self._replaceable(path, name)
            os.link(self.path(target_parts), path, follow_symlinks=False)
        except OSError as exc:
            raise WriteFailed(f"{name!r}: {exc}") from exc
        self.done.files += 1
        self.done.written.add(parts)

    def symlink_later(self, parts: tuple[str, ...], name: str, target: str) -> None:
        if target.startswith("/") or "\x00" in target:
            raise Refused(f"{name!r}: a link to the absolute path {target!r}")
        resolved = posixpath.normpath(posixpath.join(*parts[:-1], target) if parts[:-1] else target)
        if resolved == ".." or resolved.startswith("../"):
            raise Refused(f"{name!r}: a link to {target!r}, outside the folder")
        self.pending_links.append((parts, name, target))

    def make_links(self) -> None:
        """The links, after every file; then each must resolve inside, now
        that all of them exist (a chain of links that each look inside can
        point out together)."""
        for parts, name, target in self.pending_links:
            self.folder(parts[:-1], name)
            try:
                os.symlink(target, self.path(parts))
            except FileExistsError:
                raise Refused(f"{name!r}: a link with the name of another entry") from None
            except OSError as exc:
                raise WriteFailed(f"{name!r}: {exc}") from exc
            self.done.links += 1
        for parts, name, target in self.pending_links:
            real = os.path.realpath(self.path(parts))
            if os.path.commonpath([real, self.real_dest]) != self.real_dest:
                raise Refused(f"{name!r}: the link to {target!r} resolves outside the folder")


def _write_all(fd: int, data: bytes, name: str) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        raise WriteFailed(f"{name!r}: {exc}") from exc


def _empty(dest: Path) -> None:
    """Removes what was written; rmtree does not follow links."""
    for entry in os.scandir(dest):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


# --- tar ----------------------------------------------------------------------------

# What a damaged or foreign file raises while it is read (gzip's BadGzipFile is
# an OSError); write failures are WriteFailed by then and never reach these.
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)


def _unpack_tar(archive: Path, writer: _Writer) -> None:
    try:
        # Stream mode ("r|*", any compression): one pass, entries as they
        # come, so that a bomb is refused at its first excess byte rather
        # than after reading every header.
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                _tar_entry(tar, member, writer)
    except (Refused, WriteFailed):
        raise
    except _READ_ERRORS as exc:
        raise Refused(f"not a readable tar archive: {exc}") from exc
    writer.make_links()


def _tar_entry(tar: tarfile.TarFile, member: tarfile.TarInfo, writer: _Writer) -> None:
    name = member.name
    writer.done.count_entry(name)
    parts = member_parts(name)
    if not parts:
        return  # the folder itself
    if member.isdir():
        writer.folder(parts, name)
    elif member.isreg():
        if member.size > writer.done.limits.max_bytes - writer.done.bytes:
            raise Refused(
                f"unpacks to more than {writer.done.limits.max_bytes} bytes (at {name!r})"
            )
        source = tar.extractfile(member)
        assert source is not None  # a regular file has data
        writer.file(parts, name, source, member.mode, member.mtime)
    elif member.islnk():
        writer.hard_link(parts, name, member.linkname)
    elif member.issym():
        writer.symlink_later(parts, name, member.linkname)
    else:
        raise Refused(f"{name!r}: a device, FIFO or other special file")


# --- zip ----------------------------------------------------------------------------


def _unpack_zip(archive: Path, writer: _Writer) -> None:
    try:
        with zipfile.ZipFile(archive) as zipped:
            infos = zipped.infolist()
            if len(infos) > writer.done.limits.max_entries:
                raise Refused(f"more than {writer.done.limits.max_entries} entries ({len(infos)})")
            for info in infos:
                _zip_entry(zipped, info, writer)
    except (Refused, WriteFailed):
        raise
    except (*_READ_ERRORS, NotImplementedError, RuntimeError) as exc:
        # RuntimeError: an encrypted entry; NotImplementedError: an unknown
        # compression method.
        raise Refused(f"not a readable zip archive: {exc}") from exc


def _zip_entry(zipped: zipfile.ZipFile, info: zipfile.ZipInfo, writer: _Writer) -> None:
    name = info.filename
    writer.done.count_entry(name)
    parts = member_parts(name)
    unix_mode = info.external_attr >> 16
    kind = stat.S_IFMT(unix_mode)
    if kind == stat.S_IFLNK:
        raise Refused(f"{name!r}: a symbolic link (zip links are not unpacked)")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise Refused(f"{name!r}: a device, FIFO or other special file")
    if not parts:
        return
    if info.is_dir() or kind == stat.S_IFDIR:
        writer.folder(parts, name)
        return
    if info.file_size > writer.done.limits.max_bytes - writer.done.bytes:
        raise Refused(f"unpacks to more than {writer.done.limits.max_bytes} bytes (at {name!r})")
    mtime = time.mktime((*info.date_time, 0, 0, -1))
    with zipped.open(info) as source:
        writer.file(parts, name, source, unix_mode if kind else 0o644, mtime)


# --- the child process --------------------------------------------------------------


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(
            "usage: python -m claude_code_scheduler.node.workspace.unpack ARCHIVE DEST",
            file=sys.stderr,
        )
        return 2
    archive, dest = Path(argv[0]), Path(argv[1])
    try:
        done = unpack(archive, dest)
    except Refused as exc:
        print(f"archive refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except WriteFailed as exc:
        print(f"could not unpack the archive: {exc}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    print(f"unpacked {done.describe()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
