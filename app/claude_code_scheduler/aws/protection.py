"""ECS task scale-in protection while runs last.

On ECS the agent serves `$ECS_AGENT_URI/task-protection/v1/state`; a protected
task is not picked when the service scales in, so a scale-in never kills a
busy node. The node turns protection on when a run starts and off when the
last run ends. Off ECS there is no agent and this does nothing. A failure here
is logged and never stops a run: it costs protection, not correctness, since a
stopped node hands its runs back.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping

from claude_code_scheduler.aws.limits import ECS_MAX_PROTECTION_MINUTES

log = logging.getLogger(__name__)

AGENT_ENV = "ECS_AGENT_URI"
REQUEST_TIMEOUT_SECONDS = 5.0


class TaskProtection:
    def __init__(
        self,
        agent_uri: str | None,
        expires_minutes: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = f"{agent_uri.rstrip('/')}/task-protection/v1/state" if agent_uri else None
        self._expires_minutes = max(1, min(ECS_MAX_PROTECTION_MINUTES, expires_minutes))
        self._clock = clock
        self._lock = threading.Lock()
        self._enabled = False
        self._enabled_at = 0.0

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str], longest_run_seconds: float
    ) -> TaskProtection:
        # Long enough for the longest run and a shutdown; renewed at each start.
        minutes = math.ceil(longest_run_seconds / 60) + 5
        return cls(environ.get(AGENT_ENV), minutes)

    def sync(self, busy: Callable[[], bool]) -> None:
        """Make protection match `busy()`; called after a run starts or ends.
        Serialised, so two runs ending and starting at once cannot cross."""
        if self._url is None:
            return
        with self._lock:
            want = busy()
            # A new run may need more time than the protection has left.
            renew = want and self._clock() - self._enabled_at > self._expires_minutes * 30
            if want == self._enabled and not renew:
                return
            if self._put(want):
                self._enabled = want
                self._enabled_at = self._clock() if want else 0.0

    def _put(self, enabled: bool) -> bool:
        assert self._url is not None
        body: dict[str, object] = {"ProtectionEnabled": enabled}
        if enabled:
            body["ExpiresInMinutes"] = self._expires_minutes
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
            log.warning("ECS refused task protection %s: %s", enabled, answer)
            return False
        log.info("ECS task scale-in protection %s", "on" if enabled else "off")
        return True
