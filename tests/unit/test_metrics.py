"""node/metrics.py and node/http.py: what each hook counts, the EMF line
against the specification, and the HTTP port's answers."""

from __future__ import annotations

import io
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from tests.emf import assert_valid_emf, parse_emf_line
from unit_support import FakeQueue, client_error, make_config, message

from claude_code_scheduler.aws.logstore import LogStore
from claude_code_scheduler.aws.topic import BusMessage
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.node.health import Health
from claude_code_scheduler.node.http import StatusServer
from claude_code_scheduler.node.leases import LeaseKeeper
from claude_code_scheduler.node.metrics import METRICS, NodeMetrics, RunEnded, emf_document
from claude_code_scheduler.node.outbox import Outbox
from claude_code_scheduler.node.process.result import usage_of
from claude_code_scheduler.protocol.events import ErrorType, task_completed, task_failed

RESULT_LINE = {
    "total_cost_usd": 0.25,
    "usage": {
        "input_tokens": 100,
        "output_tokens": 20,
        "cache_read_input_tokens": 5,
        "cache_creation_input_tokens": 0,
    },
}


def value(metrics: NodeMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def global_value(name: str, **labels: str) -> float:
    return value(METRICS, name, **labels)


def completed(run_id: str = "run-1", duration: float = 12.5) -> Any:
    return task_completed(
        run_id,
        exit_code=0,
        duration_seconds=duration,
        log_uri="s3://b/logs/run-1.log",
        output_bytes=10,
        result=None,
        usage=usage_of(RESULT_LINE),
    )


def failed(run_id: str = "run-2", error_type: ErrorType = ErrorType.TIMEOUT) -> Any:
    return task_failed(run_id, error_type, "too slow", duration_seconds=3.0, attempt=2)


# --- the hooks and the Prometheus registry ----------------------------------------


def test_each_run_end_is_counted_by_outcome_error_type_cost_and_tokens() -> None:
    metrics = NodeMetrics()
    metrics.run_started()
    metrics.run_started()
    metrics.run_queued(4.0)
    metrics.run_ended(completed(), queue_wait_seconds=4.0)
    metrics.run_ended(failed())
    metrics.command_refused(None)
    metrics.run_crashed("run-3")
    prefix = "claude_code_scheduler"
    assert value(metrics, f"{prefix}_runs_started_total") == 2
    assert value(metrics, f"{prefix}_runs_completed_total") == 1
    assert value(metrics, f"{prefix}_runs_failed_total", error_type="Timeout") == 1
    assert value(metrics, f"{prefix}_runs_failed_total", error_type="InvalidCommand") == 1
    assert value(metrics, f"{prefix}_runs_failed_total", error_type="NodeError") == 1
    assert value(metrics, f"{prefix}_runs_failed_total", error_type="ClaudeError") == 0
    assert value(metrics, f"{prefix}_cost_usd_total") == 0.25
    assert value(metrics, f"{prefix}_tokens_total", kind="input") == 100
    assert value(metrics, f"{prefix}_tokens_total", kind="cache_read") == 5
    duration = f"{prefix}_run_duration_seconds"
    assert value(metrics, f"{duration}_count", outcome="completed") == 1
    assert value(metrics, f"{duration}_sum", outcome="completed") == 12.5
    assert value(metrics, f"{duration}_bucket", outcome="completed", le="15.0") == 1
    assert value(metrics, f"{duration}_bucket", outcome="completed", le="5.0") == 0
    assert value(metrics, f"{duration}_count", outcome="failed") == 1
    assert value(metrics, f"{prefix}_queue_wait_seconds_count") == 1
    assert value(metrics, f"{prefix}_queue_wait_seconds_sum") == 4.0


def test_redeliveries_are_the_messages_received_more_than_once() -> None:
    metrics = NodeMetrics()
    for count in (1, 2, 1, 5):
        metrics.message_received(count)
    assert value(metrics, "claude_code_scheduler_messages_received_total") == 4
    assert value(metrics, "claude_code_scheduler_redeliveries_total") == 2


def test_slot_gauges_read_the_node_at_each_scrape() -> None:
    metrics = NodeMetrics()
    busy = [0]
    metrics.watch_slots(lambda: busy[0], 3)
    assert value(metrics, "claude_code_scheduler_slots_idle") == 3
    busy[0] = 2
    assert value(metrics, "claude_code_scheduler_slots_busy") == 2
    assert value(metrics, "claude_code_scheduler_slots_idle") == 1


def test_releases_count_as_hand_backs_at_once_or_delayed() -> None:
    leases = LeaseKeeper(FakeQueue(), 30)
    for index in range(3):
        leases.hold(message("{}", message_id=f"m-{index}", receipt=f"r-{index}"))
    now = global_value("claude_code_scheduler_hand_backs_total", delayed="false")
    later = global_value("claude_code_scheduler_hand_backs_total", delayed="true")
    leases.release(["m-0", "m-1", "not-held"])
    leases.release(["m-2"], after=30)
    assert global_value("claude_code_scheduler_hand_backs_total", delayed="false") == now + 2
    assert global_value("claude_code_scheduler_hand_backs_total", delayed="true") == later + 1


class GatedBus:
    """aws.topic.Publisher: throttled on its first call, each call held until `gate`."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls = 0

    def publish_batch(self, messages: Sequence[BusMessage]) -> list[Exception | None]:
        self.gate.wait(10)
        self.calls += 1
        if self.calls == 1:
            raise client_error("Throttling")
        return [None] * len(messages)


def test_the_outbox_counts_its_retries_and_reports_its_depth() -> None:
    bus = GatedBus()
    outbox = Outbox(bus, "node-1", "Node One")
    outbox.start()
    retries = global_value("claude_code_scheduler_publish_retries_total")
    deliveries = [outbox.publish(failed(f"run-{index}")) for index in range(3)]
    # Held by the bus: none is taken yet, whether queued or in the call.
    assert global_value("claude_code_scheduler_outbox_depth") == 3
    bus.gate.set()
    assert all(delivery.wait(10) for delivery in deliveries)
    assert global_value("claude_code_scheduler_outbox_depth") == 0
    assert global_value("claude_code_scheduler_publish_retries_total") == retries + 1
    outbox.close(0)


class FailingS3:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def put_object(self, **_: Any) -> None:
        raise self.error


@pytest.mark.parametrize(("code", "counted"), [("SlowDown", 1), ("AccessDenied", 0)])
def test_an_upload_that_failed_transiently_counts_as_a_retry(
    tmp_path: Path, code: str, counted: int
) -> None:
    log = tmp_path / "run.log"
    log.write_text("hello")
    store = LogStore(FailingS3(client_error(code, operation="PutObject")), "b")  # type: ignore[arg-type]
    before = global_value("claude_code_scheduler_upload_retries_total")
    with pytest.raises(Exception, match=code):
        store.upload(log, "logs/run.log")
    assert global_value("claude_code_scheduler_upload_retries_total") == before + counted


# --- EMF ---------------------------------------------------------------------------


def test_an_emf_line_for_each_run_end_matches_the_specification() -> None:
    stream = io.StringIO()
    metrics = NodeMetrics()
    metrics.start_emf(stream, node_id="node-1", queue="tasks")
    metrics.run_ended(completed(), queue_wait_seconds=4.25)
    metrics.run_ended(failed())
    metrics.command_refused(None)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    documents = [parse_emf_line(line) for line in lines]
    for document in documents:
        assert_valid_emf(document)
    done, timed_out, refused = documents
    assert done["Queue"] == "tasks" and done["NodeId"] == "node-1" and done["RunId"] == "run-1"
    assert done["RunsCompleted"] == 1 and "RunsFailed" not in done
    assert (done["RunDuration"], done["QueueWait"], done["CostUSD"]) == (12.5, 4.25, 0.25)
    assert (done["InputTokens"], done["OutputTokens"]) == (100, 20)
    [directive] = done["_aws"]["CloudWatchMetrics"]
    assert directive["Dimensions"] == [["Queue"]]
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]}["RunDuration"] == "Seconds"
    assert timed_out["RunsFailed"] == 1 and timed_out["ErrorType"] == "Timeout"
    assert timed_out["Attempt"] == 2
    assert [d["Dimensions"] for d in timed_out["_aws"]["CloudWatchMetrics"]] == [
        [["Queue"]],
        [["Queue", "ErrorType"]],
    ]
    # What a run did not report is left out, not sent as 0.
    assert "CostUSD" not in timed_out and "QueueWait" not in timed_out
    assert refused["ErrorType"] == "InvalidCommand" and "RunId" not in refused


@pytest.mark.parametrize(
    "spoil",
    [
        lambda d: d.pop("Queue"),  # a dimension without its member
        lambda d: d.update(RunsCompleted="1"),  # a metric that is not a number
        lambda d: d["_aws"].update(Timestamp=d["_aws"]["Timestamp"] // 1000),  # seconds
        lambda d: d["_aws"]["CloudWatchMetrics"][0]["Metrics"][0].update(Unit="Dollars"),
        lambda d: d["_aws"]["CloudWatchMetrics"][0].update(Extra=1),
    ],
    ids=["dimension-member", "metric-value", "timestamp-unit", "unit", "extra-member"],
)
def test_the_emf_check_refuses_what_the_specification_refuses(spoil: Any) -> None:
    """The control: each rule the check applies does refuse a broken document."""
    document = emf_document(RunEnded.from_event(completed()), node_id="node-1", queue="tasks")
    assert_valid_emf(document)
    spoil(document)
    with pytest.raises(AssertionError):
        assert_valid_emf(document)


# --- the HTTP port -----------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[tuple[StatusServer, dict[str, Health]]]:
    answers = {"health": Health(False, "no state file"), "ready": Health(True, "registered")}
    metrics = NodeMetrics()
    metrics.run_started()
    status = StatusServer(
        "127.0.0.1",
        0,
        metrics.registry,
        health=lambda: answers["health"],
        ready=lambda: answers["ready"],
    )
    status.start()
    yield status, answers
    status.stop()


def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_port_answers_metrics_health_and_readiness(
    server: tuple[StatusServer, dict[str, Health]],
) -> None:
    status, answers = server
    code, text = get(status.port, "/metrics")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert code == 200
    assert families["claude_code_scheduler_runs_started"].samples[0].value == 1
    assert get(status.port, "/healthz") == (
        503,
        json.dumps({"ok": False, "reason": "no state file"}),
    )
    assert get(status.port, "/readyz") == (200, json.dumps({"ok": True, "reason": "registered"}))
    answers["ready"] = Health(False, "draining (SIGTERM)")
    assert get(status.port, "/readyz")[0] == 503
    assert get(status.port, "/nothing")[0] == 404
    assert get(status.port, "/readyz", method="POST")[0] == 405


def test_a_stopped_server_closes_its_port(server: tuple[StatusServer, dict[str, Health]]) -> None:
    status, _ = server
    port = status.port
    status.stop()
    with pytest.raises(urllib.error.URLError):
        get(port, "/healthz")


def test_a_port_in_use_is_the_operators_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = StatusServer(
            "127.0.0.1",
            port,
            CollectorRegistry(),
            health=lambda: Health(True, ""),
            ready=lambda: Health(True, ""),
        )
        with pytest.raises(ConfigError, match="--http-port"):
            status.start()


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"http_port": -1}, "--http-port"),
        ({"http_port": 65536}, "--http-port"),
        ({"http_host": " "}, "--http-host"),
    ],
)
def test_the_http_options_are_checked(overrides: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        make_config(**overrides)


def test_by_default_there_is_no_port_and_it_would_bind_to_loopback() -> None:
    config = make_config()
    assert config.http_port is None and config.http_host == "127.0.0.1"
