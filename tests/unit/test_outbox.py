"""outbox.py: ordered, numbered publishing through outages, with a fake bus."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast

import botocore.exceptions
import pytest
from tests.conftest import wait_until
from unit_support import TOPIC_ARN, assert_event_valid, client_error

from claude_code_scheduler.aws.errors import describe_error, is_transient
from claude_code_scheduler.aws.limits import SNS_MAX_BATCH_BYTES
from claude_code_scheduler.aws.topic import BusClient, BusMessage
from claude_code_scheduler.node.outbox import Delivery, Outbox
from claude_code_scheduler.protocol.events import (
    ErrorType,
    Event,
    EventType,
    task_failed,
    task_output,
)


class FakeBus:
    """aws.BusClient's surface. `failures` are raised, one per call, before
    calls succeed (None: that call does not fail); `always_fail` fails every
    call; `gate` blocks calls; `refuse` maps an event id to the error its entry
    is refused with, once. `batches` holds the event ids of every call."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []
        self.attempts = 0
        self.failures: list[Exception | None] = []
        self.always_fail: Exception | None = None
        self.gate: threading.Event | None = None
        self.refuse: dict[str, Exception] = {}
        self.batches: list[list[str]] = []
        self.lock = threading.Lock()

    def publish_batch(self, messages: Sequence[BusMessage]) -> list[Exception | None]:
        with self.lock:
            self.attempts += 1
            self.batches.append([m.dedup for m in messages])
            failure = self.failures.pop(0) if self.failures else self.always_fail
        if self.gate is not None:
            self.gate.wait(10)
        if failure is not None:
            raise failure
        results: list[Exception | None] = []
        with self.lock:
            for m in messages:
                refused = self.refuse.pop(m.dedup, None)
                results.append(refused)
                if refused is None:
                    self.published.append(
                        {
                            "body": json.loads(m.body),
                            "attributes": m.attributes,
                            "group": m.group,
                            "dedup": m.dedup,
                        }
                    )
        return results

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [p["body"] for p in self.published]


@pytest.fixture
def bus() -> FakeBus:
    return FakeBus()


@pytest.fixture
def outbox(bus: FakeBus) -> Iterator[Outbox]:
    box = Outbox(bus, "node-1", "Node One")
    box.start()
    yield box
    if bus.gate is not None:
        bus.gate.set()
    bus.always_fail = None
    box.close(time.monotonic() + 2)


def heartbeat(n: int = 0) -> Event:
    return Event(
        EventType.NODE_HEARTBEAT,
        {
            "status": "idle",
            "running": [],
            "uptime_seconds": float(n),
            "tasks_completed": n,
            "tasks_failed": 0,
        },
    )


def test_events_go_out_in_order_with_sequence_numbers(bus: FakeBus, outbox: Outbox) -> None:
    events = [heartbeat(0), task_output("run-1", 0, "stdout", "hi"), heartbeat(1)]
    events += [task_output("run-1", i, "stderr", f"line {i}") for i in range(1, 20)]
    deliveries = [outbox.publish(event) for event in events]
    assert all(d.wait(5) for d in deliveries)
    bodies = bus.bodies()
    assert [b["sequence"] for b in bodies] == list(range(1, len(events) + 1))
    assert [b["event_id"] for b in bodies] == [e.event_id for e in events]
    for body in bodies:
        assert body["node_id"] == "node-1"
        assert body["node_name"] == "Node One"
        assert_event_valid(body)


def test_attributes_and_fifo_keys(bus: FakeBus, outbox: Outbox) -> None:
    events = [
        heartbeat(),
        task_output("run-1", 0, "stdout", "x"),
        task_failed(None, ErrorType.INVALID_COMMAND, "bad"),
    ]
    assert all(outbox.publish(e).wait(5) for e in events)
    assert [p["attributes"] for p in bus.published] == [
        {"event_type": "NodeHeartbeat", "node_id": "node-1"},
        {"event_type": "TaskOutput", "node_id": "node-1", "run_id": "run-1"},
        {"event_type": "TaskFailed", "node_id": "node-1"},
    ]
    assert [p["group"] for p in bus.published] == ["node-1"] * 3
    assert [p["dedup"] for p in bus.published] == [e.event_id for e in events]


@pytest.mark.parametrize(
    "failures",
    [
        [client_error("Throttling"), client_error("Throttling")],
        [botocore.exceptions.EndpointConnectionError(endpoint_url="http://sns.invalid")],
        [client_error("InternalError", 500)],
    ],
    ids=["throttled-twice", "connection-error", "internal-error"],
)
def test_a_transient_failure_is_retried_and_the_event_delivered(
    bus: FakeBus, outbox: Outbox, failures: list[Exception]
) -> None:
    bus.failures = list(failures)
    bus.gate = threading.Event()
    first = outbox.publish(heartbeat(1))
    assert wait_until(lambda: bus.attempts == 1), "the first call is under way, alone"
    second = outbox.publish(heartbeat(2))
    bus.gate.set()
    assert first.wait(10)
    assert second.wait(10)
    assert bus.attempts == len(failures) + 2
    assert [b["sequence"] for b in bus.bodies()] == [1, 2]


