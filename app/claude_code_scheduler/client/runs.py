"""`runs`, `runs show RUN_ID` and `runs cost`: what ran and what it cost,
from the run records the nodes leave in the log bucket (docs/operations.md,
"Run records"). They read S3 directly with the operator's policy: one
ListObjectsV2 per day of the range (paginated), one GetObject per record.

`runs` prints the records of a time range (the last 24 hours by default) as
they are read, a day at a time, each day's in the order the runs ended.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.exceptions
import click

from claude_code_scheduler.aws.errors import error_code, explain
from claude_code_scheduler.aws.names import check_region, resolve_region, validate_bucket
from claude_code_scheduler.aws.record_reader import RecordReader
from claude_code_scheduler.aws.records import day_prefix, is_key_of
from claude_code_scheduler.client.cancel import LOG_BUCKET_ENVVARS, check_request
from claude_code_scheduler.client.options import aws_options_with, clients_for
from claude_code_scheduler.client.records import (
    COMPLETED,
    DEFAULT_RANGE,
    FAILED,
    GROUPINGS,
    CostTable,
    RecordFilter,
    ScanCounts,
    TimeRange,
    ended_at,
    prefixes,
    scan,
)
from claude_code_scheduler.client.watch import usd
from claude_code_scheduler.errors import EXIT_FAILURE, EXIT_OK, ConfigError
from claude_code_scheduler.protocol.events import ErrorType, EventType

# `runs show` looks this far back unless --since says otherwise: a run id
# names no day, so each day is one ListObjectsV2 narrowed to the run's keys.
SHOW_RANGE = timedelta(days=30)
# The end of the run's log `runs show` prints, read with one ranged GET.
TAIL_BYTES = 64 * 1024
DEFAULT_TAIL_LINES = 20
# Error types of runs: InvalidCommand and Duplicate leave no record (node.records).
OUTCOMES = (
    COMPLETED,
    FAILED,
    *(t.value for t in ErrorType if t not in (ErrorType.INVALID_COMMAND, ErrorType.DUPLICATE)),
)
# What a terminal must not be sent from a record or a log: control characters
# other than tab and newline (an escape sequence in a task name would be
# obeyed by the terminal).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
LIST_COLUMNS = (
    ("ENDED", 20),
    ("RUN", 32),
    ("TRY", 3),
    ("OUTCOME", 20),
    ("COST", 10),
    ("TOKENS", 9),
    ("TASK", 24),
    ("NODE", 0),
)


def printable(text: str) -> str:
    return _CONTROL.sub("\ufffd", text)


def range_options(since_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        options = [
            click.option("--since", metavar="WHEN", help=since_help),
            click.option(
                "--until",
                metavar="WHEN",
                help="Runs that ended by then (a time ago or an ISO 8601 time). Default: now.",
            ),
            click.option(
                "--log-bucket", envvar=LOG_BUCKET_ENVVARS, help="The nodes' log bucket. Required."
            ),
        ]
        for option in reversed(options):
            function = option(function)
        return bucket_aws_options(function)

    return decorate


# client.options.aws_options, for a bucket, which no ARN given names the region of.
bucket_aws_options = aws_options_with("The log bucket's AWS region. Required.")


def filter_options(function: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--outcome",
            "outcomes",
            multiple=True,
            type=click.Choice(OUTCOMES, case_sensitive=False),
            help="Only runs that ended so: completed, failed, or an error type (repeatable).",
        ),
        click.option(
            "--task",
            "tasks",
            multiple=True,
            help="Only this task (its task_id or name; repeatable).",
        ),
        click.option(
            "--node", "nodes", multiple=True, help="Only runs of this node id (repeatable)."
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


SINCE_HELP = (
    "Runs that ended since then: a time ago (24h, 30m, 7d, 2w) or an ISO 8601 date or "
    "time (UTC). Default: 24h."
)


def _reader(options: dict[str, Any]) -> RecordReader:
    if not options.get("log_bucket"):
        raise ConfigError("--log-bucket is required (or set CLAUDE_LOG_BUCKET)")
    bucket = validate_bucket(options["log_bucket"])
    if options.get("region"):
        check_region(options["region"])
    # No ARN names the bucket's region: --region (AWS_REGION) must.
    resolve_region(options.get("region"), [])
    return RecordReader(clients_for(options).s3, bucket)


def _window(options: dict[str, Any], default: timedelta) -> TimeRange:
    return TimeRange.parse(options.get("since"), options.get("until"), datetime.now(UTC), default)


def _filter(options: dict[str, Any], window: TimeRange) -> RecordFilter:
    return RecordFilter(
        window,
        outcomes=frozenset(o.lower() for o in options.get("outcomes") or ()),
        tasks=frozenset(options.get("tasks") or ()),
        nodes=frozenset(options.get("nodes") or ()),
    )


def _progress(read: int) -> None:
    click.echo(f"... {read} records read", err=True)


def _report_unreadable(counts: ScanCounts) -> None:
    if counts.unreadable:
        click.echo(
            f"warning: {len(counts.unreadable)} object(s) under records/ are not run records "
            f"and were skipped (the first: {printable(counts.unreadable[0])})",
            err=True,
        )


def _unreadable_bucket(exc: Exception, bucket: str) -> ConfigError:
    return explain(exc, "--log-bucket", f"the records in the bucket {bucket}")


def _by_day(records: Iterator[dict[str, Any]], keep: RecordFilter) -> Iterator[dict[str, Any]]:
    """The records kept, each day's sorted by when its runs ended: a day's
    matching records are held, never the whole range's."""
    day: str | None = None
    held: list[dict[str, Any]] = []
    for record in records:
        if not keep.keeps(record):
            continue
        record_day = str(record["ended_at"])[:10]
        if record_day != day and held:
            yield from sorted(held, key=lambda r: str(r["ended_at"]))
            held = []
        day = record_day
        held.append(record)
    yield from sorted(held, key=lambda r: str(r["ended_at"]))


