"""The node's metrics from the outside: /metrics scraped from running nodes on
the moto server (mock mode) and read with the Prometheus text parser, the
values checked against the runs the nodes did; /healthz and /readyz through a
drain; and the EMF lines on the nodes' stderr checked against the Embedded
Metric Format specification (tests/emf.py).

Two nodes, one after the other: the first runs a few commands, is drained
while a run is under way and hands it back; the second receives that message
again, so its redelivery and queue wait are known too."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from claude_code_scheduler.node.process.mockcli import (
    MOCK_COST_USD,
    MOCK_INPUT_TOKENS,
    MOCK_OUTPUT_TOKENS,
)
from tests.conftest import wait_until
from tests.emf import assert_valid_emf, parse_emf_line
from tests.integration.conftest import NodeProcess, command, free_port

P = "claude_code_scheduler_"


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Scrape:
    """One scrape of /metrics, parsed as Prometheus parses it."""

    def __init__(self, port: int) -> None:
        status, text = get(port, "/metrics")
        assert status == 200
        self.samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[(P + name, frozenset(labels.items()))]


def ready(port: int) -> bool:
    try:
        return get(port, "/readyz")[0] == 200
    except OSError:
        return False  # not listening yet


def emf_documents(node: NodeProcess) -> list[dict[str, Any]]:
    """The node's EMF lines, each checked against the specification. Any
    other line that mentions CloudWatchMetrics would be an EMF document
    wrapped in the log format, which CloudWatch does not read."""
    documents = []
    for line in node.stderr.splitlines():
        if "CloudWatchMetrics" not in line:
            continue
        document = parse_emf_line(line)
        assert "_aws" in document, f"an EMF document inside a log line: {line}"
        assert_valid_emf(document)
        documents.append(document)
    return documents


def ended(stack: Any, run_id: str) -> dict[str, Any]:
    return stack.wait_for(
        lambda e: (
            e["event_type"] in ("TaskCompleted", "TaskFailed") and e["data"].get("run_id") == run_id
        )
    )


def test_metrics_health_and_emf_lines_say_what_the_nodes_did(stack, start_node):
    port = free_port()
    first = start_node(
        stack,
        "--mock-mode",
        "--poll-wait-seconds",
        "1",
        "--max-concurrent-tasks",
        "2",
        "--shutdown-timeout",
        "1.5",
        "--http-port",
        str(port),
    )
    assert wait_until(lambda: ready(port), timeout=30), first.stderr

    # Two runs complete, one fails, and one message is not a command at all.
    runs = [command(mock={"duration_seconds": 0.2}) for _ in range(2)]
    runs.append(command(mock={"duration_seconds": 0.2, "exit_code": 3}))
    for cmd in runs:
        stack.send(cmd)
    stack.send("this is not a command")
    ends = [ended(stack, cmd["run_id"]) for cmd in runs]
    stack.wait_for(lambda e: e["data"].get("error", {}).get("type") == "InvalidCommand")
    assert [e["event_type"] for e in ends] == ["TaskCompleted", "TaskCompleted", "TaskFailed"]

    # The node counts a run once the bus has its terminal event: just after.
    assert wait_until(
        lambda: (
            Scrape(port)("runs_failed_total", error_type="InvalidCommand") == 1
            and Scrape(port)("runs_completed_total") == 2
            and Scrape(port)("runs_failed_total", error_type="ClaudeError") == 1
        ),
        timeout=10,
    )
    scrape = Scrape(port)
    assert scrape("runs_started_total") == 3
    assert scrape("runs_failed_total", error_type="Timeout") == 0
    assert scrape("run_duration_seconds_count", outcome="completed") == 2
    assert scrape("run_duration_seconds_count", outcome="failed") == 1
    assert scrape("run_duration_seconds_sum", outcome="completed") == pytest.approx(
        sum(e["data"]["duration_seconds"] for e in ends[:2]), abs=0.01
    )
    assert scrape("queue_wait_seconds_count") == 3
    # The failed run printed a result line too: it cost as much as the others.
    assert scrape("cost_usd_total") == pytest.approx(3 * MOCK_COST_USD)
    assert scrape("tokens_total", kind="input") == 3 * MOCK_INPUT_TOKENS
    assert scrape("tokens_total", kind="output") == 3 * MOCK_OUTPUT_TOKENS
    assert scrape("messages_received_total") == 4
    assert scrape("redeliveries_total") == 0
    assert scrape("hand_backs_total", delayed="false") == 0
    assert scrape("publish_retries_total") == 0
    assert scrape("upload_retries_total") == 0
    assert (scrape("slots_busy"), scrape("slots_idle")) == (0, 2)
    assert scrape("outbox_depth") == 0
    assert get(port, "/healthz")[0] == 200

    # A drain: not ready from the signal on, still healthy while it finishes;
    # its run outlasts --shutdown-timeout and is handed back.
    long = command(mock={"duration_seconds": 5})
    stack.send(long)
    stack.wait_event("TaskStarted", long["run_id"])
    first.signal(signal.SIGTERM)
    assert wait_until(lambda: get(port, "/readyz")[0] == 503, timeout=5)
    status, body = get(port, "/readyz")
    assert json.loads(body) == {"ok": False, "reason": "draining (SIGTERM)"}
    status, body = get(port, "/healthz")
    assert status == 200 and json.loads(body)["ok"] is True
    assert Scrape(port)("slots_busy") == 1
    assert first.wait(30) == 0
    assert ended(stack, long["run_id"])["data"]["error"]["type"] == "NodeShutdown"
    with pytest.raises(urllib.error.URLError):
        get(port, "/healthz")  # the port closed with the node

    # The second node gets the handed-back message again.
    second_port = free_port()
    second = start_node(
        stack, "--mock-mode", "--poll-wait-seconds", "1", "--http-port", str(second_port)
    )
    stack.wait_event("TaskCompleted", long["run_id"])
    assert wait_until(lambda: Scrape(second_port)("runs_completed_total") == 1, timeout=10)
    scrape = Scrape(second_port)
    assert scrape("messages_received_total") == 1
    assert scrape("redeliveries_total") == 1
    # Its wait includes the first node's attempt and drain (over a second).
    assert scrape("queue_wait_seconds_sum") > 1.0
    second.signal(signal.SIGTERM)
    assert second.wait(30) == 0

    # One EMF line per run end, each as the specification says.
    first_ends = emf_documents(first)
    assert sorted(d.get("RunId", "") for d in first_ends) == sorted(
        ["", *(cmd["run_id"] for cmd in runs), long["run_id"]]
    )
    assert sum(d.get("RunsCompleted", 0) for d in first_ends) == 2
    assert sorted(d["ErrorType"] for d in first_ends if "ErrorType" in d) == [
        "ClaudeError",
        "InvalidCommand",
        "NodeShutdown",
    ]
    assert {d["NodeId"] for d in first_ends} == {first.node_id}
    costs = {d.get("RunId"): d.get("CostUSD") for d in first_ends}
    assert [costs[cmd["run_id"]] for cmd in runs] == [MOCK_COST_USD] * 3
    [rerun] = emf_documents(second)
    assert rerun["RunId"] == long["run_id"] and rerun["RunsCompleted"] == 1
    assert rerun["QueueWait"] > 1.0 and rerun["Queue"] == stack.queue_url.rsplit("/", 1)[1]
