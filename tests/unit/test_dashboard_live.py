"""The live stream: SSE frames, the hub that fans changes out to pages, and
/api/events through the ASGI app, in-process."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import MutableMapping
from typing import Any

from test_dashboard_state import T0, Node, assistant

from claude_code_scheduler.client.dashboard.app import Settings, create_app
from claude_code_scheduler.client.dashboard.live import (
    MAX_SUBSCRIBERS,
    SUBSCRIBER_BACKLOG,
    Hub,
    frame,
    frames_of,
)
from claude_code_scheduler.client.dashboard.security import Guard, allowed_hosts
from claude_code_scheduler.client.dashboard.state import (
    GONE_KEPT_SECONDS,
    Changes,
    DashboardState,
)


def parse_frames(text: str) -> list[tuple[str, Any]]:
    """(event, data) of each frame, as EventSource reads them; comments and
    the retry field left out."""
    frames = []
    for block in text.split("\n\n"):
        fields: dict[str, list[str]] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields.setdefault(name, []).append(value)
        if "data" in fields:
            frames.append((fields["event"][0], json.loads("\n".join(fields["data"]))))
    return frames


def test_a_frame_is_one_event_line_and_one_data_line() -> None:
    text = frame("output", {"pieces": [["stdout", "a\n\nevent: summary\ndata: {}\n\n"]]})
    assert text.count("\n") == 3, "two lines and the blank line that ends the frame"
    assert text.startswith("event: output\ndata: ")
    ((event, data),) = parse_frames(text)
    assert event == "output"
    assert data["pieces"][0][1] == "a\n\nevent: summary\ndata: {}\n\n", "output cannot forge frames"


def test_a_batchs_frames_put_the_summary_before_the_output() -> None:
    changes = Changes()
    changes.add_output("r1", [("stdout", "hi\n")])
    changes.add_output("r1", [])
    frames = parse_frames("".join(frames_of(changes, {"runs": []})))
    assert frames == [
        ("summary", {"runs": []}),
        ("output", {"run_id": "r1", "pieces": [["stdout", "hi\n"]]}),
    ]
    assert frames_of(Changes(), None) == []


def publish_then_close(hub: Hub, bodies: list[dict[str, Any]]) -> None:
    """What the feed does with a batch, then what the command does at a stop."""
    hub.apply(bodies)
    hub.close()


def hub_at(now: float = T0) -> Hub:
    return Hub(DashboardState(), clock=lambda: now)


def drain(hub: Hub) -> list[tuple[str, Any]]:
    """Everything a new page receives until the hub closes, with `apply`
    called from another thread (as the feed does) after subscribing."""
    node = Node()
    bodies = [node.registered(), node.started("r1"), node.output("r1", 0, assistant("hello"))]

    async def run() -> str:
        subscribed = hub.add_page()
        assert subscribed is not None
        subscriber, first = subscribed
        feeder = threading.Thread(target=publish_then_close, args=(hub, bodies))
        feeder.start()
        text = "".join([piece async for piece in hub.stream(subscriber, first)])
        feeder.join()
        return text

    return parse_frames(asyncio.run(run()))


def test_a_page_gets_a_snapshot_then_the_changes_in_order() -> None:
    frames = drain(hub_at())
    kinds = [event for event, _ in frames]
    assert kinds == ["snapshot", "summary", "output"]
    assert frames[0][1]["nodes"] == []
    summary = frames[1][1]
    assert summary["nodes"][0]["status"] == "busy"
    assert summary["runs"][0]["run_id"] == "r1"
    assert "output" not in summary["runs"][0], "output goes piece by piece"
    assert frames[2][1] == {"run_id": "r1", "pieces": [["stdout", "hello\n"]]}


def test_a_snapshot_taken_after_changes_has_them_and_they_are_not_sent_again() -> None:
    hub = hub_at()
    node = Node()
    hub.apply([node.started("r1"), node.output("r1", 0, assistant("before"))])

    async def run() -> str:
        subscribed = hub.add_page()
        assert subscribed is not None
        subscriber, first = subscribed
        hub.close()
        return "".join([piece async for piece in hub.stream(subscriber, first)])

    frames = parse_frames(asyncio.run(run()))
    assert [event for event, _ in frames] == ["snapshot"]
    assert frames[0][1]["runs"][0]["output"] == [["stdout", "before\n"]]


def test_a_tick_sends_a_summary_only_when_something_but_the_clock_changed() -> None:
    clock = [T0]
    hub = Hub(DashboardState(), clock=lambda: clock[0])
    node = Node()
    hub.apply([node.registered(), node.heartbeat([])])

    async def run() -> str:
        subscribed = hub.add_page()
        assert subscribed is not None
        subscriber, first = subscribed
        clock[0] = T0 + 1
        hub.tick()  # ages moved on: nothing to send
        clock[0] = T0 + 10
        hub.tick()  # the node is lost now
        hub.tick()  # still lost: nothing new
        hub.close()
        return "".join([piece async for piece in hub.stream(subscriber, first)])

    frames = parse_frames(asyncio.run(run()))
    assert [event for event, _ in frames] == ["snapshot", "summary"]
    assert frames[1][1]["nodes"][0]["status"] == "lost"


def test_a_page_that_lags_is_dropped_and_the_others_are_not_held_up() -> None:
    hub = hub_at()
    node = Node()

    async def run() -> tuple[list[str], int]:
        slow = hub.add_page()
        assert slow is not None
        for index in range(SUBSCRIBER_BACKLOG + 5):
            hub.apply([node.output("r1", index, f"{index}\n", stream="stderr")])
        await asyncio.sleep(0)  # let the loop run the queued offers
        await asyncio.sleep(0)
        got = [piece async for piece in hub.stream(*slow)]
        again = hub.add_page()
        return got, 0 if again is None else 1

    got, resubscribed = asyncio.run(run())
    # retry, snapshot, then the backlog but one, then the stream ended.
    assert len(got) == 2 + SUBSCRIBER_BACKLOG - 1
    assert resubscribed == 1, "the dropped page was unsubscribed and may come back"


def test_pages_beyond_the_limit_are_refused() -> None:
    hub = hub_at()

    async def run() -> list[bool]:
        return [hub.add_page() is not None for _ in range(MAX_SUBSCRIBERS + 1)]

    answers = asyncio.run(run())
    assert answers == [True] * MAX_SUBSCRIBERS + [False]


def test_api_events_streams_through_the_app_until_the_hub_closes() -> None:
    hub = hub_at()
    settings = Settings(
        guard=Guard(token=None, csrf_token="c", hosts=allowed_hosts("127.0.0.1")),
        canceller=None,
        source="bus",
    )
    app = create_app(hub, settings)
    node = Node()
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        async def receive() -> MutableMapping[str, Any]:
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(dict(message))
            body = message.get("body", b"")
            if b"event: snapshot" in body:
                # The page is connected: the feed publishes, then the dashboard stops.
                threading.Thread(target=publish_then_close, args=(hub, [node.registered()])).start()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/api/events",
            "raw_path": b"/api/events",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1:8765")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8765),
        }
        await asyncio.wait_for(app(scope, receive, send), 10)

    asyncio.run(run())
    start = sent[0]
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    body = b"".join(m.get("body", b"") for m in sent[1:]).decode()
    assert body.startswith("retry: ")
    assert [event for event, _ in parse_frames(body)] == ["snapshot", "summary"]


def test_a_tick_removes_a_silent_node_and_says_so() -> None:
    clock = [T0]
    hub = Hub(DashboardState(), clock=lambda: clock[0])
    hub.apply([Node().registered()])

    async def run() -> str:
        subscribed = hub.add_page()
        assert subscribed is not None
        clock[0] = T0 + GONE_KEPT_SECONDS + 1
        hub.tick()
        hub.close()
        return "".join([piece async for piece in hub.stream(*subscribed)])

    frames = parse_frames(asyncio.run(run()))
    assert [event for event, _ in frames] == ["snapshot", "summary"]
    assert frames[0][1]["nodes"] != []
    assert frames[1][1]["nodes"] == []


def test_publishing_after_the_server_stopped_does_not_fail_the_feed() -> None:
    """The feed may still apply a batch while the server's loop closes."""
    hub = hub_at()

    async def connect() -> None:
        assert hub.add_page() is not None

    asyncio.run(connect())  # the page's loop is closed when this returns
    node = Node()
    hub.apply([node.registered()])  # no RuntimeError from the closed loop
    hub.close()
    hub.apply([node.heartbeat([])])
    assert hub.state.snapshot(T0)["nodes"][0]["status"] == "idle"
