"""What the dashboard shows, folded from control-bus events and run records.
No I/O and no clock of its own: the feed threads hand it events and records,
and `now` (epoch seconds) where time matters.

The nodes are client.watch's Fleet (the same fold as `nodes`); a run in
progress keeps its output assembled in order by client.watch's
OutputAssembler (the same text as `submit --wait`). Memory is bounded by the
caps below, whatever the fleet does: a dashboard left open for weeks holds at
most MAX_RUNS_IN_PROGRESS runs' output tails, MAX_RECENT_RUNS ended attempts
and MAX_NODES nodes.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from claude_code_scheduler.client.watch import Fleet, OutputAssembler, ends_the_run, parse_timestamp
from claude_code_scheduler.protocol.events import EventType

log = logging.getLogger(__name__)

# Runs shown in progress at once; past it the one started longest ago is
# dropped from view (its end still lands in the recent runs).
MAX_RUNS_IN_PROGRESS = 100
# The tail of each run's output kept, in UTF-8 bytes of text; older text is
# dropped and the card says how much.
MAX_OUTPUT_BYTES = 64 * 1024
# Ended attempts kept for the recent runs table, newest first.
MAX_RECENT_RUNS = 200
# Nodes kept; a node that deregistered, or that was not heard from, leaves
# the table after GONE_KEPT_SECONDS.
MAX_NODES = 500
GONE_KEPT_SECONDS = 600.0
# Assumed for a node whose NodeRegistered was not heard (the node's default).
DEFAULT_HEARTBEAT_INTERVAL = 30.0
TERMINAL = (EventType.TASK_COMPLETED.value, EventType.TASK_FAILED.value)


@dataclass
class RunOutput:
    """The tail of one run's assembled output: (stream, text) pieces whose
    text adds up to at most MAX_OUTPUT_BYTES."""

    pieces: deque[tuple[str, str]] = field(default_factory=deque)
    kept_bytes: int = 0
    dropped_bytes: int = 0

    def add(self, stream: str, text: str) -> None:
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_OUTPUT_BYTES:
            # Keep the end of one huge piece (cut on a character boundary).
            cut = text.encode("utf-8", "surrogatepass")[-MAX_OUTPUT_BYTES:]
            kept = cut.decode("utf-8", "ignore")
            self.dropped_bytes += size - len(kept.encode("utf-8", "surrogatepass"))
            text, size = kept, len(kept.encode("utf-8", "surrogatepass"))
        self.pieces.append((stream, text))
        self.kept_bytes += size
        while self.kept_bytes > MAX_OUTPUT_BYTES:
            _, old = self.pieces.popleft()
            old_size = len(old.encode("utf-8", "surrogatepass"))
            self.kept_bytes -= old_size
            self.dropped_bytes += old_size


@dataclass
class RunInProgress:
    run_id: str
    node_id: str
    task_id: str | None = None
    task_name: str | None = None
    attempt: int | None = None
    started_at: str | None = None
    # The node's sequence number of TaskStarted: a later heartbeat of that
    # node that does not list the run means the run is no longer there.
    started_sequence: int = 0
    output: RunOutput = field(default_factory=RunOutput)
    assembler: OutputAssembler = field(default_factory=OutputAssembler)

    def view(self, cancelling: bool, with_output: bool) -> dict[str, Any]:
        view: dict[str, Any] = {
            "run_id": self.run_id,
            "node_id": self.node_id,
            "task": self.task_name or self.task_id,
            "attempt": self.attempt,
            "started_at": self.started_at,
            "cancelling": cancelling,
            "output_dropped_bytes": self.output.dropped_bytes,
        }
        if with_output:
            view["output"] = [list(piece) for piece in self.output.pieces]
        return view


@dataclass(frozen=True)
class EndedAttempt:
    """One row of the recent runs table: how one attempt of a run ended."""

    run_id: str
    attempt: int | None  # None: the bus did not say (TaskCompleted names none)
    task: str | None
    node_id: str | None
    outcome: str  # "Completed", or TaskFailed's error type
    retried: bool
    duration_seconds: float | None
    cost_usd: float | None
    ended_at: str
    from_record: bool

    def view(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "attempt": self.attempt,
            "task": self.task,
            "node_id": self.node_id,
            "outcome": self.outcome,
            "retried": self.retried,
            "duration_seconds": self.duration_seconds,
            "cost_usd": self.cost_usd,
            "ended_at": self.ended_at,
        }


@dataclass
class Changes:
    """What one batch changed, for the live stream: output pieces per run, in
    order, and whether the rest of the view changed."""

    output: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    summary: bool = False

    def add_output(self, run_id: str, pieces: list[tuple[str, str]]) -> None:
        if pieces:
            self.output.setdefault(run_id, []).extend(pieces)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _cost(data: dict[str, Any]) -> float | None:
    """usage.total_cost_usd of a terminal event's data, or of a run record."""
    usage = data.get("usage")
    return _number(usage.get("total_cost_usd")) if isinstance(usage, dict) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class DashboardState:
    """The fleet, the runs in progress and the recent ends. Its methods take
    the lock: the bus feed and the records feed call them from their threads,
    the web app from its event loop."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.fleet = Fleet()
        self.capacity: dict[str, int] = {}
        self.gone_since: dict[str, float] = {}
        # When the dashboard last heard each node, by its own clock: a node
        # whose clock is off must not look silent.
        self.heard: dict[str, float] = {}
        self.runs: OrderedDict[str, RunInProgress] = OrderedDict()
        self.recent: dict[tuple[str, int | None], EndedAttempt] = {}

    # --- events ----------------------------------------------------------------

    def apply(self, bodies: list[dict[str, Any]], now: float) -> Changes:
        """Folds a batch of event bodies in, in the order given."""
        changes = Changes()
        with self.lock:
            for body in bodies:
                try:
                    self._apply_one(body, now, changes)
                except (ValueError, TypeError, KeyError, AttributeError):
                    # Anyone who may publish on the bus can send a malformed
                    # event; it must not stop the view.
                    log.warning("skipped a malformed %s event", body.get("event_type"))
            if self.prune(now):
                changes.summary = True
        return changes

    def _apply_one(self, body: dict[str, Any], now: float, changes: Changes) -> None:
        kind = str(body.get("event_type"))
        data = body.get("data")
        if not isinstance(data, dict):
            return
        self.fleet.add(body)
        changes.summary = changes.summary or kind != EventType.TASK_OUTPUT
        node_id = str(body.get("node_id"))
        if node_id in self.fleet.nodes:
            self.heard[node_id] = now
        run_id = _text(data.get("run_id"))
        if kind == EventType.NODE_REGISTERED and isinstance(data.get("max_concurrent_tasks"), int):
            self.capacity[node_id] = int(data["max_concurrent_tasks"])
        if kind == EventType.NODE_DEREGISTERED:
            self.gone_since[node_id] = now
            self._forget_runs_of(node_id, lambda run: True)
        elif kind == EventType.NODE_HEARTBEAT:
            self.gone_since.pop(node_id, None)
            running = set(data.get("running") or [])
            sequence = int(body.get("sequence") or 0)
            self._forget_runs_of(
                node_id,
                lambda run: run.run_id not in running and run.started_sequence < sequence,
            )
        elif run_id is None:
            return
        elif kind == EventType.TASK_STARTED:
            self._started(run_id, node_id, body, data)
        elif kind == EventType.TASK_OUTPUT:
            self._output(run_id, node_id, data, changes)
        elif kind in TERMINAL:
            self._ended(run_id, node_id, body, data, changes)

    def _run(self, run_id: str, node_id: str) -> RunInProgress:
        run = self.runs.get(run_id)
        if run is None:
            run = self.runs[run_id] = RunInProgress(run_id, node_id)
            while len(self.runs) > MAX_RUNS_IN_PROGRESS:
                self.runs.popitem(last=False)
        return run

    def _started(
        self, run_id: str, node_id: str, body: dict[str, Any], data: dict[str, Any]
    ) -> None:
        run = self.runs.get(run_id)
        if run is not None and run.attempt is not None and data.get("attempt") != run.attempt:
            # A new attempt numbers its chunks from 0 again.
            del self.runs[run_id]
        run = self._run(run_id, node_id)
        run.node_id = node_id
        run.task_id, run.task_name = _text(data.get("task_id")), _text(data.get("task_name"))
        run.attempt = data["attempt"] if isinstance(data.get("attempt"), int) else None
        run.started_at = _text(data.get("started_at")) or _text(body.get("timestamp"))
        run.started_sequence = int(body.get("sequence") or 0)

    def _output(self, run_id: str, node_id: str, data: dict[str, Any], changes: Changes) -> None:
        index, stream, text = data.get("chunk_index"), data.get("stream"), data.get("data")
        if not isinstance(index, int) or not isinstance(text, str):
            return
        run = self._run(run_id, node_id)
        pieces = run.assembler.add(index, str(stream), text)
        for piece in pieces:
            run.output.add(*piece)
        changes.add_output(run_id, pieces)

    def _ended(
        self,
        run_id: str,
        node_id: str,
        body: dict[str, Any],
        data: dict[str, Any],
        changes: Changes,
    ) -> None:
        run = self.runs.pop(run_id, None)
        if run is not None:
            # Whatever was waiting for an earlier chunk, and an unfinished line.
            pieces = run.assembler.finish()
            changes.add_output(run_id, pieces)
        attempt = data.get("attempt")
        if not isinstance(attempt, int):
            attempt = run.attempt if run is not None else None
        error = data.get("error")
        error_type = str(error.get("type")) if isinstance(error, dict) else "Failed"
        kind = str(body.get("event_type"))
        self._add_recent(
            EndedAttempt(
                run_id=run_id,
                attempt=attempt,
                task=(run.task_name or run.task_id) if run is not None else None,
                node_id=node_id,
                outcome="Completed" if kind == EventType.TASK_COMPLETED else error_type,
                retried=not ends_the_run(kind, data),
                duration_seconds=_number(data.get("duration_seconds")),
                cost_usd=_cost(data),
                ended_at=str(body.get("timestamp")),
                from_record=False,
            )
        )

    def _forget_runs_of(self, node_id: str, gone: Callable[[RunInProgress], bool]) -> None:
        for run_id in [r for r, run in self.runs.items() if run.node_id == node_id and gone(run)]:
            del self.runs[run_id]

    def prune(self, now: float) -> bool:
        """Nodes leave the table GONE_KEPT_SECONDS after they deregistered or
        fell silent (a node killed outright says nothing), with any runs they
        still showed; past MAX_NODES the longest silent go first. True when
        a node left."""
        with self.lock:
            nodes = self.fleet.nodes
            leaving = {
                node_id
                for node_id in nodes
                if now - self.gone_since.get(node_id, self.heard.get(node_id, now))
                > GONE_KEPT_SECONDS
            }
            if len(nodes) - len(leaving) > MAX_NODES:
                by_age = sorted(set(nodes) - leaving, key=lambda n: self.heard.get(n, now))
                leaving.update(by_age[: len(nodes) - len(leaving) - MAX_NODES])
            for node_id in leaving:
                nodes.pop(node_id, None)
                self.capacity.pop(node_id, None)
                self.gone_since.pop(node_id, None)
                self.heard.pop(node_id, None)
                self._forget_runs_of(node_id, lambda run: True)
            return bool(leaving)

    # --- records ---------------------------------------------------------------

    def add_records(self, records: list[dict[str, Any]]) -> bool:
        """Run records (protocol/schemas/RunRecord.json) into the recent runs;
        True when the table changed. A record is what the node stored, so it
        replaces the bus's row of the same attempt, or of an attempt the bus
        did not number."""
        changed = False
        with self.lock:
            for record in records:
                row = _row_of_record(record)
                if row is None or self.recent.get((row.run_id, row.attempt)) == row:
                    continue
                self._add_recent(row)
                changed = True
        return changed

    def _add_recent(self, row: EndedAttempt) -> None:
        key = (row.run_id, row.attempt)
        known = self.recent.get(key)
        if known is not None and known.from_record and not row.from_record:
            return  # a redelivered event never overrides the node's record
        if row.attempt is not None and (row.run_id, None) in self.recent and row.from_record:
            del self.recent[(row.run_id, None)]
        self.recent[key] = row
        if len(self.recent) > MAX_RECENT_RUNS:
            for old in sorted(self.recent, key=lambda k: _when(self.recent[k]))[
                : len(self.recent) - MAX_RECENT_RUNS
            ]:
                del self.recent[old]

    # --- views -----------------------------------------------------------------

    def snapshot(self, now: float, *, with_output: bool = True) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready data; output only when
        asked (the live stream sends it piece by piece)."""
        with self.lock:
            nodes = self.fleet.rows(now, DEFAULT_HEARTBEAT_INTERVAL)
            for row in nodes:
                row["capacity"] = self.capacity.get(row["node_id"])
            cancelling = self.fleet.cancelling
            runs = [
                run.view(run.run_id in cancelling, with_output)
                for run in sorted(self.runs.values(), key=lambda r: r.started_at or "")
            ]
            recent = [row.view() for row in sorted(self.recent.values(), key=_when, reverse=True)]
        costs = [row["cost_usd"] for row in recent if row["cost_usd"] is not None]
        return {
            "server_time": now,
            "nodes": nodes,
            "runs": runs,
            "recent": recent,
            "totals": {
                "nodes_up": sum(1 for n in nodes if n["status"] not in ("gone", "lost")),
                "nodes_busy": sum(1 for n in nodes if n["status"] == "busy"),
                "nodes_lost": sum(1 for n in nodes if n["status"] == "lost"),
                "runs_in_progress": len(runs),
                "recent_runs": len(recent),
                "recent_cost_usd": round(sum(costs), 9),
                "fleet_cost_usd": round(
                    sum(n["total_cost_usd"] or 0.0 for n in nodes if n["status"] != "gone"), 9
                ),
            },
            "caps": {
                "runs_in_progress": MAX_RUNS_IN_PROGRESS,
                "output_bytes": MAX_OUTPUT_BYTES,
                "recent_runs": MAX_RECENT_RUNS,
            },
        }


def _when(row: EndedAttempt) -> float:
    try:
        return parse_timestamp(row.ended_at)
    except ValueError:
        return 0.0


def _row_of_record(record: dict[str, Any]) -> EndedAttempt | None:
    run_id, ended = _text(record.get("run_id")), _text(record.get("ended_at"))
    if run_id is None or ended is None:
        return None
    try:
        parse_timestamp(ended)
    except ValueError:
        return None
    attempt = record.get("attempt")
    completed = record.get("outcome") == EventType.TASK_COMPLETED
    return EndedAttempt(
        run_id=run_id,
        attempt=attempt if isinstance(attempt, int) else None,
        task=_text(record.get("task_name")) or _text(record.get("task_id")),
        node_id=_text(record.get("node_id")),
        outcome="Completed" if completed else str(record.get("error_type")),
        retried=record.get("retryable") is True,
        duration_seconds=_number(record.get("duration_seconds")),
        cost_usd=_cost(record),
        ended_at=ended,
        from_record=True,
    )
