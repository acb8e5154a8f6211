"""What the node holds of a run from outside it: the stops it can ask for
(RunControl), and what a run reports to and looks up in (RunSettler,
CancelLookup). node.runs runs; node.worker and node.cancels control."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from claude_code_scheduler.aws.cancels import CancelRequest
from claude_code_scheduler.node.messages import Ending
from claude_code_scheduler.node.outbox import Delivery


class RunSettler(Protocol):
    """What a run tells the message lifecycle (messages.MessageLifecycle)."""

    def run_ended(self, run_id: str, ending: Ending, delivery: Delivery) -> None: ...


class CancelLookup(Protocol):
    """Whether an operator asked for a run to stop (aws.cancels.CancelStore)."""

    def lookup(self, run_id: str) -> CancelRequest | None: ...


class _Relayed(threading.Event):
    """An Event that, once set, also sets `also`: RunControl's `stopping`."""

    def __init__(self, also: threading.Event) -> None:
        super().__init__()
        self._also = also

    def set(self) -> None:
        super().set()
        self._also.set()


@dataclass
class RunControl:
    """What the node can do to a run from outside: stop it for a shutdown
    (`cancel`: handed back), stop it for an operator's cancel
    (`request_cancel`: Cancelled), and give up on retrying its log upload and
    output when the stop budget is spent.

    `stopping` is set by either stop: what the run's waits before and around
    its CLI (secrets, session, workspace, a slow bus) are interrupted by. The
    CLI itself tells the two apart (node.process.supervisor)."""

    stopping: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(init=False)
    interrupt: threading.Event = field(init=False)
    give_up: threading.Event = field(default_factory=threading.Event)
    # The operator's request, set before `interrupt` so that whoever sees
    # the interrupt finds it.
    cancel_request: CancelRequest | None = None

    def __post_init__(self) -> None:
        self.cancel = _Relayed(self.stopping)
        self.interrupt = _Relayed(self.stopping)

    def request_cancel(self, request: CancelRequest) -> None:
        """Called by the cancel watcher's thread; only sets, never waits."""
        if self.cancel_request is None:
            self.cancel_request = request
        self.interrupt.set()
