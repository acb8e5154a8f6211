"""On ECS: the task metadata and agent endpoints, served by a local stand-in;
and the health check the image runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.integration.conftest import command, node_env

TASK_ARN = "arn:aws:ecs:us-east-1:123456789012:task/workers/0123456789abcdef0123456789abcdef"


class AgentStandIn(ThreadingHTTPServer):
    """Answers the ECS task metadata v4 `/task` and records protection PUTs."""

    def __init__(self) -> None:
        self.protection_requests: list[dict[str, object]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: AgentStandIn

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v4/meta/task":
            self._reply(
                {"TaskARN": TASK_ARN, "Cluster": "workers", "AvailabilityZone": "us-east-1a"}
            )
        else:
            self.send_error(404)

    def do_PUT(self) -> None:
        if self.path != "/agent/task-protection/v1/state":
            self.send_error(404)
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.protection_requests.append(body)
        self._reply({"protection": {"ProtectionEnabled": body["ProtectionEnabled"]}})


@pytest.fixture
def agent():
    server = AgentStandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_on_ecs_the_node_names_itself_and_protects_busy_tasks(stack, start_node, agent):
    env = {
        "ECS_CONTAINER_METADATA_URI_V4": f"{agent.url}/v4/meta",
        "ECS_AGENT_URI": f"{agent.url}/agent",
    }
    node = start_node(stack, "--mock-mode", "--poll-wait-seconds", "1", env=env)
    registered = stack.wait_event("NodeRegistered", node_id=node.node_id)
    assert registered["data"]["ecs"] == {
        "task_arn": TASK_ARN,
        "cluster": "workers",
        "availability_zone": "us-east-1a",
    }
    assert agent.protection_requests == []  # idle: nothing to protect
    cmd = command(mock={"duration_seconds": 1})
    stack.send(cmd)
    stack.wait_event("TaskCompleted", cmd["run_id"])
    deadline = time.monotonic() + 10
    while len(agent.protection_requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    on, off = agent.protection_requests
    assert on["ProtectionEnabled"] is True and 1 <= on["ExpiresInMinutes"] <= 2880
    assert off == {"ProtectionEnabled": False}


def test_node_id_defaults_to_the_ecs_task_id(stack, tmp_path, agent):
    env = node_env(stack, {"ECS_CONTAINER_METADATA_URI_V4": f"{agent.url}/v4/meta"})
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "claude_code_scheduler",
            "node",
            "--mock-mode",
            *stack.node_args(),
            "--work-dir",
            str(tmp_path / "w"),
            "--poll-wait-seconds",
            "1",
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        registered = stack.wait_event("NodeRegistered", node_id="0123456789abcdef0123456789abcdef")
        assert registered["node_name"] == "0123456789abcdef0123456789abcdef"
    finally:
        process.terminate()
        process.wait(15)


def healthcheck(state_file):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "claude_code_scheduler",
            "healthcheck",
            "--state-file",
            str(state_file),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def test_healthcheck_follows_the_heartbeat(stack, start_node, tmp_path):
    state = tmp_path / "state.json"
    before = healthcheck(state)
    assert before.returncode == 1 and "no state file" in before.stdout
    node = start_node(
        stack,
        "--mock-mode",
        "--poll-wait-seconds",
        "1",
        "--heartbeat-interval",
        "1",
        "--state-file",
        str(state),
    )
    stack.wait_event("NodeHeartbeat", node_id=node.node_id)
    running = healthcheck(state)
    assert running.returncode == 0, running.stdout
    assert running.stdout.startswith("healthy: idle")
    # A node that stops heartbeating (here: frozen) turns unhealthy after 3 intervals.
    node.signal(signal.SIGSTOP)
    try:
        time.sleep(4.5)
        stale = healthcheck(state)
        assert stale.returncode == 1 and "last heartbeat" in stale.stdout
    finally:
        node.signal(signal.SIGCONT)
    node.signal()
    assert node.wait(15) == 0
    after = healthcheck(state)
    assert after.returncode == 1 and "deregistered" in after.stdout
