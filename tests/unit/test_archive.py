"""Unpacking an input archive (node/workspace/unpack.py) and fetching it
(node/workspace/archive.py), against archives these tests make.

Each attack has its control: the naive extraction (tarfile.extractall with no
filter, the classic join-and-write zip loop, Info-ZIP's unzip) into a scratch
folder writes outside it; unpack() refuses the same archive and leaves
nothing behind.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import botocore.exceptions
import pytest

from claude_code_scheduler.aws.objects import DownloadStopped, ObjectTooLarge
from claude_code_scheduler.node.output import OutputBatcher, OutputRecorder
from claude_code_scheduler.node.process.environment import RunDirs
from claude_code_scheduler.node.process.isolation import SHARED
from claude_code_scheduler.node.workspace import ChildRunner, Stopped, WorkspaceError
from claude_code_scheduler.node.workspace import unpack as unpacking
from claude_code_scheduler.node.workspace.archive import ArchivePreparer
from claude_code_scheduler.node.workspace.unpack import Limits, Refused, unpack
from claude_code_scheduler.protocol.workspace import ArchiveWorkspace

# --- making archives -----------------------------------------------------------------


def entry(
    name: str,
    data: bytes = b"",
    *,
    kind: bytes = tarfile.REGTYPE,
    link: str = "",
    mode: int = 0o644,
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = mode
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
    return info, data


def make_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def symlink_attr(target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo("link")
    info.create_system = 3  # unix: external_attr holds the mode
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def make_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name, data in entries:
            zipped.writestr(name, data)
    return path


def naive_tar(archive: Path, dest: Path) -> None:
    """extractall as code written before the filters did it (no filter)."""
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "fully_trusted_filter"):
            tar.extractall(dest, filter="fully_trusted")
        else:
            tar.extractall(dest)


def naive_zip(archive: Path, dest: Path) -> None:
    """The classic zip-slip loop: join the name to the folder and write."""
    with zipfile.ZipFile(archive) as zipped:
        for info in zipped.infolist():
            target = os.path.join(dest, info.filename)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as out:
                out.write(zipped.read(info))


@pytest.fixture
def place(tmp_path: Path) -> Callable[[str], tuple[Path, Path]]:
    """A fresh (outside, dest) pair: dest is outside/dest, so '..' from dest is outside."""

    def make(name: str) -> tuple[Path, Path]:
        outside = tmp_path / name
        (outside / "dest").mkdir(parents=True)
        return outside, outside / "dest"

    return make


DEFAULT_LIMITS = Limits()


def refused(archive: Path, dest: Path, match: str, limits: Limits = DEFAULT_LIMITS) -> None:
    with pytest.raises(Refused, match=match):
        unpack(archive, dest, limits)
    assert list(dest.iterdir()) == [], "a refused archive leaves nothing behind"


def outside_files(outside: Path) -> set[str]:
    return {p.name for p in outside.iterdir()} - {"dest"}


# --- archives that unpack ---------------------------------------------------------------


def test_a_tar_gz_unpacks_with_its_folders_modes_and_links(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "in.tar.gz",
        [
            entry("./", kind=tarfile.DIRTYPE, mode=0o755),
            entry("./src/", kind=tarfile.DIRTYPE, mode=0o755),
            entry("./src/main.py", b"print('hi')\n"),
            entry("./run.sh", b"#!/bin/sh\n", mode=0o775),
            entry("./src/alias.py", kind=tarfile.SYMTYPE, link="main.py"),
            entry("./copy.py", kind=tarfile.LNKTYPE, link="./src/main.py"),
        ],
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    done = unpack(archive, dest)
    assert (dest / "src/main.py").read_bytes() == b"print('hi')\n"
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755  # group write dropped
    assert os.readlink(dest / "src/alias.py") == "main.py"
    assert (dest / "copy.py").stat().st_ino == (dest / "src/main.py").stat().st_ino
    assert (done.files, done.links, done.bytes) == (3, 1, 22)


def test_a_zip_unpacks_with_its_folders_and_executable_bits(tmp_path: Path) -> None:
    script = zipfile.ZipInfo("bin/tool")
    script.create_system = 3
    script.external_attr = (stat.S_IFREG | 0o755) << 16
    archive = make_zip(
        tmp_path / "in.zip", [("docs/", b""), ("docs/readme.md", b"# hello\n"), (script, b"#!")]
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    unpack(archive, dest)
    assert (dest / "docs/readme.md").read_text() == "# hello\n"
    assert stat.S_IMODE((dest / "bin/tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "docs/readme.md").stat().st_mode) == 0o644


# --- paths out of the folder --------------------------------------------------------------


def test_zip_slip_is_refused_in_a_tar(place: Any) -> None:
    outside, dest = place("control")
    archive = make_tar(outside / "slip.tar", [entry("ok.txt", b"ok"), entry("../evil", b"x")])
    naive_tar(archive, dest)
    assert "evil" in outside_files(outside)

    outside, dest = place("guarded")
    archive = make_tar(outside / "slip.tar", [entry("ok.txt", b"ok"), entry("../evil", b"x")])
    refused(archive, dest, r"'\.\.' in the path")
    assert "evil" not in outside_files(outside)


def test_zip_slip_is_refused_in_a_zip(place: Any) -> None:
    outside, dest = place("control")
    archive = make_zip(outside / "slip.zip", [("a/../../evil", b"x")])
    naive_zip(archive, dest)
    assert "evil" in outside_files(outside)

    outside, dest = place("guarded")
    archive = make_zip(outside / "slip.zip", [("a/../../evil", b"x")])
    refused(archive, dest, r"'\.\.' in the path")
    assert "evil" not in outside_files(outside)


def test_an_absolute_path_is_refused(place: Any) -> None:
    outside, dest = place("control")
    archive = make_tar(outside / "abs.tar", [entry(str(outside / "evil"), b"x")])
    naive_tar(archive, dest)
    assert "evil" in outside_files(outside)

    outside, dest = place("guarded")
    archive = make_tar(outside / "abs.tar", [entry(str(outside / "evil"), b"x")])
    refused(archive, dest, "an absolute path")
    zipped = make_zip(outside / "abs.zip", [(str(outside / "evil"), b"x")])
    refused(zipped, dest, "an absolute path")
    assert "evil" not in outside_files(outside)


def test_a_symlink_out_and_a_file_written_through_it_are_refused(place: Any) -> None:
    def attack(outside: Path) -> Path:
        return make_tar(
            outside / "link.tar",
            [
                entry("link", kind=tarfile.SYMTYPE, link=".."),
                entry("link/evil", b"written through the link"),
            ],
        )

    outside, dest = place("control")
    naive_tar(attack(outside), dest)
    assert "evil" in outside_files(outside)

    outside, dest = place("guarded")
    refused(attack(outside), dest, "outside the folder")
    absolute = make_tar(outside / "abs.tar", [entry("link", kind=tarfile.SYMTYPE, link="/etc")])
    refused(absolute, dest, "absolute path")
    assert "evil" not in outside_files(outside)


def test_a_chain_of_links_that_each_look_inside_is_refused(place: Any) -> None:
    """CVE-2025-4517's shape: `a -> .` and `b -> a/..` each resolve inside by
    their text, but b points at the folder's parent once a exists."""

    def attack(outside: Path) -> Path:
        return make_tar(
            outside / "chain.tar",
            [
                entry("b", kind=tarfile.SYMTYPE, link="a/.."),
                entry("a", kind=tarfile.SYMTYPE, link="."),
            ],
        )

    outside, dest = place("control")
    naive_tar(attack(outside), dest)
    assert Path(os.path.realpath(dest / "b")) == outside

    outside, dest = place("guarded")
    refused(attack(outside), dest, "resolves outside the folder")


