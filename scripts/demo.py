"""`make demo`: one node, one task, on a local AWS endpoint.

Starts a moto server, creates the deployed resources under a demo prefix,
starts `claude-code-scheduler node --mock-mode`, and then does what an operator
would type: `events --follow` to watch the control bus, `submit --wait` to send
a task through the command topic and follow it, `nodes` for the fleet table.
It shows the run's log from S3, then stops the node with SIGTERM and shows
NodeDeregistered. Needs nothing but the project's venv; leaves nothing
running, also on Ctrl-C.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

PREFIX = "claude-code-scheduler-demo"
REGION = "us-east-1"
NODE_ID = "demo-node-1"
HEARTBEAT_INTERVAL = 5
# Short long polls so that the node exits soon after SIGTERM (it waits for the
# poll in flight to return); production nodes use the default 20 s.
POLL_WAIT_SECONDS = 2
# How long any one step may take before the demo gives up.
STEP_TIMEOUT = 60.0
MOTO_START_TIMEOUT = 30.0
NODE_EXIT_TIMEOUT = 30.0
DUMMY_KEY_ID = "demo"
DUMMY_SECRET = "demo"  # noqa: S105 - moto accepts any credentials

Event = dict[str, Any]


class DemoError(Exception):
    """A step of the demo went wrong; the message says which."""


@dataclass(frozen=True)
class Resources:
    command_topic_arn: str
    control_bus_arn: str
    node_queue_url: str
    server_queue_url: str
    log_bucket: str


@dataclass(frozen=True)
class Clients:
    sqs: SQSClient
    sns: SNSClient
    s3: S3Client


# --- presentation ---------------------------------------------------------------


def heading(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(3, 74 - len(text)), flush=True)


def info(text: str) -> None:
    print(f"  {text}", flush=True)


def abbreviate(text: str, limit: int = 70) -> str:
    shown = text.replace("\n", "\\n")
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


# --- processes ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_moto(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        # Its own session: a Ctrl-C reaches the demo only, which stops the node
        # first (so it can still deregister) and the endpoint last.
        return subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def wait_until_answering(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(f"moto server exited with status {process.returncode}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            connection.request("GET", "/")
            connection.getresponse().read()
            return
        except OSError:
            time.sleep(0.2)
        finally:
            connection.close()
    raise DemoError(f"moto server did not answer on port {port} within {timeout:g} s")


def node_environment(endpoint: str, resources: Resources, work_dir: Path) -> dict[str, str]:
    """The node's whole configuration, through its environment variables. The
    caller's own AWS and node settings (a profile, per-service endpoints) are left out."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "CLAUDE_NODE_"))
    }
    env.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": DUMMY_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
            "CLAUDE_NODE_QUEUE_URL": resources.node_queue_url,
            "CLAUDE_NODE_TOPIC_ARN": resources.control_bus_arn,
            "CLAUDE_NODE_LOG_BUCKET": resources.log_bucket,
            "CLAUDE_NODE_ID": NODE_ID,
            "CLAUDE_NODE_NAME": "Demo node",
            "CLAUDE_NODE_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
            "CLAUDE_NODE_POLL_WAIT_SECONDS": str(POLL_WAIT_SECONDS),
            "CLAUDE_NODE_WORK_DIR": str(work_dir),
            "CLAUDE_NODE_LOG_FORMAT": "text",
        }
    )
    return env


