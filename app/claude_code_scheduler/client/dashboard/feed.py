"""The dashboard's two readers, each a thread with run/stop: the control bus
(through the same Reader `events` uses: its own temporary queue, opened and
removed by the command) and, when a log bucket is given, the recent run
records in S3. Both hand what they read to the Hub; neither decides what it
means (state.py does)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.exceptions

from claude_code_scheduler.aws.errors import describe_error
from claude_code_scheduler.aws.record_reader import RecordReader
from claude_code_scheduler.aws.records import day_prefix
from claude_code_scheduler.client.bus import Reader
from claude_code_scheduler.client.dashboard.live import Hub
from claude_code_scheduler.client.dashboard.state import MAX_RECENT_RUNS
from claude_code_scheduler.client.records import FETCH_THREADS, TimeRange, fetch_record

log = logging.getLogger(__name__)

# Short receives, so a stop is noticed within this and `lost` nodes show
# without an event (Hub.tick between receives).
RECEIVE_WAIT_SECONDS = 2
# After an AWS error, wait this long before reading again.
ERROR_PAUSE_SECONDS = 5.0
# The records are listed this often: one ListObjectsV2 per 1,000 keys of
# today's and yesterday's prefixes, and one GetObject per record not read yet.
RECORDS_EVERY_SECONDS = 30.0
# How far back the recent runs table reaches.
RECORDS_RANGE = timedelta(hours=24)

_AWS_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


class BusFeed(threading.Thread):
    """Receives control-bus events and applies them, batch by batch."""

    def __init__(self, reader: Reader, hub: Hub, stop: threading.Event) -> None:
        super().__init__(name="dashboard-bus", daemon=True)
        self._reader = reader
        self._hub = hub
        self._stopping = stop

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.step()
            except Exception:
                # A bug must not leave the page silently stale.
                log.exception("the dashboard's bus feed failed; reading on")
                self._stopping.wait(ERROR_PAUSE_SECONDS)

    def step(self) -> None:
        """One receive: its events in each node's order, then a tick."""
        try:
            events = self._reader.receive(RECEIVE_WAIT_SECONDS)
        except _AWS_ERRORS as exc:
            log.warning("reading the control bus failed: %s", describe_error(exc))
            self._stopping.wait(ERROR_PAUSE_SECONDS)
            return
        if events:
            events = sorted(events, key=lambda e: (e.node_id, _sequence(e.body)))
            self._hub.apply([event.body for event in events])
        self._hub.tick()

    def stop(self) -> None:
        self._stopping.set()


def _sequence(body: dict[str, Any]) -> int:
    value = body.get("sequence")
    return value if isinstance(value, int) else 0


class RecordsFeed(threading.Thread):
    """Reads the newest run records of the last RECORDS_RANGE, the history
    the bus cannot give (runs that ended before the dashboard started), and
    the node's own word on how each attempt ended."""

    def __init__(
        self,
        reader: RecordReader,
        hub: Hub,
        stop: threading.Event,
        *,
        every: float = RECORDS_EVERY_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(name="dashboard-records", daemon=True)
        self._reader = reader
        self._hub = hub
        self._stopping = stop
        self._every = every
        self._clock = clock
        # Keys read already (at most MAX_RECENT_RUNS: the newest ones).
        self._read: set[str] = set()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.step()
            except _AWS_ERRORS as exc:
                log.warning(
                    "reading run records from %s failed: %s",
                    self._reader.bucket,
                    describe_error(exc),
                )
            except Exception:
                log.exception("the dashboard's records feed failed; trying again later")
            self._stopping.wait(self._every)

    def step(self) -> None:
        now = self._clock()
        window = TimeRange(now - RECORDS_RANGE, now)
        listed = [
            (key, modified)
            for day in window.days()
            for key, modified in self._reader.listing(day_prefix(day))
            if modified >= window.since
        ]
        newest = [key for key, _ in sorted(listed, key=lambda item: item[1], reverse=True)]
        newest = newest[:MAX_RECENT_RUNS]
        unread = [key for key in newest if key not in self._read]
        with ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="dashboard-record") as pool:
            records = [
                r for r in pool.map(lambda key: fetch_record(self._reader, key), unread) if r
            ]
        self._read = set(newest)
        if records:
            self._hub.add_records(records)

    def stop(self) -> None:
        self._stopping.set()
