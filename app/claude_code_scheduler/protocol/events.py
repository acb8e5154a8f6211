"""The control-bus events: the only place an event is built.

One constructor per event type, with typed arguments named as the schema
names the fields (`schemas/<EventType>.json`); the rest of the code calls
them and never writes a payload dict. A field added to an event touches its
constructor and its schema, and the schema test checks that they agree.
No I/O here.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from claude_code_scheduler.protocol.commands import PROTOCOL_VERSION

if TYPE_CHECKING:
    # aws.cancels builds on this module; the request only passes through here.
    from claude_code_scheduler.aws.cancels import CancelRequest

# The protocol's limit on TaskCompleted's result text, in UTF-8 bytes.
RESULT_TEXT_LIMIT = 4096
# A node not heard from for this many heartbeat intervals is lost.
STALE_AFTER_INTERVALS = 3
# TaskFailed's message, and TaskStarted's echo of the task's labels, in UTF-8
# bytes: whatever they quote, an event stays far below SNS's 256 KiB.
MESSAGE_LIMIT = 8 * 1024
LABEL_LIMIT = 1024
# TaskCompleted's and TaskFailed's `artifacts` and `artifacts_omitted`
# together, as encoded in the body: the node stores at most about a hundred
# artifacts with names of at most 256 bytes (node.artifacts), some 30 KiB
# listed; this is the guard for the worst case, beside the message and the
# result text, under SNS's 256 KiB.
ARTIFACT_LISTS_LIMIT = 96 * 1024
# An omitted artifact's name and reason as an event quotes them.
OMITTED_NAME_LIMIT = 256
OMITTED_REASON_LIMIT = 512
# TaskCompleted's result.structured_output, as encoded in the body: a schema
# can ask for an answer of any size, and the rest of the event (message,
# result text, artifact lists) already takes some 110 KiB of SNS's 256 KiB.
# A bigger one is left out of the event (structured_output_omitted says so);
# the whole result line is in runs/<run_id>/result.json all the same.
STRUCTURED_OUTPUT_LIMIT = 64 * 1024
# usage.model_usage: a run names one or two models (the task's, a fallback,
# the small fast model the CLI uses for titles) with about a dozen figures; a
# result line naming more, or figures with long names, is cut to these
# bounds, some 20 KiB at most.
MODEL_USAGE_MODELS = 8
MODEL_USAGE_FIGURES = 16
MODEL_USAGE_NAME_LIMIT = 128
# A cancel's reason and who asked, in UTF-8 bytes: the `cancel` command
# refuses a longer reason; a record written by other means is cut to these.
CANCEL_REASON_LIMIT = 1024
CANCEL_BY_LIMIT = 2048
# CancelRequested comes from the `cancel` command, not a node: its envelope
# names this instead of a node id, and each one is the first and only event
# of its publisher (sequence 1).
OPERATOR_NODE_ID = "operator"
_SURROGATE = re.compile("[\ud800-\udfff]")


class EventType(StrEnum):
    NODE_REGISTERED = "NodeRegistered"
    NODE_HEARTBEAT = "NodeHeartbeat"
    NODE_DEREGISTERED = "NodeDeregistered"
    TASK_STARTED = "TaskStarted"
    TASK_OUTPUT = "TaskOutput"
    TASK_COMPLETED = "TaskCompleted"
    TASK_FAILED = "TaskFailed"
    # Published by the `cancel` command, not by a node.
    CANCEL_REQUESTED = "CancelRequested"

    @property
    def about_a_run(self) -> bool:
        return self.value.startswith("Task") or self is EventType.CANCEL_REQUESTED


EVENT_TYPES = tuple(t.value for t in EventType)
TERMINAL_EVENT_TYPES = (EventType.TASK_COMPLETED.value, EventType.TASK_FAILED.value)


class ErrorType(StrEnum):
    INVALID_COMMAND = "InvalidCommand"
    CLAUDE_ERROR = "ClaudeError"
    TIMEOUT = "Timeout"
    NODE_SHUTDOWN = "NodeShutdown"
    NODE_ERROR = "NodeError"
    DUPLICATE = "Duplicate"
    # A task.secrets reference the node may not or cannot read.
    SECRET_ERROR = "SecretError"  # noqa: S105 - a name, not a password
    # task.workspace could not be prepared (git's words), or a push failed.
    WORKSPACE_ERROR = "WorkspaceError"
    # The CLI's own ends (node.outcome has the table of what maps to what).
    BUDGET_EXCEEDED = "BudgetExceeded"
    MAX_TURNS = "MaxTurns"
    RATE_LIMITED = "RateLimited"
    OVERLOADED = "Overloaded"
    # The API answered 5xx (other than 529), or could not be reached.
    SERVER_ERROR = "ServerError"
    AUTHENTICATION_FAILED = "AuthenticationFailed"
    # A task.resume session that is unknown or cannot be read.
    SESSION_ERROR = "SessionError"
    # An operator asked for the run to stop (`cancel`); the event's `cancel`
    # says who and why.
    CANCELLED = "Cancelled"


class NodeStatus(StrEnum):
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"


def iso(timestamp: float | None = None) -> str:
    """ISO 8601 in UTC with milliseconds and a Z; now when no timestamp is given."""
    moment = datetime.fromtimestamp(time.time() if timestamp is None else timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    """An event before the outbox stamps it with the node and a sequence number."""

    event_type: EventType
    data: dict[str, Any]
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timestamp: str = field(default_factory=iso)

    def __post_init__(self) -> None:
        # An unknown name fails here, not on the bus.
        object.__setattr__(self, "event_type", EventType(self.event_type))

    @property
    def run_id(self) -> str | None:
        run_id = self.data.get("run_id")
        return run_id if self.event_type.about_a_run and isinstance(run_id, str) else None

    def body(self, node_id: str, node_name: str, sequence: int) -> dict[str, Any]:
        return {
            "event_type": self.event_type.value,
            "event_id": self.event_id,
            "version": PROTOCOL_VERSION,
            "timestamp": self.timestamp,
            "node_id": node_id,
            "node_name": node_name,
            "sequence": sequence,
            "data": self.data,
        }

    def attributes(self, node_id: str) -> dict[str, str]:
        """SNS message attributes, so subscribers can filter without parsing bodies."""
        attrs = {"event_type": self.event_type.value, "node_id": node_id}
        if self.run_id is not None:
            attrs["run_id"] = self.run_id
        return attrs


def encode_event(body: dict[str, Any]) -> str:
    # ensure_ascii=False: SNS counts UTF-8 bytes, and \uXXXX escapes would triple them.
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


# --- node events --------------------------------------------------------------


@dataclass(frozen=True)
class NodeCounters:
    """What NodeHeartbeat and NodeDeregistered say about the node's life so far."""

    uptime_seconds: float
    tasks_completed: int
    tasks_failed: int
    # What the runs' result lines said they cost, summed.
    total_cost_usd: float = 0.0

    def fields(self) -> dict[str, Any]:
        return {
            "uptime_seconds": round(self.uptime_seconds, 3),
            "tasks_completed": self.tasks_completed,
            "tasks_failed": self.tasks_failed,
            # Rounded so that a sum of floats reads as the sum of the runs' costs.
            "total_cost_usd": round(self.total_cost_usd, 9),
        }


