"""Following one run from a terminal (`submit --wait`): its output as it
arrives, its start and each attempt, and one closing line with how it ended
and what it cost. The exit code says how it ended (errors.EXIT_*)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import click

from claude_code_scheduler.client.bus import BusEvent, Reader
from claude_code_scheduler.client.watch import (
    OutputAssembler,
    RunCost,
    cancel_note,
    ends_the_run,
)
from claude_code_scheduler.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_WAIT_TIMEOUT,
)
from claude_code_scheduler.protocol import TERMINAL_EVENT_TYPES, EventType

RECEIVE_WAIT_SECONDS = 2  # short, so Ctrl-C is noticed quickly
LATE_OUTPUT_SECONDS = 2.0


def follow_run(reader: Reader, run_id: str, options: dict[str, Any], stop: threading.Event) -> int:
    started = time.monotonic()
    limit = options.get("wait_timeout")
    output = OutputAssembler(raw=options.get("raw", False))
    cost = RunCost()
    terminal: BusEvent | None = None
    late_until = None
    while not stop.is_set():
        now = time.monotonic()
        if late_until is not None and now >= late_until:
            break
        if terminal is None and limit is not None and now - started >= limit:
            status(f"run {run_id}: still going after {limit:g}s; stopped waiting")
            return EXIT_WAIT_TIMEOUT
        for event in reader.receive(1 if terminal else RECEIVE_WAIT_SECONDS):
            data = event.body["data"]
            elapsed = time.monotonic() - started
            if event.event_type == EventType.TASK_OUTPUT:
                _print(output.add(data["chunk_index"], data["stream"], data["data"]))
            elif event.event_type == EventType.TASK_STARTED:
                status(
                    f"run {run_id}: started on {event.node_id} "
                    f"(attempt {data['attempt']}) after {elapsed:.1f}s"
                )
            elif event.event_type in TERMINAL_EVENT_TYPES and terminal is None:
                cost.add(event.body)
                if not ends_the_run(event.event_type, data):
                    # The command runs again; the next attempt numbers its chunks from 0.
                    _print(output.finish())
                    output = OutputAssembler(raw=options.get("raw", False))
                    status(_goes_on(run_id, event))
                    continue
                # Give chunks that SNS delivered out of order a moment to land.
                terminal, late_until = event, time.monotonic() + LATE_OUTPUT_SECONDS
    _print(output.finish())
    if terminal is None:
        # Only a stop ends the loop before the run's end: Ctrl-C or SIGTERM.
        return EXIT_INTERRUPTED
    code = _report(run_id, terminal, time.monotonic() - started)
    if (spent := cost.line()) is not None:
        status(f"run {run_id}: {spent}")
    return code


def _goes_on(run_id: str, event: BusEvent) -> str:
    data = event.body["data"]
    error = data["error"]
    attempt = f"attempt {data['attempt']}" if data.get("attempt") else "an attempt"
    return (
        f"run {run_id}: {attempt} failed on {event.node_id}: {error['type']}: "
        f"{error['message']}; the command runs again, still waiting"
    )


def _report(run_id: str, event: BusEvent, elapsed: float) -> int:
    data = event.body["data"]
    _artifacts(run_id, data)
    if event.event_type == EventType.TASK_COMPLETED:
        status(
            f"run {run_id}: completed on {event.node_id} in {data['duration_seconds']}s "
            f"(exit {data['exit_code']}, {elapsed:.1f}s since submit); log {data['log_uri']}"
        )
        return EXIT_OK
    error = data["error"]
    status(
        f"run {run_id}: failed on {event.node_id}: {error['type']}: {error['message']}"
        f"{cancel_note(data.get('cancel'))}"
    )
    return EXIT_FAILURE


def _artifacts(run_id: str, data: dict[str, Any]) -> None:
    """What the run left in the log bucket, and what it could not keep."""
    for artifact in data.get("artifacts") or []:
        status(f"run {run_id}: artifact {artifact['uri']} ({artifact['bytes']} bytes)")
    for omitted in data.get("artifacts_omitted") or []:
        status(f"run {run_id}: not kept: {omitted['name']}: {omitted['reason']}")


def _print(pieces: list[tuple[str, str]]) -> None:
    for stream, text in pieces:
        (sys.stderr if stream == "stderr" else sys.stdout).write(text)
    sys.stdout.flush()


def status(line: str) -> None:
    click.echo(f"» {line}", err=True)
