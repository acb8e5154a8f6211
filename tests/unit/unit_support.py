"""Fakes that satisfy the adapters' Protocols (mypy checks it), and schema helpers.

The fakes record what the logic asked of them so the unit tests can assert on
it without a network.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import botocore.exceptions
import jsonschema

from claude_code_scheduler.aws.names import parse_queue_url, parse_topic_arn
from claude_code_scheduler.aws.queue import QueueAttributes, ReceivedMessage
from claude_code_scheduler.node.config import NodeConfig
from claude_code_scheduler.node.control import RunControl
from claude_code_scheduler.node.messages import MessageLifecycle
from claude_code_scheduler.node.outbox import Delivery
from claude_code_scheduler.node.runs import TaskRun
from claude_code_scheduler.protocol import EVENT_TYPES, Event, RunTask, load_schema

QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/tasks"
TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:control"


@functools.cache
def schema_validator(name: str) -> jsonschema.Draft202012Validator:
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(name: str, instance: Any) -> list[str]:
    return [error.message for error in schema_validator(name).iter_errors(instance)]


def assert_event_valid(body: dict[str, Any]) -> None:
    event_type = body["event_type"]
    assert event_type in EVENT_TYPES
    errors = schema_errors(event_type, body)
    assert not errors, f"{event_type} does not match its schema: {errors}"


def client_error(code: str, status: int = 400, operation: str = "Publish") -> Exception:
    return botocore.exceptions.ClientError(
        cast(
            Any,
            {
                "Error": {"Code": code, "Message": f"{code} (fake)"},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
        ),
        operation,
    )


def message(
    body: str, message_id: str = "m-1", receipt: str = "r-1", receive_count: int = 1
) -> ReceivedMessage:
    return ReceivedMessage(
        message_id=message_id, receipt_handle=receipt, body=body, receive_count=receive_count
    )


def received_run(
    config: NodeConfig,
    command: RunTask,
    *,
    messages: MessageLifecycle,
    outbox: Any,
    logs: Any,
    control: RunControl,
    attempt: int = 1,
    receive_count: int = 1,
    **options: Any,
) -> TaskRun:
    """`command`'s message received through `messages` as a node receives it,
    and the TaskRun a node would start for it (`options`: TaskRun's own)."""
    received = messages.receive(
        message(command.to_json(), receive_count=receive_count), stopping=False, has_slot=True
    )
    assert received.command is not None
    return TaskRun(
        config,
        received.command,
        attempt,
        outbox=outbox,
        logs=logs,
        messages=messages,
        control=control,
        **options,
    )


def run_task_body(run_id: str = "run-1", **task: Any) -> str:
    return json.dumps(
        {"type": "RunTask", "version": 1, "run_id": run_id, "task": {"prompt": "hi", **task}}
    )


def make_config(tmp_path: Path | None = None, **overrides: Any) -> NodeConfig:
    values: dict[str, Any] = {
        "queue": parse_queue_url(QUEUE_URL),
        "topic": parse_topic_arn(TOPIC_ARN),
        "log_bucket": "logs-bucket",
        "region": "us-east-1",
        "node_id": "node-1",
        "node_name": "Node One",
        "heartbeat_interval": 1.0,
        "mock_mode": True,
        "poll_wait_seconds": 1,
        "shutdown_timeout": 1.0,
        "kill_grace": 0.2,
    }
    if tmp_path is not None:
        values["work_dir"] = tmp_path / "work"
        if "state_file" in {f.name for f in dataclasses.fields(NodeConfig)}:
            values["state_file"] = tmp_path / "node-state.json"
    values.update(overrides)
    return NodeConfig(**values)


class FakeQueue:
    """aws.queue.MessageQueue; records every call in order."""

    url = QUEUE_URL

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()
        self.fail_with: Exception | None = None

    def _record(self, *call: Any) -> None:
        with self.lock:
            self.calls.append(call)
        if self.fail_with is not None:
            raise self.fail_with

    def attributes(self) -> QueueAttributes:
        self._record("attributes")
        return QueueAttributes(visibility_timeout=30)

    def receive(self, max_messages: int, wait_seconds: int) -> list[ReceivedMessage]:
        self._record("receive", max_messages, wait_seconds)
        return []

    def change_visibility(self, receipt_handle: str, seconds: int) -> None:
        self._record("change_visibility", receipt_handle, seconds)

    def delete(self, receipt_handle: str) -> None:
        self._record("delete", receipt_handle)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        with self.lock:
            return [call for call in self.calls if call[0] == kind]


class FakeOutbox:
    """node.outbox.EventSink: every event is delivered at once (or, with `held`
    a list, when the test settles it) and recorded with the body the real
    outbox would publish."""

    def __init__(self, node_id: str = "node-1", node_name: str = "Node One") -> None:
        self.node_id = node_id
        self.node_name = node_name
        self.events: list[Event] = []
        self.bodies: list[dict[str, Any]] = []
        self.closed = False
        self.published_after_close: list[Event] = []
        self.started = False
        self.lock = threading.Lock()
        # When a list, deliveries wait in it for the test to settle them.
        self.held: list[Delivery] | None = None

    def start(self) -> None:
        self.started = True

    def publish(
        self,
        event: Event,
        *,
        backpressure: bool = False,
        stop_waiting: Callable[[], bool] | None = None,
        caller_reports_drop: bool = False,
    ) -> Delivery:
        delivery = Delivery()
        with self.lock:
            if self.held is not None:
                self.events.append(event)
                self.held.append(delivery)
                return delivery
            if self.closed:
                self.published_after_close.append(event)
                delivery.settle(False)
                return delivery
            self.events.append(event)
            self.bodies.append(event.body(self.node_id, self.node_name, len(self.events)))
        delivery.settle(True)
        return delivery

    def close(self, deadline: float) -> None:
        with self.lock:
            self.closed = True
            held, self.held = self.held or [], None
        for delivery in held:
            delivery.settle(False, "closed")

    def types(self) -> list[str]:
        with self.lock:
            return [event.event_type for event in self.events]


class FakeLogs:
    """aws.logstore.LogUploader: keeps what was uploaded, or fails with `fail_with`."""

    def __init__(self) -> None:
        self.uploads: dict[str, bytes] = {}
        self.fail_with: Exception | None = None
        self.on_upload: Callable[[str], None] | None = None

    def upload(self, path: Path, key: str) -> None:
        if self.on_upload is not None:
            self.on_upload(key)
        if self.fail_with is not None:
            raise self.fail_with
        self.uploads[key] = path.read_bytes()
