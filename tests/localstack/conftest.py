"""LocalStack itself, run on this host by scripts/localstack_host.py, for the end-to-end suite.

One LocalStack serves the whole session; each test keeps to resources of its own
(the init script and the CloudFormation stack take different name prefixes), so
nothing needs resetting between tests.

Where Python 3.13 or LocalStack cannot be had, the suite fails when CI is set
(CI=true) and is skipped elsewhere, with the reason printed at the end of the run.
Leave it out with `pytest -m "not localstack"`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import boto3
import pytest

from tests.conftest import IN_CI, lane_env

REPO = Path(__file__).resolve().parents[2]
HOST = REPO / "scripts" / "localstack_host.py"
# Its shell name, which the init script is given as AWS_CMD, as the docs do.
SCRIPT = REPO / "scripts" / "localstack.sh"
INIT_SCRIPT = REPO / "deploy" / "localstack" / "init-resources.sh"
TEMPLATE = REPO / "deploy" / "cloudformation" / "messaging.yaml"
REGION = "us-east-1"
ACCOUNT = "000000000000"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
INIT_PREFIX = "ls-init"
STACK_PREFIX = "ls-cfn"
STACK_NAME = "claude-code-scheduler-messaging"
# The template's output names (CloudFormation allows letters and digits only)
# and the names the seed's deployment gives them.
STACK_OUTPUTS = {
    "CommandTopicArn": "command_topic_arn",
    "ControlBusArn": "control_bus_arn",
    "ServerQueueUrl": "server_queue_url",
    "NodeQueueUrl": "node_queue_url",
    "LogBucketName": "log_bucket_name",
}

_unavailable: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "localstack: needs LocalStack, run on the host")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for reason in _unavailable:
        terminalreporter.write_line(f"LocalStack suite skipped: {reason}", yellow=True, bold=True)


def unavailable(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"LocalStack suite cannot run (CI=true, so this fails): {reason}", False)
    if reason not in _unavailable:
        _unavailable.append(reason)
    pytest.skip(f"LocalStack not available: {reason}")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without AWS or node settings, plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "CLAUDE_NODE_"))
    }
    env.update(lane_env())
    env.update(extra)
    return env


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass
class LocalStack:
    endpoint: str
    run_dir: Path
    timings: dict[str, float] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        return boto3.client(  # type: ignore[call-overload]
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def script_env(self, **extra: str) -> dict[str, str]:
        return clean_env(LOCALSTACK_RUN_DIR=str(self.run_dir), **extra)


def run_script(
    command: str, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, str(HOST), command],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        output = error.stderr or ""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        return subprocess.CompletedProcess(
            error.cmd, -1, "", f"{output}\n(timed out after {timeout:.0f} s)"
        )


def remove_stale_run_dirs(runs: Path) -> None:
    """Run dirs of killed sessions (their LocalStack stopped itself: see
    LOCALSTACK_WATCH_PID in scripts/localstack_host.py)."""
    for run_dir in runs.glob("pytest-*"):
        pid = run_dir.name.removeprefix("pytest-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def localstack() -> Iterator[LocalStack]:
    """LocalStack installed (once per machine) and started for this session."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    installed = run_script("install", clean_env(), timeout=900)
    timings["install"] = time.monotonic() - started
    if installed.returncode != 0:
        unavailable(f"`scripts/localstack_host.py install` failed:\n{tail(installed.stderr)}")

    # Its own run dir, so test sessions running at once in one tree do not meet.
    runs = REPO / ".cache" / "localstack-run"
    remove_stale_run_dirs(runs)
    run_dir = runs / f"pytest-{os.getpid()}"
    # If this session is killed before it can stop LocalStack, LocalStack stops itself.
    env = clean_env(LOCALSTACK_RUN_DIR=str(run_dir), LOCALSTACK_WATCH_PID=str(os.getpid()))
    started = time.monotonic()
    result = run_script("start", env, timeout=180)
    timings["start"] = time.monotonic() - started
    if result.returncode != 0:
        run_script("stop", env, timeout=60)
        unavailable(f"`scripts/localstack_host.py start` failed:\n{tail(result.stderr, 45)}")
    instance = LocalStack(endpoint=result.stdout.strip(), run_dir=run_dir, timings=timings)
    try:
        yield instance
    finally:
        started = time.monotonic()
        stopped = run_script("stop", env, timeout=60)
        timings["stop"] = time.monotonic() - started
        sys.stderr.write(
            "\nLocalStack timings: "
            + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
            + "\n"
        )
        assert stopped.returncode == 0, f"stop failed: {stopped.stderr}"
        shutil.rmtree(run_dir, ignore_errors=True)