def test_a_permanent_error_drops_that_event_and_the_next_still_goes(
    bus: FakeBus, outbox: Outbox
) -> None:
    bus.failures = [client_error("AccessDenied", 403)]
    bus.gate = threading.Event()
    dropped = outbox.publish(heartbeat(1))
    assert wait_until(lambda: bus.attempts == 1), "the first call is under way, alone"
    delivered = outbox.publish(heartbeat(2))
    bus.gate.set()
    assert delivered.wait(5)
    assert dropped.done.is_set()
    assert dropped.ok is False
    assert not dropped.wait(0)
    assert "AccessDenied" in (dropped.error or "")
    assert bus.attempts == 2, "a permanent error is not retried"
    assert [b["sequence"] for b in bus.bodies()] == [2]


def test_publish_after_close_is_refused(bus: FakeBus) -> None:
    box = Outbox(bus, "node-1", "Node One")
    box.start()
    assert box.publish(heartbeat()).wait(5)
    box.close(time.monotonic() + 2)
    late = box.publish(heartbeat())
    assert late.done.is_set()
    assert late.ok is False
    assert len(bus.published) == 1


def test_close_publishes_what_is_queued(bus: FakeBus) -> None:
    box = Outbox(bus, "node-1", "Node One")
    bus.gate = threading.Event()
    box.start()
    deliveries = [box.publish(heartbeat(i)) for i in range(5)]
    threading.Timer(0.2, bus.gate.set).start()
    box.close(time.monotonic() + 5)
    assert all(d.ok for d in deliveries)
    assert [b["sequence"] for b in bus.bodies()] == [1, 2, 3, 4, 5]


def test_close_gives_up_by_its_deadline_when_the_bus_is_down(bus: FakeBus) -> None:
    bus.always_fail = client_error("ServiceUnavailable", 503)
    box = Outbox(bus, "node-1", "Node One")
    box.start()
    deliveries = [box.publish(heartbeat(i)) for i in range(3)]
    time.sleep(0.2)
    assert not deliveries[0].done.is_set(), "a transient failure never drops an event by itself"
    started = time.monotonic()
    box.close(started + 1.0)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3.0
    assert all(d.done.is_set() and not d.ok for d in deliveries)
    assert bus.published == []


def test_close_with_a_deadline_already_passed_returns_at_once(bus: FakeBus) -> None:
    bus.always_fail = client_error("Throttling")
    box = Outbox(bus, "node-1", "Node One")
    box.start()
    delivery = box.publish(heartbeat())
    time.sleep(0.1)
    started = time.monotonic()
    box.close(started - 1)
    assert time.monotonic() - started < 2
    assert delivery.done.is_set() and not delivery.ok


def test_backpressure_blocks_while_output_is_pending_and_returns_when_told(
    bus: FakeBus,
) -> None:
    bus.gate = threading.Event()
    box = Outbox(bus, "node-1", "Node One", max_pending_output_bytes=10)
    box.start()
    try:
        first = box.publish(task_output("run-1", 0, "stdout", "x" * 100), backpressure=True)
        cancel = threading.Event()
        returned = threading.Event()

        def second() -> None:
            box.publish(
                task_output("run-1", 1, "stdout", "y"),
                backpressure=True,
                stop_waiting=cancel.is_set,
            )
            returned.set()

        thread = threading.Thread(target=second)
        thread.start()
        assert not returned.wait(0.5), "publish must wait while too much output is pending"
        # Events without backpressure (heartbeats, terminal events) are not held back.
        assert box.publish(heartbeat()).done.is_set() is False
        cancel.set()
        assert returned.wait(2)
        thread.join(2)
        bus.gate.set()
        assert first.wait(5)
    finally:
        bus.gate.set()
        box.close(time.monotonic() + 5)
    # The cancelled publisher's event was still queued, after the first.
    assert [b["data"].get("chunk_index") for b in bus.bodies()] == [0, None, 1]


def test_backpressure_releases_when_the_bus_catches_up(bus: FakeBus) -> None:
    bus.gate = threading.Event()
    box = Outbox(bus, "node-1", "Node One", max_pending_output_bytes=10)
    box.start()
    try:
        box.publish(task_output("run-1", 0, "stdout", "x" * 100), backpressure=True)
        returned = threading.Event()

        def second() -> None:
            box.publish(task_output("run-1", 1, "stdout", "y"), backpressure=True)
            returned.set()

        threading.Thread(target=second, daemon=True).start()
        assert not returned.wait(0.4)
        bus.gate.set()
        assert returned.wait(3)
    finally:
        bus.gate.set()
        box.close(time.monotonic() + 5)
    assert [b["data"]["chunk_index"] for b in bus.bodies()] == [0, 1]


