"""Escapes from a run, tried by the genuine CLI's Bash tool in a real-mode node
running as root (as in the image), each with a control that shows the same
attempt works where the protection is missing.

One node per escape family:
- the node's environment and memory, the container-credentials endpoint,
  setuid helpers (one run, several tool uses);
- another concurrent run's folder and environment (two slots);
- the CLI's own Bash sandbox (--bash-sandbox), where bubblewrap works.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI, wait_until
from tests.integration.conftest import command
from tests.realcli import test_node_real_mode as real_mode
from tests.realcli.anthropic_standin import AnthropicStandin, Text, ToolUse
from tests.realcli.test_node_real_mode import Launch, processes_with, unique_seconds

# The real-mode suite's fixtures: a node launcher, the API stand-in, a sweep.
launch, api, sweep = real_mode.launch, real_mode.api, real_mode.sweep

ESCAPE = Path(__file__).with_name("escape.py")
RUN_UID = 10100  # slot 0 of the default --run-uid-base
URI_VAR = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not IN_CI, reason="a node gives runs uids of their own only as root"
)


def escape(*args: str) -> str:
    """The Bash command that runs escape.py (under the venv's interpreter,
    which every uid can run)."""
    return " ".join([sys.executable, "-I", str(ESCAPE), *args])


def as_uid(uid: int, *args: str, no_new_privs: bool = True) -> dict[str, Any]:
    """escape.py run by the test as `uid`: the control's reader."""
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    if no_new_privs:
        drop.append("--no-new-privs")
    done = subprocess.run(
        [*drop, sys.executable, "-I", str(ESCAPE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(done.stdout))


def tool_text(standin: AnthropicStandin, index: int) -> str:
    """The last tool result in request `index` (after a few turns the CLI adds
    a reminder message after it)."""
    for message in reversed(standin.main_requests[index].body["messages"]):
        content = message.get("content")
        blocks = [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
        results = [b for b in blocks if b.get("type") == "tool_result"]
        if results:
            inner = results[-1].get("content")
            if isinstance(inner, list):
                return "\n".join(str(c.get("text", "")) for c in inner).strip()
            return str(inner).strip()
    raise AssertionError(f"no tool result in request {index}")


def tool_json(standin: AnthropicStandin, index: int) -> dict[str, Any]:
    return dict(json.loads(tool_text(standin, index).splitlines()[-1]))


class CredentialsEndpoint:
    """A loopback stand-in of the ECS container-credentials endpoint: it
    answers with credentials only at the task's secret relative URI."""

    def __init__(self) -> None:
        self.uri = f"/v2/credentials/{uuid.uuid4()}"
        self.key_id = f"ASIA{uuid.uuid4().hex[:16].upper()}"
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != endpoint.uri:
                    self.send_error(404)
                    return
                body = json.dumps({"AccessKeyId": endpoint.key_id, "Token": "t"}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def credentials() -> Iterator[CredentialsEndpoint]:
    endpoint = CredentialsEndpoint()
    yield endpoint
    endpoint.close()


@pytest.fixture
def stand_in_target(credentials: CredentialsEndpoint) -> Iterator[int]:
    """A process of the run's uid, not undumpable, holding what the node's
    environment holds: what the node was to a run before isolation."""
    target = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"],
        env={URI_VAR: credentials.uri, "PATH": os.environ["PATH"]},
        user=RUN_UID,
        group=RUN_UID,
        extra_groups=[],
        cwd="/",
    )
    yield target.pid
    target.kill()
    target.wait()


@pytest.fixture
def setuid_id(tmp_path: Path) -> Path:
    """A setuid-root copy of `id`, where a run can execute it."""
    helper = tmp_path / "suid" / "id"
    helper.parent.mkdir()
    helper.parent.chmod(0o755)
    shutil.copy2(shutil.which("id") or "/usr/bin/id", helper)
    os.chown(helper, 0, 0)
    helper.chmod(0o4755)
    return helper


def test_a_run_cannot_reach_the_node_its_credentials_or_root(
    launch: Launch,
    api: AnthropicStandin,
    credentials: CredentialsEndpoint,
    stand_in_target: int,
    setuid_id: Path,
) -> None:
    api.add(
        ToolUse("Bash", {"command": escape("node")}),
        ToolUse("Bash", {"command": escape("credentials", credentials.base, "0")}),
        ToolUse("Bash", {"command": escape("fetch", credentials.base + credentials.uri)}),
        ToolUse("Bash", {"command": escape("target", str(stand_in_target))}),
        ToolUse("Bash", {"command": f"{setuid_id} -u"}),
        Text("done"),
    )
    # The node's environment holds the URI, as on ECS (its own credentials
    # come first from the test's keys, so it never calls the stand-in).
    node = launch(api, env_extra={URI_VAR: credentials.uri})
    _, terminal = node.run(
        prompt="try to get out", permission_mode="bypassPermissions", timeout_seconds=120
    )
    assert terminal["event_type"] == "TaskCompleted", terminal

    # (a) the node's environment and memory
    reached = tool_json(api, 1)
    assert reached["pid"] == node.process.process.pid, "the run found the node"
    assert not reached["environ"]["ok"] and "PermissionError" in reached["environ"]["error"]
    assert not reached["mem"]["ok"] and "PermissionError" in reached["mem"]["error"]
    assert reached["me"] == {
        "Uid": f"{RUN_UID} {RUN_UID} {RUN_UID} {RUN_UID}",
        "Gid": f"{RUN_UID} {RUN_UID} {RUN_UID} {RUN_UID}",
        "Groups": "",
        "NoNewPrivs": "1",
    }
    # Control: the same reads of a process of the reader's own uid that is not
    # undumpable (what the node was) succeed, from inside the same run.
    control = tool_json(api, 4)
    assert control["environ"]["ok"] and f"{URI_VAR}={credentials.uri}" in control["environ"]["text"]
    assert control["mem"]["ok"] and len(control["mem"]["text"]) == 32

    # (b) the credentials endpoint: the run cannot learn the URI...
    hunt = tool_json(api, 2)
    assert hunt["uris"] == [] and hunt["answers"] == []
    assert hunt["guess"]["status"] == 404
    # ...and the control: with the URI, the endpoint answers the run.
    fetched = tool_json(api, 3)
    assert fetched["status"] == 200 and credentials.key_id in fetched["body"]

    # No setuid helper gives root back; the control: without no_new_privs it would.
    assert tool_text(api, 5) == str(RUN_UID)
    without = subprocess.run(
        ["setpriv", f"--reuid={RUN_UID}", f"--regid={RUN_UID}", "--clear-groups", setuid_id, "-u"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert without.stdout.strip() == "0"


def test_a_run_cannot_read_another_concurrent_runs_folder_or_environment(
    launch: Launch, api: AnthropicStandin, sweep: list[str]
) -> None:
    seconds = unique_seconds()
    sweep.append(str(seconds))
    canary = f"canary-{uuid.uuid4()}"
    api.add(
        ToolUse("Bash", {"command": f"echo $RUN_CANARY > secret.txt; sleep {seconds}"}),
        Text("first done"),
    )
    node = launch(api, "--max-concurrent-tasks", "2")
    first = command(
        prompt="hold a secret", permission_mode="bypassPermissions", env={"RUN_CANARY": canary}
    )
    node.stack.send(first)
    secrets = lambda: list(node.process.work_dir.glob("run-*/work/secret.txt"))  # noqa: E731
    assert wait_until(lambda: bool(secrets()) and secrets()[0].read_text().strip(), 60)
    secret = secrets()[0]
    cli = next(
        pid
        for pid in processes_with("--output-format")
        if os.readlink(f"/proc/{pid}/cwd") == str(secret.parent)
    )
    with AnthropicStandin() as second_api:
        second_api.add(
            ToolUse("Bash", {"command": escape("peer", str(secret), str(cli))}),
            Text("second done"),
        )
        second_id, terminal = node.run(
            prompt="read the other run",
            permission_mode="bypassPermissions",
            env={"ANTHROPIC_BASE_URL": second_api.url},
        )
        assert terminal["event_type"] == "TaskCompleted", terminal
        peeked = tool_json(second_api, 1)
        me = second_api.main_requests[1]
    assert not peeked["file"]["ok"] and "PermissionError" in peeked["file"]["error"]
    assert not peeked["work_root"]["ok"], "the work root cannot be listed"
    assert not peeked["environ"]["ok"] and "PermissionError" in peeked["environ"]["error"]
    assert canary not in json.dumps(me.body)
    # Control: the same reads by a process of the first run's uid succeed.
    control = as_uid(RUN_UID, "peer", str(secret), str(cli))
    assert control["file"]["ok"] and control["file"]["text"].strip() == canary
    assert control["environ"]["ok"] and f"RUN_CANARY={canary}" in control["environ"]["text"]

    # End the first run's tool; its next turn is scripted already.
    for pid in processes_with(str(seconds)):
        os.kill(pid, 9)
    assert node.terminal(first["run_id"])["event_type"] == "TaskCompleted"
    assert second_id != first["run_id"]


def bubblewrap_problem() -> str | None:
    for tool in ("bwrap", "socat"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install bubblewrap socat)"
    probe = subprocess.run(
        [
            "setpriv",
            f"--reuid={RUN_UID}",
            f"--regid={RUN_UID}",
            "--clear-groups",
            "--no-new-privs",
            "bwrap",
            "--ro-bind",
            "/",
            "/",
            "--unshare-pid",
            "true",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"bubblewrap does not work on this kernel as uid {RUN_UID}: {probe.stderr.strip()}"
    return None


def test_bash_sandbox_keeps_a_run_from_writing_outside_its_folder(
    launch: Launch, api: AnthropicStandin
) -> None:
    problem = bubblewrap_problem()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"CI=true: {problem}")
        pytest.skip(problem)
    outside = Path("/tmp") / f"sandbox-{uuid.uuid4().hex}"
    attempt = f"touch {outside}; echo rc=$?; touch inside.txt; echo rc=$?"
    api.add(ToolUse("Bash", {"command": attempt}), Text("done"))
    node = launch(api, "--bash-sandbox", short_work_dir=True)
    run_id, terminal = node.run(prompt="write", permission_mode="bypassPermissions")
    assert terminal["event_type"] == "TaskCompleted", terminal
    assert node.init_line(run_id)["sandbox_enabled"] is True
    text = tool_text(api, 1)
    outside_rc, inside_rc = text.split("rc=")[1:]
    assert outside_rc.split()[0] != "0" and inside_rc.split()[0] == "0"
    assert not outside.exists()
    # Control: the same command as the run's uid, outside the sandbox, writes there.
    done = subprocess.run(
        [
            "setpriv",
            f"--reuid={RUN_UID}",
            f"--regid={RUN_UID}",
            "--clear-groups",
            "touch",
            str(outside),
        ],
        check=False,
    )
    assert done.returncode == 0 and outside.exists()
    outside.unlink()


# Docker's (and Fargate's) default capability set: no CAP_SYS_PTRACE.
DOCKER_CAPABILITIES = (
    "chown,dac_override,fowner,fsetid,kill,setgid,setuid,setpcap,net_bind_service,"
    "net_raw,sys_chroot,mknod,audit_write,setfcap"
)
WITH_DOCKER_CAPABILITIES = [
    "setpriv",
    "--bounding-set=-all," + ",".join(f"+{c}" for c in DOCKER_CAPABILITIES.split(",")),
    "--inh-caps=-all",
]
CAP_SYS_PTRACE = 19


def effective_capabilities(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapEff line")


def test_with_dockers_default_capabilities_a_run_works_and_is_reaped_by_uid(
    launch: Launch, api: AnthropicStandin, sweep: list[str], stand_in_target: int
) -> None:
    """The image's layout outside a container: root without CAP_SYS_PTRACE
    cannot read a run's environment, so the run's marker is no use; its uid is."""
    seconds = unique_seconds()
    token = str(seconds)
    sweep.append(token)
    leave_behind = (
        f"nohup sleep {seconds} >/dev/null 2>&1 & "
        f"env -i setsid sh -c 'sleep {seconds} & sleep {seconds}' >/dev/null 2>&1 & "
        "echo started"
    )
    api.add(ToolUse("Bash", {"command": leave_behind}), Text("done"))
    node = launch(api, wrap=WITH_DOCKER_CAPABILITIES)
    assert not effective_capabilities(node.process.process.pid) & (1 << CAP_SYS_PTRACE)
    _, terminal = node.run(prompt="leave things running", permission_mode="bypassPermissions")
    assert terminal["event_type"] == "TaskCompleted", terminal
    assert tool_text(api, 1) == "started"
    assert wait_until(lambda: not processes_with(f"sleep {seconds}"), 10), "reaped by uid"
    # Control: such a root cannot read a run uid's environment (the marker scan
    # would find nothing); a root with every capability can.
    read = ["cat", f"/proc/{stand_in_target}/environ"]
    limited = subprocess.run([*WITH_DOCKER_CAPABILITIES, *read], capture_output=True, check=False)
    assert limited.returncode != 0 and b"Permission denied" in limited.stderr
    assert subprocess.run(read, capture_output=True, check=True).stdout
