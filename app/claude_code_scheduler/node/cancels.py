"""The cancel watcher: looks up an operator's cancel request for every run the
node is running, every CANCEL_POLL_SECONDS, and hands what it finds to the run.

A request is an object in the log bucket (aws.cancels, docs/cancel.md), so
that it persists for whichever node receives the run, whenever. A run looks
its request up once before it starts (runs.TaskRun); this thread covers a
request made while it runs. It only sets the run's RunControl
(`request_cancel`); the run's own thread stops the CLI (SIGINT, SIGTERM,
SIGKILL: node.process.supervisor) and reports.

The bound, from the request's write to the CLI's SIGINT: one poll interval
and one lookup; to the last SIGKILL: + cancel_grace + kill_grace. With the
defaults, 2 + 3 + 3 = 8 s, within the documented 10 s. Its cost: one
GetObject per running run per poll, 1,800 per running run per hour.

A lookup that fails is logged and tried again at the next poll: a cancel is
late by an outage, never lost. The watcher holds no state of its own between
polls beyond the runs it already handed a request to.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

import botocore.exceptions

from claude_code_scheduler.aws.errors import error_code
from claude_code_scheduler.node.control import CancelLookup, RunControl

log = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 2.0


class CancelWatcher:
    """One thread; `running` gives the runs to watch, as run id -> control,
    each time it polls (the node's active runs, read under its lock)."""

    def __init__(
        self,
        cancels: CancelLookup,
        running: Callable[[], Mapping[str, RunControl]],
        *,
        interval: float = CANCEL_POLL_SECONDS,
    ) -> None:
        self._cancels = cancels
        self._running = running
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="cancels", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Sets the stop and returns: a lookup in flight is bounded by the S3
        client's own timeouts, and what it finds no longer matters, so the
        shutdown does not wait for it."""
        self._stop.set()

    def join(self, timeout: float) -> bool:
        """Whether the thread ended within `timeout` seconds (after `stop`)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.poll()
            except Exception:
                # The loop's edge: a bad poll never ends the watching.
                log.exception("cancel poll failed")

    def poll(self) -> int:
        """One look at every running run not yet cancelled; how many it
        cancelled now."""
        handed = 0
        for run_id, control in dict(self._running()).items():
            if self._stop.is_set():
                break
            if control.cancel_request is not None:
                continue
            try:
                request = self._cancels.lookup(run_id)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                log.warning(
                    "could not look up the run's cancel request: %s; trying again",
                    error_code(exc),
                    extra={"run_id": run_id},
                )
                continue
            if request is not None:
                log.warning(
                    "run cancelled by %s: stopping it",
                    request.requested_by,
                    extra={"run_id": run_id, "reason": request.reason},
                )
                control.request_cancel(request)
                handed += 1
        return handed
