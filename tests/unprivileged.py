"""Running the node as a non-root user, the way the image runs it.

The tests run as root in CI, and pyenv's Pythons live under root's 0700 home,
out of an unprivileged user's reach. `install_wheel` builds the package's
wheel into a fresh venv of a Python that user can run; `as_unprivileged`
prefixes a command with `setpriv`, which execs (no setuid helper, and signals
reach the command itself).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import IN_CI

REPO = Path(__file__).resolve().parents[1]
UNPRIVILEGED = 65534  # nobody / nogroup


def python_candidates() -> list[str]:
    """Python 3.13 first, as in the image; then what else the machine has."""
    found = []
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        found += sorted(
            str(p) for p in Path(root.stdout.strip(), "versions").glob("3.13*/bin/python3")
        )
    found += [p for p in (shutil.which("python3.13"), "/usr/bin/python3", sys.executable) if p]
    return found


def python_the_user_can_run() -> str:
    """The first candidate the unprivileged user can run."""
    for candidate in python_candidates():
        probe = subprocess.run(
            as_unprivileged([candidate, "-c", "import venv"]), capture_output=True, check=False
        )
        if probe.returncode == 0:
            return candidate
    pytest.fail(f"no Python that an unprivileged user can run among {python_candidates()}")


def as_unprivileged(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv  # already not root
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        if IN_CI:
            pytest.fail("setpriv (util-linux) is needed to drop to an unprivileged user")
        pytest.skip("setpriv (util-linux) is not installed: cannot drop root")
    return [setpriv, f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}", "--clear-groups", *argv]


def let_other_users_through(path: Path) -> Path:
    """Lets other users pass through (not list) `path` and the folders above it,
    up to the system temp folder; returns `path`.

    pytest makes each level of tmp_path mode 0700. A node running as root runs
    each run under a uid of its own, which must reach its folder in the node's
    work dir (docs/isolation.md), and the node refuses to start otherwise."""
    top = Path(tempfile.gettempdir()).resolve()
    current = path.resolve()
    while current != top and top in current.parents:
        mode = current.stat().st_mode
        if current.stat().st_uid == os.geteuid() and not mode & 0o001:
            current.chmod((mode & 0o7777) | 0o011)
        current = current.parent
    return path


def drop_box(tmp_path: Path) -> Path:
    """A folder in tmp_path that any uid may write to (sticky, like /tmp): where
    a stand-in CLI, run under a run uid, leaves what the test reads."""
    box = let_other_users_through(tmp_path) / "drop-box"
    box.mkdir(exist_ok=True)
    box.chmod(0o1777)
    return box


def unprivileged_user() -> tuple[int, int] | None:
    """(uid, gid) to drop to when running as root; None when already unprivileged."""
    return (UNPRIVILEGED, UNPRIVILEGED) if os.geteuid() == 0 else None


@contextmanager
def owned_dirs(owner: tuple[int, int] | None, *names: str) -> Iterator[list[Path]]:
    """Fresh directories under the system temp dir, owned by `owner`, removed afterwards.

    pytest's tmp_path lives under a 0700 directory of root's, which another
    user cannot enter; these can be.
    """
    base = Path(tempfile.mkdtemp(prefix="ccs-owned-"))
    try:
        base.chmod(0o755)
        dirs = []
        for name in names:
            path = base / name
            path.mkdir()
            if owner is not None:
                os.chown(path, *owner)
            dirs.append(path)
        yield dirs
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def install_wheel() -> Iterator[Path]:
    """The package's wheel in a fresh, world-readable venv; yields the venv."""
    base = Path(tempfile.mkdtemp(prefix="ccs-wheel-"))
    base.chmod(0o755)
    try:
        dist = base / "dist"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--quiet",
                "-w",
                str(dist),
                str(REPO),
            ],
            check=True,
            timeout=300,
        )
        venv = base / "venv"
        python = python_the_user_can_run()
        print(f"installing the wheel into a venv of {python}")
        subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
        wheel = next(dist.glob("claude_code_scheduler-*.whl"))
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)], check=True, timeout=300
        )
        yield venv
    finally:
        shutil.rmtree(base, ignore_errors=True)