def list_row(record: dict[str, Any]) -> list[str]:
    usage = record.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    cost = usage.get("total_cost_usd")
    tokens = [
        t for t in (usage.get("input_tokens"), usage.get("output_tokens")) if isinstance(t, int)
    ]
    ended = ended_at(record)
    outcome = (
        "completed"
        if record.get("outcome") == EventType.TASK_COMPLETED
        else str(record.get("error_type"))
    )
    if record.get("retryable"):
        outcome += " (retried)"
    return [
        ended.strftime("%Y-%m-%d %H:%M:%S") if ended else "-",
        str(record.get("run_id")),
        str(record.get("attempt")),
        outcome,
        usd(cost) if isinstance(cost, int | float) else "-",
        str(sum(tokens)) if len(tokens) == 2 else "-",
        str(record.get("task_name") or record.get("task_id") or "-"),
        str(record.get("node_id")),
    ]


def line(cells: list[str]) -> str:
    widths = [width for _, width in LIST_COLUMNS]
    return printable("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())


@click.group(invoke_without_command=True)
@range_options(SINCE_HELP)
@filter_options
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON record per line instead of a table."
)
@click.pass_context
def runs(ctx: click.Context, /, **options: Any) -> int:
    """List the runs that ended in a time range (the last 24 hours by
    default), from the run records in the log bucket."""
    if ctx.invoked_subcommand is not None:
        return EXIT_OK
    reader = _reader(options)
    keep = _filter(options, _window(options, DEFAULT_RANGE))
    counts = ScanCounts()
    records = scan(reader, prefixes(keep.window), counts=counts, progress=_progress)
    if not options["as_json"]:
        click.echo(line([name for name, _ in LIST_COLUMNS]))
    try:
        for record in _by_day(records, keep):
            click.echo(
                json.dumps(record, ensure_ascii=False)
                if options["as_json"]
                else line(list_row(record))
            )
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _unreadable_bucket(exc, reader.bucket) from None
    _report_unreadable(counts)
    return EXIT_OK