def test_a_hard_link_out_of_the_folder_is_refused(place: Any) -> None:
    def attack(outside: Path) -> Path:
        (outside / "secret").write_text("the node's")
        return make_tar(
            outside / "hard.tar",
            [
                entry("hl", kind=tarfile.LNKTYPE, link="../secret"),
                entry("hl", b"overwritten"),  # written through the link by a naive tar
            ],
        )

    outside, dest = place("control")
    naive_tar(attack(outside), dest)
    assert (outside / "secret").read_text() == "overwritten"

    outside, dest = place("guarded")
    refused(attack(outside), dest, r"'\.\.' in the path")
    absolute = make_tar(
        outside / "abs.tar", [entry("hl", kind=tarfile.LNKTYPE, link=str(outside / "secret"))]
    )
    refused(absolute, dest, "an absolute path")
    elsewhere = make_tar(outside / "x.tar", [entry("hl", kind=tarfile.LNKTYPE, link="missing")])
    refused(elsewhere, dest, "not a file of the archive")
    assert (outside / "secret").read_text() == "the node's"


def test_a_zip_symlink_entry_is_refused(place: Any) -> None:
    outside, dest = place("guarded")
    refused(make_zip(outside / "link.zip", [symlink_attr("..")]), dest, "a symbolic link")
    if shutil.which("unzip") is None:
        pytest.skip("the control needs Info-ZIP's unzip")
    outside, dest = place("control")
    archive = make_zip(outside / "link.zip", [symlink_attr("..")])
    subprocess.run(["unzip", "-q", str(archive), "-d", str(dest)], check=True)
    assert Path(os.path.realpath(dest / "link")) == outside


