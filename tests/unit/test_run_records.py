"""Run records: what node.records builds from a run's end (against the shipped
RunRecord schema), that a TaskRun stores it before its terminal event, where
aws.records files it, and what the `runs` commands make of records
(client.records), with fakes for the bucket."""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from unit_support import (
    FakeLogs,
    FakeOutbox,
    FakeQueue,
    client_error,
    make_config,
    received_run,
    schema_errors,
)

from claude_code_scheduler.aws.cancels import CancelRequest
from claude_code_scheduler.aws.record_reader import RecordReader
from claude_code_scheduler.aws.records import (
    day_of,
    day_prefix,
    is_key_of,
    record_key,
)
from claude_code_scheduler.client import records as client_records
from claude_code_scheduler.client.records import (
    CostTable,
    RecordFilter,
    ScanCounts,
    TimeRange,
    parse_moment,
    scan,
)
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.node.control import RunControl
from claude_code_scheduler.node.leases import LeaseKeeper
from claude_code_scheduler.node.messages import MessageLifecycle
from claude_code_scheduler.node.outcome import RunOutcome
from claude_code_scheduler.node.process.mockcli import MOCK_COST_USD
from claude_code_scheduler.node.records import encode_record, store_record
from claude_code_scheduler.protocol import MockSpec, RunTask, TaskSpec
from claude_code_scheduler.protocol.commands import Firing

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Cancels:
    def __init__(self, request: CancelRequest | None = None) -> None:
        self.request = request

    def lookup(self, run_id: str) -> CancelRequest | None:
        return self.request


class Run:
    """run-1 as a node runs it: the mock CLI, fakes for the bus and the
    bucket, one list of what was uploaded and published, in order."""

    def __init__(self, tmp_path: Path) -> None:
        self.order: list[str] = []
        self.outbox = FakeOutbox()
        self.logs = FakeLogs()
        self.logs.on_upload = self.order.append
        self.leases = LeaseKeeper(FakeQueue(), 30)
        self.messages = MessageLifecycle(self.leases, self._publish)
        self.config = make_config(tmp_path)

    def _publish(self, event: Any, **options: Any) -> Any:
        return self.outbox.publish(event, **options)

    def run(
        self,
        mock: MockSpec,
        *,
        sent_at: float | None = None,
        cancels: Cancels | None = None,
        schedule: Firing | None = None,
    ) -> RunOutcome:
        command = RunTask(
            "run-1" if schedule is None else f"{schedule.name}-{schedule.execution_id}",
            TaskSpec(prompt="hi", mock=mock, name="nightly tests", task_id="t-7"),
            schedule=schedule,
        )
        run = received_run(
            self.config,
            command,
            messages=self.messages,
            outbox=self.outbox,
            logs=self.logs,
            control=RunControl(),
            attempt=2,
            receive_count=2,
            cancels=cancels,
            sent_at=sent_at,
        )
        publish = self.outbox.publish

        def publish_in_order(event: Any, **options: Any) -> Any:
            self.order.append(f"publish {event.event_type}")
            return publish(event, **options)

        self.outbox.publish = publish_in_order  # type: ignore[method-assign]
        outcome = run.execute()
        self.leases.tick()
        return outcome

    def record(self) -> tuple[str, dict[str, Any]]:
        (key,) = [k for k in self.logs.uploads if k.startswith("records/")]
        raw = self.logs.uploads[key]
        assert raw.endswith(b"\n") and raw.count(b"\n") == 1, "one line, as Athena reads it"
        return key, json.loads(raw)


def test_a_scheduled_run_s_record_names_its_schedule_and_firing(tmp_path: Path) -> None:
    firing = Firing("nightly", "d32c5kddcf5bb8c3", "2027-01-04T09:00:00Z", "arn:aws:scheduler:x")
    plain = Run(tmp_path)
    plain.run(MockSpec(duration_seconds=0.0))
    assert plain.record()[1]["schedule"] is None
    run = Run(tmp_path / "scheduled")
    run.run(MockSpec(duration_seconds=0.0), schedule=firing)
    _key, record = run.record()
    assert schema_errors("RunRecord", record) == []
    assert record["run_id"] == "nightly-d32c5kddcf5bb8c3"
    assert record["schedule"] == {"name": "nightly", "scheduled_time": "2027-01-04T09:00:00Z"}


