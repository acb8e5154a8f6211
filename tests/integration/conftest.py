"""A real moto server process, per-test resources on it, and nodes as processes.

Nothing here mocks boto3 in-process: the node runs as its own process against
the moto server on a loopback port, exactly as it would against AWS.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import assert_valid_event, lane_env
from tests.unprivileged import let_other_users_through

REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret-key"}
FAKE_CLAUDE = Path(__file__).with_name("fake_claude.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail("moto server did not start")
            time.sleep(0.1)
    yield endpoint
    process.terminate()
    process.wait(10)
    log.close()


def aws_client(endpoint: str, service: str) -> Any:
    """A boto3 client of the moto server at `endpoint`, with the tests' keys."""
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def clients(endpoint: str) -> dict[str, Any]:
    return {name: aws_client(endpoint, name) for name in ("sqs", "sns", "s3")}


@dataclass(kw_only=True)
class EventReader:
    """Control-bus events from a server queue (raw delivery), each checked
    against its schema and deleted once read."""

    sqs: Any
    server_queue_url: str
    events: list[dict[str, Any]] = field(default_factory=list)

    def poll_events(self, wait: int = 1) -> list[dict[str, Any]]:
        new = []
        response = self.sqs.receive_message(
            QueueUrl=self.server_queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait,
            MessageAttributeNames=["All"],
        )
        for message in response.get("Messages", []):
            event = json.loads(message["Body"])
            assert_valid_event(event)
            event["_attributes"] = {
                k: v.get("StringValue") for k, v in message.get("MessageAttributes", {}).items()
            }
            event["_seen_at"] = time.monotonic()
            new.append(event)
            self.sqs.delete_message(
                QueueUrl=self.server_queue_url, ReceiptHandle=message["ReceiptHandle"]
            )
        self.events.extend(new)
        return new

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        """The first event (seen so far or arriving) that matches."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if predicate(event):
                    return event
            if time.monotonic() > deadline:
                kinds = [(e["event_type"], e["data"].get("run_id")) for e in self.events]
                raise AssertionError(f"no matching event within {timeout}s; saw {kinds}")
            self.poll_events()

    def wait_event(
        self,
        event_type: str,
        run_id: str | None = None,
        node_id: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        return self.wait_for(
            lambda e: (
                e["event_type"] == event_type
                and (run_id is None or e["data"].get("run_id") == run_id)
                and (node_id is None or e["node_id"] == node_id)
            ),
            timeout,
        )

    def of(self, event_type: str, run_id: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e["event_type"] == event_type
            and (run_id is None or e["data"].get("run_id") == run_id)
        ]

    def drain_events(self, seconds: float = 2.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.poll_events()


@dataclass(kw_only=True)
class Stack(EventReader):
    """One test's queue, command topic, control bus, server queue and bucket."""

    endpoint: str
    sns: Any
    s3: Any
    queue_url: str
    command_topic_arn: str
    topic_arn: str
    bucket: str

    def node_args(self, *, queue_url: str | None = None, topic_arn: str | None = None) -> list[str]:
        """The three options `node` needs, naming this stack (or the given stand-ins)."""
        return [
            "--queue-url",
            queue_url or self.queue_url,
            "--topic-arn",
            topic_arn or self.topic_arn,
            "--log-bucket",
            self.bucket,
        ]

    # --- sending -------------------------------------------------------------

    def send(self, command: dict[str, Any] | str) -> None:
        body = command if isinstance(command, str) else json.dumps(command)
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)

    def publish_command(self, command: dict[str, Any]) -> None:
        self.sns.publish(TopicArn=self.command_topic_arn, Message=json.dumps(command))

    # --- the rest -------------------------------------------------------------

    def log_text(self, run_id: str) -> bytes:
        return bytes(
            self.s3.get_object(Bucket=self.bucket, Key=f"logs/{run_id}.log")["Body"].read()
        )

    def queue_counts(self) -> tuple[int, int]:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]), int(
            attrs["ApproximateNumberOfMessagesNotVisible"]
        )