# --- special files and modes ------------------------------------------------------------


def test_a_device_file_is_refused(place: Any) -> None:
    outside, dest = place("guarded")
    archive = make_tar(outside / "dev.tar", [entry("null", kind=tarfile.CHRTYPE)])
    refused(archive, dest, "a device")
    fifo = make_tar(outside / "fifo.tar", [entry("pipe", kind=tarfile.FIFOTYPE)])
    refused(fifo, dest, "a device, FIFO")
    if os.geteuid() != 0:
        pytest.skip("the control needs root (mknod)")
    outside, dest = place("control")
    naive_tar(make_tar(outside / "dev.tar", [entry("null", kind=tarfile.CHRTYPE)]), dest)
    if not (dest / "null").exists():
        pytest.skip("this container may not make device nodes (no CAP_MKNOD)")
    assert stat.S_ISCHR((dest / "null").lstat().st_mode)


def test_setuid_setgid_and_world_write_bits_are_dropped(place: Any) -> None:
    def archive(outside: Path) -> Path:
        return make_tar(outside / "suid.tar", [entry("tool", b"#!/bin/sh\n", mode=0o6777)])

    outside, dest = place("control")
    naive_tar(archive(outside), dest)
    if os.geteuid() == 0:  # only root keeps the setuid bit of a file it makes
        assert (dest / "tool").stat().st_mode & stat.S_ISUID

    outside, dest = place("guarded")
    unpack(archive(outside), dest)
    assert stat.S_IMODE((dest / "tool").stat().st_mode) == 0o755


# --- bounds -------------------------------------------------------------------------------

MIB = 1024 * 1024


def test_a_bomb_is_refused_before_a_byte_past_the_bound(place: Any) -> None:
    outside, dest = place("bomb")
    archive = make_tar(outside / "bomb.tar.gz", [entry("zeros", bytes(32 * MIB))])
    assert archive.stat().st_size < MIB // 4  # over a hundred times smaller than what it holds
    refused(archive, dest, "unpacks to more than 1048576 bytes", Limits(max_bytes=MIB))

    control = outside / "control"
    naive_tar(archive, control)
    assert (control / "zeros").stat().st_size == 32 * MIB


def test_the_bound_holds_across_many_files_while_writing(place: Any) -> None:
    """Each file's header is under the bound; the sum is not. What is on disk
    when the refusal comes never exceeds the bound."""
    outside, dest = place("many")
    archive = make_tar(
        outside / "many.tar.gz", [entry(f"f{i}", bytes(256 * 1024)) for i in range(20)]
    )
    with pytest.raises(Refused, match="unpacks to more than"):
        unpack(archive, dest, Limits(max_bytes=MIB), clean=False)
    on_disk = sum(p.stat().st_size for p in dest.iterdir())
    assert 0 < on_disk <= MIB
    zipped = make_zip(outside / "many.zip", [(f"f{i}", bytes(256 * 1024)) for i in range(20)])
    refused(zipped, dest, "unpacks to more than", Limits(max_bytes=MIB))


