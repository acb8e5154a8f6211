"""`cancel` and `submit --wait`'s Ctrl-C, the operator's side of a cancel,
against the moto server: what is written, what is published, what is left
alone. (The node's side, stopping the run, is in test_cancel.py.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from claude_code_scheduler.aws.cancels import (
    UNREADABLE_REASON,
    CancelStore,
    cancel_key,
)
from claude_code_scheduler.client.cancel import CancelStatus, request_cancel
from claude_code_scheduler.errors import ConfigError
from tests.integration.conftest import command, node_env
from tests.integration.test_client import client


def cancel(stack, run_id, *args):
    return client(
        stack,
        "cancel",
        run_id,
        "--log-bucket",
        stack.bucket,
        "--control-bus-arn",
        stack.topic_arn,
        *args,
        timeout=60,
    )


def cancel_objects(stack) -> list[str]:
    listing = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="cancels/")
    return [item["Key"] for item in listing.get("Contents", [])]


def put_result(stack, run_id: str, outcome: dict[str, Any], retryable: bool | None) -> None:
    """A result.json as a node stores it (node.artifacts.collect.result_document)."""
    document = {"run_id": run_id, "outcome": outcome, "retryable": retryable, "result": None}
    stack.s3.put_object(
        Bucket=stack.bucket, Key=f"runs/{run_id}/result.json", Body=json.dumps(document).encode()
    )


def test_a_malformed_run_id_is_refused_with_one_line(stack):
    done = cancel(stack, "../runs/x")
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("error: RUN_ID:")
    too_long = cancel(stack, "r", "--reason", "x" * 1025)
    assert too_long.returncode == 2 and len(too_long.stderr.splitlines()) == 1
    assert cancel_objects(stack) == []


def test_an_unknown_run_is_recorded_announced_and_seen_by_events(stack):
    """The run may not have been delivered yet: the request waits for it."""
    events = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "claude_code_scheduler",
            "events",
            "--listen",
            "15",
            "--run-id",
            "not-delivered-yet",
            "--control-bus-arn",
            stack.topic_arn,
        ],
        env=node_env(stack),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(4)  # subscribed
    done = cancel(stack, "not-delivered-yet", "--reason", "wrong prompt")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    assert "cancel recorded" in done.stdout
    assert "not published" not in done.stdout

    request = CancelStore(stack.s3, stack.bucket).lookup("not-delivered-yet")
    assert request is not None
    assert request.reason == "wrong prompt"
    # moto's STS answers GetCallerIdentity as AWS does, with the caller's ARN.
    assert request.requested_by.startswith("arn:aws:")

    announced = stack.wait_event("CancelRequested", "not-delivered-yet")
    assert announced["node_id"] == "operator" and announced["sequence"] == 1
    assert announced["_attributes"]["run_id"] == "not-delivered-yet"
    assert announced["data"] == {"run_id": "not-delivered-yet", **request.fields()}

    out, err = events.communicate(timeout=40)
    assert events.returncode == 0, err
    (line,) = [line for line in out.splitlines() if "CancelRequested" in line]
    assert "run=not-delivered-yet" in line
    assert f"by={request.requested_by}" in line and "reason='wrong prompt'" in line


def test_a_run_that_already_ended_is_left_alone(stack, start_node):
    start_node(stack, "--mock-mode", "--poll-wait-seconds", "1")
    finished = command("finished-1")
    stack.send(finished)
    stack.wait_event("TaskCompleted", "finished-1", timeout=60)

    done = cancel(stack, "finished-1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "run finished-1 already ended (TaskCompleted): nothing to cancel"
    ]
    assert cancel_objects(stack) == []
    stack.drain_events(2)
    assert stack.of("CancelRequested") == []


def test_request_cancel_tells_a_final_ending_from_one_that_runs_again(stack):
    """The Python-level function, as a scheduler would call it."""
    put_result(
        stack, "failed-for-good", {"event_type": "TaskFailed", "error_type": "Timeout"}, False
    )
    put_result(
        stack, "handed-back", {"event_type": "TaskFailed", "error_type": "NodeShutdown"}, True
    )
    # A result.json of a node that did not say (older): not known to have ended.
    put_result(stack, "unsaid", {"event_type": "TaskFailed", "error_type": "ClaudeError"}, None)

    def ask(run_id: str, **extra: Any):
        return request_cancel(
            stack.s3,
            stack.sns,
            log_bucket=stack.bucket,
            control_bus_arn=stack.topic_arn,
            run_id=run_id,
            **extra,
        )

    ended = ask("failed-for-good")
    assert ended.status is CancelStatus.ALREADY_ENDED
    assert (
        ended.line() == "run failed-for-good already ended (TaskFailed Timeout): nothing to cancel"
    )
    for run_id in ("handed-back", "unsaid"):
        recorded = ask(run_id, reason="r", requested_by="scheduler")
        assert recorded.status is CancelStatus.RECORDED and recorded.announce_error is None
        assert CancelStore(stack.s3, stack.bucket).lookup(run_id) == recorded.request
    assert sorted(cancel_objects(stack)) == [cancel_key("handed-back"), cancel_key("unsaid")]
    # Without a control bus the request stands, and the result says it was not announced.
    quiet = request_cancel(
        stack.s3, None, log_bucket=stack.bucket, control_bus_arn=None, run_id="quiet"
    )
    assert quiet.status is CancelStatus.RECORDED and quiet.announce_error == "no control bus given"
    assert quiet.request is not None and "@" in quiet.request.requested_by  # user@host
    with pytest.raises(ConfigError, match="RUN_ID"):
        ask("a/b")


def test_a_record_that_cannot_be_read_still_cancels(stack):
    store = CancelStore(stack.s3, stack.bucket)
    assert store.lookup("nothing-here") is None
    for run_id, body in (
        ("garbled", b"{not json"),
        ("too-big", b" " * 9000 + b"{}"),
        ("someone-else", json.dumps({"version": 1, "run_id": "other"}).encode()),
    ):
        stack.s3.put_object(Bucket=stack.bucket, Key=cancel_key(run_id), Body=body)
        request = store.lookup(run_id)
        assert request is not None, run_id
        assert request.run_id == run_id and request.reason == UNREADABLE_REASON
        assert request.requested_at.endswith("Z")


def submit_and_wait(stack, run_id: str, *args: str) -> subprocess.Popen[str]:
    """`submit --wait` for a run no node takes, interrupted once it has sent it."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "claude_code_scheduler",
            "submit",
            "--prompt",
            "p",
            "--run-id",
            run_id,
            "--queue-url",
            stack.queue_url,
            "--control-bus-arn",
            stack.topic_arn,
            "--wait",
            *args,
        ],
        env=node_env(stack),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == run_id  # sent
    process.send_signal(signal.SIGINT)
    return process


