"""The node's state file and the container health check that reads it.

The node rewrites a small JSON file at registration and at every heartbeat;
`claude-code-scheduler healthcheck` (the image's HEALTHCHECK) passes while the
last heartbeat is younger than three intervals. A stuck or dead node stops
writing, so the check fails without any network call.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_code_scheduler.protocol.events import STALE_AFTER_INTERVALS


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace the file atomically, so the check never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state-")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(state, out)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Health:
    healthy: bool
    reason: str


def check(path: Path, now: float | None = None) -> Health:
    now = time.time() if now is None else now
    try:
        state = json.loads(path.read_text())
        beat = float(state["last_heartbeat"])
        interval = float(state["heartbeat_interval"])
        status = str(state.get("status", "unknown"))
    except FileNotFoundError:
        return Health(False, f"no state file at {path}: the node has not started")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Health(False, f"unreadable state file {path}: {exc}")
    age = now - beat
    if status == "deregistered":
        return Health(False, "the node has deregistered")
    limit = STALE_AFTER_INTERVALS * interval
    if age > limit:
        return Health(False, f"last heartbeat {age:.0f}s ago, more than {limit:g}s")
    return Health(True, f"{status}; last heartbeat {age:.0f}s ago")
