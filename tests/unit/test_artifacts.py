"""node/artifacts: changes.patch from a git workspace (made by git as the run's
uid, against a repository this test makes and hands to that uid), the files
task.artifacts names, the transcript, result.json, their redaction, their
upload, and the lists a terminal event carries.

As root (always in CI) the run's folder belongs to a uid of its own, as on a
node; otherwise the test's own uid stands in and the owner checks are off.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.unprivileged import let_other_users_through
from unit_support import FakeLogs, schema_errors

from claude_code_scheduler.client.tasks import build_command
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.node.artifacts import ArtifactLimits
from claude_code_scheduler.node.artifacts.collect import (
    RunFolder,
    RunRecord,
    collect,
    result_document,
    store,
)
from claude_code_scheduler.node.artifacts.files import glob_regex
from claude_code_scheduler.node.artifacts.staging import Staging
from claude_code_scheduler.node.process.environment import RunDirs
from claude_code_scheduler.node.process.isolation import SHARED, RunIdentity
from claude_code_scheduler.protocol import InvalidCommand, parse_command
from claude_code_scheduler.protocol.events import (
    ARTIFACT_LISTS_LIMIT,
    ArtifactReport,
    ErrorType,
    OmittedArtifact,
    StoredArtifact,
    encode_event,
    task_completed,
    task_failed,
    with_artifacts,
)
from claude_code_scheduler.redaction import Redactor

RUN_UID = 10978  # no other test's
SECRET = "artifact-secret-value-31337"
BINARY = bytes(range(256)) * 4 + b"\x00\xff binary tail"


def git(cwd: Path, *args: str, uid: int | None = None) -> str:
    """git as the test (root, in a folder of its own) or, with `uid`, as that uid."""
    argv = ["git", "-c", "user.name=T", "-c", "user.email=t@example.com", *args]
    if uid is not None:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1"}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def chown_tree(root: Path, uid: int | None) -> None:
    if uid is None:
        return
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.lchown(Path(folder) / name, uid, uid)
    os.lchown(root, uid, uid)


@dataclass
class Run:
    dirs: RunDirs
    identity: RunIdentity
    origin: Path
    base: str
    spool: Path

    @property
    def uid(self) -> int | None:
        return self.identity.uid

    def folder(self, patterns: tuple[str, ...] = (), session_id: str | None = None) -> RunFolder:
        return RunFolder(
            run_id="run-1",
            dirs=self.dirs,
            identity=self.identity,
            env={"PATH": os.environ["PATH"], "HOME": str(self.dirs.home)},
            patterns=patterns,
            base_commit=self.base,
            session_id=session_id,
        )

    def collect(self, *patterns: str, limits: ArtifactLimits | None = None, **kw: Any) -> Staging:
        redactor = Redactor([SECRET])
        return collect(
            self.folder(patterns, **kw), self.spool, redactor, limits or ArtifactLimits()
        )

    def fresh_clone(self, where: Path) -> Path:
        subprocess.run(["git", "clone", "-q", str(self.origin), str(where)], check=True)
        git(where, "checkout", "-q", self.base)
        return where


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    """A git workspace as the workspace helper leaves it: a clone in the run's
    working folder, all of it the run's uid's."""
    isolated = os.geteuid() == 0 and shutil.which("setpriv") is not None
    identity = RunIdentity(0, RUN_UID, RUN_UID) if isolated else SHARED
    origin = tmp_path / "origin"
    origin.mkdir()
    git(origin, "init", "-q", "-b", "main")
    (origin / "keep.txt").write_text("unchanged\n")
    (origin / "modify.txt").write_text("one\ntwo\nthree\n")
    (origin / "delete.txt").write_text("going away\n")
    (origin / "image.bin").write_bytes(BINARY)
    git(origin, "add", ".")
    git(origin, "commit", "-q", "-m", "base")
    base = git(origin, "rev-parse", "HEAD").strip()
    let_other_users_through(tmp_path)
    dirs = RunDirs.create(tmp_path / "work", "run-1", identity)
    dirs.cwd.rmdir()
    subprocess.run(["git", "clone", "-q", str(origin), str(dirs.cwd)], check=True)
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    yield Run(dirs, identity, origin, base, spool)


def make_changes(run: Run) -> None:
    """What a run does: a commit of its own, then uncommitted, untracked,
    deleted and binary changes; and a repository config of its choosing."""
    cwd = run.dirs.cwd
    (cwd / "committed.txt").write_text("made in a commit by the run\n")
    git(cwd, "add", "committed.txt")
    git(cwd, "commit", "-q", "-m", "the run's commit")
    (cwd / "modify.txt").write_text("one\n2\nthree\nfour\n")
    (cwd / "delete.txt").unlink()
    (cwd / "new" / "deep").mkdir(parents=True)
    (cwd / "new" / "deep" / "untracked.txt").write_text("never added\n")
    (cwd / "image.bin").write_bytes(BINARY[::-1])
    (cwd / "new.bin").write_bytes(b"\x00\x01\x02" * 100)
    git(cwd, "add", "modify.txt")  # half staged in the run's own index
    # A config that would change the patch's shape if git read it.
    git(cwd, "config", "diff.noprefix", "true")
    git(cwd, "config", "diff.mnemonicPrefix", "true")
    chown_tree(cwd, run.uid)


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


def staged(staging: Staging) -> dict[str, bytes]:
    return {s.name: s.path.read_bytes() for s in staging.staged}


def omitted(staging: Staging) -> dict[str, str]:
    return {o.name: o.reason for o in staging.omitted}


# --- changes.patch ---------------------------------------------------------------------


def test_the_patch_applies_to_a_fresh_clone_and_reproduces_the_run(
    run: Run, tmp_path: Path
) -> None:
    make_changes(run)
    staging = run.collect()
    assert "changes.patch" in staged(staging), omitted(staging)
    patch = staged(staging)["changes.patch"]
    (tmp_path / "changes.patch").write_bytes(patch)
    clone = run.fresh_clone(tmp_path / "fresh")
    git(clone, "apply", "--index", str(tmp_path / "changes.patch"))
    assert tree(clone) == tree(run.dirs.cwd)
    assert "delete.txt" not in tree(clone)
    assert tree(clone)["image.bin"] == BINARY[::-1]
    assert tree(clone)["committed.txt"] == b"made in a commit by the run\n"


def test_git_am_takes_the_patch_as_one_commit(run: Run, tmp_path: Path) -> None:
    make_changes(run)
    (tmp_path / "changes.patch").write_bytes(staged(run.collect())["changes.patch"])
    clone = run.fresh_clone(tmp_path / "fresh")
    git(clone, "am", "-q", str(tmp_path / "changes.patch"))
    assert tree(clone) == tree(run.dirs.cwd)
    assert git(clone, "log", "-1", "--format=%s").strip() == "Changes of run run-1"
    assert git(clone, "rev-parse", "HEAD~1").strip() == run.base


def test_the_runs_own_index_and_working_tree_are_left_as_they_were(run: Run) -> None:
    make_changes(run)
    cwd = run.dirs.cwd
    index_before = (cwd / ".git" / "index").read_bytes()
    tree_before = tree(cwd)
    run.collect()
    assert (cwd / ".git" / "index").read_bytes() == index_before
    assert tree(cwd) == tree_before
    assert list(run.dirs.tmp.iterdir()) == [], "the private index is gone"


def test_the_repositorys_own_programs_do_not_run(run: Run, tmp_path: Path) -> None:
    """core.fsmonitor and an external diff driver are the run's code: neither
    runs while the node makes the patch. Control: plain git in the same
    repository runs them."""
    if run.uid is None:
        pytest.skip("needs root to act as the run's uid")
    make_changes(run)
    cwd = run.dirs.cwd
    marker = run.dirs.home / "ran"
    script = run.dirs.home / "hook.sh"
    script.write_text(f"#!/bin/sh\necho $0 >> {marker}\nexit 0\n")
    script.chmod(0o755)
    chown_tree(run.dirs.home, run.uid)
    git(cwd, "config", "core.fsmonitor", str(script), uid=run.uid)
    git(cwd, "config", "diff.external", str(script), uid=run.uid)
    staging = run.collect()
    assert "changes.patch" in staged(staging)
    assert not marker.exists()
    git(cwd, "diff", "HEAD", uid=run.uid)  # the control: git as usual
    assert marker.exists()


def test_no_changes_and_no_repository_are_said(run: Run) -> None:
    chown_tree(run.dirs.cwd, run.uid)
    assert "nothing" in omitted(run.collect())["changes.patch"]
    shutil.rmtree(run.dirs.cwd / ".git")
    reason = omitted(run.collect())["changes.patch"]
    assert reason.startswith("git rev-parse:")


def test_a_patch_past_its_bound_is_omitted(run: Run) -> None:
    make_changes(run)
    staging = run.collect(limits=ArtifactLimits(max_patch_bytes=100))
    assert "changes.patch" not in staged(staging)
    assert "past the bound of 100 bytes" in omitted(staging)["changes.patch"]


# --- task.artifacts --------------------------------------------------------------------


def write(path: Path, data: bytes | str, uid: int | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    chown_tree(path.parent, uid)
    return path


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("report.md", ["report.md"], ["a/report.md", "report.mdx"]),
        ("dist/**", ["dist/a", "dist/x/y.whl"], ["dist", "distx/a"]),
        ("dist/", ["dist/a/b"], ["dist"]),
        ("**/*.log", ["a.log", "x/y/z.log"], ["a.log/x", "a.logs"]),
        ("out/*.[ch]", ["out/a.c", "out/b.h"], ["out/a.o", "out/x/a.c"]),
        ("./a?.txt", ["ab.txt"], ["abc.txt", "a/.txt"]),
    ],
)
def test_glob_patterns(pattern: str, matches: list[str], misses: list[str]) -> None:
    regex = glob_regex(pattern)
    assert all(regex.match(m) for m in matches)
    assert not any(regex.match(m) for m in misses)


def test_matching_files_are_stored_and_links_out_and_specials_are_not(
    run: Run, tmp_path: Path
) -> None:
    cwd, uid = run.dirs.cwd, run.uid
    write(cwd / "dist" / "app.whl", BINARY, uid)
    write(cwd / "dist" / "notes.txt", "notes\n", uid)
    (cwd / "dist" / "passwd").symlink_to("/etc/passwd")
    (cwd / "dist" / "inside").symlink_to(cwd / "keep.txt")
    os.mkfifo(cwd / "dist" / "pipe")
    outside = tmp_path / "node-secret.txt"
    outside.write_text("the node's own file\n")
    outside.chmod(0o600)  # the run's uid cannot read it; the node, as root, could
    os.link(outside, cwd / "dist" / "hardlink")  # root's file, linked into the run's folder
    chown_tree(cwd, uid)
    if uid is not None:
        os.lchown(cwd / "dist" / "hardlink", 0, 0)
    staging = run.collect("dist/**")
    files = staged(staging)
    assert files["files/dist/app.whl"] == BINARY
    assert files["files/dist/notes.txt"] == b"notes\n"
    assert files["files/dist/inside"] == b"unchanged\n"
    reasons = omitted(staging)
    assert reasons["files/dist/passwd"] == "a link to outside the folder"
    assert reasons["files/dist/pipe"] == "not a regular file"
    if uid is not None:
        assert reasons["files/dist/hardlink"].startswith("not the run's own file")
    assert not [n for n, data in files.items() if b"node's own file" in data], files.keys()


def test_too_many_and_too_big_files_are_omitted_with_reasons(run: Run) -> None:
    cwd, uid = run.dirs.cwd, run.uid
    for index in range(5):
        write(cwd / "out" / f"{index}.txt", "x" * 10, uid)
    write(cwd / "out" / "big.dat", "y" * 1000, uid)
    limits = ArtifactLimits(max_files=3, max_file_bytes=500, max_total_bytes=25)
    staging = run.collect("out/*", limits=limits)
    assert sorted(staged(staging)) == ["files/out/0.txt", "files/out/1.txt"]
    reasons = omitted(staging)
    assert "past the bound of 500 bytes a file" in reasons["files/out/big.dat"]
    assert "for all files together" in reasons["files/out/2.txt"]
    assert (
        reasons["files/out/4.txt"] == "10 bytes, past the bound of 25 bytes for all files together"
    )
    staging = run.collect("out/*", limits=ArtifactLimits(max_files=2))
    assert sorted(staged(staging)) == ["files/out/0.txt", "files/out/1.txt"]
    assert omitted(staging)["files/out/2.txt"] == "more than 2 files matched task.artifacts"


def test_a_name_that_cannot_be_listed_is_omitted(run: Run) -> None:
    write(run.dirs.cwd / "out" / "bad\nname.txt", "x", run.uid)
    long_name = f"{'d' * 200}/{'n' * 100}"
    write(run.dirs.cwd / "out" / long_name, "x", run.uid)
    reasons = omitted(run.collect("out/**"))
    assert reasons["files/out/bad\ufffdname.txt"] == "the name is not printable UTF-8"
    assert "longer than 256 bytes" in reasons[f"files/out/{long_name}"]


def test_a_secret_inside_an_artifact_is_redacted(run: Run) -> None:
    source = write(run.dirs.cwd / "report.md", f"token: {SECRET}\n", run.uid)
    assert SECRET in source.read_text()  # the control: it is there to be found
    write(run.dirs.cwd / "blob.bin", b"\x00\xfe" + SECRET.encode() + b"\xff", run.uid)
    files = staged(run.collect("report.md", "blob.bin"))
    assert files["files/report.md"] == b"token: ***\n"
    assert files["files/blob.bin"] == b"\x00\xfe***\xff", "binary bytes around it kept"


# --- transcript and result.json ----------------------------------------------------------


def test_the_transcript_is_the_session_file(run: Run) -> None:
    projects = run.dirs.config / "projects" / "-tmp-work"
    write(projects / "older.jsonl", '{"old": true}\n', run.uid)
    write(projects / "sid-1.jsonl", f'{{"type":"user","text":"{SECRET}"}}\n', run.uid)
    chown_tree(run.dirs.config, run.uid)
    assert staged(run.collect(session_id="sid-1"))["transcript.jsonl"] == (
        b'{"type":"user","text":"***"}\n'
    )
    shutil.rmtree(projects)
    assert omitted(run.collect())["transcript.jsonl"] == "the CLI left no session file"


def test_result_json_holds_the_whole_result_line_and_what_the_node_knows() -> None:
    line = {"type": "result", "result": f"done with {SECRET}", "usage": {"x": [SECRET]}}
    record = RunRecord(
        node_id="node-1",
        run_id="run-1",
        attempt=2,
        started_at=1_700_000_000.0,
        ended_at=1_700_000_012.5,
        duration_seconds=12.5,
        exit_code=1,
        event_type="TaskFailed",
        error_type="Timeout",
        workspace_commit="a" * 40,
    )
    document = json.loads(result_document(record, line, Redactor([SECRET])))
    assert document["result"] == {
        "type": "result",
        "result": "done with ***",
        "usage": {"x": ["***"]},
    }
    assert document["outcome"] == {"event_type": "TaskFailed", "error_type": "Timeout"}
    assert document["workspace"] == {"commit": "a" * 40}
    assert (document["attempt"], document["exit_code"], document["node_id"]) == (2, 1, "node-1")
    assert document["started_at"] == "2023-11-14T22:13:20.000Z"
    assert document["duration_seconds"] == 12.5


# --- store and the event -----------------------------------------------------------------


def test_store_uploads_each_with_its_digest_and_stops_when_the_node_gives_up(
    run: Run,
) -> None:
    write(run.dirs.cwd / "a.txt", "alpha\n", run.uid)
    staging = run.collect("a.txt")
    staging.add_text("result.json", "{}\n")
    logs = FakeLogs()
    report = store(staging, logs, "bucket", "run-1", threading.Event())
    names = [a.name for a in report.stored]
    assert names[0] == "result.json", "what the outcome is, first"
    by_name = {a.name: a for a in report.stored}
    stored = logs.uploads["runs/run-1/files/a.txt"]
    assert by_name["files/a.txt"].sha256 == hashlib.sha256(stored).hexdigest()
    assert by_name["files/a.txt"].uri == "s3://bucket/runs/run-1/files/a.txt"
    assert by_name["files/a.txt"].bytes == len(stored) == 6
    given_up = threading.Event()
    given_up.set()
    report = store(staging, FakeLogs(), "bucket", "run-1", given_up)
    assert report.stored == ()
    assert {o.reason for o in report.omitted} >= {"the node stopped before it was uploaded"}


def test_the_event_lists_stay_within_their_bound_and_match_the_schema() -> None:
    stored = tuple(
        StoredArtifact(f"files/{i:05d}-{'n' * 200}", f"s3://b/runs/r/files/{i}", i, "0" * 64)
        for i in range(2000)
    )
    gone = tuple(OmittedArtifact(f"files/x{i}", "r" * 1000) for i in range(50))
    report = ArtifactReport(stored, gone)
    fields = report.fields()
    assert len(encode_event(fields).encode()) <= ARTIFACT_LISTS_LIMIT
    assert fields["artifacts_omitted"][-1]["name"] == "*"
    assert "more artifact entries are not listed" in fields["artifacts_omitted"][-1]["reason"]
    for event in (
        task_completed(
            "r",
            exit_code=0,
            duration_seconds=1,
            log_uri="s3://b/logs/r.log",
            output_bytes=1,
            result=None,
        ),
        task_failed("r", ErrorType.TIMEOUT, "slow"),
    ):
        body = with_artifacts(event, report).body("node-1", "Node", 1)
        assert schema_errors(event.event_type, body) == []
        assert len(encode_event(body).encode()) < 256 * 1024


# --- task.artifacts in the command ---------------------------------------------------------


def command_with(artifacts: Any) -> dict[str, Any]:
    return {
        "type": "RunTask",
        "version": 1,
        "run_id": "r",
        "task": {"prompt": "p", "artifacts": artifacts},
    }


@pytest.mark.parametrize(
    ("artifacts", "valid"),
    [
        (["dist/**", "report.md", "a/b..c/..d", ".hidden/*"], True),
        (["x"] * 32, True),
        (["x"] * 33, False),
        ([], True),
        (["/etc/passwd"], False),
        (["../up"], False),
        (["a/../b"], False),
        (["a/.."], False),
        ([".."], False),
        (["a\x00b"], False),
        (["a\nb"], False),
        ([""], False),
        (["x" * 513], False),
        (["x" * 512], True),
        ("dist/**", False),
        ([3], False),
    ],
)
def test_parser_and_schema_agree_on_task_artifacts(artifacts: Any, valid: bool) -> None:
    document = command_with(artifacts)
    assert (not schema_errors("RunTask", document)) is valid
    try:
        command = parse_command(json.dumps(document))
    except InvalidCommand:
        assert not valid
    else:
        assert valid
        assert command.task.artifacts == tuple(artifacts)
        assert json.loads(command.to_json())["task"].get("artifacts", []) == artifacts


def test_submit_carries_its_artifact_patterns() -> None:
    command = build_command({"prompt": "p", "artifacts": ("dist/**", "report.md")})
    assert command.task.artifacts == ("dist/**", "report.md")
    with pytest.raises(ConfigError, match="must not step out"):
        build_command({"prompt": "p", "artifacts": ("../x",)})
