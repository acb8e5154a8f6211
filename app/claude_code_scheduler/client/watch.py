"""Making sense of the event stream for a person: a run's output in order,
one line per event, and the table of nodes. No I/O here."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from claude_code_scheduler.protocol.events import STALE_AFTER_INTERVALS


def parse_timestamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --- one run's output ---------------------------------------------------------


def line_text(line: str) -> str | None:
    """The readable part of one stream-json line: the assistant's text blocks.
    The result line repeats the answer, so it shows nothing."""
    try:
        obj = json.loads(line)
    except ValueError:
        return line if line.strip() else None
    if not isinstance(obj, dict) or obj.get("type") != "assistant":
        return None
    content = obj.get("message", {}).get("content", [])
    texts = [
        block.get("text", "")
        for block in content
        if isinstance(block, dict) and block.get("type") == "text"
    ]
    tools = [
        f"[tool: {block.get('name')}]"
        for block in content
        if isinstance(block, dict) and block.get("type") == "tool_use"
    ]
    joined = "\n".join(t for t in [*texts, *tools] if t)
    return joined or None


@dataclass
class OutputAssembler:
    """Puts TaskOutput chunks back in chunk_index order (SNS standard topics
    may reorder) and splits stdout into lines."""

    raw: bool = False
    _next: int = 0
    _waiting: dict[int, tuple[str, str]] = field(default_factory=dict)
    _partial: str = ""

    def add(self, chunk_index: int, stream: str, data: str) -> list[tuple[str, str]]:
        """Returns (stream, text) pieces ready to print, in order."""
        self._waiting[chunk_index] = (stream, data)
        ready: list[tuple[str, str]] = []
        while self._next in self._waiting:
            stream, data = self._waiting.pop(self._next)
            self._next += 1
            ready.extend(self._render(stream, data))
        return ready

    def finish(self) -> list[tuple[str, str]]:
        """Whatever is left: late chunks in order, then an unfinished line."""
        ready: list[tuple[str, str]] = []
        for index in sorted(self._waiting):
            ready.extend(self._render(*self._waiting.pop(index)))
        if self._partial:
            text = self._partial if self.raw else line_text(self._partial)
            self._partial = ""
            if text:
                ready.append(("stdout", text if self.raw else text + "\n"))
        return ready

    def _render(self, stream: str, data: str) -> list[tuple[str, str]]:
        if self.raw or stream == "stderr":
            return [(stream, data)]
        lines = (self._partial + data).split("\n")
        self._partial = lines.pop()
        return [("stdout", text + "\n") for line in lines if (text := line_text(line))]


# --- a run's end and what it cost ----------------------------------------------


def ends_the_run(event_type: str, data: dict[str, Any]) -> bool:
    """TaskCompleted, or a TaskFailed after which the command does not run
    again. `retryable` true means it does: handed back to the queue, or
    released to be retried after a delay, perhaps on another node."""
    return event_type == "TaskCompleted" or (
        event_type == "TaskFailed" and data.get("retryable") is not True
    )


def usd(amount: float) -> str:
    """Dollars as a person reads them: $0.0008, not $8e-04 or $0.000800."""
    return "$" + (f"{amount:.6f}".rstrip("0").rstrip(".") or "0")


def _cost_of(data: dict[str, Any]) -> float | None:
    usage = data.get("usage")
    cost = usage.get("total_cost_usd") if isinstance(usage, dict) else None
    return float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None


@dataclass
class RunCost:
    """What a run cost over its attempts, as their terminal events said."""

    total_usd: float = 0.0
    attempts: int = 0  # terminal events that said what they cost
    last_usage: dict[str, Any] | None = None
    _counted: set[str] = field(default_factory=set)

    def add(self, body: dict[str, Any]) -> None:
        """One terminal event's body; SNS may deliver it twice, it counts once."""
        data = body.get("data", {})
        cost = _cost_of(data)
        if cost is None or body.get("event_id") in self._counted:
            return
        self._counted.add(str(body.get("event_id")))
        self.total_usd += cost
        self.attempts += 1
        self.last_usage = data["usage"]

    def line(self) -> str | None:
        """`cost $0.0008 (100 in / 20 out tokens, 1 turn)`, or `cost $0.0016
        (2 attempts)`; None when no event said (a node older than the usage
        field, or a run without a result line)."""
        if self.last_usage is None:
            return None
        if self.attempts > 1:
            return f"cost {usd(self.total_usd)} ({self.attempts} attempts)"
        usage = self.last_usage
        details = []
        tokens_in, tokens_out = usage.get("input_tokens"), usage.get("output_tokens")
        if isinstance(tokens_in, int) and isinstance(tokens_out, int):
            details.append(f"{tokens_in} in / {tokens_out} out tokens")
        turns = usage.get("num_turns")
        if isinstance(turns, int):
            details.append(f"{turns} turn{'' if turns == 1 else 's'}")
        return f"cost {usd(self.total_usd)}" + (f" ({', '.join(details)})" if details else "")


