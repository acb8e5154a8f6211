"""The node installed as the image installs it: the wheel in a fresh virtual
environment, started through its console entry point as a non-root user. It
answers `healthcheck` while it runs and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.integration.conftest import node_env

REPO = Path(__file__).resolve().parents[2]
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
    """The first candidate the unprivileged user can run: pyenv's Pythons under
    /root are out of its reach on a machine where the tests run as root."""
    for candidate in python_candidates():
        probe = subprocess.run(
            as_unprivileged([candidate, "-c", "import venv"]), capture_output=True, check=False
        )
        if probe.returncode == 0:
            return candidate
    pytest.fail(f"no Python that an unprivileged user can run among {python_candidates()}")


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    # World-readable, so the unprivileged user can run what is in it.
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


def as_unprivileged(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv  # already not root
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        if IN_CI:
            pytest.fail("setpriv (util-linux) is needed to drop to an unprivileged user")
        pytest.skip("setpriv (util-linux) is not installed: cannot drop root")
    # setpriv execs, so signals reach the node itself.
    return [setpriv, f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}", "--clear-groups", *argv]


def test_installed_wheel_runs_as_a_non_root_user(stack, installed):
    work = Path(tempfile.mkdtemp(prefix="ccs-work-"))
    if os.geteuid() == 0:
        os.chown(work, UNPRIVILEGED, UNPRIVILEGED)
    entry = str(installed / "bin" / "claude-code-scheduler")
    env = node_env(stack, {"CLAUDE_NODE_WORK_DIR": str(work), "HOME": str(work)})
    env["PATH"] = f"{installed / 'bin'}:/usr/bin:/bin"
    node = subprocess.Popen(
        as_unprivileged(
            [
                entry,
                "node",
                "--mock-mode",
                "--queue-url",
                stack.queue_url,
                "--topic-arn",
                stack.topic_arn,
                "--log-bucket",
                stack.bucket,
                "--heartbeat-interval",
                "1",
                "--poll-wait-seconds",
                "1",
                "--node-id",
                "wheel-node",
            ]
        ),
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        registered = stack.wait_event("NodeRegistered", node_id="wheel-node")
        stack.wait_event("NodeHeartbeat", node_id="wheel-node")
        state = work / "node-state.json"
        assert state.stat().st_uid == (UNPRIVILEGED if os.geteuid() == 0 else os.geteuid())
        check = subprocess.run(
            as_unprivileged([entry, "healthcheck"]),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert registered["data"]["version"] != "0.0.0"  # installed metadata, not a source tree
        node.send_signal(signal.SIGTERM)
        _, stderr = node.communicate(timeout=30)
        assert node.returncode == 0, stderr
        stack.wait_event("NodeDeregistered", node_id="wheel-node")
        assert "Traceback" not in stderr
    finally:
        if node.poll() is None:
            node.kill()
        shutil.rmtree(work, ignore_errors=True)
