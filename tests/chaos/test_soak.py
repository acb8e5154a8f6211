"""Three mock-mode node processes share one queue while runs of varied length
flow, and nodes get SIGTERM, SIGKILL, or SIGTERM and then SIGKILL while they
drain, and are replaced. Judged on what the bus, the queue and the bucket
show afterwards: every attempt has exactly one terminal event unless its node
was killed, every run ends as its command says, each log is its last
attempt's chunks, per-node sequences have no gap, the queue is empty and the
bucket holds only logs."""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claude_code_scheduler.node.leases import MIN_VISIBILITY_SECONDS
from tests.chaos.conftest import Plan
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
from tests.integration.conftest import NodeProcess, Stack, command, node_env

# As short as the node accepts, so that a killed node's run comes back soon;
# the runs of 12 s outlast it, so their leases must be extended.
VISIBILITY_TIMEOUT = MIN_VISIBILITY_SECONDS
NODE_ARGS = [
    "--mock-mode",
    "--poll-wait-seconds",
    "1",
    "--heartbeat-interval",
    "2",
    "--shutdown-timeout",
    "2",
    "--kill-grace",
    "1",
]
DURATIONS = (0.2, 0.5, 1, 2, 4, 12)
OUTPUT_BYTES = (300, 5_000, 60_000, 400_000)


@dataclass
class Fleet:
    """The soak's node processes: which are up, which are stopping, and how
    each one ended (`clean`: exited 0 after SIGTERM; `died`: SIGKILL, or a
    SIGTERM that came before the node had its handlers, while starting)."""

    stack: Stack
    tmp: Path
    rng: random.Random
    live: list[NodeProcess] = field(default_factory=list)
    stopping: list[NodeProcess] = field(default_factory=list)
    clean: set[str] = field(default_factory=set)
    died: set[str] = field(default_factory=set)
    early: set[str] = field(default_factory=set)  # the SIGTERM came during start-up
    every: list[NodeProcess] = field(default_factory=list)
    journal: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def start(self) -> NodeProcess:
        slots = self.rng.choice(["1", "2"])
        node = NodeProcess(
            self.stack,
            self.tmp,
            [*NODE_ARGS, "--max-concurrent-tasks", slots],
            node_env(self.stack),
        )
        self.live.append(node)
        self.every.append(node)
        self._note(f"started {node.node_id} ({slots} slot(s))")
        return node

    def sigterm(self, node: NodeProcess) -> None:
        self.live.remove(node)
        self.stopping.append(node)
        node.signal(signal.SIGTERM)
        self._note(f"SIGTERM {node.node_id}")

    def sigkill(self, node: NodeProcess) -> None:
        for group in (self.live, self.stopping):
            if node in group:
                group.remove(node)
        node.signal(signal.SIGKILL)
        node.wait(10)
        self.died.add(node.node_id)
        self._note(f"SIGKILL {node.node_id}")

    def reap(self) -> None:
        """Account for the nodes that finished stopping."""
        for node in list(self.stopping):
            code = node.process.poll()
            if code is None:
                continue
            self.stopping.remove(node)
            if code == 0:
                self.clean.add(node.node_id)
            elif code == -signal.SIGTERM:
                self.died.add(node.node_id)
                self.early.add(node.node_id)
            else:
                self.problems.append(f"{node.node_id} exited {code} after SIGTERM")
            self._note(f"{node.node_id} exited {code}")

    def stop_all(self, timeout: float = 30.0) -> None:
        for node in list(self.live):
            self.sigterm(node)
        deadline = time.monotonic() + timeout
        while self.stopping and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.2)
        for node in list(self.stopping):
            self.problems.append(f"{node.node_id} did not exit within {timeout:g}s of SIGTERM")
            self.sigkill(node)

    def kill_everything(self) -> None:
        for node in self.every:
            node.kill()

    def _note(self, what: str) -> None:
        self.journal.append(f"{time.monotonic():.1f} {what}")