def test_a_completed_run_stores_its_record_before_its_terminal_event(tmp_path: Path) -> None:
    run = Run(tmp_path)
    outcome = run.run(MockSpec(duration_seconds=0.0), sent_at=time.time() - 60)
    key, record = run.record()
    assert schema_errors("RunRecord", record) == []
    assert key == record_key(day_of(time.time()), "run-1", 2)
    assert run.order.index(key) < run.order.index("publish TaskCompleted")
    data = outcome.event.data
    assert record["outcome"] == "TaskCompleted" and record["error_type"] is None
    assert record["usage"] == data["usage"] and record["usage"]["total_cost_usd"] == MOCK_COST_USD
    assert record["log_uri"] == data["log_uri"] == "s3://logs-bucket/logs/run-1.log"
    assert record["artifact_uris"] == [a["uri"] for a in data["artifacts"]]
    assert any(uri.endswith("/result.json") for uri in record["artifact_uris"])
    assert (record["task_name"], record["task_id"], record["node_id"]) == (
        "nightly tests",
        "t-7",
        "node-1",
    )
    assert record["attempt"] == 2 and record["exit_code"] == 0
    assert record["queue_wait_seconds"] >= 59, "from SQS's SentTimestamp to the node taking it"
    assert record["started_at"] <= record["ended_at"]
    assert list((tmp_path / "work" / ".logs").glob("*.record.json")) == [], "no spool left"


def test_a_failed_run_records_its_error_type_and_exit_code(tmp_path: Path) -> None:
    run = Run(tmp_path)
    outcome = run.run(MockSpec(duration_seconds=0.0, exit_code=3))
    _, record = run.record()
    assert schema_errors("RunRecord", record) == []
    assert (record["outcome"], record["error_type"], record["exit_code"]) == (
        "TaskFailed",
        "ClaudeError",
        3,
    )
    assert record["retryable"] is outcome.event.data["retryable"] is False
    assert record["queue_wait_seconds"] is None, "no SentTimestamp, no queue wait"


def test_a_run_cancelled_before_its_start_leaves_a_record_and_no_log(tmp_path: Path) -> None:
    request = CancelRequest("run-1", "not needed", "ops@host", "2026-12-01T00:00:00.000Z")
    run = Run(tmp_path)
    run.run(MockSpec(duration_seconds=30.0), cancels=Cancels(request))
    key, record = run.record()
    assert list(run.logs.uploads) == [key]
    assert run.order == [key, "publish TaskFailed"]
    assert schema_errors("RunRecord", record) == []
    assert (record["outcome"], record["error_type"]) == ("TaskFailed", "Cancelled")
    assert record["log_uri"] is None and record["artifact_uris"] == []
    assert record["exit_code"] is None and record["usage"] is None


def test_a_record_that_cannot_be_stored_does_not_hold_back_the_event(tmp_path: Path) -> None:
    run = Run(tmp_path)

    def refuse_records(key: str) -> None:
        run.order.append(key)
        if key.startswith("records/"):
            raise client_error("AccessDenied", 403, "PutObject")

    run.logs.on_upload = refuse_records
    outcome = run.run(MockSpec(duration_seconds=0.0))
    assert outcome.event.event_type == "TaskCompleted"
    assert run.order[-1] == "publish TaskCompleted"
    assert not [k for k in run.logs.uploads if k.startswith("records/")]


def test_no_record_once_the_node_gave_up_on_the_runs_uploads(tmp_path: Path) -> None:
    """The end of a shutdown's budget: the terminal event must not wait for it."""
    logs = FakeLogs()
    record = {"run_id": "run-1", "attempt": 1}
    given_up = threading.Event()
    assert store_record(logs, tmp_path, record, ended_at=time.time(), give_up=threading.Event())
    given_up.set()
    logs.uploads.clear()
    assert not store_record(logs, tmp_path, record, ended_at=time.time(), give_up=given_up)
    assert logs.uploads == {}


