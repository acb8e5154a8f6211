"""What runs cost, end to end on the moto server in mock mode: each terminal
event's `usage`, the node's running total on heartbeats and on
NodeDeregistered, and `submit --wait` printing the cost at the end."""

from __future__ import annotations

import subprocess
import sys

from claude_code_scheduler.node.process.mockcli import MOCK_COST_USD
from tests.integration.conftest import command, node_env


def test_the_node_total_is_the_sum_of_its_runs_costs(stack, start_node):
    node = start_node(stack, "--mock-mode", "--heartbeat-interval", "1", "--poll-wait-seconds", "1")
    stack.wait_event("NodeRegistered", node_id=node.node_id)

    # One run through `submit --wait`, which prints what it cost.
    waited = subprocess.run(
        [
            sys.executable,
            "-m",
            "claude_code_scheduler",
            "submit",
            "--prompt",
            "what does this cost",
            "--run-id",
            "costed-1",
            "--queue-url",
            stack.queue_url,
            "--control-bus-arn",
            stack.topic_arn,
            "--wait",
        ],
        capture_output=True,
        text=True,
        env=node_env(stack),
        timeout=90,
        check=False,
    )
    assert waited.returncode == 0, waited.stderr
    assert (
        "» run costed-1: cost $0.0008 (100 in / 20 out tokens, 1 turn)"
        in waited.stderr.splitlines()
    )

    # And two more, one of them failing: a failed run that printed a result
    # line cost money too.
    ok = command(mock={"duration_seconds": 0.2})
    failing = command(mock={"duration_seconds": 0.2, "exit_code": 3})
    for cmd in (ok, failing):
        stack.send(cmd)
    ends = [
        stack.wait_event("TaskCompleted", "costed-1"),
        stack.wait_event("TaskCompleted", ok["run_id"]),
        stack.wait_event("TaskFailed", failing["run_id"]),
    ]
    costs = [end["data"]["usage"]["total_cost_usd"] for end in ends]
    assert costs == [MOCK_COST_USD] * 3
    assert ends[2]["data"]["error"]["type"] == "ClaudeError"
    assert ends[2]["data"]["attempt"] == 1

    beat = stack.wait_for(
        lambda e: (
            e["event_type"] == "NodeHeartbeat"
            and e["node_id"] == node.node_id
            and e["data"]["tasks_completed"] + e["data"]["tasks_failed"] == 3
        )
    )
    assert beat["data"]["total_cost_usd"] == round(sum(costs), 9)

    node.signal()
    gone = stack.wait_event("NodeDeregistered", node_id=node.node_id)
    assert gone["data"]["total_cost_usd"] == round(sum(costs), 9)
    assert node.wait() == 0
