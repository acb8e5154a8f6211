"""ECS task scale-in protection while runs last, and no longer.

On ECS the agent serves `$ECS_AGENT_URI/task-protection/v1/state`; a protected
task is picked neither when the service scales in nor when a deployment
replaces tasks, so neither kills a busy node. That also means a deployment
waits for protection to end: the node asks for just enough to cover its runs'
own timeouts plus a margin for the hand-back (see docs/operations.md), turns
it off when the last run ends, and renews it when a new run needs more. Off
ECS there is no agent and this does nothing. A failure here is logged and
never stops a run: it costs protection, not correctness, since a stopped node
hands its runs back; the next sync (a run starting or ending, or a heartbeat)
tries again.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence

from claude_code_scheduler.aws.limits import ECS_MAX_PROTECTION_MINUTES

log = logging.getLogger(__name__)

AGENT_ENV = "ECS_AGENT_URI"
REQUEST_TIMEOUT_SECONDS = 5.0
# Protection that outlasts what the runs need by more than this is shortened,
# so that a deployment does not wait for a long run that already ended.
SHRINK_AFTER_SECONDS = 300.0
# What ECS answers when a deployment has already picked the task to stop: the
# node will get SIGTERM soon and hand its runs back.
DEPLOYMENT_BLOCKED = "DEPLOYMENT_BLOCKED"


def protection_minutes(until: float, now: float) -> int:
    """ExpiresInMinutes that covers `until`, within ECS's 1 to 2880 minutes."""
    return max(1, min(ECS_MAX_PROTECTION_MINUTES, math.ceil((until - now) / 60)))


class TaskProtection:
    def __init__(
        self,
        agent_uri: str | None,
        *,
        margin_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = f"{agent_uri.rstrip('/')}/task-protection/v1/state" if agent_uri else None
        self._margin = margin_seconds
        self._clock = clock
        self._lock = threading.Lock()
        # When the protection ECS holds ends (the node's clock); None: off.
        self._expires: float | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], margin_seconds: float) -> TaskProtection:
        return cls(environ.get(AGENT_ENV), margin_seconds=margin_seconds)

    def sync(self, deadlines: Callable[[], Sequence[float]]) -> None:
        """Make protection cover the runs whose deadlines `deadlines()` gives,
        or end it when there are none. Serialised, so two runs ending and
        starting at once cannot cross."""
        if self._url is None:
            return
        with self._lock:
            ends = deadlines()
            now = self._clock()
            if not ends:
                if self._expires is not None and self._put(False, 0):
                    self._expires = None
                return
            needed = max(ends) + self._margin
            current = self._expires
            if current is not None and needed <= current <= needed + SHRINK_AFTER_SECONDS:
                return
            minutes = protection_minutes(needed, now)
            if self._put(True, minutes):
                self._expires = now + minutes * 60

    def _put(self, enabled: bool, minutes: int) -> bool:
        assert self._url is not None
        body: dict[str, object] = {"ProtectionEnabled": enabled}
        if enabled:
            body["ExpiresInMinutes"] = minutes
        request = urllib.request.Request(  # noqa: S310 - the ECS agent's own URL
            self._url,
            data=json.dumps(body).encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:  # noqa: S310
                answer = json.load(response)
        except (OSError, ValueError) as exc:
            log.warning("could not set ECS task protection to %s: %s", enabled, exc)
            return False
        if "failure" in answer or "error" in answer:
            if DEPLOYMENT_BLOCKED in json.dumps(answer):
                log.warning(
                    "ECS will not protect this task: a deployment is stopping it; its runs "
                    "are handed back at SIGTERM (%s)",
                    answer,
                )
            else:
                log.warning("ECS refused task protection %s: %s", enabled, answer)
            return False
        log.info(
            "ECS task scale-in protection %s",
            f"on for {minutes} min" if enabled else "off",
        )
        return True