# --- one line per event -------------------------------------------------------


def describe(body: dict[str, Any]) -> str:
    data = body.get("data", {})
    kind = body.get("event_type")
    head = f"{body.get('timestamp')} {body.get('node_id')} #{body.get('sequence')} {kind}"
    detail = {
        "NodeRegistered": lambda: f"mock={data.get('mock_mode')} version={data.get('version')}",
        "NodeHeartbeat": lambda: (
            f"{data.get('status')} running={','.join(data.get('running', [])) or '-'} "
            f"done={data.get('tasks_completed')} failed={data.get('tasks_failed')}"
            f"{_node_cost(data)}"
        ),
        "NodeDeregistered": lambda: f"reason={data.get('reason')}{_node_cost(data)}",
        "TaskStarted": lambda: f"run={data.get('run_id')} attempt={data.get('attempt')}",
        "TaskOutput": lambda: (
            f"run={data.get('run_id')} chunk={data.get('chunk_index')} "
            f"{data.get('stream')} {len(str(data.get('data', '')).encode())}B"
        ),
        "TaskCompleted": lambda: (
            f"run={data.get('run_id')} exit={data.get('exit_code')} "
            f"{data.get('duration_seconds')}s log={data.get('log_uri')}{_run_cost(data)}"
            f"{_artifact_counts(data)}"
        ),
        "TaskFailed": lambda: (
            f"run={data.get('run_id')} {data.get('error', {}).get('type')}: "
            f"{data.get('error', {}).get('message')} retryable={data.get('retryable')}"
            f"{_attempt(data)}{cancel_note(data.get('cancel'))}{_run_cost(data)}"
            f"{_artifact_counts(data)}"
        ),
        "CancelRequested": lambda: f"run={data.get('run_id')}{cancel_note(data)}",
    }.get(str(kind))
    return f"{head} {detail()}" if detail else head


def cancel_note(cancel: Any) -> str:
    """Who asked for a cancel and why (CancelRequested's data, a Cancelled
    TaskFailed's `cancel`); empty for anything else."""
    if not isinstance(cancel, dict):
        return ""
    reason = cancel.get("reason")
    return f" by={cancel.get('requested_by')}" + ("" if reason is None else f" reason={reason!r}")


def _run_cost(data: dict[str, Any]) -> str:
    cost = _cost_of(data)
    return "" if cost is None else f" cost={usd(cost)}"


def _node_cost(data: dict[str, Any]) -> str:
    """The node's running total (older nodes do not send one)."""
    cost = data.get("total_cost_usd")
    return f" cost={usd(cost)}" if isinstance(cost, int | float) else ""


def _attempt(data: dict[str, Any]) -> str:
    if data.get("attempt") is None:
        return ""
    return f" attempt={data['attempt']}" + (" (final)" if data.get("final_attempt") else "")


def _artifact_counts(data: dict[str, Any]) -> str:
    """How many artifacts a terminal event lists (older nodes list none)."""
    if "artifacts" not in data:
        return ""
    stored, omitted = len(data.get("artifacts") or []), len(data.get("artifacts_omitted") or [])
    return f" artifacts={stored}" + (f" omitted={omitted}" if omitted else "")