# --- batches -----------------------------------------------------------------------


def held_back(bus: FakeBus, outbox: Outbox) -> Delivery:
    """Holds the bus on a first event, so that what is published next queues up."""
    bus.gate = threading.Event()
    first = outbox.publish(heartbeat())
    assert wait_until(lambda: bus.attempts == 1)
    return first


def test_what_queues_up_goes_out_ten_events_a_call_in_order(bus: FakeBus, outbox: Outbox) -> None:
    first = held_back(bus, outbox)
    events = [task_output("run-1", i, "stdout", f"line {i}\n") for i in range(25)]
    deliveries = [outbox.publish(event) for event in events]
    assert bus.gate is not None
    bus.gate.set()
    assert first.wait(5) and all(d.wait(5) for d in deliveries)
    assert [len(batch) for batch in bus.batches] == [1, 10, 10, 5]
    assert [b["sequence"] for b in bus.bodies()] == list(range(1, 27))


def test_a_call_carries_at_most_256_kib(bus: FakeBus, outbox: Outbox) -> None:
    first = held_back(bus, outbox)
    text = "x" * (100 * 1024)
    deliveries = [outbox.publish(task_output("run-1", i, "stdout", text)) for i in range(5)]
    assert bus.gate is not None
    bus.gate.set()
    assert first.wait(5) and all(d.wait(5) for d in deliveries)
    assert [len(batch) for batch in bus.batches] == [1, 2, 2, 1]
    sizes = {p["dedup"]: len(json.dumps(p["body"]).encode()) for p in bus.published}
    for batch in bus.batches:
        assert sum(sizes[event_id] for event_id in batch) <= SNS_MAX_BATCH_BYTES


def test_a_terminal_event_never_shares_a_call_with_its_runs_output(
    bus: FakeBus, outbox: Outbox
) -> None:
    first = held_back(bus, outbox)
    events = [
        task_output("run-1", 0, "stdout", "a"),
        task_output("run-2", 0, "stdout", "b"),
        task_failed("run-2", ErrorType.CLAUDE_ERROR, "no"),
        heartbeat(),
        task_failed("run-3", ErrorType.TIMEOUT, "late"),
    ]
    deliveries = [outbox.publish(event) for event in events]
    assert bus.gate is not None
    bus.gate.set()
    assert first.wait(5) and all(d.wait(5) for d in deliveries)
    ids = [e.event_id for e in events]
    # run-2's terminal event waits for a call of its own; other runs' events
    # may share one with it.
    assert bus.batches[1:] == [ids[:2], ids[2:]]


def test_an_entry_refused_for_a_while_is_retried_before_what_follows(
    bus: FakeBus, outbox: Outbox
) -> None:
    first = held_back(bus, outbox)
    chunks = [task_output("run-1", i, "stdout", f"{i}") for i in range(3)]
    refused_for_good = heartbeat(7)
    bus.refuse = {
        chunks[1].event_id: client_error("InternalError", 500, "PublishBatch"),
        refused_for_good.event_id: client_error("InvalidParameter", 400, "PublishBatch"),
    }
    deliveries = [outbox.publish(e) for e in [chunks[0], chunks[1], refused_for_good, chunks[2]]]
    completed = outbox.publish(task_failed("run-1", ErrorType.CLAUDE_ERROR, "done"))
    assert bus.gate is not None
    bus.gate.set()
    assert first.wait(5) and completed.wait(5)
    assert [d.wait(5) for d in deliveries] == [True, True, False, True]
    assert "InvalidParameter" in (deliveries[2].error or "")
    order = [
        p["body"]["event_type"] + str(p["body"]["data"].get("chunk_index", ""))
        for p in bus.published
    ]
    assert order == ["NodeHeartbeat", "TaskOutput0", "TaskOutput2", "TaskOutput1", "TaskFailed"]
    assert bus.batches[2] == [chunks[1].event_id], "the refused entry alone, before the rest"


def test_a_batch_refused_as_a_whole_is_tried_one_event_at_a_time(
    bus: FakeBus, outbox: Outbox
) -> None:
    first = held_back(bus, outbox)
    bus.failures = [client_error("InvalidParameter", 400, "PublishBatch")]  # the next call
    events = [heartbeat(i) for i in range(3)]
    bus.refuse = {events[1].event_id: client_error("InvalidParameter", 400, "PublishBatch")}
    deliveries = [outbox.publish(e) for e in events]
    assert bus.gate is not None
    bus.gate.set()
    assert first.wait(5)
    assert [d.wait(5) for d in deliveries] == [True, False, True], "one bad event is dropped alone"
    assert [len(batch) for batch in bus.batches] == [1, 3, 1, 1, 1]


