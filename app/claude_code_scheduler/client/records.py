"""Reading run records for the `runs` commands: which days a time range
lists, which records a filter keeps, and the sums of `runs cost`. The I/O is
aws.record_reader's; what a record holds is node.records' (and
protocol/schemas/RunRecord.json's).

Records are streamed: one ListObjectsV2 page (at most 1,000 keys) at a time,
its records fetched a few at a time in parallel, each dropped once it is
printed or added up.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from typing import Any

import botocore.exceptions

from claude_code_scheduler.aws.errors import error_code
from claude_code_scheduler.aws.record_reader import MAX_KEYS_PER_PAGE, RecordReader, RecordTooLarge
from claude_code_scheduler.aws.records import RECORD_VERSION, day_prefix
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.protocol.events import EventType

# GetObjects in flight at once: well within botocore's pool of 10 connections.
FETCH_THREADS = 8
# A progress line on stderr after every this many records read.
PROGRESS_EVERY = 500
DEFAULT_RANGE = timedelta(hours=24)
_RELATIVE = re.compile(r"(?P<amount>[0-9]+)(?P<unit>[mhdw])(?![\s\S])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# What `--outcome` takes besides an error type.
COMPLETED, FAILED = "completed", "failed"
# The figures `runs cost` adds up, as a record's usage names them, and as the
# CLI's modelUsage names them for one model.
USAGE_FIGURES = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)
MODEL_FIGURES = {
    "input_tokens": "inputTokens",
    "output_tokens": "outputTokens",
    "cache_read_input_tokens": "cacheReadInputTokens",
    "cache_creation_input_tokens": "cacheCreationInputTokens",
}
UNKNOWN = "-"


def parse_moment(text: str, now: datetime, option: str) -> datetime:
    """`24h`, `30m`, `7d`, `2w` ago, or an ISO 8601 date or time (UTC unless
    it names an offset)."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        amount = int(relative["amount"])
        return now - timedelta(**{_UNITS[relative["unit"]]: amount})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"{option}: {text!r} is neither a time ago (24h, 30m, 7d, 2w) nor an ISO 8601 "
            "date or time"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class TimeRange:
    """Runs that ended from `since` to `until` (both UTC)."""

    since: datetime
    until: datetime

    @classmethod
    def parse(
        cls, since: str | None, until: str | None, now: datetime, default: timedelta
    ) -> TimeRange:
        end = now if until is None else parse_moment(until, now, "--until")
        start = end - default if since is None else parse_moment(since, now, "--since")
        if start > end:
            raise ConfigError("--since: must not be after --until")
        return cls(start, end)

    def days(self) -> Iterator[date]:
        """The days whose prefixes hold the range's records, oldest first."""
        day = self.since.date()
        while day <= self.until.date():
            yield day
            day += timedelta(days=1)

    def holds(self, moment: datetime) -> bool:
        return self.since <= moment <= self.until


@dataclass(frozen=True)
class RecordFilter:
    """What `--outcome`, `--task` and `--node` keep, within the time range.
    Each option may be given more than once: a record matches any of its values."""

    window: TimeRange
    outcomes: frozenset[str] = frozenset()
    tasks: frozenset[str] = frozenset()
    nodes: frozenset[str] = frozenset()

    def keeps(self, record: dict[str, Any]) -> bool:
        ended = ended_at(record)
        if ended is None or not self.window.holds(ended):
            return False
        if self.outcomes and not self.outcomes & outcome_names(record):
            return False
        if self.tasks and not self.tasks & {record.get("task_id"), record.get("task_name")}:
            return False
        return not self.nodes or record.get("node_id") in self.nodes


def outcome_names(record: dict[str, Any]) -> set[str]:
    """What `--outcome` may name for a record: completed, or failed and its
    error type (lower-cased, as the option compares them)."""
    if record.get("outcome") == EventType.TASK_COMPLETED:
        return {COMPLETED}
    return {FAILED, str(record.get("error_type")).lower()}