# --- the fleet ----------------------------------------------------------------


@dataclass
class NodeView:
    node_id: str
    node_name: str
    status: str = "unknown"
    running: list[str] = field(default_factory=list)
    last_seen: float = 0.0
    heartbeat_interval: float | None = None
    completed: int = 0
    failed: int = 0
    cost_usd: float | None = None  # None: the node sent no total
    last_sequence: int = 0

    def row(self, now: float, default_interval: float) -> dict[str, Any]:
        interval = self.heartbeat_interval or default_interval
        status = self.status
        if status != "gone" and now - self.last_seen > STALE_AFTER_INTERVALS * interval:
            status = "lost"
        return {
            "node_id": self.node_id,
            "node_name": self.node_name,
            "status": status,
            "running": self.running,
            "last_heartbeat_age_seconds": round(now - self.last_seen, 1),
            "tasks_completed": self.completed,
            "tasks_failed": self.failed,
            "total_cost_usd": self.cost_usd,
        }


class Fleet:
    """Folds events into the latest view of each node (by sequence, so late
    arrivals cannot roll a node back)."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeView] = {}
        # Runs a CancelRequested was heard for, until their end is heard.
        self.cancelling: set[str] = set()

    def add(self, body: dict[str, Any]) -> None:
        kind = body.get("event_type")
        run_id = body.get("data", {}).get("run_id")
        if kind == "CancelRequested":
            # From an operator, not a node: it marks the run, not a node.
            self.cancelling.add(str(run_id))
            return
        if kind in ("TaskCompleted", "TaskFailed"):
            self.cancelling.discard(str(run_id))
        node_id = str(body.get("node_id"))
        node = self.nodes.setdefault(node_id, NodeView(node_id, str(body.get("node_name"))))
        sequence = int(body.get("sequence", 0))
        data = body.get("data", {})
        if kind == "NodeRegistered":
            node.heartbeat_interval = float(data.get("heartbeat_interval") or 0) or None
        if sequence < node.last_sequence:
            return
        node.last_sequence = sequence
        node.last_seen = max(node.last_seen, parse_timestamp(str(body.get("timestamp"))))
        if kind == "NodeHeartbeat":
            node.status = str(data.get("status"))
            node.running = list(data.get("running", []))
        elif kind == "NodeRegistered":
            node.status = "idle"
        elif kind == "NodeDeregistered":
            node.status, node.running = "gone", []
        elif kind == "TaskStarted" and data.get("run_id") not in node.running:
            node.status = "busy"
            node.running = [*node.running, str(data.get("run_id"))]
        elif kind in ("TaskCompleted", "TaskFailed"):
            node.running = [r for r in node.running if r != data.get("run_id")]
            if node.status == "busy" and not node.running:
                # Its last run ended: idle now, not at its next heartbeat.
                node.status = "idle"
        if "tasks_completed" in data:
            node.completed, node.failed = int(data["tasks_completed"]), int(data["tasks_failed"])
        if isinstance(data.get("total_cost_usd"), int | float):
            node.cost_usd = float(data["total_cost_usd"])

    def rows(self, now: float, default_interval: float) -> list[dict[str, Any]]:
        rows = [self.nodes[key].row(now, default_interval) for key in sorted(self.nodes)]
        for row in rows:
            row["cancelling"] = [r for r in row["running"] if r in self.cancelling]
        return rows


def table(rows: list[dict[str, Any]]) -> str:
    headers = ["NODE", "NAME", "STATUS", "RUNNING", "LAST HEARTBEAT", "DONE", "FAILED", "COST"]
    cells = [
        [
            r["node_id"],
            r["node_name"],
            r["status"],
            ",".join(
                f"{run} (cancelling)" if run in r.get("cancelling", ()) else run
                for run in r["running"]
            )
            or "-",
            f"{r['last_heartbeat_age_seconds']:.0f}s ago",
            str(r["tasks_completed"]),
            str(r["tasks_failed"]),
            "-" if r["total_cost_usd"] is None else usd(r["total_cost_usd"]),
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