def test_ctrl_c_in_submit_wait_stops_following_and_says_how_to_cancel(stack):
    process = submit_and_wait(stack, "followed-1")
    _, err = process.communicate(timeout=40)
    assert process.returncode == 130, err
    assert "run followed-1: stopped following; the run goes on" in err
    assert "claude-code-scheduler cancel followed-1" in err
    assert cancel_objects(stack) == []


def test_ctrl_c_with_cancel_on_interrupt_cancels_the_run(stack, start_node):
    """Interrupted before any node took the command: the node that takes it
    later finds the request and never starts the run."""
    process = submit_and_wait(
        stack, "interrupted-1", "--cancel-on-interrupt", "--log-bucket", stack.bucket
    )
    _, err = process.communicate(timeout=40)
    assert process.returncode == 130, err
    assert "run interrupted-1: cancel recorded" in err
    request = CancelStore(stack.s3, stack.bucket).lookup("interrupted-1")
    assert request is not None and request.reason is not None
    assert "cancel-on-interrupt" in request.reason
    stack.wait_event("CancelRequested", "interrupted-1")

    start_node(stack, "--mock-mode", "--poll-wait-seconds", "1")
    failed = stack.wait_event("TaskFailed", "interrupted-1", timeout=60)
    assert failed["data"]["error"]["type"] == "Cancelled"
    assert failed["data"]["retryable"] is False
    assert failed["data"]["cancel"] == request.fields()
    assert stack.of("TaskStarted", "interrupted-1") == []
    deadline = time.monotonic() + 15
    while stack.queue_counts() != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stack.queue_counts() == (0, 0), "the message was deleted"


def test_cancel_on_interrupt_needs_wait_and_a_log_bucket(stack):
    for args in (("--cancel-on-interrupt",), ("--wait", "--cancel-on-interrupt")):
        done = client(
            stack,
            "submit",
            "--prompt",
            "p",
            "--queue-url",
            stack.queue_url,
            "--control-bus-arn",
            stack.topic_arn,
            *args,
        )
        assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
        assert "--cancel-on-interrupt" in done.stderr
    assert stack.queue_counts() == (0, 0), "nothing was sent"