def ended_at(record: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(record["ended_at"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None


@dataclass
class ScanCounts:
    """What a scan read, and what it could not."""

    read: int = 0
    unreadable: list[str] = field(default_factory=list)


def scan(
    reader: RecordReader,
    prefixes: Iterable[str],
    *,
    wanted_key: Callable[[str], bool] = lambda key: True,
    counts: ScanCounts | None = None,
    progress: Callable[[int], None] = lambda read: None,
) -> Iterator[dict[str, Any]]:
    """Every readable record under `prefixes`, in their order, a page of keys
    at a time. A record that cannot be read or parsed is counted in
    `counts.unreadable` and skipped; `progress(read)` is called every
    PROGRESS_EVERY records."""
    counts = counts if counts is not None else ScanCounts()
    with ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="records") as pool:
        for prefix in prefixes:
            keys = (key for key in reader.keys(prefix) if wanted_key(key))
            while page := list(islice(keys, MAX_KEYS_PER_PAGE)):
                for key, record in zip(
                    page, pool.map(lambda k: fetch_record(reader, k), page), strict=True
                ):
                    counts.read += 1
                    if counts.read % PROGRESS_EVERY == 0:
                        progress(counts.read)
                    if record is None:
                        counts.unreadable.append(key)
                        continue
                    yield record


def fetch_record(reader: RecordReader, key: str) -> dict[str, Any] | None:
    """A record, or None when it is gone, too large, or not one of ours."""
    try:
        record = json.loads(reader.read(key))
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        if error_code(exc) in ("NoSuchKey", "404"):
            return None  # expired between the listing and the read
        raise
    except (RecordTooLarge, ValueError):
        return None
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
        return None
    return record


def prefixes(window: TimeRange) -> Iterator[str]:
    return (day_prefix(day) for day in window.days())


# --- runs cost ----------------------------------------------------------------------


@dataclass
class Totals:
    """Cost and tokens of some runs: `runs` counts the records added."""

    runs: int = 0
    cost_usd: float = 0.0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(USAGE_FIGURES, 0))
    # Runs whose record said nothing of their cost (no result line).
    unpriced: int = 0
    _costs: list[float] = field(default_factory=list, repr=False)

    def add(self, cost: Any, figures: dict[str, Any]) -> None:
        self.runs += 1
        if _number(cost):
            self._costs.append(float(cost))
        else:
            self.unpriced += 1
        for name in USAGE_FIGURES:
            value = figures.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.tokens[name] += int(value)
        # fsum: the sum of many small costs without float drift.
        self.cost_usd = math.fsum(self._costs)

    def fields(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "cost_usd": round(self.cost_usd, 9),
            **self.tokens,
            "unpriced_runs": self.unpriced,
        }


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


GROUPINGS = ("day", "task", "model", "node")


def cost_entries(record: dict[str, Any], by: str) -> list[tuple[str, Any, dict[str, Any]]]:
    """(group, cost, token figures) that one record adds to `runs cost --by`:
    one entry, or one per model the run used (the CLI's modelUsage)."""
    usage = record.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    if by == "model":
        models = usage.get("model_usage")
        if isinstance(models, dict) and models:
            return [
                (
                    str(model),
                    figures.get("costUSD"),
                    {ours: figures.get(theirs) for ours, theirs in MODEL_FIGURES.items()},
                )
                for model, figures in models.items()
                if isinstance(figures, dict)
            ]
        return [(UNKNOWN, usage.get("total_cost_usd"), usage)]
    if by == "day":
        group = str(record.get("ended_at", ""))[:10] or UNKNOWN
    elif by == "task":
        group = record.get("task_name") or record.get("task_id") or UNKNOWN
    else:
        group = record.get("node_id") or UNKNOWN
    return [(str(group), usage.get("total_cost_usd"), usage)]


@dataclass
class CostTable:
    """`runs cost`'s sums, by group and in all."""

    by: str
    groups: dict[str, Totals] = field(default_factory=dict)
    total: Totals = field(default_factory=Totals)

    def add(self, record: dict[str, Any]) -> None:
        usage = record.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        self.total.add(usage.get("total_cost_usd"), usage)
        for group, cost, figures in cost_entries(record, self.by):
            self.groups.setdefault(group, Totals()).add(cost, figures)

    def rows(self) -> list[tuple[str, Totals]]:
        """Days in order; otherwise the costliest first."""
        if self.by == "day":
            return sorted(self.groups.items())
        return sorted(self.groups.items(), key=lambda item: (-item[1].cost_usd, item[0]))
