"""A run's record: the one place that says what it holds, and its storing.

Every attempt a TaskRun makes, whatever its end (completed, any TaskFailed of
node.outcome's table, a cancel before the start, a hand-back at a shutdown),
leaves one record, written (like the log) before its terminal event goes
out: whoever sees the event finds the record. InvalidCommand and Duplicate
leave none: they are answers to a message, not runs (no TaskRun starts), and
their events say all there is. protocol/schemas/RunRecord.json is the same
shape; aws.records says where it lives.

A record copies its terminal event (outcome, error type, exit code, usage,
log and artifact URIs) and adds what only the node knows: the task's labels,
the node, and the times (when the node took the command, when the run ended,
how long the command waited in the queue before that).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import tenacity

from claude_code_scheduler.aws.errors import error_code
from claude_code_scheduler.aws.logstore import LogUploader
from claude_code_scheduler.aws.records import RECORD_VERSION, day_of, record_key
from claude_code_scheduler.aws.retry import through_outage
from claude_code_scheduler.protocol import RunTask
from claude_code_scheduler.protocol.events import LABEL_LIMIT, Event, iso, publishable

log = logging.getLogger(__name__)

# How long a record's upload keeps trying through an outage: the record is a
# report, the terminal event after it is what settles the run's message.
RECORD_OUTAGE_SECONDS = 120.0


def run_record(
    event: Event,
    *,
    command: RunTask,
    node_id: str,
    attempt: int,
    started_at: float,
    ended_at: float,
    sent_at: float | None,
) -> dict[str, Any]:
    """The record of a run that ends with `event` (its TaskCompleted or
    TaskFailed, artifacts included). `started_at`: when the node took the
    command (a run cancelled before its start has one too); `sent_at`: when
    SQS took the message (None: not known, and so no queue wait)."""
    data = event.data
    error = data.get("error")
    task = command.task
    return {
        "version": RECORD_VERSION,
        "run_id": command.run_id,
        "task_id": None if task.task_id is None else publishable(task.task_id, LABEL_LIMIT),
        "task_name": None if task.name is None else publishable(task.name, LABEL_LIMIT),
        "schedule": (
            None
            if command.schedule is None
            else {
                "name": command.schedule.name,
                "scheduled_time": command.schedule.scheduled_time,
            }
        ),
        "node_id": node_id,
        "attempt": attempt,
        "started_at": iso(started_at),
        "ended_at": iso(ended_at),
        "duration_seconds": data.get("duration_seconds", 0.0),
        "queue_wait_seconds": None if sent_at is None else round(max(0.0, started_at - sent_at), 3),
        "outcome": event.event_type.value,
        "error_type": error["type"] if isinstance(error, dict) else None,
        "exit_code": data.get("exit_code"),
        "retryable": bool(data.get("retryable", False)),
        "final_attempt": bool(data.get("final_attempt", False)),
        "usage": data.get("usage"),
        "log_uri": data.get("log_uri"),
        "artifact_uris": [artifact["uri"] for artifact in data.get("artifacts", [])],
    }


def encode_record(record: dict[str, Any]) -> bytes:
    """One line of JSON: Athena's JSON SerDe reads a record per line."""
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def store_record(
    logs: LogUploader,
    spool_dir: Path,
    record: dict[str, Any],
    *,
    ended_at: float,
    give_up: threading.Event,
) -> bool:
    """Uploads the record under its day (aws.records), through an outage for
    up to RECORD_OUTAGE_SECONDS or until `give_up`; a record that cannot be
    stored is logged, never raised: the run's event must still go out. Once
    the node has given up on the run's uploads (the end of a shutdown's
    budget) there is no time left for it, and the run leaves none."""
    if give_up.is_set():
        log.warning(
            "no run record: the node stopped waiting for the run's uploads",
            extra={"run_id": record["run_id"]},
        )
        return False
    key = record_key(day_of(ended_at), record["run_id"], record["attempt"])
    spool = spool_dir / f"{record['run_id']}-{uuid.uuid4().hex[:8]}.record.json"
    try:
        spool_dir.mkdir(parents=True, exist_ok=True)
        spool.write_bytes(encode_record(record))
        retrying = through_outage(
            "storing the run record",
            interrupt=give_up,
            stop=tenacity.stop_after_delay(RECORD_OUTAGE_SECONDS),
        )
        retrying(logs.upload, spool, key)
    except Exception as exc:
        log.error(
            "could not store the run record: %s",
            error_code(exc),
            extra={"run_id": record["run_id"]},
        )
        return False
    finally:
        spool.unlink(missing_ok=True)
    return True