@dataclass(frozen=True)
class EcsTask:
    task_arn: str
    cluster: str | None
    availability_zone: str | None


def node_registered(
    *,
    hostname: str,
    version: str,
    mock_mode: bool,
    heartbeat_interval: float,
    max_concurrent_tasks: int,
    claude_version: str | None,
    started_at: float,
    ecs: EcsTask | None,
    requires_signatures: bool = False,
) -> Event:
    return Event(
        EventType.NODE_REGISTERED,
        {
            "hostname": hostname,
            "version": version,
            "mock_mode": mock_mode,
            "heartbeat_interval": heartbeat_interval,
            "max_concurrent_tasks": max_concurrent_tasks,
            "claude_version": claude_version,
            "started_at": iso(started_at),
            "requires_signatures": requires_signatures,
            "ecs": None
            if ecs is None
            else {
                "task_arn": ecs.task_arn,
                "cluster": ecs.cluster,
                "availability_zone": ecs.availability_zone,
            },
        },
    )


def node_heartbeat(status: NodeStatus, running: list[str], counters: NodeCounters) -> Event:
    return Event(
        EventType.NODE_HEARTBEAT,
        {"status": status.value, "running": list(running), **counters.fields()},
    )


def node_deregistered(reason: str, counters: NodeCounters) -> Event:
    return Event(EventType.NODE_DEREGISTERED, {"reason": reason, **counters.fields()})


# --- run events -----------------------------------------------------------------


