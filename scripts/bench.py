"""`make bench`: figures, not pass/fail.

1. Output pipeline: MB/s through the decoder, spool and batcher (no network).
2. On a local moto server, one node in mock mode: time from send to
   TaskStarted and to TaskCompleted for a batch of short tasks, and tasks/s.
3. The same in real mode, with the pinned Claude CLI against the scripted API
   stand-in on loopback: what a run costs beyond the model's own time (the
   CLI's start-up, its run folders, reaping). Skipped, with the reason, when
   the CLI is not installed (scripts/install-claude.sh).
"""

from __future__ import annotations

import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.conftest import (
    NodeProcess,
    Stack,
    command,
    free_port,
    make_stack,
    node_env,
)
from tests.realcli.anthropic_standin import AnthropicStandin, Text
from tests.realcli.claude_cli import pinned_binary, probe

from claude_code_scheduler.node.output import OutputBatcher, OutputRecorder

TASKS = 20


def bench_output(megabytes: int = 64) -> None:
    chunks: list[int] = []
    recorder = OutputRecorder(
        io.BytesIO(), OutputBatcher(lambda _stream, text: chunks.append(len(text)))
    )
    block = ("héllo wörld, " * 5000).encode()[: 64 * 1024]
    total = megabytes * 1024 * 1024
    started = time.perf_counter()
    for offset in range(0, total, len(block)):
        recorder.feed("stdout" if offset % (1 << 20) else "stderr", block, time.monotonic())
    recorder.finish(time.monotonic())
    elapsed = time.perf_counter() - started
    print(f"output pipeline: {megabytes / elapsed:.0f} MB/s, {len(chunks)} chunks")


class Moto:
    """A moto server process and a fresh stack of resources on it."""

    def __enter__(self) -> Stack:
        port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                return make_stack(endpoint)
            except Exception:
                time.sleep(0.1)
        raise RuntimeError("moto server did not start")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(10)


def run_batch(stack: Stack, node: NodeProcess, tasks: list[dict[str, object]]) -> str:
    """Sends the tasks at once; the figures once all have completed."""
    stack.wait_event("NodeRegistered", node_id=node.node_id, timeout=60)
    sent: dict[str, float] = {}
    first = time.monotonic()
    for task in tasks:
        cmd = command(**task)
        sent[cmd["run_id"]] = time.monotonic()
        stack.send(cmd)
    for run_id in sent:
        stack.wait_event("TaskCompleted", run_id, timeout=120)
    last = max(e["_seen_at"] for e in stack.of("TaskCompleted"))
    starts = [e["_seen_at"] - sent[e["data"]["run_id"]] for e in stack.of("TaskStarted")]
    ends = [e["_seen_at"] - sent[e["data"]["run_id"]] for e in stack.of("TaskCompleted")]
    runs = [e["data"]["duration_seconds"] for e in stack.of("TaskCompleted")]
    return (
        f"send->TaskStarted median {statistics.median(starts):.2f}s, "
        f"send->TaskCompleted median {statistics.median(ends):.2f}s, "
        f"run median {statistics.median(runs):.2f}s, "
        f"{len(tasks) / (last - first):.1f} tasks/s"
    )


def bench_tasks() -> None:
    with Moto() as stack, tempfile.TemporaryDirectory() as tmp:
        args = ["--mock-mode", "--poll-wait-seconds", "1", "--max-concurrent-tasks", "4"]
        node = NodeProcess(stack, Path(tmp), args, node_env(stack))
        try:
            tasks = [
                {"mock": {"duration_seconds": 0.2, "output_bytes": 5000}} for _ in range(TASKS)
            ]
            print(f"{TASKS} mock tasks of 0.2 s, 4 slots: {run_batch(stack, node, tasks)}")
        finally:
            node.kill()


def bench_real_tasks(count: int = 10) -> None:
    binary = pinned_binary()
    reason = probe(binary)
    if reason is not None:
        print(f"real mode: skipped: {reason}")
        return
    with (
        Moto() as stack,
        tempfile.TemporaryDirectory() as tmp,
        AnthropicStandin([Text("Hello from the stand-in.")] * count) as api,
    ):
        home = Path(tmp) / "home"
        home.mkdir()
        env = {**node_env(stack), **api.cli_env(), "HOME": str(home)}
        args = ["--claude-bin", str(binary), "--poll-wait-seconds", "1"]
        node = NodeProcess(stack, Path(tmp), args, env)
        try:
            figures = run_batch(stack, node, [{"prompt": "Say hello"} for _ in range(count)])
            print(f"{count} real-mode tasks (one text reply each), 1 slot: {figures}")
        finally:
            node.kill()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    bench_output()
    bench_tasks()
    bench_real_tasks()
