"""`make bench`: figures, not pass/fail.

1. Output pipeline: MB/s through the decoder, spool and batcher (no network).
2. On a local moto server, one node in mock mode: time from send to
   TaskStarted and to TaskCompleted for a batch of short tasks, and tasks/s.
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
    command,
    free_port,
    make_stack,
    node_env,
)

from claude_code_scheduler.output import OutputBatcher, OutputRecorder

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


def bench_tasks() -> None:
    port = free_port()
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    node = None
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                stack = make_stack(endpoint)
                break
            except Exception:
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp:
            node = NodeProcess(
                stack,
                Path(tmp),
                ["--mock-mode", "--poll-wait-seconds", "1", "--max-concurrent-tasks", "4"],
                node_env(stack),
            )
            stack.wait_event("NodeRegistered", node_id=node.node_id)
            sent: dict[str, float] = {}
            first = time.monotonic()
            for _ in range(TASKS):
                cmd = command(mock={"duration_seconds": 0.2, "output_bytes": 5000})
                sent[cmd["run_id"]] = time.monotonic()
                stack.send(cmd)
            for run_id in sent:
                stack.wait_event("TaskCompleted", run_id, timeout=120)
            last = max(e["_seen_at"] for e in stack.of("TaskCompleted"))
            starts = [e["_seen_at"] - sent[e["data"]["run_id"]] for e in stack.of("TaskStarted")]
            ends = [e["_seen_at"] - sent[e["data"]["run_id"]] for e in stack.of("TaskCompleted")]
            print(
                f"{TASKS} mock tasks of 0.2 s, 4 slots: "
                f"send->TaskStarted median {statistics.median(starts):.2f}s, "
                f"send->TaskCompleted median {statistics.median(ends):.2f}s, "
                f"{TASKS / (last - first):.1f} tasks/s"
            )
    finally:
        if node is not None:
            node.kill()
        moto.terminate()
        moto.wait(10)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    bench_output()
    bench_tasks()