def test_too_many_entries_are_refused(place: Any) -> None:
    outside, dest = place("entries")
    limits = Limits(max_entries=50)
    tarred = make_tar(outside / "e.tar.gz", [entry(f"f{i}") for i in range(60)])
    refused(tarred, dest, "more than 50 entries", limits)
    zipped = make_zip(outside / "e.zip", [(f"f{i}", b"") for i in range(60)])
    refused(zipped, dest, "more than 50 entries", limits)
    unpack(make_tar(outside / "ok.tar", [entry(f"f{i}") for i in range(50)]), dest, limits)


@pytest.mark.parametrize("name", ["noise.tar.gz", "noise.tar", "noise.zip"])
def test_a_corrupt_archive_is_refused_in_its_own_words(place: Any, name: str) -> None:
    outside, dest = place("corrupt")
    archive = outside / name
    archive.write_bytes(os.urandom(4096))
    refused(archive, dest, "not a readable (tar|zip) archive")


def test_a_truncated_archive_is_refused(place: Any) -> None:
    outside, dest = place("truncated")
    whole = make_tar(outside / "whole.tar.gz", [entry("data", os.urandom(200_000))])
    cut = outside / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[:100_000])
    refused(cut, dest, "not a readable tar archive")


def test_the_child_says_what_it_did_and_exits_by_whose_fault(place: Any) -> None:
    outside, dest = place("child")
    good = make_tar(outside / "good.tar", [entry("a.txt", b"a")])
    bad = make_tar(outside / "bad.tar", [entry("../a.txt", b"a")])
    argv = [sys.executable, "-m", "claude_code_scheduler.node.workspace.unpack"]
    ok = subprocess.run([*argv, str(good), str(dest)], capture_output=True, text=True, check=False)
    assert (ok.returncode, ok.stderr.strip()) == (
        0,
        "unpacked 1 file(s), 0 folder(s), 0 link(s), 1 bytes",
    )
    no = subprocess.run(
        [*argv, str(bad), str(outside / "dest")], capture_output=True, text=True, check=False
    )
    assert no.returncode == unpacking.EXIT_REFUSED
    assert no.stderr.strip() == "archive refused: '../a.txt': '..' in the path"


# --- fetching (archive.py), with a fake S3 ---------------------------------------------------

BUCKET = "logs-bucket"


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, "HeadObject")


class FakeObjects:
    """An ObjectReader: `failures` are raised, one per call, before it answers."""

    def __init__(self, body: bytes, failures: list[BaseException] | None = None) -> None:
        self.body = body
        self.failures = list(failures or [])
        self.downloads = 0

    def size(self, bucket: str, key: str) -> int:
        if self.failures:
            raise self.failures.pop(0)
        return len(self.body)

    def download(
        self,
        bucket: str,
        key: str,
        into: BinaryIO,
        *,
        max_bytes: int,
        should_stop: Callable[[], bool],
    ) -> None:
        self.downloads += 1
        if should_stop():
            raise DownloadStopped("stopped")
        if len(self.body) > max_bytes:
            raise ObjectTooLarge(f"the object has more than {max_bytes} bytes")
        into.write(self.body)


@dataclass
class Runner:
    """A real ChildRunner (the node's own uid: unit tests run no uid drop),
    with the log it writes kept in memory."""

    dirs: RunDirs
    seconds: float = 30.0
    log: io.BytesIO = field(default_factory=io.BytesIO)
    cancel: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        recorder = OutputRecorder(self.log, OutputBatcher(lambda stream, text: None), None)
        self.child = ChildRunner(
            cwd=self.dirs.cwd,
            env=dict(os.environ),
            recorder=recorder,
            identity=SHARED,
            time_left=lambda: self.seconds,
            cancel=self.cancel,
            kill_grace=1.0,
            run_marker="test-archive",
            clock=time.monotonic,
        )

    @property
    def said(self) -> str:
        return self.log.getvalue().decode()


@pytest.fixture
def runner(tmp_path: Path) -> Runner:
    return Runner(RunDirs.create(tmp_path, "run-1"))


def prepare(objects: FakeObjects, spec: ArchiveWorkspace, runner: Runner, **kwargs: Any) -> None:
    ArchivePreparer(objects, BUCKET, **kwargs).prepare(spec, runner.dirs, runner.child)


def tar_bytes(entries: list[tuple[tarfile.TarInfo, bytes]], tmp_path: Path) -> bytes:
    return make_tar(tmp_path / "made.tar.gz", entries).read_bytes()


