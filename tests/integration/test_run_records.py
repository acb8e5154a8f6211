"""Run records end to end on the moto server: a mock-mode node leaves one
for a completed run, a failed one and one cancelled before it started, each
in the bucket by the time its terminal event is seen; `runs`, `runs show`
and `runs cost` read them back as the operator would, and the sums agree
with the terminal events' usage. One node for the whole module."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest

from claude_code_scheduler.aws.cancels import CancelRequest, CancelStore
from claude_code_scheduler.protocol import load_schema
from claude_code_scheduler.protocol.events import iso
from tests.integration.conftest import NodeProcess, Stack, command, make_stack, node_env
from tests.integration.test_client import client


@dataclass
class Finished:
    stack: Stack
    node: NodeProcess
    # run id -> its terminal event, and the record that was in the bucket when it was seen
    events: dict[str, dict[str, Any]]
    records: dict[str, dict[str, Any]]
    completed: str
    failed: str
    cancelled: str


def records_of(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    listing = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="records/")
    keys = [i["Key"] for i in listing.get("Contents", []) if f"/{run_id}-" in i["Key"]]
    return [
        json.loads(stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()) for key in keys
    ]


@pytest.fixture(scope="module")
def finished(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Finished]:
    stack = make_stack(moto_endpoint)
    tmp = tmp_path_factory.mktemp("records")
    node = NodeProcess(stack, tmp, ["--mock-mode", "--poll-wait-seconds", "1"], node_env(stack))
    try:
        stack.wait_event("NodeRegistered", node_id=node.node_id)
        completed = command(name="nightly", task_id="t-1", mock={"duration_seconds": 0.2})
        failed = command(name="nightly", mock={"duration_seconds": 0.2, "exit_code": 3})
        cancelled = command(name="other", mock={"duration_seconds": 30})
        CancelStore(stack.s3, stack.bucket).request(
            CancelRequest(cancelled["run_id"], "not needed", "tests", iso())
        )
        for cmd in (completed, failed, cancelled):
            stack.send(cmd)
        events, records = {}, {}
        for cmd, kind in (
            (completed, "TaskCompleted"),
            (failed, "TaskFailed"),
            (cancelled, "TaskFailed"),
        ):
            run_id = cmd["run_id"]
            events[run_id] = stack.wait_event(kind, run_id)
            # Written before the event was published: there once it is seen.
            (records[run_id],) = records_of(stack, run_id)
        yield Finished(
            stack,
            node,
            events,
            records,
            completed["run_id"],
            failed["run_id"],
            cancelled["run_id"],
        )
    finally:
        node.kill()


def runs(finished: Finished, *args: str) -> Any:
    return client(finished.stack, "runs", *args, "--log-bucket", finished.stack.bucket, timeout=60)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_every_end_leaves_a_record_that_says_what_its_event_says(finished: Finished) -> None:
    schema = load_schema("RunRecord")
    for run_id, record in finished.records.items():
        jsonschema.validate(record, schema)
        data = finished.events[run_id]["data"]
        assert record["node_id"] == finished.node.node_id
        assert record["usage"] == data["usage"]
        assert record["log_uri"] == data["log_uri"]
        assert record["exit_code"] == data["exit_code"]
        assert record["error_type"] == data.get("error", {}).get("type")
        assert record["artifact_uris"] == [a["uri"] for a in data.get("artifacts", [])]
        assert record["queue_wait_seconds"] is not None, "moto gives SentTimestamp"
    assert finished.records[finished.cancelled]["error_type"] == "Cancelled"
    assert finished.records[finished.cancelled]["log_uri"] is None
    assert finished.records[finished.failed]["exit_code"] == 3
    assert finished.records[finished.completed]["task_id"] == "t-1"


def test_runs_lists_the_last_day_with_filters(finished: Finished) -> None:
    listed = runs(finished, "--json")
    assert listed.returncode == 0, listed.stderr
    assert {r["run_id"] for r in json_lines(listed.stdout)} == set(finished.records)
    assert sorted(json_lines(listed.stdout), key=lambda r: r["run_id"]) == sorted(
        finished.records.values(), key=lambda r: r["run_id"]
    )

    only_cancelled = runs(finished, "--json", "--outcome", "Cancelled")
    assert [r["run_id"] for r in json_lines(only_cancelled.stdout)] == [finished.cancelled]
    nightly_failures = runs(finished, "--json", "--task", "nightly", "--outcome", "failed")
    assert [r["run_id"] for r in json_lines(nightly_failures.stdout)] == [finished.failed]
    elsewhere = runs(finished, "--json", "--node", "another-node")
    assert elsewhere.returncode == 0 and elsewhere.stdout == ""

    table = runs(finished)
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["ENDED", "RUN", "TRY"]
    assert len(rows) == 3 and any("Cancelled" in row for row in rows)

    long_ago = runs(finished, "--since", "2001-01-01", "--until", "2001-01-02")
    assert long_ago.returncode == 0 and long_ago.stdout.splitlines() == [header]


def test_runs_show_prints_the_record_and_the_end_of_the_log(finished: Finished) -> None:
    shown = runs(finished, "show", finished.completed, "--tail", "3")
    assert shown.returncode == 0, shown.stderr
    assert "outcome: TaskCompleted" in shown.stdout.splitlines()
    log_lines = finished.stack.log_text(finished.completed).decode().splitlines()
    assert shown.stdout.splitlines()[-3:] == log_lines[-3:]

    as_json = json.loads(runs(finished, "show", finished.cancelled, "--json").stdout)
    assert as_json == {"records": [finished.records[finished.cancelled]], "log_tail": None}

    unknown = runs(finished, "show", "no-such-run")
    assert unknown.returncode == 1 and "no record of run no-such-run" in unknown.stderr


def test_runs_cost_adds_up_what_the_terminal_events_said(finished: Finished) -> None:
    usages = [e["data"]["usage"] for e in finished.events.values() if e["data"]["usage"]]
    expected_cost = round(math.fsum(u["total_cost_usd"] for u in usages), 9)
    expected_in = sum(u["input_tokens"] for u in usages)

    by_task = json.loads(runs(finished, "cost", "--by", "task", "--json").stdout)
    assert by_task["total"]["cost_usd"] == expected_cost
    assert by_task["total"]["input_tokens"] == expected_in
    assert by_task["total"]["runs"] == 3 and by_task["total"]["unpriced_runs"] == 1
    groups = {g["key"]: g for g in by_task["groups"]}
    assert groups["nightly"]["runs"] == 2 and groups["nightly"]["cost_usd"] == expected_cost
    assert groups["other"]["cost_usd"] == 0

    by_model = json.loads(runs(finished, "cost", "--by", "model", "--json").stdout)
    model_costs = {}
    for usage in usages:
        for model, figures in usage["model_usage"].items():
            model_costs[model] = model_costs.get(model, 0.0) + figures["costUSD"]
    priced = {g["key"]: g["cost_usd"] for g in by_model["groups"] if g["key"] != "-"}
    assert priced == {m: round(c, 9) for m, c in model_costs.items()}

    by_day = runs(finished, "cost")
    assert by_day.returncode == 0, by_day.stderr
    assert by_day.stdout.splitlines()[0].split()[:3] == ["DAY", "RUNS", "COST"]
    assert by_day.stdout.splitlines()[-1].split()[:2] == ["TOTAL", "3"]