def start_node(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "claude_code_scheduler", "node", "--mock-mode", "-v"]
    for name in sorted(n for n in env if n.startswith(("CLAUDE_NODE_", "AWS_"))):
        info(f"{name}={env[name]}")
    info(f"$ {shlex.join(argv)}   (the venv's: claude-code-scheduler {shlex.join(argv[3:])})")
    info(f"its log (-v, text) goes to {log_path.name}, shown at the end")
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            argv,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop_process(
    process: subprocess.Popen[Any],
    name: str,
    grace: float,
    first: signal.Signals = signal.SIGTERM,
) -> int | None:
    """SIGTERM (or `first`); a second SIGTERM (the node then skips its drain)
    after `grace` seconds or on another Ctrl-C; SIGKILL last."""
    for sig in (first, signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        info(f"{signal.Signals(sig).name} to the {name} (pid {process.pid})")
        process.send_signal(sig)
        try:
            process.wait(grace)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            continue
    return process.returncode


# --- AWS: resources, sending, reading ---------------------------------------------


def make_clients(endpoint: str) -> Clients:
    session = boto3.Session(
        aws_access_key_id=DUMMY_KEY_ID, aws_secret_access_key=DUMMY_SECRET, region_name=REGION
    )
    return Clients(
        sqs=session.client("sqs", endpoint_url=endpoint),
        sns=session.client("sns", endpoint_url=endpoint),
        s3=session.client("s3", endpoint_url=endpoint),
    )


def queue_arn(clients: Clients, queue_url: str) -> str:
    attributes = clients.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


def create_resources(clients: Clients) -> Resources:
    """The seed's deployed resources: two topics, two queues, one bucket."""
    command_topic = clients.sns.create_topic(Name=f"{PREFIX}-command-topic")["TopicArn"]
    control_bus = clients.sns.create_topic(Name=f"{PREFIX}-control-bus")["TopicArn"]
    node_queue = clients.sqs.create_queue(QueueName=f"{PREFIX}-node-queue")["QueueUrl"]
    server_queue = clients.sqs.create_queue(QueueName=f"{PREFIX}-server-queue")["QueueUrl"]
    # No raw delivery: commands reach the node wrapped in an SNS envelope.
    clients.sns.subscribe(
        TopicArn=command_topic, Protocol="sqs", Endpoint=queue_arn(clients, node_queue)
    )
    # Raw delivery: the server queue's bodies are the event JSON itself.
    clients.sns.subscribe(
        TopicArn=control_bus,
        Protocol="sqs",
        Endpoint=queue_arn(clients, server_queue),
        Attributes={"RawMessageDelivery": "true"},
    )
    bucket = f"{PREFIX}-logs"
    clients.s3.create_bucket(Bucket=bucket)
    return Resources(command_topic, control_bus, node_queue, server_queue, bucket)


def show_log(clients: Clients, bucket: str, run_id: str, head: int = 2) -> None:
    key = f"logs/{run_id}.log"
    body = clients.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    lines = body.splitlines()
    info(f"s3://{bucket}/{key}: {len(body.encode('utf-8'))} bytes, {len(lines)} lines")
    for line in lines[:head]:
        info("| " + abbreviate(line, 110))
    if len(lines) > head + 1:
        info(f"| ({len(lines) - head - 1} more lines)")
    if len(lines) > head:
        info("| " + abbreviate(lines[-1], 110))


# --- the operator's commands ---------------------------------------------------------


def client_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "claude_code_scheduler", *args]


def show_command(args: tuple[str, ...]) -> None:
    info(f"$ claude-code-scheduler {shlex.join(args)}")


