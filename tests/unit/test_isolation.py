"""isolation.py: as whom runs run, the node's hardening, what a run uid can
reach, and what it leaves in the world-writable places.

The cases that change uids need root (CI runs as root); elsewhere they skip,
or fail under CI=true.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.conftest import IN_CI
from tests.unprivileged import UNPRIVILEGED, as_unprivileged, let_other_users_through

from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.node.process.claude import SANDBOX_SETTINGS, claude_argv
from claude_code_scheduler.node.process.isolation import (
    IsolationPolicy,
    RunIdentity,
    remove_files_of,
    unreachable_reason,
)
from claude_code_scheduler.node.startup import check_run_identities, run_programs
from claude_code_scheduler.protocol import TaskSpec

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux")
# Far from the default base, so that no node of another test uses it.
TEST_UID = 10977


def needs_root() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI=true: the isolation tests need root")
        pytest.skip("needs root to change uids")


# --- the policy ---------------------------------------------------------------------


def test_a_root_node_gives_each_slot_a_uid_of_its_own() -> None:
    policy = IsolationPolicy.decide(euid=0, slots=3, run_uid_base=10100, allow_shared_uid=False)
    assert policy.isolated
    assert policy.identities() == [
        RunIdentity(0, 10100, 10100),
        RunIdentity(1, 10101, 10101),
        RunIdentity(2, 10102, 10102),
    ]
    assert policy.identity(1).popen_options() == {
        "user": 10101,
        "group": 10101,
        "extra_groups": [],
    }
    with pytest.raises(ValueError, match="no run slot 3"):
        policy.identity(3)
    levels = {level for level, _ in policy.describe()}
    assert levels == {logging.INFO}
    assert "10100-10102" in policy.describe()[0][1]


def test_a_node_that_is_not_root_runs_one_run_at_a_time_as_itself() -> None:
    policy = IsolationPolicy.decide(euid=1000, slots=1, run_uid_base=10100, allow_shared_uid=False)
    assert not policy.isolated
    assert policy.identity(0) == RunIdentity(0)
    assert policy.identity(0).popen_options() == {}
    lines = policy.describe()
    assert {level for level, _ in lines} == {logging.WARNING}, "said plainly"
    assert "not root" in lines[0][1] and "uid 1000" in lines[0][1]
    assert "network" in lines[-1][1]


def test_more_than_one_slot_without_root_needs_allow_shared_uid() -> None:
    with pytest.raises(ConfigError) as refused:
        IsolationPolicy.decide(euid=1000, slots=2, run_uid_base=10100, allow_shared_uid=False)
    message = str(refused.value)
    assert message.startswith("--max-concurrent-tasks: ")
    assert "--allow-shared-uid" in message and "\n" not in message
    accepted = IsolationPolicy.decide(euid=1000, slots=2, run_uid_base=10100, allow_shared_uid=True)
    assert [i.uid for i in accepted.identities()] == [None, None]
    assert any("each other's" in line for _, line in accepted.describe())


def test_the_node_refuses_two_shared_slots_at_start_up() -> None:
    """The command line, as a user that is not root: one line, exit 2, before AWS."""
    argv = [
        sys.executable,
        "-m",
        "claude_code_scheduler",
        "node",
        "--queue-url",
        "https://sqs.us-east-1.amazonaws.com/123456789012/q",
        "--topic-arn",
        "arn:aws:sns:us-east-1:123456789012:t",
        "--log-bucket",
        "logs-bucket",
        "--mock-mode",
        "--max-concurrent-tasks",
        "2",
    ]
    env = {"PATH": os.environ["PATH"], "AWS_REGION": "us-east-1", "HOME": "/"}
    done = subprocess.run(
        as_unprivileged(argv), capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("error: --max-concurrent-tasks: the node is not root")
    )


# --- the node's hardening ---------------------------------------------------------------


HARDENED = """
import os, sys, time
from claude_code_scheduler.node.process.isolation import harden_node
if sys.argv[1] == "harden":
    assert harden_node() == []