@runs.command()
@click.argument("run_id")
@range_options("Look for the run's records since then (as for `runs`). Default: 30d.")
@click.option(
    "--tail",
    "tail_lines",
    type=click.IntRange(min=0),
    default=DEFAULT_TAIL_LINES,
    show_default=True,
    help="Lines of the end of the run's log to print (0: none).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="The records and the log's tail as one JSON object."
)
def show(**options: Any) -> int:
    """Print a run's records (one per attempt) and the end of its log.
    Exit 1 when no record of the run is found."""
    run_id = options["run_id"]
    check_request(run_id, None)
    reader = _reader(options)
    window = _window(options, SHOW_RANGE)
    days = list(window.days())
    try:
        found = list(
            scan(
                reader,
                (f"{day_prefix(day)}{run_id}-" for day in days),
                wanted_key=lambda key: any(is_key_of(key, day, run_id) for day in days),
            )
        )
        found = [r for r in found if r.get("run_id") == run_id]
        found.sort(key=lambda r: (int(r.get("attempt", 0)), str(r.get("ended_at"))))
        tail = _log_tail(reader, found, options["tail_lines"]) if found else None
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _unreadable_bucket(exc, reader.bucket) from None
    if not found:
        since = window.since.strftime("%Y-%m-%d")
        click.echo(f"no record of run {run_id} since {since} (see --since)", err=True)
        return EXIT_FAILURE
    if options["as_json"]:
        click.echo(json.dumps({"records": found, "log_tail": tail}, ensure_ascii=False))
        return EXIT_OK
    for record in found:
        click.echo(f"--- attempt {record.get('attempt')}")
        for name, value in record.items():
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            click.echo(printable(f"{name}: {shown}"))
    if tail is not None:
        click.echo(f"--- the last {options['tail_lines']} lines of the log")
        click.echo(printable(tail))
    return EXIT_OK


def _log_tail(reader: RecordReader, found: list[dict[str, Any]], lines: int) -> str | None:
    """The last `lines` lines of the latest attempt's log (attempts share
    one log key; the last one's overwrote it). None: no log, or none asked."""
    log_uri = found[-1].get("log_uri")
    if not lines or not isinstance(log_uri, str):
        return None
    key = log_uri.split("/", 3)[3]
    try:
        raw = reader.tail(key, TAIL_BYTES)
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in ("InvalidRange", "416"):
            return ""  # an empty log
        if error_code(exc) in ("NoSuchKey", "404", "AccessDenied", "403"):
            return None  # expired (LogRetentionDays) or not ours to read
        raise
    text = raw.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


@runs.command()
@click.option(
    "--by",
    type=click.Choice(GROUPINGS),
    default="day",
    show_default=True,
    help="Sum by the day the runs ended, the task (name, else task_id), the model, or the node.",
)
@range_options(SINCE_HELP)
@filter_options
@click.option("--json", "as_json", is_flag=True, help="The sums as one JSON object.")
def cost(**options: Any) -> int:
    """Sum what the runs of a time range cost, and their tokens: every
    attempt counts, retried or not."""
    reader = _reader(options)
    keep = _filter(options, _window(options, DEFAULT_RANGE))
    table = CostTable(options["by"])
    counts = ScanCounts()
    try:
        for record in scan(reader, prefixes(keep.window), counts=counts, progress=_progress):
            if keep.keeps(record):
                table.add(record)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _unreadable_bucket(exc, reader.bucket) from None
    _report_unreadable(counts)
    if options["as_json"]:
        document = {
            "by": table.by,
            "since": keep.window.since.isoformat(),
            "until": keep.window.until.isoformat(),
            "groups": [{"key": key, **totals.fields()} for key, totals in table.rows()],
            "total": table.total.fields(),
        }
        click.echo(json.dumps(document, ensure_ascii=False))
        return EXIT_OK
    click.echo(cost_table(table))
    return EXIT_OK


def cost_table(table: CostTable) -> str:
    headers = [table.by.upper(), "RUNS", "COST", "INPUT", "OUTPUT", "CACHE READ", "CACHE WRITE"]
    rows = [*table.rows(), ("TOTAL", table.total)]
    cells = [
        [
            key,
            str(totals.runs),
            usd(totals.cost_usd),
            *(str(totals.tokens[name]) for name in totals.tokens),
        ]
        for key, totals in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    return "\n".join(
        printable("  ".join(v.ljust(w) for v, w in zip(cells_, widths, strict=True)).rstrip())
        for cells_ in [headers, *cells]
    )
