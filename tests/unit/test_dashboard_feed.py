"""The dashboard's feeds, stepped without a network: the bus feed through a
fake Reader, the records feed through a RecordReader on a fake S3 that
answers as S3 does (LastModified, pages)."""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import botocore.exceptions
import pytest
from test_dashboard_state import T0, Node, record

from claude_code_scheduler.aws.record_reader import RecordReader
from claude_code_scheduler.aws.records import record_key
from claude_code_scheduler.client.bus import BusEvent
from claude_code_scheduler.client.dashboard import feed as feed_module
from claude_code_scheduler.client.dashboard.feed import BusFeed, RecordsFeed
from claude_code_scheduler.client.dashboard.live import Hub
from claude_code_scheduler.client.dashboard.state import DashboardState

NOW = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)


class Bus:
    """A Reader: hands out the batches given, then waits as a long poll does."""

    def __init__(self, *batches: list[BusEvent] | Exception) -> None:
        self.batches = list(batches)
        self.calls = 0
        self.released = threading.Event()

    def receive(self, wait_seconds: int) -> list[BusEvent]:
        self.calls += 1
        if self.batches:
            batch = self.batches.pop(0)
            if isinstance(batch, Exception):
                raise batch
            return batch
        self.released.wait(wait_seconds)
        return []


def events(*bodies: dict[str, Any]) -> list[BusEvent]:
    return [BusEvent(body, {}) for body in bodies]


def test_a_batch_is_applied_in_each_nodes_order() -> None:
    hub = Hub(DashboardState(), clock=lambda: T0)
    node = Node()
    started, first = node.started("r1"), node.output("r1", 0, "one\n", stream="stderr")
    feed = BusFeed(Bus(events(first, started)), hub, threading.Event())
    feed.step()
    (run,) = hub.state.snapshot(T0)["runs"]
    assert run["task"] == "nightly"
    assert run["output"] == [["stderr", "one\n"]]


def test_an_aws_error_pauses_the_bus_feed_and_it_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed_module, "ERROR_PAUSE_SECONDS", 0.01)
    hub = Hub(DashboardState(), clock=lambda: T0)
    failure = botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    bus = Bus(failure, events(Node().registered()))
    feed = BusFeed(bus, hub, threading.Event())
    feed.step()
    feed.step()
    assert hub.state.snapshot(T0)["nodes"][0]["status"] == "idle"


def test_a_bug_in_a_batch_does_not_stop_the_bus_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed_module, "ERROR_PAUSE_SECONDS", 0.01)
    stop = threading.Event()
    hub = Hub(DashboardState(), clock=lambda: T0)
    calls: list[int] = []

    def broken(bodies: list[dict[str, Any]]) -> None:
        calls.append(len(bodies))
        if len(calls) == 1:
            raise RuntimeError("a bug")
        stop.set()

    monkeypatch.setattr(hub, "apply", broken)
    node = Node()
    feed = BusFeed(Bus(events(node.registered()), events(node.heartbeat([]))), hub, stop)
    feed.start()
    feed.join(10)
    assert calls == [1, 1], "the second batch was read after the first one failed"


def test_the_feeds_stop_within_one_receive() -> None:
    stop = threading.Event()
    hub = Hub(DashboardState())
    bus_feed = BusFeed(Bus(), hub, stop)
    records_feed = RecordsFeed(RecordReader(cast(Any, S3({})), "b"), hub, stop, every=3600)
    bus_feed.start()
    records_feed.start()
    time.sleep(0.2)
    started = time.monotonic()
    stop.set()
    bus_feed.join(10)
    records_feed.join(10)
    assert not bus_feed.is_alive()
    assert not records_feed.is_alive()
    # The bus feed finishes the receive in flight (2 s at most) and stops.
    assert time.monotonic() - started < 5


class S3:
    """list_objects_v2 in pages, with LastModified, and get_object, counted."""

    def __init__(self, objects: dict[str, tuple[datetime, bytes]], page: int = 2) -> None:
        self.objects = objects
        self.page = page
        self.gets: list[str] = []

    def list_objects_v2(self, **call: Any) -> dict[str, Any]:
        keys = sorted(k for k in self.objects if k.startswith(call["Prefix"]))
        start = int(call.get("ContinuationToken", "0"))
        chunk = keys[start : start + self.page]
        more = start + self.page < len(keys)
        contents = [{"Key": k, "LastModified": self.objects[k][0]} for k in chunk]
        answer: dict[str, Any] = {"Contents": contents, "IsTruncated": more}
        if more:
            answer["NextContinuationToken"] = str(start + self.page)
        return answer

    def get_object(self, **call: Any) -> dict[str, Any]:
        self.gets.append(call["Key"])
        return {"Body": io.BytesIO(self.objects[call["Key"]][1])}


def stored(s3: S3, run_id: str, ended: datetime) -> None:
    body = record(run_id, ended_at=ended.isoformat().replace("+00:00", "Z"))
    s3.objects[record_key(ended.date(), run_id, 1)] = (ended, json.dumps(body).encode())


def test_the_records_feed_reads_the_newest_records_of_a_day_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(feed_module, "MAX_RECENT_RUNS", 3)
    s3 = S3({})
    for minutes, run_id in ((10, "a"), (20, "b"), (40, "c"), (50, "d"), (25 * 60, "too-old")):
        stored(s3, run_id, NOW - timedelta(minutes=minutes))
    s3.objects["records/date=2026-12-01/not-json-1.json"] = (NOW, b"{")
    hub = Hub(DashboardState(), clock=NOW.timestamp)
    clock = [NOW]
    feed = RecordsFeed(
        RecordReader(cast(Any, s3), "b"), hub, threading.Event(), clock=lambda: clock[0]
    )
    feed.step()
    recent = hub.state.snapshot(NOW.timestamp())["recent"]
    # Yesterday's and today's prefixes, the three newest; the unreadable one counts as read.
    assert [row["run_id"] for row in recent] == ["a", "b"]
    assert len(s3.gets) == 3
    assert "too-old" not in " ".join(s3.gets)

    stored(s3, "e", NOW)
    s3.gets.clear()
    feed.step()
    assert s3.gets == [record_key(NOW.date(), "e", 1)], "only the new record is read"
    recent = hub.state.snapshot(NOW.timestamp())["recent"]
    assert [row["run_id"] for row in recent] == ["e", "a", "b"]