class EventWatcher:
    """`claude-code-scheduler events --follow` in the background, its lines
    echoed as they arrive and kept, so a step can wait for one."""

    def __init__(self, env: dict[str, str], control_bus_arn: str) -> None:
        args = ("events", "--follow", "--control-bus-arn", control_bus_arn)
        show_command(args)
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self.process = subprocess.Popen(
            client_argv(*args),
            env=env,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self._thread = threading.Thread(target=self._echo, daemon=True)
        self._thread.start()

    def _echo(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            print(f"  events| {line.rstrip()}", flush=True)
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()

    def wait_for(self, fragment: str, node: subprocess.Popen[bytes]) -> str:
        deadline = time.monotonic() + STEP_TIMEOUT
        with self._seen:
            while time.monotonic() < deadline:
                for line in self.lines:
                    if fragment in line:
                        return line
                if node.poll() not in (None, 0):
                    raise DemoError(f"the node exited with status {node.returncode}")
                self._seen.wait(0.5)
        raise DemoError(f"no event with {fragment!r} within {STEP_TIMEOUT:g} s")

    def stop(self) -> None:
        # SIGINT, like Ctrl-C: it removes its subscription and reader queue.
        stop_process(self.process, "events watcher", 15.0, first=signal.SIGINT)


def make_repository(path: Path) -> None:
    """A small git repository for the workspace step, readable by the run's uid."""
    path.mkdir()
    (path / "README.md").write_text("# shop\n\nA demo repository.\n")
    for args in (
        ("init", "--quiet", "--initial-branch=main"),
        ("add", "README.md"),
        (
            "-c",
            "user.name=Demo",
            "-c",
            "user.email=demo@localhost",
            "commit",
            "--quiet",
            "-m",
            "init",
        ),
    ):
        subprocess.run(["git", "-C", str(path), *args], check=True, timeout=30)
    for folder in [path, *path.rglob("*")]:
        if folder.is_dir():
            folder.chmod(0o755)


def wait_for_object(clients: Clients, bucket: str, key: str, node: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            return clients.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
        except clients.s3.exceptions.NoSuchKey:
            if node.poll() not in (None, 0):
                raise DemoError(f"the node exited with status {node.returncode}") from None
            time.sleep(0.5)
    raise DemoError(f"s3://{bucket}/{key} did not appear within {STEP_TIMEOUT:g} s")


def workspace_round_trip(clients: Clients, resources: Resources, work: Path, node: Any) -> None:
    """A task on a git repository: the mock CLI writes a file into the clone,
    and what it changed comes back from S3 as a patch."""
    repository = work / "repo"
    make_repository(repository)
    run_id = f"demo-{uuid.uuid4().hex[:8]}"
    command = {
        "type": "RunTask",
        "version": 1,
        "run_id": run_id,
        "task": {
            "prompt": "Add a CHANGELOG.",
            "workspace": {"git": {"url": f"file://{repository}", "ref": "main"}},
            "mock": {"duration_seconds": 0.5, "write_files": {"CHANGELOG.md": "## 0.1\n- hello\n"}},
        },
    }
    info(f"published by the scheduler: {abbreviate(json.dumps(command), 110)}")
    clients.sns.publish(TopicArn=resources.command_topic_arn, Message=json.dumps(command))
    key = f"runs/{run_id}/changes.patch"
    patch = wait_for_object(clients, resources.log_bucket, key, node)
    info(f"s3://{resources.log_bucket}/{key}:")
    for line in patch.splitlines():
        if line.startswith(("diff ", "+", "-")) or "CHANGELOG" in line:
            info("| " + abbreviate(line, 110))


def show_file(path: Path, last: int = 40) -> None:
    if path.exists():
        for line in path.read_text(errors="replace").splitlines()[-last:]:
            info("| " + line)


def run_demo(work: Path) -> int:
    moto: subprocess.Popen[bytes] | None = None
    node: subprocess.Popen[bytes] | None = None
    watcher: EventWatcher | None = None
    node_log = work / "node.log"
    try:
        heading("1. Local AWS endpoint (moto server)")
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        moto = start_moto(port, work / "moto.log")
        wait_until_answering(port, moto, MOTO_START_TIMEOUT)
        info(f"moto server (pid {moto.pid}) answering at {endpoint}")

        heading("2. Resources")
        clients = make_clients(endpoint)
        resources = create_resources(clients)
        info(f"command topic   {resources.command_topic_arn}")
        info(f"control bus     {resources.control_bus_arn}")
        info(f"node queue      {resources.node_queue_url}  (subscribed to the command topic)")
        info(f"server queue    {resources.server_queue_url}  (control bus, raw delivery)")
        info(f"log bucket      {resources.log_bucket}")

        env = node_environment(endpoint, resources, work / "node-work")
        heading("3. Watch the control bus")
        watcher = EventWatcher(env, resources.control_bus_arn)
        time.sleep(2.0)  # let it subscribe before anything happens

        heading("4. A node in mock mode")
        node = start_node(env, node_log)
        watcher.wait_for("NodeRegistered", node)

        heading("5. Submit a task through the command topic and follow it")
        run_id = f"demo-{uuid.uuid4().hex[:8]}"
        args = (
            "submit", "--prompt", "Say hello to the platform team.", "--name", "Demo task",
            "--run-id", run_id, "--command-topic-arn", resources.command_topic_arn,
            "--control-bus-arn", resources.control_bus_arn, "--wait", "--wait-timeout", "60",
        )  # fmt: skip
        show_command(args)
        submitted = subprocess.run(client_argv(*args), env=env, check=False, timeout=120)
        if submitted.returncode != 0:
            raise DemoError(f"submit --wait exited with status {submitted.returncode}")

        heading("6. The run's log in S3")
        show_log(clients, resources.log_bucket, run_id)

        heading("7. A task on a git repository: the patch comes back")
        workspace_round_trip(clients, resources, work, node)

        heading("8. The fleet")
        args = (
            "nodes", "--listen", str(HEARTBEAT_INTERVAL + 1),
            "--control-bus-arn", resources.control_bus_arn,
        )  # fmt: skip
        show_command(args)
        subprocess.run(client_argv(*args), env=env, check=True, timeout=60)

        heading("9. SIGTERM to the node")
        info(f"kill -TERM {node.pid}")
        node.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        watcher.wait_for("NodeDeregistered", node)
        info(f"NodeDeregistered {time.monotonic() - sent:.1f} s after SIGTERM")
        code = node.wait(NODE_EXIT_TIMEOUT)
        info(f"node exited with status {code} {time.monotonic() - sent:.1f} s after SIGTERM")
        if code != 0:
            raise DemoError(f"the node exited with status {code}")
        watcher.stop()

        heading("10. The node's own log")
        show_file(node_log)
        heading("Done: the run completed, its log is in S3, the node deregistered")
        return 0
    except DemoError as exc:
        heading(f"FAILED: {exc}")
        show_file(node_log)
        if moto is not None and moto.poll() is not None:
            show_file(work / "moto.log")
        return 1
    except subprocess.TimeoutExpired:
        heading(f"FAILED: the node did not exit within {NODE_EXIT_TIMEOUT:g} s")
        show_file(node_log)
        return 1
    except KeyboardInterrupt:
        heading("Interrupted; cleaning up")
        return 130
    finally:
        if node is not None:
            stop_process(node, "node", NODE_EXIT_TIMEOUT)
        if watcher is not None:
            watcher.stop()
        if moto is not None:
            stop_process(moto, "moto server", 5.0)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="claude-code-scheduler-demo-") as work:
        # Searchable, not listable, by other users: run as root, the node
        # starts each run under a uid of its own, which must reach its folder.
        Path(work).chmod(0o711)
        return run_demo(Path(work))


if __name__ == "__main__":
    sys.exit(main())
