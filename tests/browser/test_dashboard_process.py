"""The dashboard process without a browser: its stop with a page still
streaming, and its checks as a real server on loopback answers them. These
need no Chromium, so they run wherever the moto server does."""

from __future__ import annotations

import http.client
import signal
import threading
import time
import urllib.request

from claude_code_scheduler.client.bus import READER_QUEUE_PREFIX
from claude_code_scheduler.client.dashboard.security import COOKIE
from tests.browser.conftest import Dashboard

TOKEN = "a-test-token-that-is-long-enough"
# Generous: the documented stop is a few seconds.
STOP_SECONDS = 30.0


def get(
    dashboard: Dashboard, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """One request, redirects not followed."""
    port = int(dashboard.url.rsplit(":", 1)[1].strip("/"))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


def test_sigint_with_a_page_streaming_stops_it_and_removes_its_queue(stack, dashboard_factory):
    before = set(stack.sqs.list_queues(QueueNamePrefix=READER_QUEUE_PREFIX).get("QueueUrls", []))
    dashboard = dashboard_factory(stack)
    ours = set(stack.sqs.list_queues(QueueNamePrefix=READER_QUEUE_PREFIX)["QueueUrls"]) - before
    assert len(ours) == 1

    first_frame = threading.Event()
    ended = threading.Event()

    def stream() -> None:
        with urllib.request.urlopen(f"{dashboard.url}api/events", timeout=60) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response:
                if line.startswith(b"event: snapshot"):
                    first_frame.set()
        ended.set()

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    assert first_frame.wait(20), "the page got its snapshot"

    started = time.monotonic()
    assert dashboard.stop(signal.SIGINT, timeout=STOP_SECONDS) == 0, dashboard.stderr
    assert time.monotonic() - started < STOP_SECONDS
    assert ended.wait(10), "the open stream was ended, not left hanging"
    assert "dashboard stopped" in dashboard.stderr
    assert "Traceback" not in dashboard.stderr
    left = set(stack.sqs.list_queues(QueueNamePrefix=READER_QUEUE_PREFIX).get("QueueUrls", []))
    assert not ours & left, "the temporary queue is removed on exit"


def test_a_token_guards_the_real_server(stack, dashboard_factory):
    dashboard = dashboard_factory(stack, "--token", TOKEN)
    status, _, body = get(dashboard, "/api/state")
    assert status == 401
    assert TOKEN not in body

    status, headers, _ = get(dashboard, f"/?token={TOKEN}")
    assert status == 303
    assert headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, _, body = get(dashboard, "/api/state", {"Cookie": f"{COOKIE}={TOKEN}"})
    assert status == 200
    assert '"nodes"' in body
    assert get(dashboard, "/", {"Authorization": f"Bearer {TOKEN}"})[0] == 200

    # DNS rebinding: the right token does not help a request for another Host.
    rebound = {"Host": "attacker.example:8765", "Authorization": f"Bearer {TOKEN}"}
    assert get(dashboard, "/api/state", rebound)[0] == 403
