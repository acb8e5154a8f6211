"""The node installed as the image installs it: the wheel in a fresh virtual
environment, started through its console entry point as a non-root user. It
answers `healthcheck` while it runs and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import node_env
from tests.unprivileged import UNPRIVILEGED, as_unprivileged, owned_dirs, unprivileged_user


@pytest.fixture
def work() -> Iterator[Path]:
    """The node's work dir and HOME, which the unprivileged user owns."""
    with owned_dirs(unprivileged_user(), "work") as [path]:
        yield path


def test_installed_wheel_runs_as_a_non_root_user(stack, installed_wheel, work):
    installed = installed_wheel
    entry = str(installed / "bin" / "claude-code-scheduler")
    env = node_env(stack, {"CLAUDE_NODE_WORK_DIR": str(work), "HOME": str(work)})
    env["PATH"] = f"{installed / 'bin'}:/usr/bin:/bin"
    node = subprocess.Popen(
        as_unprivileged(
            [
                entry,
                "node",
                "--mock-mode",
                *stack.node_args(),
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
