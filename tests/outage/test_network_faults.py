"""One mock-mode node reaches the moto server only through a fault-injecting
proxy, and the network fails in the middle of a run: connects refused for a
few seconds, every connection reset, or ~15 s of silence (longer than the
queue's visibility timeout). Judged on what the bus, the queue and the bucket
show once the network is back: no run is lost, no attempt has two terminal
events, each log is its run's chunks joined, the node stops cleanly and the
queue is empty. Time bounds are generous: several times what a healthy node
needs after the network returns."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from claude_code_scheduler.node.leases import MIN_VISIBILITY_SECONDS
from tests.chaos.history import (
    COMPLETED,
    Collector,
    attempt_problems,
    bucket_problems,
    finished,
    log_problems,
    outcome_problems,
    queue_counts,
    queue_problems,
    sequence_problems,
)
from tests.fault_proxy import FaultProxy
from tests.integration.conftest import NodeProcess, command, node_env

NODE_ARGS = ["--mock-mode", "--poll-wait-seconds", "1", "--heartbeat-interval", "1"]


@dataclass(frozen=True)
class Fault:
    begin: Callable[[FaultProxy], None]
    seconds: float
    # How long after the network is back every run may take to end.
    recovery_seconds: float
    # Whether the fault touched the node's traffic at all.
    felt: Callable[[FaultProxy, NodeProcess], bool]


FAULTS = {
    # A refused connect never reaches the proxy: the node's log says so.
    "refuse": Fault(FaultProxy.refuse, 4, 60, lambda p, n: "EndpointConnectionError" in n.stderr),
    "reset": Fault(FaultProxy.reset, 3, 60, lambda p, n: p.stats["reset"] > 0),
    # Longer than the queue's visibility timeout: the lease cannot be renewed
    # through it, so the run's message comes back to the queue meanwhile. The
    # calls caught in the drop end only when a timeout of the node's fires:
    # each kind of call waits at most 30 s for an answer (aws/clients.py), so
    # 45 s is ample. botocore's default of 60 s would not make it.
    "drop": Fault(FaultProxy.drop, 15, 45, lambda p, n: p.stats["swallowed_bytes"] > 0),
}


@pytest.mark.parametrize("fault_name", sorted(FAULTS))
def test_no_run_is_lost_to_a_network_fault(
    fault_name: str, round_: int, stack_factory: Any, tmp_path: Path
) -> None:
    fault = FAULTS[fault_name]
    stack = stack_factory(visibility_timeout=MIN_VISIBILITY_SECONDS)
    mid_run = command(mock={"duration_seconds": 8, "output_bytes": 200_000})
    queued = command(mock={"duration_seconds": 2, "output_bytes": 5_000})
    failing = command(mock={"duration_seconds": 1, "exit_code": 3})
    expected = {
        mid_run["run_id"]: COMPLETED,
        queued["run_id"]: COMPLETED,
        failing["run_id"]: "TaskFailed/ClaudeError",
    }
    with FaultProxy(stack.endpoint) as proxy, Collector(stack) as collector:
        node = NodeProcess(
            stack,
            tmp_path,
            [*NODE_ARGS, "--endpoint-url", proxy.url],
            node_env(stack, {"AWS_ENDPOINT_URL": proxy.url}),
        )
        try:
            collector.wait(lambda h: bool(h.of("NodeRegistered")), 30, "NodeRegistered")
            stack.send(mid_run)
            collector.wait(lambda h: bool(h.attempts_of(mid_run["run_id"])), 30, "TaskStarted")
            time.sleep(1.5)
            fault.begin(proxy)
            # Sent straight to moto while the node cannot reach it.
            stack.send(queued)
            stack.send(failing)
            time.sleep(fault.seconds)
            proxy.pass_()
            back = time.monotonic()
            try:
                collector.wait(
                    lambda h: finished(h, expected, stack),
                    fault.recovery_seconds,
                    f"every run ended within {fault.recovery_seconds:g}s of the network's return",
                )
                print(f"every run ended {time.monotonic() - back:.1f}s after the network's return")
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}\n{collector.history().summary(expected)}\n"
                    f"queue {queue_counts(stack)}, proxy {dict(proxy.stats)}\n{_warnings(node)}"
                ) from None
            node.signal(signal.SIGTERM)
            code = node.wait(45)
            history = collector.quiet(2.0)
        finally:
            node.kill()

    problems = [] if code == 0 else [f"the node exited {code} after SIGTERM"]
    problems += sequence_problems(history, clean=[node.node_id])
    problems += attempt_problems(history, expected)
    problems += outcome_problems(history, expected)
    # One node: a delivery of a run it holds, or has finished, is not a new start.
    problems += [
        f"{run_id} started {len(history.attempts_of(run_id))} times"
        for run_id in expected
        if len(history.attempts_of(run_id)) != 1
    ]
    problems += log_problems(history, stack, expected)
    problems += queue_problems(stack, 10)
    problems += bucket_problems(stack, expected)
    if not fault.felt(proxy, node):
        problems.append(f"the fault did not touch the node's traffic: {dict(proxy.stats)}")
    assert not problems, "\n".join(problems) + f"\n{history.summary(expected)}\n{_warnings(node)}"


def _warnings(node: NodeProcess, lines: int = 25) -> str:
    picked = [line[:300] for line in node.stderr.splitlines() if '"level": "DEBUG"' not in line]
    return "node log (last lines above DEBUG):\n  " + "\n  ".join(picked[-lines:])
