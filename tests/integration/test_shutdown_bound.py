"""The whole shutdown is bounded, however many runs a node has: from the
signal to exit within --shutdown-timeout + --kill-grace + a fixed margin
(node.worker.SHUTDOWN_MARGIN_SECONDS). Real signals, a real bucket that goes
silent, a generous bound."""

from __future__ import annotations

import time

from claude_code_scheduler.node.shutdown import SHUTDOWN_MARGIN_SECONDS
from tests.fault_proxy import FaultProxy
from tests.integration.conftest import command

SLOTS = 6


def test_many_stuck_hand_backs_still_exit_within_the_budget(stack_factory, start_node):
    stack = stack_factory(visibility_timeout=120)
    with FaultProxy(stack.endpoint) as bucket:
        node = start_node(
            stack,
            "--mock-mode",
            "--poll-wait-seconds",
            "1",
            "--max-concurrent-tasks",
            str(SLOTS),
            "--shutdown-timeout",
            "1",
            "--kill-grace",
            "1",
            env={"AWS_ENDPOINT_URL_S3": bucket.url},
        )
        commands = [command(mock={"duration_seconds": 120}) for _ in range(SLOTS)]
        for cmd in commands:
            stack.send(cmd)
        for cmd in commands:
            stack.wait_event("TaskStarted", cmd["run_id"], node_id=node.node_id, timeout=30)
        # Every run's log upload now hangs: each hand-back waits until the
        # node gives up on it.
        bucket.drop()
        signalled = time.monotonic()
        node.signal()
        assert node.wait(SHUTDOWN_MARGIN_SECONDS + 60) == 0
        took = time.monotonic() - signalled

    budget = 1 + 1 + SHUTDOWN_MARGIN_SECONDS
    print(f"{SLOTS} stuck hand-backs: exited {took:.1f} s after SIGTERM (budget {budget:.0f} s)")
    # Giving up on the runs one after another (as the node once did) takes
    # SLOTS * GIVE_UP_SECONDS on top of the hand-back wait: past the budget.
    assert took < budget + 5
    # The runs that never reported were handed back, not kept from other nodes.
    deadline = time.monotonic() + 30
    while stack.queue_counts()[0] < SLOTS and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stack.queue_counts()[0] == SLOTS