def task_started(
    run_id: str, *, task_id: str | None, task_name: str | None, attempt: int, started_at: float
) -> Event:
    return Event(
        EventType.TASK_STARTED,
        {
            "run_id": run_id,
            "task_id": None if task_id is None else publishable(task_id, LABEL_LIMIT),
            "task_name": None if task_name is None else publishable(task_name, LABEL_LIMIT),
            "attempt": attempt,
            "started_at": iso(started_at),
        },
    )


def task_output(run_id: str, chunk_index: int, stream: str, data: str) -> Event:
    return Event(
        EventType.TASK_OUTPUT,
        {"run_id": run_id, "chunk_index": chunk_index, "stream": stream, "data": data},
    )


@dataclass(frozen=True)
class TaskResult:
    """TaskCompleted's `result`: the figures of the CLI's final result line.
    `structured_output` is the CLI's validated answer to task.json_schema, any
    JSON value (None: there was none, or it is JSON null)."""

    session_id: str | None
    total_cost_usd: float | None
    num_turns: int | None
    duration_ms: float | None
    is_error: bool
    text: str | None
    structured_output: Any = None

    def fields(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "total_cost_usd": self.total_cost_usd,
            "num_turns": self.num_turns,
            "duration_ms": self.duration_ms,
            "is_error": self.is_error,
            "text": None if self.text is None else cut_utf8(self.text, RESULT_TEXT_LIMIT),
            **_structured_output_fields(self.structured_output),
        }


def _structured_output_fields(value: Any) -> dict[str, Any]:
    """`structured_output`, or null and `structured_output_omitted` saying why
    when it would not fit the event (or is not JSON an event can carry)."""
    try:
        # allow_nan=False: Python's json reads NaN and Infinity, which are not JSON.
        encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return {"structured_output": None, "structured_output_omitted": "not encodable as JSON"}
    size = len(encoded.encode("utf-8"))
    if size > STRUCTURED_OUTPUT_LIMIT:
        reason = (
            f"{size} bytes, more than the event's {STRUCTURED_OUTPUT_LIMIT}; the whole "
            "result line is in the run's runs/<run_id>/result.json"
        )
        return {"structured_output": None, "structured_output_omitted": reason}
    return {"structured_output": value}


@dataclass(frozen=True)
class TaskUsage:
    """What a run's result line says it cost and used (TaskCompleted's and
    TaskFailed's `usage`); each None where the line did not say, or said
    something that is not a non-negative number. `model_usage` maps a model
    to the CLI's figures for it (costUSD, inputTokens, ...), within the
    MODEL_USAGE_* bounds: node.process.result.usage_of reads and bounds it."""

    total_cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    model_usage: dict[str, dict[str, float]] | None = None
    num_turns: int | None = None
    duration_api_ms: float | None = None

    def fields(self) -> dict[str, Any]:
        return {
            "total_cost_usd": self.total_cost_usd,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "model_usage": None
            if self.model_usage is None
            else {model: dict(figures) for model, figures in self.model_usage.items()},
            "num_turns": self.num_turns,
            "duration_api_ms": self.duration_api_ms,
        }