def test_the_schema_has_teeth(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.run(MockSpec(duration_seconds=0.0))
    _, record = run.record()
    for broken in (
        {**record, "outcome": "TaskStarted"},
        {**record, "error_type": "NoSuchError"},
        {**record, "attempt": 0},
        {k: v for k, v in record.items() if k != "usage"},
        {**record, "extra": 1},
    ):
        assert schema_errors("RunRecord", broken)


# --- where records live ----------------------------------------------------------------


def test_records_are_filed_by_the_utc_day_they_ended_under_a_hive_partition() -> None:
    just_before_midnight = datetime(2026, 12, 1, 23, 59, 59, tzinfo=UTC).timestamp()
    assert day_of(just_before_midnight) == date(2026, 12, 1)
    assert day_of(just_before_midnight + 1) == date(2026, 12, 2)
    assert record_key(date(2026, 12, 1), "run-1", 3) == "records/date=2026-12-01/run-1-3.json"
    assert day_prefix(date(2026, 12, 1)) == "records/date=2026-12-01/"


def test_a_run_id_prefix_does_not_claim_another_runs_records() -> None:
    day = date(2026, 12, 1)
    assert is_key_of(record_key(day, "a", 1), day, "a")
    assert is_key_of(record_key(day, "a", 12), day, "a")
    # The control: run "a-b" has keys that start with "a-".
    assert not is_key_of(record_key(day, "a-b", 1), day, "a")
    assert not is_key_of("records/date=2026-12-01/a-0.json", day, "a")


class PagedS3:
    """list_objects_v2 in pages of `page` keys, and get_object, as S3 answers."""

    def __init__(self, objects: dict[str, bytes], page: int) -> None:
        self.objects = objects
        self.page = page
        self.lists: list[dict[str, Any]] = []

    def list_objects_v2(self, **call: Any) -> dict[str, Any]:
        self.lists.append(call)
        keys = sorted(k for k in self.objects if k.startswith(call["Prefix"]))
        start = int(call.get("ContinuationToken", "0"))
        chunk = keys[start : start + self.page]
        more = start + self.page < len(keys)
        answer: dict[str, Any] = {"Contents": [{"Key": k} for k in chunk], "IsTruncated": more}
        if more:
            answer["NextContinuationToken"] = str(start + self.page)
        return answer

    def get_object(self, **call: Any) -> dict[str, Any]:
        if call["Key"] not in self.objects:
            raise client_error("NoSuchKey", 404, "GetObject")
        return {"Body": io.BytesIO(self.objects[call["Key"]])}


def a_record(run_id: str, ended: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "run_id": run_id,
        "task_id": None,
        "task_name": "build",
        "node_id": "node-1",
        "attempt": 1,
        "started_at": ended.isoformat(),
        "ended_at": ended.isoformat().replace("+00:00", "Z"),
        "outcome": "TaskCompleted",
        "error_type": None,
        "retryable": False,
        "usage": None,
        **fields,
    }


def test_a_scan_reads_every_page_skips_what_is_not_a_record_and_reports_progress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_records, "PROGRESS_EVERY", 4)
    day = date(2026, 12, 1)
    objects = {record_key(day, f"r{i}", 1): encode_record(a_record(f"r{i}", NOW)) for i in range(9)}
    objects[day_prefix(day) + "junk-1.json"] = b"not json"
    objects[day_prefix(day) + "old-1.json"] = json.dumps({"version": 99}).encode()
    s3 = PagedS3(objects, page=3)
    counts = ScanCounts()
    progress: list[int] = []
    found = list(
        scan(RecordReader(s3, "b"), [day_prefix(day)], counts=counts, progress=progress.append)  # type: ignore[arg-type]
    )
    assert sorted(r["run_id"] for r in found) == [f"r{i}" for i in range(9)]
    assert len(s3.lists) == 4, "11 keys in pages of 3"
    assert counts.read == 11 and len(counts.unreadable) == 2
    assert progress == [4, 8]


