"""Run records in the log bucket: where each one lives (aws.record_reader
reads them back). No policy here: what a record holds is node.records', what
a reader makes of it is the `runs` command's.

One object per run attempt, `records/date=YYYY-MM-DD/<run_id>-<attempt>.json`,
dated by the day (UTC) the attempt ended. The `date=` segment is a Hive-style
partition: a date range lists only its days' prefixes (one ListObjectsV2 per
day, never the whole bucket), and Athena's partition projection reads the
same layout (deploy/cloudformation/records.yaml).

IAM: the node needs s3:PutObject on records/*.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

RECORDS_PREFIX = "records/"
RECORD_VERSION = 1
_ATTEMPT_SUFFIX = re.compile(r"-(?P<attempt>[1-9][0-9]*)\.json(?![\s\S])")


def day_of(timestamp: float) -> date:
    """The UTC day a record written at `timestamp` is filed under."""
    return datetime.fromtimestamp(timestamp, UTC).date()


def day_prefix(day: date) -> str:
    return f"{RECORDS_PREFIX}date={day.isoformat()}/"


def record_key(day: date, run_id: str, attempt: int) -> str:
    """The run id is one path segment (protocol.commands.RUN_ID_PATTERN)."""
    return f"{day_prefix(day)}{run_id}-{attempt}.json"


def is_key_of(key: str, day: date, run_id: str) -> bool:
    """Whether `key` is one of `run_id`'s records of `day`, and not one of a
    run whose id merely starts with `run_id-` (run ids may contain '-')."""
    start = f"{day_prefix(day)}{run_id}"
    return key.startswith(start) and _ATTEMPT_SUFFIX.fullmatch(key[len(start) :]) is not None
