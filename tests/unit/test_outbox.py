"""outbox.py: ordered, numbered publishing through outages, with a fake bus."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import botocore.exceptions
import pytest
from unit_support import assert_event_valid, client_error

from claude_code_scheduler.node.outbox import Outbox
from claude_code_scheduler.protocol.events import (
    ErrorType,
    Event,
    EventType,
    task_failed,
    task_output,
)


class FakeBus:
    """aws.BusClient's surface. `failures` are raised, one per call, before
    calls succeed; `always_fail` fails every call; `gate` blocks calls."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []
        self.attempts = 0
        self.failures: list[Exception] = []
        self.always_fail: Exception | None = None
        self.gate: threading.Event | None = None
        self.lock = threading.Lock()

    def publish(self, body: str, attributes: dict[str, str], *, group: str, dedup: str) -> None:
        with self.lock:
            self.attempts += 1
            failure = self.failures.pop(0) if self.failures else self.always_fail
        if self.gate is not None:
            self.gate.wait(10)
        if failure is not None:
            raise failure
        with self.lock:
            self.published.append(
                {"body": json.loads(body), "attributes": attributes, "group": group, "dedup": dedup}
            )

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
    first = outbox.publish(heartbeat(1))
    second = outbox.publish(heartbeat(2))
    assert first.wait(10)
    assert second.wait(10)
    assert bus.attempts == len(failures) + 2
    assert [b["sequence"] for b in bus.bodies()] == [1, 2]


def test_a_permanent_error_drops_that_event_and_the_next_still_goes(
    bus: FakeBus, outbox: Outbox
) -> None:
    bus.failures = [client_error("AccessDenied", 403)]
    dropped = outbox.publish(heartbeat(1))
    delivered = outbox.publish(heartbeat(2))
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
