"""changes.patch: everything a run changed in its git workspace against the
commit it checked out (its commits, what it left uncommitted, new files, and
binary files), as one patch for `git apply` and `git am`.

git runs as the run's own uid, never as the node: the repository's config,
hooks and attributes are the run's code. Its hooks and fsmonitor are off,
no system or global config is read, external diff and textconv drivers are
not run, and the prefixes and paths are given explicitly so that no config
of the run's changes the patch's shape. It stages into an index of its own
under the run's tmp folder, so the run's own index and working tree are left
as they were.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import signal
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from claude_code_scheduler.node.artifacts import PATCH_NAME, ArtifactLimits
from claude_code_scheduler.node.artifacts.staging import Staging
from claude_code_scheduler.node.process.isolation import RunIdentity

STDERR_CHARS = 400
_NO_CONFIG = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_OPTIONAL_LOCKS": "0",
    "LC_ALL": "C",
}


class GitFailed(Exception):
    pass


class _Git:
    """git in one working tree, as the run's uid, with a private index."""

    def __init__(
        self,
        cwd: Path,
        index_file: Path,
        identity: RunIdentity,
        env: Mapping[str, str],
        timeout: float,
    ) -> None:
        self._argv = [
            "git",
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
            f"--git-dir={cwd / '.git'}",
            f"--work-tree={cwd}",
        ]
        self._cwd = cwd
        self._env = {**env, **_NO_CONFIG, "GIT_INDEX_FILE": str(index_file)}
        self._identity = identity
        self._timeout = timeout

    def run(self, *args: str, stdout: int = subprocess.DEVNULL) -> str:
        """Runs one command; stdout goes to `stdout` (a file), or is returned
        when it is subprocess.PIPE. Raises GitFailed with git's words."""
        with tempfile.TemporaryFile() as stderr:
            process = subprocess.Popen(
                [*self._argv, *args],
                cwd=self._cwd,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                **self._identity.popen_options(),
            )
            # The run's clean filters run in `git add`: a filter that hangs
            # must not hold the run's end (its group is killed at the deadline).
            timer = threading.Timer(self._timeout, _kill_group, (process.pid,))
            timer.start()
            try:
                out, _ = process.communicate()
            finally:
                timer.cancel()
            stderr.seek(0)
            words = stderr.read().decode("utf-8", "replace").strip()[-STDERR_CHARS:]
        if process.returncode != 0:
            if process.returncode == -signal.SIGKILL:
                words = f"did not finish within {self._timeout:g} s"
            raise GitFailed(f"git {args[0]}: {words or f'exit status {process.returncode}'}")
        return out.decode("utf-8", "replace") if isinstance(out, bytes) else ""


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def collect_patch(
    staging: Staging,
    *,
    cwd: Path,
    tmp: Path,
    base_commit: str,
    run_id: str,
    identity: RunIdentity,
    env: Mapping[str, str],
    limits: ArtifactLimits,
) -> None:
    """Stages changes.patch, or notes why there is none."""
    index_file = tmp / f"artifacts-{uuid.uuid4().hex[:12]}.index"
    git = _Git(cwd, index_file, identity, env, limits.git_timeout_seconds)
    raw = staging.scratch("diff")
    try:
        git.run("rev-parse", "--verify", "--quiet", f"{base_commit}^{{commit}}")
        head = git.run("rev-parse", "--verify", "--quiet", "HEAD^{commit}", stdout=subprocess.PIPE)
        git.run("read-tree", head.strip())
        git.run("add", "--all", "--", ".")
        with raw.open("xb") as diff_out:
            git.run(
                "diff",
                "--cached",
                "--binary",
                "--full-index",
                "--no-color",
                "--no-ext-diff",
                "--no-textconv",
                "--no-relative",
                "--no-renames",
                "--src-prefix=a/",
                "--dst-prefix=b/",
                base_commit,
                "--",
                stdout=diff_out.fileno(),
            )
    except GitFailed as exc:
        staging.omit(PATCH_NAME, str(exc))
        return
    finally:
        with contextlib.suppress(OSError):
            index_file.unlink()  # root removing a file in the run's folder: no link is followed
    size = raw.stat().st_size
    if size == 0:
        staging.omit(PATCH_NAME, f"the run changed nothing against {base_commit}")
    elif size > limits.max_patch_bytes:
        staging.omit(PATCH_NAME, f"{size} bytes, past the bound of {limits.max_patch_bytes} bytes")
    else:
        with raw.open("rb") as diff:
            mail = _Mail(mail_header(run_id, base_commit), diff)
            staging.add_redacted(PATCH_NAME, mail)  # type: ignore[arg-type]
    raw.unlink()


def mail_header(run_id: str, base_commit: str) -> bytes:
    """What makes the diff a mail `git am` takes (`git apply` skips it): the
    run's commits and uncommitted work become one commit."""
    return (
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        "From: claude-code-scheduler <claude-code-scheduler@localhost>\n"
        f"Date: {email.utils.formatdate(usegmt=True)}\n"
        f"Subject: [PATCH] Changes of run {run_id}\n"
        "\n"
        f"Everything run {run_id} changed against {base_commit}: its commits and\n"
        "what it left uncommitted, as one change (claude-code-scheduler).\n"
        "---\n"
    ).encode()


class _Mail:
    """The header, then the diff, read as one stream."""

    def __init__(self, header: bytes, body: BinaryIO) -> None:
        self._header = header
        self._body = body

    def read(self, size: int = -1) -> bytes:
        if self._header:
            head, self._header = self._header, b""
            return head
        return bytes(self._body.read(size))
