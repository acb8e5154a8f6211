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
        ),
        "NodeDeregistered": lambda: f"reason={data.get('reason')}",
        "TaskStarted": lambda: f"run={data.get('run_id')} attempt={data.get('attempt')}",
        "TaskOutput": lambda: (
            f"run={data.get('run_id')} chunk={data.get('chunk_index')} "
            f"{data.get('stream')} {len(str(data.get('data', '')).encode())}B"
        ),
        "TaskCompleted": lambda: (
            f"run={data.get('run_id')} exit={data.get('exit_code')} "
            f"{data.get('duration_seconds')}s log={data.get('log_uri')}{_artifact_counts(data)}"
        ),
        "TaskFailed": lambda: (
            f"run={data.get('run_id')} {data.get('error', {}).get('type')}: "
            f"{data.get('error', {}).get('message')} retryable={data.get('retryable')}"
            f"{_artifact_counts(data)}"
        ),
    }.get(str(kind))
    return f"{head} {detail()}" if detail else head


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
        }


class Fleet:
    """Folds events into the latest view of each node (by sequence, so late
    arrivals cannot roll a node back)."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeView] = {}

    def add(self, body: dict[str, Any]) -> None:
        node_id = str(body.get("node_id"))
        node = self.nodes.setdefault(node_id, NodeView(node_id, str(body.get("node_name"))))
        sequence = int(body.get("sequence", 0))
        data = body.get("data", {})
        kind = body.get("event_type")
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
        if "tasks_completed" in data:
            node.completed, node.failed = int(data["tasks_completed"]), int(data["tasks_failed"])

    def rows(self, now: float, default_interval: float) -> list[dict[str, Any]]:
        return [self.nodes[key].row(now, default_interval) for key in sorted(self.nodes)]


def table(rows: list[dict[str, Any]]) -> str:
    headers = ["NODE", "NAME", "STATUS", "RUNNING", "LAST HEARTBEAT", "DONE", "FAILED"]
    cells = [
        [
            r["node_id"],
            r["node_name"],
            r["status"],
            ",".join(r["running"]) or "-",
            f"{r['last_heartbeat_age_seconds']:.0f}s ago",
            str(r["tasks_completed"]),
            str(r["tasks_failed"]),
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
