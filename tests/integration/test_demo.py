"""`make demo` itself, end to end: the README's first command must keep working
(it once broke when runs moved to uids of their own and its temp folder was
out of their reach)."""

from __future__ import annotations

import subprocess
import sys

from tests.unprivileged import REPO


def test_the_demo_runs_a_task_to_its_end() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "=== Done: the run completed, its log is in S3, the node deregistered" in done.stdout
    # The workspace step: the file the mock wrote into the clone came back as a patch.
    assert "+- hello" in done.stdout
