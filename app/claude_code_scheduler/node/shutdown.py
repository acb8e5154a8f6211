"""The shutdown's time budget: how long each step of the shutdown order
(node.worker) may take, on one timeline from the first signal, and how long
ECS task protection must outlast a run for a shutdown to fit after it.

A node exits within shutdown_timeout + kill_grace + SHUTDOWN_MARGIN_SECONDS
of the first signal, however many runs it has.
"""

from __future__ import annotations

from dataclasses import dataclass

from claude_code_scheduler.node.config import NodeConfig

# How long the closing events may wait for the bus before the node gives up.
FINAL_PUBLISH_SECONDS = 5.0
# Extra time for a terminated run to upload its log and publish its event.
HAND_BACK_SECONDS = 10.0
# How long the last SQS writes (the releases of step 5) may take.
FINAL_WRITES_SECONDS = 5.0
# How long terminated runs get, after HAND_BACK_SECONDS, once told to give up
# on their uploads and events.
GIVE_UP_SECONDS = 5.0
# What the shutdown may take beyond shutdown_timeout + kill_grace: hand-backs,
# giving up, the closing events and the last writes, with 5 s to spare for
# calls already in flight (each bounded by aws.clients.CallBounds).
SHUTDOWN_MARGIN_SECONDS = (
    HAND_BACK_SECONDS + GIVE_UP_SECONDS + FINAL_PUBLISH_SECONDS + FINAL_WRITES_SECONDS + 5.0
)


@dataclass(frozen=True)
class ShutdownBudget:
    """The shutdown's one timeline, from the first signal: each step waits
    until its own deadline on it, never for a time of its own after the step
    before. The whole ends at `exit_by`."""

    signalled: float
    shutdown_timeout: float
    kill_grace: float

    @property
    def runs_stop_by(self) -> float:
        """Runs may go on until here; then they are terminated."""
        return self.signalled + self.shutdown_timeout

    @property
    def hand_backs_by(self) -> float:
        """Terminated runs have uploaded their logs and published by here."""
        return self.runs_stop_by + self.kill_grace + HAND_BACK_SECONDS

    @property
    def exit_by(self) -> float:
        return self.runs_stop_by + self.kill_grace + SHUTDOWN_MARGIN_SECONDS

    def left(self, until: float, now: float) -> float:
        return max(0.0, min(until, self.exit_by) - now)


def protection_margin(config: NodeConfig) -> float:
    """How long ECS protection must outlast a run's deadline: the kill at the
    deadline, the run's upload and terminal event, and a shutdown that may
    begin just then."""
    return (
        config.kill_grace
        + HAND_BACK_SECONDS
        + config.shutdown_timeout
        + config.kill_grace
        + SHUTDOWN_MARGIN_SECONDS
    )
