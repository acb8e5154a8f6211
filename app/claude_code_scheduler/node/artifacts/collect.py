"""A run's artifacts from start to S3: `collect` before the run's folder goes,
`store` once the outcome is known (result.json, then the uploads), giving
the ArtifactReport the terminal event carries."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_code_scheduler.aws.errors import error_code
from claude_code_scheduler.aws.logstore import LogUploader
from claude_code_scheduler.aws.retry import through_outage
from claude_code_scheduler.node.artifacts import (
    RESULT_NAME,
    TRANSCRIPT_NAME,
    ArtifactLimits,
    artifact_key,
)
from claude_code_scheduler.node.artifacts.files import collect_files
from claude_code_scheduler.node.artifacts.patch import collect_patch
from claude_code_scheduler.node.artifacts.staging import Staging, Unreadable, open_run_file
from claude_code_scheduler.node.process.environment import RunDirs
from claude_code_scheduler.node.process.isolation import RunIdentity
from claude_code_scheduler.node.sessions import record_session
from claude_code_scheduler.protocol.events import ArtifactReport, StoredArtifact, iso
from claude_code_scheduler.redaction import Redactor

log = logging.getLogger(__name__)

# The CLI names its session file by the session id, a UUID (2.1.332).
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True)
class RunFolder:
    """What the collection reads: the run's folders, as whom, against what."""

    run_id: str
    dirs: RunDirs
    identity: RunIdentity
    env: Mapping[str, str]  # for git: the run's environment without its secrets
    patterns: Sequence[str]
    base_commit: str | None  # the checked-out commit of a git workspace
    session_id: str | None


def collect(folder: RunFolder, spool: Path, redactor: Redactor, limits: ArtifactLimits) -> Staging:
    """Stages the run's patch, transcript and files, redacted, in a folder of
    the node's own; a step that fails is noted, and the others still run.
    Call it once no process of the run is left."""
    staging = Staging.create(spool, folder.run_id, redactor)
    if folder.base_commit is not None:
        _step(
            staging,
            "changes.patch",
            lambda: collect_patch(
                staging,
                cwd=folder.dirs.cwd,
                tmp=folder.dirs.tmp,
                base_commit=folder.base_commit or "",
                run_id=folder.run_id,
                identity=folder.identity,
                env=folder.env,
                limits=limits,
            ),
        )
    _step(staging, TRANSCRIPT_NAME, lambda: _collect_transcript(staging, folder, limits))
    _step(
        staging,
        "files/*",
        lambda: collect_files(
            staging, folder.dirs.cwd, folder.patterns, limits, folder.identity.uid
        ),
    )
    return staging


def _step(staging: Staging, name: str, step: Any) -> None:
    try:
        step()
    except Exception as exc:  # one artifact's bug must not cost the others, nor the run
        log.exception("collecting %s failed", name)
        staging.omit(name, f"the node could not collect it: {type(exc).__name__}")


def _collect_transcript(staging: Staging, folder: RunFolder, limits: ArtifactLimits) -> None:
    """The CLI's session file: CLAUDE_CONFIG_DIR/projects/<cwd, escaped>/<session id>.jsonl.
    Found by the session id (not by re-deriving the CLI's escaping of the cwd),
    or, without one (a run killed before its result line), the newest."""
    projects = folder.dirs.config / "projects"
    if folder.session_id is not None and _SESSION_ID.fullmatch(folder.session_id):
        candidates = sorted(projects.glob(f"*/{folder.session_id}.jsonl"))
    else:
        candidates = sorted(projects.glob("*/*.jsonl"), key=_mtime, reverse=True)
    if not candidates:
        staging.omit(TRANSCRIPT_NAME, "the CLI left no session file")
        return
    try:
        with open_run_file(projects, candidates[0], folder.identity.uid) as (source, size):
            if size > limits.max_transcript_bytes:
                raise Unreadable(
                    f"{size} bytes, past the bound of {limits.max_transcript_bytes} bytes"
                )
            staging.add_redacted(TRANSCRIPT_NAME, source, size)
        staging.session_id = candidates[0].stem
    except Unreadable as exc:
        staging.omit(TRANSCRIPT_NAME, str(exc))


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


@dataclass(frozen=True)
class RunRecord:
    """What result.json says besides the CLI's result line."""

    node_id: str
    run_id: str
    attempt: int
    started_at: float
    ended_at: float
    duration_seconds: float
    exit_code: int | None
    event_type: str
    error_type: str | None
    workspace_commit: str | None
    # The terminal event's `retryable`: false means the run ended for good,
    # which is how `cancel` tells a finished run (client.cancel); None where
    # the caller did not say.
    retryable: bool | None = None


def result_document(
    record: RunRecord, result_line: dict[str, Any] | None, redactor: Redactor
) -> str:
    """result.json: the CLI's whole result line under `result` (every string
    in it redacted), and what the node knows of the run."""
    document = {
        "run_id": record.run_id,
        "node_id": record.node_id,
        "attempt": record.attempt,
        "started_at": iso(record.started_at),
        "ended_at": iso(record.ended_at),
        "duration_seconds": round(record.duration_seconds, 3),
        "exit_code": record.exit_code,
        "outcome": {"event_type": record.event_type, "error_type": record.error_type},
        "retryable": record.retryable,
        "workspace": (
            None if record.workspace_commit is None else {"commit": record.workspace_commit}
        ),
        "result": None if result_line is None else _redact_values(result_line, redactor),
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _redact_values(value: Any, redactor: Redactor) -> Any:
    """Each string redacted as a whole, so the document stays JSON."""
    if isinstance(value, str):
        return redactor.redact(value)
    if isinstance(value, dict):
        return {redactor.redact(k): _redact_values(v, redactor) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_values(v, redactor) for v in value]
    return value


def store(
    staging: Staging, uploader: LogUploader, bucket: str, run_id: str, give_up: threading.Event
) -> ArtifactReport:
    """Uploads what is staged, through the log's retry path, result.json first;
    once the node gives up (the end of a shutdown's budget), what is left is
    noted as not stored. A stored transcript makes its session findable by
    its id (node.sessions' pointer)."""
    ordered = sorted(staging.staged, key=lambda s: s.name != RESULT_NAME)
    stored: list[StoredArtifact] = []
    for staged in ordered:
        if give_up.is_set():
            staging.omit(staged.name, "the node stopped before it was uploaded")
            continue
        key = artifact_key(run_id, staged.name)
        try:
            through_outage(f"uploading {staged.name}", interrupt=give_up)(
                uploader.upload, staged.path, key
            )
        except Exception as exc:
            log.error("artifact upload failed: %s", error_code(exc), extra={"run_id": run_id})
            staging.omit(staged.name, f"the upload failed: {error_code(exc)}")
            continue
        with staged.path.open("rb") as stored_file:
            digest = hashlib.file_digest(stored_file, "sha256").hexdigest()
        stored.append(
            StoredArtifact(staged.name, f"s3://{bucket}/{key}", staged.path.stat().st_size, digest)
        )
    transcript_stored = any(s.name == TRANSCRIPT_NAME for s in stored)
    if staging.session_id is not None and transcript_stored and not give_up.is_set():
        # After the transcript, before the terminal event that names the session.
        record_session(staging.session_id, run_id, staging.scratch("pointer"), uploader, give_up)
    return ArtifactReport(tuple(stored), tuple(staging.omitted))