# ---------------------------------------------------------------- the bus


@dataclass
class Bus:
    """Names and addresses of one set of messaging resources."""

    command_topic_arn: str
    control_bus_arn: str
    node_queue_url: str
    server_queue_url: str
    log_bucket: str


def parse_assignments(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value.strip()
    return values


@dataclass
class InitRun:
    bus: Bus
    stdout: str
    stderr: str
    env: dict[str, str]
    settings: dict[str, str]  # what it printed


@pytest.fixture(scope="session")
def init_resources(localstack: LocalStack) -> InitRun:
    """deploy/localstack/init-resources.sh, run on the host against LocalStack.

    AWS_CMD is the AWS CLI from LocalStack's own venv (its runtime extra brings
    awscli v1), wrapped by `scripts/localstack.sh aws`, which adds the endpoint
    (awscli v1 ignores AWS_ENDPOINT_URL) and test credentials. The server queue
    is not among the printed settings (a client command would drain it), so it
    is looked up by name.
    """
    if not INIT_SCRIPT.exists():
        pytest.fail(f"{INIT_SCRIPT.relative_to(REPO)} is missing")
    env = localstack.script_env(
        AWS_CMD=f"{SCRIPT} aws",
        RESOURCE_PREFIX=INIT_PREFIX,
        AWS_DEFAULT_REGION=REGION,
        **CREDENTIALS,
    )
    result = subprocess.run(
        ["bash", str(INIT_SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, f"init-resources.sh failed:\n{result.stderr}"
    values = parse_assignments(result.stdout)
    server_queue = localstack.client("sqs").get_queue_url(QueueName=f"{INIT_PREFIX}-server-queue")
    bus = Bus(
        command_topic_arn=values["CLAUDE_COMMAND_TOPIC_ARN"],
        control_bus_arn=values["CLAUDE_CONTROL_BUS_ARN"],
        node_queue_url=values["CLAUDE_NODE_QUEUE_URL"],
        server_queue_url=server_queue["QueueUrl"],
        log_bucket=values["CLAUDE_NODE_LOG_BUCKET"],
    )
    return InitRun(bus, result.stdout, result.stderr, env, values)


@dataclass
class DeployedStack:
    bus: Bus
    outputs: dict[str, str]
    status: str


def created_stack(cfn: Any, name: str) -> dict[str, Any]:
    """Stack `name` once CloudFormation is done creating it; the test fails
    with the failed resources' reasons unless it is CREATE_COMPLETE."""
    deadline = time.monotonic() + 120
    while True:
        stack: dict[str, Any] = cfn.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("IN_PROGRESS") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if stack["StackStatus"] != "CREATE_COMPLETE":
        reasons = [
            f"{e['LogicalResourceId']}: {e['ResourceStatus']} {e.get('ResourceStatusReason', '')}"
            for e in cfn.describe_stack_events(StackName=name)["StackEvents"]
            if "FAILED" in e["ResourceStatus"]
        ]
        pytest.fail(f"stack {name} is {stack['StackStatus']}: {reasons}")
    return stack


@pytest.fixture(scope="session")
def messaging_stack(localstack: LocalStack) -> DeployedStack:
    """deploy/cloudformation/messaging.yaml, created with CloudFormation on LocalStack."""
    if not TEMPLATE.exists():
        pytest.fail(f"{TEMPLATE.relative_to(REPO)} is missing")
    cfn = localstack.client("cloudformation")
    cfn.create_stack(
        StackName=STACK_NAME,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[
            {"ParameterKey": "Prefix", "ParameterValue": STACK_PREFIX},
            # Required, with no default; LocalStack does not enforce policies.
            {
                "ParameterKey": "CommandPublisherArns",
                "ParameterValue": "arn:aws:iam::000000000000:root",
            },
        ],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
    )
    stack = created_stack(cfn, STACK_NAME)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    missing = sorted(set(STACK_OUTPUTS) - set(outputs))
    assert not missing, f"stack outputs missing: {missing} (has {sorted(outputs)})"
    bus = Bus(
        command_topic_arn=outputs["CommandTopicArn"],
        control_bus_arn=outputs["ControlBusArn"],
        node_queue_url=outputs["NodeQueueUrl"],
        server_queue_url=outputs["ServerQueueUrl"],
        log_bucket=outputs["LogBucketName"],
    )
    return DeployedStack(bus=bus, outputs=outputs, status=stack["StackStatus"])


@pytest.fixture
def node_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Node processes a test starts; killed at the end if still running."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
