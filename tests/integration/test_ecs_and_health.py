"""On ECS: the task metadata and agent endpoints, served by a local stand-in;
and the health check the image runs."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from claude_code_scheduler.aws.protection import TaskProtection
from tests.integration.conftest import command, node_env
from tests.unprivileged import let_other_users_through

TASK_ARN = "arn:aws:ecs:us-east-1:123456789012:task/workers/0123456789abcdef0123456789abcdef"


class AgentStandIn(ThreadingHTTPServer):
    """Answers the ECS task metadata v4 `/task` and records protection PUTs."""

    def __init__(self) -> None:
        self.protection_requests: list[dict[str, object]] = []
        # What the agent answers a protection PUT with instead of success.
        self.refusal: dict[str, object] | None = None
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
        if self.server.refusal is not None:
            self._reply(self.server.refusal)
            return
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
    cmd = command(timeout_seconds=120, mock={"duration_seconds": 1})
    stack.send(cmd)
    stack.wait_event("TaskCompleted", cmd["run_id"])
    deadline = time.monotonic() + 10
    while len(agent.protection_requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    on, off = agent.protection_requests
    # Bounded by the run's own 2-minute timeout and the shutdown margin (about
    # a minute), not by the longest timeout any task could ask for (12 h): a
    # deployment waits for protection to end.
    assert on["ProtectionEnabled"] is True and 3 <= on["ExpiresInMinutes"] <= 5
    assert off == {"ProtectionEnabled": False}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_protection_covers_the_runs_renews_shrinks_and_ends(agent):
    clock = Clock()
    protection = TaskProtection(f"{agent.url}/agent", margin_seconds=60, clock=clock)
    runs: list[float] = []

    protection.sync(lambda: runs)
    assert agent.protection_requests == []  # idle: nothing to protect

    runs.append(clock.now + 600)  # a 10-minute run
    protection.sync(lambda: runs)
    assert agent.protection_requests[-1] == {"ProtectionEnabled": True, "ExpiresInMinutes": 11}

    clock.now += 60
    protection.sync(lambda: runs)  # a heartbeat: still covered, no call
    assert len(agent.protection_requests) == 1

    runs.append(clock.now + 3600)  # a run that needs more than is left: renewed
    protection.sync(lambda: runs)
    assert agent.protection_requests[-1] == {"ProtectionEnabled": True, "ExpiresInMinutes": 61}

    runs.pop()  # the long run ended early: protection is shortened again
    protection.sync(lambda: runs)
    assert agent.protection_requests[-1] == {"ProtectionEnabled": True, "ExpiresInMinutes": 10}

    runs.clear()
    protection.sync(lambda: runs)
    assert agent.protection_requests[-1] == {"ProtectionEnabled": False}


def test_a_refused_protection_is_tried_again_at_the_next_sync(agent, caplog):
    clock = Clock()
    protection = TaskProtection(f"{agent.url}/agent", margin_seconds=60, clock=clock)
    runs = [clock.now + 600]
    agent.refusal = {"failure": {"Arn": TASK_ARN, "Reason": "DEPLOYMENT_BLOCKED"}}
    with caplog.at_level(logging.WARNING):
        protection.sync(lambda: runs)
    assert "a deployment is stopping it" in caplog.text
    agent.refusal = None
    protection.sync(lambda: runs)  # the heartbeat's sync
    assert len(agent.protection_requests) == 2
    assert agent.protection_requests[-1]["ProtectionEnabled"] is True


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
            str(let_other_users_through(tmp_path) / "w"),
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