def test_pending_output_is_counted_in_the_bytes_it_takes_on_the_wire(bus: FakeBus) -> None:
    """Output heavy in characters outside ASCII is held as UTF-8, and counted so."""
    bus.gate = threading.Event()
    text = "😀" * 1000  # 4,000 bytes of UTF-8
    box = Outbox(bus, "node-1", "Node One", max_pending_output_bytes=4500)
    box.start()
    try:
        box.publish(task_output("run-1", 0, "stdout", text), backpressure=True)
        returned = threading.Event()

        def second() -> None:
            box.publish(task_output("run-1", 1, "stdout", text), backpressure=True)
            returned.set()

        threading.Thread(target=second, daemon=True).start()
        assert returned.wait(2), "4 KB of output is under the limit"
        third = threading.Thread(
            target=box.publish,
            args=(task_output("run-1", 2, "stdout", "z"),),
            kwargs={"backpressure": True},
            daemon=True,
        )
        third.start()
        third.join(0.4)
        assert third.is_alive(), "8 KB of output is over it"
        bus.gate.set()
        third.join(5)
    finally:
        bus.gate.set()
        box.close(time.monotonic() + 5)
    assert [b["data"]["chunk_index"] for b in bus.bodies()] == [0, 1, 2]


# --- BusClient: PublishBatch against a stand-in for the SNS client -------------------


class FakeSns:
    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.calls: list[dict[str, Any]] = []

    def publish_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append({"call": "publish_batch", **kwargs})
        return self.response

    def publish(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append({"call": "publish", **kwargs})
        return {"MessageId": "m-0"}


def test_bus_client_publishes_a_batch_and_reports_each_entry() -> None:
    sns = FakeSns(
        {
            "Successful": [{"Id": "0", "MessageId": "m-0"}],
            "Failed": [
                {"Id": "1", "Code": "InternalError", "SenderFault": False, "Message": "later"},
                {"Id": "2", "Code": "InvalidParameter", "SenderFault": True, "Message": "no"},
            ],
        }
    )
    client = BusClient(cast(Any, sns), TOPIC_ARN + ".fifo", fifo=True)
    messages = [BusMessage(f"body {i}", {"event_type": "X"}, "node-1", f"e-{i}") for i in range(4)]
    results = client.publish_batch(messages)
    (call,) = sns.calls
    assert call["call"] == "publish_batch"
    assert call["TopicArn"] == TOPIC_ARN + ".fifo"
    entries = call["PublishBatchRequestEntries"]
    assert [e["Id"] for e in entries] == ["0", "1", "2", "3"]
    assert entries[0]["Message"] == "body 0"
    assert entries[0]["MessageAttributes"] == {
        "event_type": {"DataType": "String", "StringValue": "X"}
    }
    assert [(e["MessageGroupId"], e["MessageDeduplicationId"]) for e in entries] == [
        ("node-1", f"e-{i}") for i in range(4)
    ]
    assert results[0] is None
    assert results[1] is not None and is_transient(results[1])
    assert results[2] is not None and not is_transient(results[2])
    assert describe_error(results[2]) == "InvalidParameter: no"
    assert results[3] is not None and is_transient(results[3]), "no answer is no publish"


def test_bus_client_sends_no_fifo_keys_to_a_standard_topic() -> None:
    sns = FakeSns({"Successful": [{"Id": "0"}, {"Id": "1"}], "Failed": []})
    messages = [BusMessage("b", {}, "node-1", f"e-{i}") for i in range(2)]
    assert BusClient(cast(Any, sns), TOPIC_ARN).publish_batch(messages) == [None, None]
    for entry in sns.calls[0]["PublishBatchRequestEntries"]:
        assert "MessageGroupId" not in entry and "MessageDeduplicationId" not in entry


@pytest.mark.parametrize("fifo", [False, True])
def test_bus_client_publishes_one_message_with_publish(fifo: bool) -> None:
    sns = FakeSns({})
    message = BusMessage("body", {"event_type": "X"}, "node-1", "e-0")
    assert BusClient(cast(Any, sns), TOPIC_ARN, fifo=fifo).publish_batch([message]) == [None]
    (call,) = sns.calls
    fifo_keys = {"MessageGroupId": "node-1", "MessageDeduplicationId": "e-0"}
    assert call == {
        "call": "publish",
        "TopicArn": TOPIC_ARN,
        "Message": "body",
        "MessageAttributes": {"event_type": {"DataType": "String", "StringValue": "X"}},
        **(fifo_keys if fifo else {}),
    }