def make_stack(endpoint: str, visibility_timeout: int = 30) -> Stack:
    c = clients(endpoint)
    sqs, sns, s3 = c["sqs"], c["sns"], c["s3"]
    tag = uuid.uuid4().hex[:10]
    queue_url = sqs.create_queue(
        QueueName=f"node-queue-{tag}", Attributes={"VisibilityTimeout": str(visibility_timeout)}
    )["QueueUrl"]
    server_queue_url = sqs.create_queue(QueueName=f"server-queue-{tag}")["QueueUrl"]
    topic_arn = sns.create_topic(Name=f"control-bus-{tag}")["TopicArn"]
    command_topic_arn = sns.create_topic(Name=f"command-topic-{tag}")["TopicArn"]

    def arn(url: str) -> str:
        return str(
            sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
        )

    sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=arn(server_queue_url),
        Attributes={"RawMessageDelivery": "true"},
    )
    # No raw delivery here: the node must unwrap the SNS envelope.
    sns.subscribe(TopicArn=command_topic_arn, Protocol="sqs", Endpoint=arn(queue_url))
    bucket = f"logs-{tag}"
    s3.create_bucket(Bucket=bucket)
    return Stack(
        endpoint=endpoint,
        sqs=sqs,
        sns=sns,
        s3=s3,
        queue_url=queue_url,
        command_topic_arn=command_topic_arn,
        topic_arn=topic_arn,
        server_queue_url=server_queue_url,
        bucket=bucket,
    )


@pytest.fixture
def stack(moto_endpoint: str) -> Stack:
    return make_stack(moto_endpoint)


@pytest.fixture
def stack_factory(moto_endpoint: str) -> Callable[..., Stack]:
    return lambda **kwargs: make_stack(moto_endpoint, **kwargs)


def command(run_id: str | None = None, **task: Any) -> dict[str, Any]:
    task.setdefault("prompt", "say hello")
    return {"type": "RunTask", "version": 1, "run_id": run_id or uuid.uuid4().hex, "task": task}


def node_env(stack: Stack, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "CLAUDE_NODE_")) and key != "CI"
    }
    env.update(CREDENTIALS)
    env.update({"AWS_ENDPOINT_URL": stack.endpoint, "AWS_REGION": REGION, "PYTHONUNBUFFERED": "1"})
    env.update(lane_env())
    env.update(extra or {})
    return env


class NodeProcess:
    """`claude-code-scheduler node` as a child process with its stderr in a file."""

    def __init__(
        self,
        stack: Stack,
        tmp: Path,
        args: list[str],
        env: dict[str, str],
        *,
        entry: list[str] | None = None,
        work_dir: Path | None = None,
    ) -> None:
        """`entry` is how to start the program (default: this interpreter's -m)."""
        self.node_id = f"node-{uuid.uuid4().hex[:8]}"
        self.stderr_path = tmp / f"{self.node_id}.log"
        # A root node's runs run under uids of their own: they must reach the work dir.
        self.work_dir = work_dir or let_other_users_through(tmp) / f"{self.node_id}-work"
        argv = [
            *(entry or [sys.executable, "-m", "claude_code_scheduler"]),
            "node",
            *stack.node_args(),
            "--node-id",
            self.node_id,
            "--work-dir",
            str(self.work_dir),
            "--log-format",
            "json",
            "-vv",
            *args,
        ]
        with self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(argv, env=env, stderr=stderr, stdout=subprocess.DEVNULL)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


@pytest.fixture
def fake_claude(tmp_path: Path) -> Path:
    """An executable `claude` that runs fake_claude.py with this interpreter."""
    path = tmp_path / "bin" / "claude"
    path.parent.mkdir()
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_CLAUDE}" "$@"\n')
    path.chmod(0o755)
    return path


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    nodes: list[NodeProcess] = []

    def start(stack: Stack, *args: str, env: dict[str, str] | None = None) -> NodeProcess:
        node = NodeProcess(stack, tmp_path, list(args), node_env(stack, env))
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.kill()
