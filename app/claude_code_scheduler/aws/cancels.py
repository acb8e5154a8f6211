"""Cancel requests in the log bucket: one object, `cancels/<run_id>.json`, per
cancelled run (docs/cancel.md). Written by the `cancel` command, read by every
node for the runs it holds. No policy here: what a request means is the
node's and the command's business.

IAM: the operator needs s3:PutObject on cancels/*, the node s3:GetObject on
cancels/*. Without s3:ListBucket, S3 answers a GetObject of a missing key
with 403, not 404: both mean "no request" to lookup(), since the node's
policy grants GetObject on every key under cancels/.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import botocore.exceptions

from claude_code_scheduler.protocol.events import (
    CANCEL_BY_LIMIT,
    CANCEL_REASON_LIMIT,
    iso,
    publishable,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CANCEL_PREFIX = "cancels/"
RECORD_VERSION = 1
# A record is some 300 bytes (a reason of at most CANCEL_REASON_LIMIT); more
# than this is not one, and is not read into memory.
MAX_RECORD_BYTES = 8 * 1024
UNREADABLE_REASON = "unreadable cancel record"
UNKNOWN_REQUESTER = "unknown"
_ABSENT = frozenset({"404", "NoSuchKey", "NotFound", "403", "AccessDenied", "Forbidden"})


@dataclass(frozen=True)
class CancelRequest:
    run_id: str
    reason: str | None
    requested_by: str
    # ISO 8601 UTC (protocol.events.iso).
    requested_at: str

    def fields(self) -> dict[str, Any]:
        """The terminal event's `cancel` object (and CancelRequested's data
        without the run id), bounded as an event may carry it."""
        return {
            "reason": None
            if self.reason is None
            else publishable(self.reason, CANCEL_REASON_LIMIT),
            "requested_by": publishable(self.requested_by, CANCEL_BY_LIMIT),
            "requested_at": self.requested_at,
        }

    def record(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, "run_id": self.run_id, **self.fields()}


def cancel_key(run_id: str) -> str:
    """The object of a run's request. The caller has checked the run id
    against protocol.commands.RUN_ID_PATTERN, so it is one path segment."""
    return f"{CANCEL_PREFIX}{run_id}.json"


class CancelStore:
    def __init__(self, s3: S3Client, bucket: str) -> None:
        self._s3 = s3
        self.bucket = bucket

    def request(self, req: CancelRequest) -> None:
        body = json.dumps(req.record(), ensure_ascii=False, separators=(",", ":"))
        self._s3.put_object(
            Bucket=self.bucket,
            Key=cancel_key(req.run_id),
            Body=body.encode("utf-8"),
            ContentType="application/json",
        )

    def lookup(self, run_id: str) -> CancelRequest | None:
        """The run's request, or None when there is none. A record that
        cannot be read still cancels: whoever wrote an object under the
        run's key meant to stop it, and a lost cancel costs money."""
        try:
            answer = self._s3.get_object(Bucket=self.bucket, Key=cancel_key(run_id))
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _ABSENT:
                return None
            raise
        with answer["Body"] as body:
            raw = body.read(MAX_RECORD_BYTES + 1)
        written_at = _when(answer.get("LastModified"))
        parsed = _parse(raw, run_id)
        if parsed is not None:
            return parsed
        return CancelRequest(run_id, UNREADABLE_REASON, UNKNOWN_REQUESTER, written_at)


def _when(last_modified: object) -> str:
    if isinstance(last_modified, datetime):
        return iso(last_modified.timestamp())
    return iso()


def _parse(raw: bytes, run_id: str) -> CancelRequest | None:
    if len(raw) > MAX_RECORD_BYTES:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
        return None
    reason = record.get("reason")
    requested_by = record.get("requested_by")
    requested_at = record.get("requested_at")
    if (
        record.get("run_id") != run_id
        or not (reason is None or isinstance(reason, str))
        or not isinstance(requested_by, str)
        or not isinstance(requested_at, str)
    ):
        return None
    return CancelRequest(run_id, reason, requested_by, requested_at)
