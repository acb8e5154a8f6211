"""Start-up problems end in exit status 2 and one line that names the option."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from claude_code_scheduler.node.leases import LEASE_CALL_SECONDS, MIN_VISIBILITY_SECONDS
from tests.conftest import wait_until
from tests.fault_proxy import FaultProxy
from tests.integration.conftest import CREDENTIALS, free_port

GOOD_TOPIC = "arn:aws:sns:us-east-1:123456789012:control-bus"


def run_cli(args, env_extra=None, timeout=60):
    env = {"PATH": "/usr/bin:/bin", **CREDENTIALS, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "claude_code_scheduler", "node", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(done, *fragments):
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ([], ["--queue-url is required", "CLAUDE_NODE_QUEUE_URL"]),
        (["--queue-url", "http://localhost:4566/000000000000/q"], ["--topic-arn is required"]),
        (
            ["--queue-url", "ftp://x/1/q", "--topic-arn", GOOD_TOPIC, "--log-bucket", "logs"],
            ["--queue-url", "not an http(s) SQS queue URL"],
        ),
        (
            [
                "--queue-url",
                "https://sqs.us-east-1.amazonaws.com/q",
                "--topic-arn",
                GOOD_TOPIC,
                "--log-bucket",
                "logs",
            ],
            ["--queue-url", "<account-id>/<queue-name>"],
        ),
        (
            [
                "--queue-url",
                "http://localhost:4566/000000000000/q",
                "--topic-arn",
                "arn:aws:sqs:us-east-1:1:x",
                "--log-bucket",
                "logs",
            ],
            ["--topic-arn", "not an SNS topic ARN"],
        ),
        (
            [
                "--queue-url",
                "http://localhost:4566/000000000000/q",
                "--topic-arn",
                GOOD_TOPIC,
                "--log-bucket",
                "Bad_Bucket",
            ],
            ["--log-bucket", "not a valid bucket name"],
        ),
        (
            [
                "--queue-url",
                "https://sqs.eu-west-1.amazonaws.com/123456789012/q",
                "--topic-arn",
                GOOD_TOPIC,
                "--log-bucket",
                "logs",
            ],
            ["--region", "eu-west-1", "us-east-1"],
        ),
        (
            [
                "--queue-url",
                "http://localhost:4566/000000000000/q",
                "--topic-arn",
                GOOD_TOPIC,
                "--log-bucket",
                "logs",
                "--region",
                "eu-west-1",
            ],
            ["--region", "eu-west-1", "us-east-1"],
        ),
        (
            [
                "--queue-url",
                "http://localhost:4566/000000000000/q",
                "--topic-arn",
                GOOD_TOPIC,
                "--log-bucket",
                "logs",
                "--heartbeat-interval",
                "0.5",
            ],
            ["--heartbeat-interval", "at least 1"],
        ),
        (
            [
                "--queue-url",
                "http://localhost:4566/000000000000/q",
                "--topic-arn",
                GOOD_TOPIC,
                "--log-bucket",
                "logs",
                "--poll-wait-seconds",
                "21",
            ],
            ["--poll-wait-seconds", "1 to 20"],
        ),
        (
            [
                "--queue-url",
                "http://localhost:4566/000000000000/q",
                "--topic-arn",
                GOOD_TOPIC,
                "--log-bucket",
                "logs",
                "--heartbeat-interval",
                "often",
            ],
            ["--heartbeat-interval", "not a valid float"],
        ),
    ],
)
def test_bad_options(args, fragments):
    assert_one_line_error(run_cli(args), *fragments)


def test_options_come_from_the_environment():
    done = run_cli(
        [],
        {
            "CLAUDE_NODE_QUEUE_URL": "http://localhost:4566/000000000000/q",
            "CLAUDE_NODE_TOPIC_ARN": GOOD_TOPIC,
            "CLAUDE_NODE_LOG_BUCKET": "logs",
            "CLAUDE_NODE_HEARTBEAT_INTERVAL": "0",
        },
    )
    assert_one_line_error(done, "--heartbeat-interval")


def test_emulator_queue_urls_are_valid_and_the_endpoint_is_checked():
    port = free_port()  # nothing listens here
    for queue_url in (
        f"http://localhost:{port}/000000000000/q",
        f"http://sqs.us-east-1.localhost.localstack.cloud:{port}/000000000000/q",
    ):
        done = run_cli(
            [
                "--queue-url",
                queue_url,
                "--topic-arn",
                GOOD_TOPIC,
                "--log-bucket",
                "logs",
                "--mock-mode",
                # One try: the retrying is test_an_endpoint_that_stays_down_*'s.
                "--startup-timeout",
                "0",
            ],
            {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"},
        )
        assert_one_line_error(done, "--queue-url: cannot reach the queue")


def test_queue_that_does_not_exist(stack):
    missing = stack.queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    done = run_cli(
        [*stack.node_args(queue_url=missing), "--mock-mode"],
        {"AWS_ENDPOINT_URL": stack.endpoint},
    )
    assert_one_line_error(done, "--queue-url", "does not exist")


def test_per_service_endpoint_variables_work(stack, start_node):
    # AWS_ENDPOINT_URL points nowhere; the per-service variables must win.
    dead = f"http://127.0.0.1:{free_port()}"
    env = {
        "AWS_ENDPOINT_URL": dead,
        "AWS_ENDPOINT_URL_SQS": stack.endpoint,
        "AWS_ENDPOINT_URL_SNS": stack.endpoint,
        "AWS_ENDPOINT_URL_S3": stack.endpoint,
    }
    node = start_node(stack, "--mock-mode", "--poll-wait-seconds", "1", env=env)
    stack.wait_event("NodeRegistered", node_id=node.node_id)


def test_topic_that_does_not_exist(stack):
    missing = stack.topic_arn.rsplit(":", 1)[0] + ":no-such-topic"
    done = run_cli(
        [*stack.node_args(topic_arn=missing), "--mock-mode"],
        {"AWS_ENDPOINT_URL": stack.endpoint},
    )
    assert_one_line_error(done, "--topic-arn: could not publish NodeRegistered", "NotFound")


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--profile", "no-such-profile"], "--profile: no AWS profile named 'no-such-profile'"),
        (["--endpoint-url", "not a url"], "--endpoint-url"),
        (["--kill-grace", "-1"], "--kill-grace: must not be negative"),
    ],
)
def test_bad_aws_settings(stack, extra, fragment):
    done = run_cli(
        [*stack.node_args(), "--mock-mode", *extra],
        {"AWS_ENDPOINT_URL": stack.endpoint},
    )
    assert_one_line_error(done, fragment)


# --- an endpoint that is down at start-up -------------------------------------------

STARTUP_TIMEOUT = 3.0


def test_an_endpoint_that_stays_down_is_retried_then_exits_2():
    port = free_port()  # nothing listens here: every connection is refused
    started = time.monotonic()
    done = run_cli(
        [
            "--queue-url",
            f"http://localhost:{port}/000000000000/q",
            "--topic-arn",
            GOOD_TOPIC,
            "--log-bucket",
            "logs",
            "--mock-mode",
            "--log-format",
            "json",
            "--startup-timeout",
            str(STARTUP_TIMEOUT),
        ],
        {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"},
    )
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    *logged, last = done.stderr.strip().splitlines()
    assert last.startswith("error: --queue-url: cannot reach the queue ")
    assert f"--startup-timeout {STARTUP_TIMEOUT:g}" in last
    tries = [json.loads(line) for line in logged]
    assert len(tries) >= 2, done.stderr
    for logged_try in tries:
        assert logged_try["level"] == "WARNING"
        assert "the queue is not reachable" in logged_try["message"]
        assert "Could not connect to the endpoint URL" in logged_try["message"]
    # It kept trying for the whole bound, and stopped after it: the slack is
    # the interpreter's start and at most one call's own bound.
    assert STARTUP_TIMEOUT <= took < STARTUP_TIMEOUT + LEASE_CALL_SECONDS + 5


def test_a_node_started_before_its_endpoint_comes_up_when_it_does(stack, start_node):
    """The endpoint refuses connections until the test lets it through: an
    emulator or a network that comes up after the node. (A moto server started
    on the port itself would answer before the test could create the queue,
    and a missing queue fails start-up at once.)"""
    with FaultProxy(stack.endpoint) as late:
        late.refuse()
        node = start_node(
            stack,
            "--mock-mode",
            "--poll-wait-seconds",
            "1",
            "--startup-timeout",
            "60",
            env={"AWS_ENDPOINT_URL": late.url},
        )
        assert wait_until(lambda: "the queue is not reachable" in node.stderr, timeout=20)
        assert node.process.poll() is None, node.stderr
        late.pass_()
        stack.wait_event("NodeRegistered", node_id=node.node_id, timeout=30)
        assert node.stderr.count("the queue is not reachable") >= 1
        node.signal(signal.SIGTERM)
        assert node.wait(15) == 0


def test_a_visibility_timeout_the_leases_cannot_keep_fails_with_the_numbers(stack_factory):
    too_short = MIN_VISIBILITY_SECONDS - 1
    stack = stack_factory(visibility_timeout=too_short)
    done = run_cli(
        [*stack.node_args(), "--mock-mode"],
        {"AWS_ENDPOINT_URL": stack.endpoint},
    )
    assert_one_line_error(
        done,
        "--queue-url",
        f"VisibilityTimeout is {too_short}s",
        f"{MIN_VISIBILITY_SECONDS}s the node needs",
    )