def test_an_archive_in_inputs_is_unpacked_into_the_working_folder(
    runner: Runner, tmp_path: Path
) -> None:
    objects = FakeObjects(tar_bytes([entry("src/a.py", b"x = 1\n")], tmp_path))
    prepare(objects, ArchiveWorkspace(BUCKET, "inputs/job.tar.gz"), runner)
    assert (runner.dirs.cwd / "src/a.py").read_text() == "x = 1\n"
    assert list(runner.dirs.tmp.iterdir()) == [], "the downloaded archive is removed"
    assert f"downloading s3://{BUCKET}/inputs/job.tar.gz" in runner.said
    assert "unpacked 1 file(s)" in runner.said  # the child's words, in the run's log


@pytest.mark.parametrize(
    "spec",
    [ArchiveWorkspace(BUCKET, "logs/run.tar"), ArchiveWorkspace("other-bucket", "inputs/a.zip")],
)
def test_an_archive_elsewhere_is_refused_naming_it(runner: Runner, spec: ArchiveWorkspace) -> None:
    objects = FakeObjects(b"")
    with pytest.raises(
        WorkspaceError, match=f"{spec.uri}: this node reads archives only"
    ) as caught:
        prepare(objects, spec, runner)
    assert not caught.value.retryable
    assert objects.downloads == 0


@pytest.mark.parametrize(
    ("error", "match"),
    [(client_error("404", 404), "does not exist"), (client_error("403", 403), "access denied")],
)
def test_a_missing_or_forbidden_key_is_not_retryable(
    runner: Runner, error: Exception, match: str
) -> None:
    spec = ArchiveWorkspace(BUCKET, "inputs/gone.zip")
    with pytest.raises(WorkspaceError, match=match) as caught:
        prepare(FakeObjects(b"", [error]), spec, runner)
    assert not caught.value.retryable


def test_an_archive_too_big_to_download_is_refused_before_the_download(runner: Runner) -> None:
    objects = FakeObjects(bytes(2000))
    spec = ArchiveWorkspace(BUCKET, "inputs/big.tar")
    with pytest.raises(WorkspaceError, match="has 2000 bytes, more than the 1000") as caught:
        prepare(objects, spec, runner, max_archive_bytes=1000)
    assert not caught.value.retryable and objects.downloads == 0


def test_s3_throttling_is_retried_and_an_outage_past_the_deadline_is_retryable(
    runner: Runner, tmp_path: Path
) -> None:
    body = tar_bytes([entry("a", b"a")], tmp_path)
    spec = ArchiveWorkspace(BUCKET, "inputs/a.tar.gz")
    prepare(FakeObjects(body, [client_error("SlowDown", 503)]), spec, runner)
    assert (runner.dirs.cwd / "a").read_text() == "a"

    lasting = FakeObjects(body, [client_error("ServiceUnavailable", 503)] * 1000)
    runner.seconds = 0.001  # the deadline is near: one try, then the outage wins
    with pytest.raises(WorkspaceError, match="ServiceUnavailable") as caught:
        prepare(lasting, spec, runner)
    assert caught.value.retryable


def test_a_stopping_node_stops_the_download(runner: Runner, tmp_path: Path) -> None:
    objects = FakeObjects(tar_bytes([entry("a", b"a")], tmp_path))
    runner.cancel.set()
    with pytest.raises(Stopped) as caught:
        prepare(objects, ArchiveWorkspace(BUCKET, "inputs/a.tar"), runner)
    assert caught.value.result.cancelled and not caught.value.result.timed_out


def test_a_hostile_archive_fails_in_the_archives_words(runner: Runner, tmp_path: Path) -> None:
    objects = FakeObjects(tar_bytes([entry("../../evil", b"x")], tmp_path))
    spec = ArchiveWorkspace(BUCKET, "inputs/evil.tar.gz")
    with pytest.raises(WorkspaceError) as caught:
        prepare(objects, spec, runner)
    assert str(caught.value) == f"{spec.uri}: archive refused: '../../evil': '..' in the path"
    assert not caught.value.retryable
    assert not (tmp_path / "evil").exists()
    assert list(runner.dirs.cwd.iterdir()) == []