@dataclass(frozen=True)
class StoredArtifact:
    """One artifact in the log bucket: its name under runs/<run_id>/, and the
    size and SHA-256 of what was stored (redacted)."""

    name: str
    uri: str
    bytes: int
    sha256: str

    def fields(self) -> dict[str, Any]:
        return {"name": self.name, "uri": self.uri, "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class OmittedArtifact:
    """An artifact the run did not get stored, and why."""

    name: str
    reason: str

    def fields(self) -> dict[str, Any]:
        return {
            "name": publishable(self.name, OMITTED_NAME_LIMIT),
            "reason": publishable(self.reason, OMITTED_REASON_LIMIT),
        }


@dataclass(frozen=True)
class ArtifactReport:
    """What a run's terminal event says of its artifacts."""

    stored: tuple[StoredArtifact, ...] = ()
    omitted: tuple[OmittedArtifact, ...] = ()

    def fields(self, limit: int = ARTIFACT_LISTS_LIMIT) -> dict[str, Any]:
        """Both lists within `limit` encoded bytes: stored artifacts first
        (what an operator fetches), then the omitted ones; past the limit the
        rest are left out of the event, and a last omitted entry named "*"
        says how many (every stored artifact is in S3 all the same)."""
        note_room = 512
        budget = limit - note_room
        stored: list[dict[str, Any]] = []
        omitted: list[dict[str, Any]] = []
        unlisted = 0
        for target, entries in ((stored, self.stored), (omitted, self.omitted)):
            for entry in entries:
                listed = entry.fields()
                size = len(encode_event(listed).encode("utf-8")) + 1
                if size > budget:
                    unlisted += 1
                    continue
                budget -= size
                target.append(listed)
        if unlisted:
            omitted.append(
                OmittedArtifact(
                    "*",
                    f"{unlisted} more artifact entries are not listed: the event's size limit; "
                    "what was stored is under the run's runs/<run_id>/ prefix all the same",
                ).fields()
            )
        return {"artifacts": stored, "artifacts_omitted": omitted}


def with_artifacts(event: Event, report: ArtifactReport) -> Event:
    """A terminal event with its artifacts. Built after the event itself: the
    run's result.json records the outcome the event states, and is stored
    before the event goes out."""
    if event.event_type not in (EventType.TASK_COMPLETED, EventType.TASK_FAILED):
        raise ValueError(f"{event.event_type} carries no artifacts")
    return Event(
        event.event_type,
        {**event.data, **report.fields()},
        event_id=event.event_id,
        timestamp=event.timestamp,
    )


@dataclass(frozen=True)
class PushResult:
    """Where a run's work was published: `remote` is the URL, which never
    carries credentials (protocol.workspace refuses one that does)."""

    remote: str
    branch: str
    commit: str

    def fields(self) -> dict[str, Any]:
        return {"remote": self.remote, "branch": self.branch, "commit": self.commit}


def _workspace_fields(workspace_commit: str | None, push: PushResult | None) -> dict[str, Any]:
    """The optional `workspace` and `push` of a terminal event, when there is one."""
    fields: dict[str, Any] = {}
    if workspace_commit is not None:
        fields["workspace"] = {"commit": workspace_commit}
    if push is not None:
        fields["push"] = push.fields()
    return fields


def task_completed(
    run_id: str,
    *,
    exit_code: int,
    duration_seconds: float,
    log_uri: str,
    output_bytes: int,
    result: TaskResult | None,
    usage: TaskUsage | None = None,
    workspace_commit: str | None = None,
    push: PushResult | None = None,
) -> Event:
    return Event(
        EventType.TASK_COMPLETED,
        {
            "run_id": run_id,
            "exit_code": exit_code,
            "duration_seconds": round(duration_seconds, 3),
            "log_uri": log_uri,
            "output_bytes": output_bytes,
            "result": None if result is None else result.fields(),
            "usage": None if usage is None else usage.fields(),
            **_workspace_fields(workspace_commit, push),
        },
    )


def task_failed(
    run_id: str | None,
    error_type: ErrorType,
    message: str,
    *,
    exit_code: int | None = None,
    duration_seconds: float = 0.0,
    log_uri: str | None = None,
    retryable: bool = False,
    workspace_commit: str | None = None,
    attempt: int | None = None,
    final_attempt: bool = False,
    usage: TaskUsage | None = None,
    cancel: CancelRequest | None = None,
) -> Event:
    """`attempt` is None where no attempt was counted (InvalidCommand,
    Duplicate); `final_attempt`: a kind of failure the fleet retries, but this
    was the last attempt allowed (so `retryable` is false); `cancel`: the
    operator's request a Cancelled run ended on."""
    return Event(
        EventType.TASK_FAILED,
        {
            "run_id": run_id,
            "error": {"type": error_type.value, "message": publishable(message, MESSAGE_LIMIT)},
            "exit_code": exit_code,
            "duration_seconds": round(duration_seconds, 3),
            "log_uri": log_uri,
            "retryable": retryable,
            "attempt": attempt,
            "final_attempt": final_attempt,
            "usage": None if usage is None else usage.fields(),
            **_workspace_fields(workspace_commit, None),
            **({} if cancel is None else {"cancel": cancel.fields()}),
        },
    )


def cancel_requested(cancel: CancelRequest) -> Event:
    """What the `cancel` command announces once the request is recorded;
    published with OPERATOR_NODE_ID as its node and sequence 1."""
    return Event(EventType.CANCEL_REQUESTED, {"run_id": cancel.run_id, **cancel.fields()})


def publishable(text: str, limit: int) -> str:
    """`text` as an event can carry it: valid UTF-8 (a lone surrogate becomes
    U+FFFD) of at most `limit` bytes. The last guard: callers bound what they
    quote, this makes sure no input can make an event unpublishable."""
    return cut_utf8(_SURROGATE.sub("\ufffd", text), limit)


def cut_utf8(text: str, limit: int) -> str:
    """At most `limit` bytes of UTF-8, never splitting a character."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", errors="ignore")