def new_runs(plan: Plan, rng: random.Random) -> dict[str, tuple[dict[str, Any], str]]:
    """run_id -> (command, the outcome it must end with)."""
    runs = {}
    for _ in range(plan.runs):
        fails = rng.random() < 0.15
        mock: dict[str, Any] = {
            "duration_seconds": rng.choice(DURATIONS),
            "output_bytes": rng.choice(OUTPUT_BYTES),
        }
        if fails:
            mock["exit_code"] = rng.choice([1, 3, 255])
        cmd = command(mock=mock)
        runs[cmd["run_id"]] = (cmd, "TaskFailed/ClaudeError" if fails else COMPLETED)
    return runs


def test_runs_survive_random_kills_and_restarts(
    stack_factory: Any, plan: Plan, chaos_seed: int, tmp_path: Path
) -> None:
    rng = random.Random(chaos_seed)
    seed = f"CHAOS_SEED={chaos_seed}"
    stack = stack_factory(visibility_timeout=VISIBILITY_TIMEOUT)
    runs = new_runs(plan, rng)
    expected = {run_id: outcome for run_id, (_, outcome) in runs.items()}
    unsent = [cmd for cmd, _ in runs.values()]
    fleet = Fleet(stack, tmp_path, rng)
    try:
        with Collector(stack) as collector:
            for _ in range(plan.nodes):
                fleet.start()
            for cmd in unsent[: len(unsent) // 3]:
                stack.send(cmd)
            unsent = unsent[len(unsent) // 3 :]
            per_step = max(1, len(unsent) // max(1, int(plan.chaos_seconds / 2)))
            restarts: list[float] = []
            forced = ["term-then-kill", "term", "kill"]
            chaos_ends = time.monotonic() + plan.chaos_seconds
            while time.monotonic() < chaos_ends:
                time.sleep(rng.uniform(0.8, 3.0))
                fleet.reap()
                for cmd in unsent[:per_step]:
                    stack.send(cmd)
                unsent = unsent[per_step:]
                now = time.monotonic()
                for due in [d for d in restarts if d <= now]:
                    restarts.remove(due)
                    fleet.start()
                # One of each for certain, on nodes that are up; then at
                # random, on any node, starting or not.
                history = collector.history()
                candidates = (
                    [n for n in fleet.live if history.of("NodeRegistered", n.node_id)]
                    if forced
                    else fleet.live
                )
                if not candidates:
                    continue
                victim = rng.choice(candidates)
                action = (
                    forced.pop()
                    if forced
                    else rng.choices(["term", "kill", "term-then-kill"], [45, 40, 15])[0]
                )
                if action == "kill":
                    fleet.sigkill(victim)
                else:
                    fleet.sigterm(victim)
                    if action == "term-then-kill":
                        time.sleep(rng.uniform(0.3, 2.5))
                        fleet.sigkill(victim)
                restarts.append(time.monotonic() + rng.uniform(0.5, 3.0))
            for cmd in unsent:
                stack.send(cmd)
            fleet.reap()
            while len(fleet.live) < plan.nodes:
                fleet.start()
            settle = 90 + sum(c["task"]["mock"]["duration_seconds"] for c, _ in runs.values()) / 2
            try:
                collector.wait(lambda h: finished(h, expected, stack), settle, "every run finished")
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}\n{collector.history().summary(runs)}\nqueue {queue_counts(stack)}\n"
                    f"{seed}\n" + "\n".join(fleet.journal)
                ) from None
            fleet.stop_all()
            history = collector.quiet(2.0)
    finally:
        fleet.kill_everything()

    problems = list(fleet.problems)
    # Its handlers are in place before a node registers: one that SIGTERM
    # killed outright must not have said a word.
    problems += [
        f"{n} registered, then died of SIGTERM" for n in fleet.early if history.by_node.get(n)
    ]
    problems += sequence_problems(history, clean=fleet.clean)
    problems += attempt_problems(history, runs, died=fleet.died)
    problems += outcome_problems(history, expected)
    problems += log_problems(history, stack, runs)
    problems += queue_problems(stack, 10)
    problems += bucket_problems(stack, runs)
    assert not problems, (
        "\n".join(problems)
        + f"\n{history.summary(runs)}\n{seed}\nsignals:\n  "
        + "\n  ".join(fleet.journal)
    )
    # The soak did what it says: nodes were killed, and some runs were
    # delivered more than once.
    assert fleet.died and fleet.clean, fleet.journal
