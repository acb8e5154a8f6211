"""The control bus goes away mid-run and comes back: no event is lost, none
is out of order, and the command is not deleted before its terminal event."""

from __future__ import annotations

import time

from claude_code_scheduler.node.leases import MIN_VISIBILITY_SECONDS
from tests.fault_proxy import FaultProxy
from tests.integration.conftest import command


def test_events_wait_out_a_bus_outage(stack_factory, start_node):
    # The node's smallest queue timeout (MIN_VISIBILITY_SECONDS), and an
    # outage longer than it: only renewals keep the message hidden.
    stack = stack_factory(visibility_timeout=MIN_VISIBILITY_SECONDS)
    with FaultProxy(stack.endpoint) as proxy:
        node = start_node(
            stack,
            "--mock-mode",
            "--poll-wait-seconds",
            "1",
            "--heartbeat-interval",
            "1",
            env={"AWS_ENDPOINT_URL_SNS": proxy.url},
        )
        stack.wait_event("NodeRegistered", node_id=node.node_id)
        cmd = command(mock={"duration_seconds": 3, "output_bytes": 50000})
        stack.send(cmd)
        stack.wait_event("TaskStarted", cmd["run_id"])
        # The SNS endpoint goes away: open connections are cut, new ones refused.
        proxy.reset()
        proxy.refuse()
        time.sleep(MIN_VISIBILITY_SECONDS + 3)  # the run ends during the outage; its events wait
        assert not stack.of("TaskCompleted", cmd["run_id"])
        # Not deleted: the lease keeps it hidden while the terminal event waits.
        assert stack.queue_counts() == (0, 1)
        proxy.pass_()
        stack.wait_event("TaskCompleted", cmd["run_id"], timeout=90)
        stack.drain_events(3.0)
        mine = sorted(
            (e for e in stack.events if e["node_id"] == node.node_id), key=lambda e: e["sequence"]
        )
        assert [e["sequence"] for e in mine] == list(range(1, len(mine) + 1))
        chunks = [e for e in mine if e["event_type"] == "TaskOutput"]
        assert [c["data"]["chunk_index"] for c in chunks] == list(range(len(chunks)))
        assert "".join(c["data"]["data"] for c in chunks).encode() == stack.log_text(cmd["run_id"])
        assert len(stack.of("TaskStarted", cmd["run_id"])) == 1
        assert stack.queue_counts() == (0, 0)
        assert "retrying" in node.stderr