# --- what the commands keep and add up -------------------------------------------------


def test_times_are_a_time_ago_or_iso_8601_in_utc() -> None:
    assert parse_moment("24h", NOW, "--since") == NOW - timedelta(hours=24)
    assert parse_moment("7d", NOW, "--since") == NOW - timedelta(days=7)
    assert parse_moment("2026-11-30", NOW, "--since") == datetime(2026, 11, 30, tzinfo=UTC)
    assert parse_moment("2026-11-30T10:00:00+02:00", NOW, "--since").hour == 8
    with pytest.raises(ConfigError, match="--since"):
        parse_moment("yesterday", NOW, "--since")
    with pytest.raises(ConfigError, match="after --until"):
        TimeRange.parse("1h", "2h", NOW, timedelta(hours=24))


def test_a_range_lists_only_its_own_days() -> None:
    window = TimeRange.parse("2026-11-29T23:00", None, NOW, timedelta(hours=24))
    assert list(window.days()) == [date(2026, 11, 29), date(2026, 11, 30), date(2026, 12, 1)]
    default = TimeRange.parse(None, None, NOW, timedelta(hours=24))
    assert [d.isoformat() for d in default.days()] == ["2026-11-30", "2026-12-01"]


def test_the_filter_keeps_runs_by_time_outcome_task_and_node() -> None:
    window = TimeRange(NOW - timedelta(hours=1), NOW)
    done = a_record("ok", NOW - timedelta(minutes=5))
    cancelled = a_record(
        "c", NOW - timedelta(minutes=5), outcome="TaskFailed", error_type="Cancelled"
    )
    too_old = a_record("old", NOW - timedelta(hours=2))
    assert RecordFilter(window).keeps(done) and not RecordFilter(window).keeps(too_old)
    failed = RecordFilter(window, outcomes=frozenset({"failed"}))
    assert failed.keeps(cancelled) and not failed.keeps(done)
    assert RecordFilter(window, outcomes=frozenset({"cancelled"})).keeps(cancelled)
    assert RecordFilter(window, tasks=frozenset({"build"})).keeps(done)
    assert not RecordFilter(window, tasks=frozenset({"deploy"})).keeps(done)
    assert not RecordFilter(window, nodes=frozenset({"node-2"})).keeps(done)


def usage(cost: float, tokens_in: int, models: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {
        "total_cost_usd": cost,
        "input_tokens": tokens_in,
        "output_tokens": 10,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": None,
        "model_usage": models,
        "num_turns": 1,
        "duration_api_ms": 1.0,
    }


def test_cost_sums_every_attempt_by_task_and_splits_by_model() -> None:
    sonnet = {"costUSD": 0.1, "inputTokens": 100, "outputTokens": 10}
    haiku = {"costUSD": 0.02, "inputTokens": 50, "outputTokens": 0}
    records = [
        a_record("a", NOW, usage=usage(0.12, 150, {"sonnet": sonnet, "haiku": haiku})),
        a_record("a", NOW, attempt=2, usage=usage(0.1, 100, {"sonnet": sonnet})),
        a_record("b", NOW, task_name="deploy", usage=None, outcome="TaskFailed"),
    ]
    by_task, by_model = CostTable("task"), CostTable("model")
    for record in records:
        by_task.add(record)
        by_model.add(record)
    tasks = dict(by_task.rows())
    assert tasks["build"].runs == 2 and tasks["build"].cost_usd == pytest.approx(0.22)
    assert tasks["build"].tokens["input_tokens"] == 250
    assert tasks["deploy"].runs == 1 and tasks["deploy"].unpriced == 1
    assert by_task.total.cost_usd == pytest.approx(0.22) and by_task.total.runs == 3
    models = dict(by_model.rows())
    assert models["sonnet"].cost_usd == pytest.approx(0.2) and models["sonnet"].runs == 2
    assert models["haiku"].tokens["input_tokens"] == 50
    assert [key for key, _ in by_model.rows()] == ["sonnet", "haiku", "-"], "costliest first"