status = open("/proc/self/status").read()
print(os.getpid(), "NoNewPrivs:\\t1" in status, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("harden", [True, False], ids=["hardened", "control"])
def test_a_process_of_the_nodes_own_uid_cannot_read_a_hardened_node(harden: bool) -> None:
    """The same uid on both sides (nobody): only undumpable stands between them."""
    needs_root()
    node = subprocess.Popen(
        as_unprivileged(
            [sys.executable, "-c", HARDENED, "harden" if harden else "plain"],
        ),
        env={**os.environ, "NODE_CANARY": "c4n4ry"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert node.stdout is not None
        pid, no_new_privs = node.stdout.readline().split()
        assert no_new_privs == str(harden)
        reader = subprocess.run(
            as_unprivileged(["sh", "-c", f"cat /proc/{pid}/environ; head -c1 /proc/{pid}/mem"]),
            capture_output=True,
            timeout=30,
            check=False,
        )
        if harden:
            assert b"c4n4ry" not in reader.stdout
            assert b"Permission denied" in reader.stderr
        else:
            assert b"NODE_CANARY=c4n4ry" in reader.stdout, "the control: it would have worked"
    finally:
        node.kill()
        node.wait()


CHILD_OF_HARDENED = """
import os, subprocess, sys
from claude_code_scheduler.node.process import reaper
from claude_code_scheduler.node.process.isolation import harden_node
assert harden_node() == []
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                         env={**os.environ, reaper.RUN_MARKER: "r/1"})
found = reaper.run_processes("r/1") == {child.pid}
status = open(f"/proc/{child.pid}/status").read()
child.kill(); child.wait()
print(found, "NoNewPrivs:\\t1" in status)
"""


def test_a_hardened_node_still_reads_its_children_and_they_inherit_no_new_privs() -> None:
    done = subprocess.run(
        as_unprivileged([sys.executable, "-c", CHILD_OF_HARDENED])
        if os.geteuid() == 0
        else [sys.executable, "-c", CHILD_OF_HARDENED],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]


# --- what a run uid can reach ----------------------------------------------------------


def test_a_folder_of_mode_0700_on_the_way_is_named(tmp_path: Path) -> None:
    private = tmp_path / "private"
    (private / "bin").mkdir(parents=True)
    tool = private / "bin" / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    private.chmod(0o700)
    reason = unreachable_reason(tool, TEST_UID, TEST_UID)
    assert reason is not None and "not searchable by other users" in reason
    private.chmod(0o711)
    let_other_users_through(tmp_path)
    assert unreachable_reason(tool, TEST_UID, TEST_UID) is None
    tool.chmod(0o700)
    assert unreachable_reason(tool, TEST_UID, TEST_UID) == (
        f"{tool} is not executable by other users (mode 0700)"
    )


def test_the_start_up_probe_names_what_a_run_uid_cannot_execute(tmp_path: Path) -> None:
    needs_root()
    hidden = tmp_path / "root-only" / "claude"
    hidden.parent.mkdir()
    hidden.parent.chmod(0o700)
    hidden.write_text("#!/bin/sh\necho 2.1.332\n")
    hidden.chmod(0o755)
    policy = IsolationPolicy(True, 1, TEST_UID, 0)
    work_dir = let_other_users_through(tmp_path) / "work"
    work_dir.mkdir()
    probe, reached = run_programs(str(hidden))
    with pytest.raises(ConfigError) as refused:
        check_run_identities(policy, probe, reached, work_dir, {"PATH": os.environ["PATH"]})
    assert str(refused.value) == (
        f"run uid {TEST_UID} cannot execute {hidden}: the folder {hidden.parent} on its path "
        "is not searchable by other users (mode 0700); install the node where other users "
        "can reach it, as the image does"
    )
    hidden.parent.chmod(0o755)
    check_run_identities(policy, probe, reached, work_dir, {"PATH": os.environ["PATH"]})


def test_mock_mode_probes_the_nodes_interpreter_and_package(tmp_path: Path) -> None:
    """The venv is built from a system Python (scripts/venv-python.sh) so that
    this holds on a development machine as it does in the image."""
    needs_root()
    probe, reached = run_programs(None)
    assert probe[:2] == [sys.executable, "-c"]
    work_dir = let_other_users_through(tmp_path) / "work"
    work_dir.mkdir()
    policy = IsolationPolicy(True, 2, TEST_UID, 0)
    env = {"PATH": os.environ["PATH"]}
    check_run_identities(policy, probe, reached, work_dir, env)
    tmp_path.chmod(0o700)
    with pytest.raises(ConfigError, match=f"^--work-dir: run uid {TEST_UID} cannot reach "):
        check_run_identities(policy, probe, reached, work_dir, env)


# --- what a run uid leaves behind ---------------------------------------------------


def test_the_files_a_run_uid_left_in_shared_places_are_removed(tmp_path: Path) -> None:
    needs_root()
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    left = [shared / "left.txt", shared / "folder"]
    left[0].write_text("secret of the last run")
    (left[1] / "deep").mkdir(parents=True)
    inside_open = shared / ".X11-unix"  # a folder of root's others write in
    inside_open.mkdir()
    inside_open.chmod(0o1777)
    socket_like = inside_open / "X9"
    socket_like.write_text("")
    others = shared / "someone-else.txt"
    others.write_text("not the run's")
    for path in (left[0], left[1], left[1] / "deep", socket_like):
        os.chown(path, TEST_UID, TEST_UID)
    os.chown(others, UNPRIVILEGED, UNPRIVILEGED)
    assert remove_files_of(TEST_UID, [shared, tmp_path / "missing"]) == 3
    assert not any(p.exists() for p in (*left, socket_like))
    assert others.exists() and inside_open.exists()


# --- the CLI's own Bash sandbox ------------------------------------------------------


def test_bash_sandbox_passes_settings_that_fail_closed() -> None:
    argv = claude_argv("claude", TaskSpec(prompt="hi"), bash_sandbox=True)
    settings = json.loads(argv[argv.index("--settings") + 1])
    assert settings == SANDBOX_SETTINGS
    assert settings["sandbox"]["enabled"] and settings["sandbox"]["failIfUnavailable"]
    assert settings["sandbox"]["allowUnsandboxedCommands"] is False
    assert argv[-2:] == ["--", "hi"]
    assert "--settings" not in claude_argv("claude", TaskSpec(prompt="hi"))


def test_the_isolation_module_imports_nothing_that_needs_a_thread() -> None:
    """harden_node must run before any thread: importing the node's modules
    starts none."""
    code = textwrap.dedent(
        """
        import threading
        import claude_code_scheduler.node.main
        print(threading.active_count())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "1"
