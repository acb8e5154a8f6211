"""What really happened, read back from the control bus, the node queue and the
log bucket, and the invariants the fuzz, chaos and outage suites hold it to.

Events are de-duplicated by `event_id` (SNS delivers at least once) and put in
each node's `sequence` order before anything is judged. An attempt is one
delivery of a run on one node: its TaskStarted, the TaskOutput chunks after
it, and its terminal event, all from that node's own sequence. Every check
returns the problems it found, in words, so that a failing soak names all of
them at once instead of the first.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import botocore.exceptions

from tests.conftest import wait_until
from tests.integration.conftest import EventReader, Stack

TERMINAL = frozenset({"TaskCompleted", "TaskFailed"})
COMPLETED = "TaskCompleted"
HANDED_BACK = "TaskFailed/NodeShutdown"


def outcome_of(event: dict[str, Any]) -> str:
    """`TaskCompleted`, or `TaskFailed/<error type>`."""
    if event["event_type"] == COMPLETED:
        return COMPLETED
    return f"TaskFailed/{event['data']['error']['type']}"


@dataclass
class Attempt:
    node_id: str
    run_id: str
    started: dict[str, Any]
    outputs: list[dict[str, Any]] = field(default_factory=list)
    terminal: dict[str, Any] | None = None  # None: the node died first

    @property
    def number(self) -> int:
        return int(self.started["data"]["attempt"])

    @property
    def outcome(self) -> str | None:
        return None if self.terminal is None else outcome_of(self.terminal)

    def chunks(self) -> list[dict[str, Any]]:
        return sorted(self.outputs, key=lambda e: e["data"]["chunk_index"])

    def output(self) -> bytes:
        return "".join(c["data"]["data"] for c in self.chunks()).encode()

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.run_id} on {self.node_id} ({self.outcome})"


class History:
    def __init__(self, events: Iterable[dict[str, Any]]) -> None:
        unique: dict[str, dict[str, Any]] = {}
        for event in events:
            unique.setdefault(event["event_id"], event)
        self.events = list(unique.values())
        self.by_node: dict[str, list[dict[str, Any]]] = {}
        for event in sorted(self.events, key=lambda e: (e["node_id"], e["sequence"])):
            self.by_node.setdefault(event["node_id"], []).append(event)
        self.attempts: list[Attempt] = []
        # Terminal events of commands that never started: InvalidCommand.
        self.rejections: list[dict[str, Any]] = []
        # Events that fit no attempt: a second TaskStarted, stray output, a
        # terminal event without a start.
        self.problems: list[str] = []
        for node_id, node_events in self.by_node.items():
            self._pair(node_id, node_events)

    def _pair(self, node_id: str, events: list[dict[str, Any]]) -> None:
        running: dict[str, Attempt] = {}
        for event in events:
            kind = event["event_type"]
            if not kind.startswith("Task"):
                continue
            run_id = event["data"]["run_id"]
            where = f"on {node_id} (sequence {event['sequence']})"
            if kind == "TaskStarted":
                if run_id in running:
                    self.problems.append(
                        f"{run_id} started again {where} before {running[run_id]} ended"
                    )
                running[run_id] = Attempt(node_id, run_id, event)
                self.attempts.append(running[run_id])
            elif kind == "TaskOutput":
                if run_id in running:
                    running[run_id].outputs.append(event)
                else:
                    self.problems.append(f"TaskOutput of {run_id} {where} outside any attempt")
            elif outcome_of(event) == "TaskFailed/InvalidCommand":
                self.rejections.append(event)
            elif run_id in running:
                running.pop(run_id).terminal = event
            else:
                self.problems.append(
                    f"{outcome_of(event)} of {run_id} {where} without a TaskStarted before it"
                )

    def attempts_of(self, run_id: str) -> list[Attempt]:
        return sorted((a for a in self.attempts if a.run_id == run_id), key=lambda a: a.number)

    def terminals_of(self, run_id: str | None) -> list[dict[str, Any]]:
        """Every terminal event naming `run_id` (None: those that name no run)."""
        return [
            e for e in self.events if e["event_type"] in TERMINAL and e["data"]["run_id"] == run_id
        ]

    def of(self, event_type: str, node_id: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e["event_type"] == event_type and (node_id is None or e["node_id"] == node_id)
        ]

    def last_sequence(self, node_id: str) -> int:
        events = self.by_node.get(node_id, [])
        return int(events[-1]["sequence"]) if events else 0

    def summary(self, run_ids: Iterable[str] = ()) -> str:
        """Who ran what, for failure messages."""
        lines = [f"{len(self.events)} events from {len(self.by_node)} node(s)"]
        for run_id in run_ids:
            attempts = ", ".join(
                f"{a.number}@{a.node_id}:{a.outcome}" for a in self.attempts_of(run_id)
            )
            lines.append(f"  {run_id}: {attempts or 'never started'}")
        return "\n".join(lines)


# --- the invariants ----------------------------------------------------------------


def sequence_problems(
    history: History, *, clean: Iterable[str] = (), nodes: Iterable[str] | None = None
) -> list[str]:
    """Per node: sequence 1, 2, 3... with no gap and no number used twice,
    starting with NodeRegistered and with nothing after NodeDeregistered; a
    node in `clean` (it stopped on a signal and exited 0) must have published
    NodeDeregistered. A node killed with SIGKILL still has no gap: its outbox
    publishes in order, so what it got out is a prefix."""
    problems = []
    clean = set(clean)
    for node_id in history.by_node if nodes is None else nodes:
        events = history.by_node.get(node_id, [])
        numbers = [int(e["sequence"]) for e in events]
        if numbers != list(range(1, len(numbers) + 1)):
            missing = sorted(set(range(1, max(numbers, default=0) + 1)) - set(numbers))
            twice = sorted(n for n, count in Counter(numbers).items() if count > 1)
            problems.append(
                f"{node_id}: sequence gaps at {missing[:20]}, numbers used twice {twice[:20]}"
            )
        if events and events[0]["event_type"] != "NodeRegistered":
            problems.append(f"{node_id}: first event is {events[0]['event_type']}")
        ends = [i for i, e in enumerate(events) if e["event_type"] == "NodeDeregistered"]
        if ends and ends[0] != len(events) - 1:
            after = [e["event_type"] for e in events[ends[0] + 1 :]]
            problems.append(f"{node_id}: published {after[:10]} after NodeDeregistered")
        if node_id in clean and not ends:
            problems.append(f"{node_id} stopped cleanly but no NodeDeregistered arrived")
    return problems


def attempt_problems(
    history: History, run_ids: Iterable[str], *, died: Iterable[str] = ()
) -> list[str]:
    """Each attempt of each run: a number of at least 1 that no other attempt
    of the run has (one delivery, one start), chunks 0, 1, 2... with no gap,
    and exactly one terminal event, unless its node was killed (`died`)."""
    problems = list(history.problems)
    died = set(died)
    for run_id in run_ids:
        attempts = history.attempts_of(run_id)
        for number, count in Counter(a.number for a in attempts).items():
            if count > 1:
                nodes = [a.node_id for a in attempts if a.number == number]
                problems.append(f"attempt {number} of {run_id} started {count} times: {nodes}")
        for attempt in attempts:
            if attempt.number < 1:
                problems.append(f"{attempt}: attempt below 1")
            if attempt.terminal is None and attempt.node_id not in died:
                problems.append(f"{attempt}: no terminal event, and its node did not die")
            indexes = [c["data"]["chunk_index"] for c in attempt.chunks()]
            if attempt.terminal is not None and indexes != list(range(len(indexes))):
                problems.append(f"{attempt}: chunk indexes {indexes[:20]}...")
    return problems


def outcome_problems(history: History, expected: Mapping[str, str]) -> list[str]:
    """`expected[run_id]` is how the run must end (`TaskCompleted`,
    `TaskFailed/ClaudeError`...). Its last attempt ends that way; every other
    attempt ends that way too, or was handed back at a shutdown, or died."""
    problems = []
    for run_id, outcome in expected.items():
        attempts = history.attempts_of(run_id)
        if not attempts:
            problems.append(f"{run_id} never started (expected {outcome})")
            continue
        last = attempts[-1]
        if last.outcome != outcome:
            problems.append(f"{run_id} ended with {last}, expected {outcome}")
        for attempt in attempts[:-1]:
            if attempt.outcome not in (None, outcome, HANDED_BACK):
                problems.append(f"{attempt}: expected {outcome} or a hand-back")
    return problems


def log_problems(history: History, stack: Stack, run_ids: Iterable[str]) -> list[str]:
    """The log in S3 is the last attempt's chunks joined, and its terminal
    event points at it."""
    problems = []
    for run_id in run_ids:
        finished = [a for a in history.attempts_of(run_id) if a.terminal is not None]
        if not finished:
            problems.append(f"{run_id}: no attempt ended, so no log to compare")
            continue
        last = finished[-1]
        data = last.terminal["data"] if last.terminal else {}
        uri = f"s3://{stack.bucket}/logs/{run_id}.log"
        if data.get("log_uri") != uri:
            problems.append(f"{last}: log_uri {data.get('log_uri')!r}, expected {uri!r}")
            continue
        try:
            log = stack.log_text(run_id)
        except botocore.exceptions.ClientError as exc:
            problems.append(f"{last}: its log cannot be read: {exc}")
            continue
        output = last.output()
        if log != output:
            same = next(
                (i for i, (a, b) in enumerate(zip(log, output, strict=False)) if a != b),
                min(len(log), len(output)),
            )
            problems.append(
                f"{last}: the log ({len(log)} bytes) is not its {len(last.outputs)} chunks "
                f"({len(output)} bytes) joined; they differ from byte {same}"
            )
        if last.outcome == COMPLETED and data.get("output_bytes") != len(log):
            problems.append(f"{last}: output_bytes {data.get('output_bytes')}, log {len(log)}")
    return problems


def bucket_problems(stack: Stack, allowed_run_ids: Iterable[str]) -> list[str]:
    """Nothing in the bucket but logs/<run_id>.log, runs/<run_id>/... (the
    run's artifacts) and records/.../<run_id>-<attempt>.json of runs that
    started, and no upload left unfinished."""
    started = set(allowed_run_ids)
    problems = []
    for page in stack.s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.startswith("logs/"):
                run_id = key.removeprefix("logs/").removesuffix(".log")
                if not key.endswith(".log") or run_id not in started:
                    problems.append(f"s3://{stack.bucket}/{key} is the log of no run that started")
            elif key.startswith("runs/"):
                if key.split("/")[1] not in started:
                    problems.append(f"s3://{stack.bucket}/{key} belongs to no run that started")
            elif key.startswith("records/"):
                # records/date=YYYY-MM-DD/<run_id>-<attempt>.json (aws.records)
                run_id = key.split("/")[-1].rsplit("-", 1)[0]
                if len(key.split("/")) != 3 or run_id not in started:
                    problems.append(
                        f"s3://{stack.bucket}/{key} is the record of no run that started"
                    )
            else:
                problems.append(f"s3://{stack.bucket}/{key} is outside logs/, runs/ and records/")
    uploads = stack.s3.list_multipart_uploads(Bucket=stack.bucket).get("Uploads", [])
    problems += [f"unfinished multipart upload of {u['Key']}" for u in uploads]
    return problems


def queue_counts(stack: Stack) -> dict[str, int]:
    names = ("Messages", "MessagesNotVisible", "MessagesDelayed")
    attributes = stack.sqs.get_queue_attributes(
        QueueUrl=stack.queue_url, AttributeNames=[f"ApproximateNumberOf{n}" for n in names]
    )["Attributes"]
    return {n: int(attributes[f"ApproximateNumberOf{n}"]) for n in names}


def finished(history: History, expected: Mapping[str, str], stack: Stack) -> bool:
    """Every run's last attempt ended as it must, and nothing is left queued
    (a run whose node died after its terminal event comes back, and runs again)."""
    for run_id, outcome in expected.items():
        attempts = history.attempts_of(run_id)
        if not attempts or attempts[-1].outcome != outcome:
            return False
    return not any(queue_counts(stack).values())


def queue_problems(stack: Stack, timeout: float) -> list[str]:
    """The node queue is empty (nothing visible, in flight or delayed) within `timeout`."""
    if wait_until(lambda: not any(queue_counts(stack).values()), timeout, interval=0.5):
        return []
    return [f"the node queue still holds messages after {timeout:g}s: {queue_counts(stack)}"]


# --- reading the bus while a test does other things ----------------------------------


class Collector:
    """Reads the control bus on a thread of its own (EventReader.poll_events,
    which checks every event against its schema), so that the test's thread is
    free to send commands and signals. A failure on the reading thread, an
    event that does not match its schema for one, is raised on the test's."""

    def __init__(self, reader: EventReader) -> None:
        self._reader = reader
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._reader.poll_events(wait=1)
            except BaseException as exc:
                self._error = exc
                return

    def history(self) -> History:
        if self._error is not None:
            raise self._error
        return History(list(self._reader.events))

    def wait(self, predicate: Callable[[History], bool], timeout: float, what: str) -> History:
        deadline = time.monotonic() + timeout
        while True:
            history = self.history()
            if predicate(history):
                return history
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:g}s; {history.summary()}")
            time.sleep(0.2)

    def quiet(self, seconds: float = 2.0, timeout: float = 30.0) -> History:
        """The history once nothing but heartbeats has arrived for `seconds`."""
        deadline = time.monotonic() + timeout
        count, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = sum(e["event_type"] != "NodeHeartbeat" for e in list(self._reader.events))
            if now != count:
                count, since = now, time.monotonic()
            elif time.monotonic() - since >= seconds:
                break
            time.sleep(0.2)
        return self.history()
