"""node/process/environment.py: the child's environment and its run folders."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from tests.conftest import IN_CI

from claude_code_scheduler.node.process.claude import CLAUDE_MD_ENV
from claude_code_scheduler.node.process.environment import (
    MAX_RETRIES_VAR,
    RunDirs,
    child_environment,
    prepare_work_root,
)
from claude_code_scheduler.node.process.isolation import RunIdentity
from claude_code_scheduler.node.process.reaper import RUN_MARKER

# --- environment ----------------------------------------------------------------

# What every child environment gets unless the node's says otherwise.
DEFAULTS = {"DISABLE_AUTOUPDATER": "1", CLAUDE_MD_ENV[0]: CLAUDE_MD_ENV[1]}


def test_child_environment_strips_node_credentials_and_adds_task_env() -> None:
    base = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIA...",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "token",
        "AWS_SECURITY_TOKEN": "legacy-token",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.23/v1/credentials",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/abc",
        "CLAUDECODE": "1",
        "ANTHROPIC_API_KEY": "sk-ant",
    }
    env = child_environment(base, {"FOO": "bar", "PATH": "/opt/bin"}, run_marker="r1")
    assert env == {
        "PATH": "/opt/bin",
        "HOME": "/root",
        "AWS_REGION": "us-east-1",
        "ANTHROPIC_API_KEY": "sk-ant",
        "FOO": "bar",
        **DEFAULTS,
        RUN_MARKER: "r1",
    }
    assert base["AWS_ACCESS_KEY_ID"] == "AKIA...", "the node's own environment is untouched"


def test_the_cli_does_not_update_itself_unless_the_node_says_so() -> None:
    assert child_environment({}, {}, run_marker="r")["DISABLE_AUTOUPDATER"] == "1"
    base = {"DISABLE_AUTOUPDATER": "0"}
    assert child_environment(base, {}, run_marker="r")["DISABLE_AUTOUPDATER"] == "0"


def test_pass_aws_credentials_keeps_them_on_purpose() -> None:
    base = {
        "AWS_ACCESS_KEY_ID": "AKIA...",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/abc",
        "CLAUDECODE": "1",
    }
    env = child_environment(base, {}, run_marker="r1", keep_aws_credentials=True)
    assert env == {
        "AWS_ACCESS_KEY_ID": "AKIA...",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/abc",
        **DEFAULTS,
        RUN_MARKER: "r1",
    }


def test_run_dirs_are_the_default_config_and_temp_folders(tmp_path: Path) -> None:
    dirs = RunDirs.create(tmp_path / "work-root", "run-" + "x" * 120)
    assert dirs.cwd.is_dir() and dirs.config.is_dir() and dirs.tmp.is_dir()
    assert dirs.root.parent == tmp_path / "work-root"
    assert len(dirs.root.name) < 40, "a long run id must not make the socket path too long"
    env = child_environment({"PATH": "/bin"}, {}, run_marker="r1", dirs=dirs)
    assert env["CLAUDE_CONFIG_DIR"] == str(dirs.config)
    assert env["CLAUDE_CODE_TMPDIR"] == str(dirs.tmp)
    assert env["TMPDIR"] == str(dirs.tmp)
    dirs.remove()
    assert not dirs.root.exists()


def test_the_operators_own_config_folder_wins(tmp_path: Path) -> None:
    dirs = RunDirs.create(tmp_path, "r1")
    base = {"CLAUDE_CONFIG_DIR": "/etc/claude", "TMPDIR": "/scratch"}
    env = child_environment(base, {}, run_marker="r1", dirs=dirs)
    assert env["CLAUDE_CONFIG_DIR"] == "/etc/claude"
    assert env["TMPDIR"] == "/scratch"
    assert env["CLAUDE_CODE_TMPDIR"] == str(dirs.tmp)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_run_of_its_own_uid_owns_its_folders_and_nothing_above(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI=true: chown needs root")
        pytest.skip("chown needs root")
    work_root = tmp_path / "work-root"
    prepare_work_root(work_root, isolated=True)
    identity = RunIdentity(3, 10103, 10103)
    dirs = RunDirs.create(work_root, "r1", identity)
    for path in (dirs.root, dirs.cwd, dirs.config, dirs.tmp, dirs.home):
        assert (path.stat().st_uid, path.stat().st_gid) == (10103, 10103), path
        assert mode(path) == 0o700, path
    # The run passes through the work root to its folder, but cannot list it;
    # the spooled logs beside it are the node's alone.
    assert (work_root.stat().st_uid, mode(work_root)) == (0, 0o711)
    spool = work_root / ".logs"
    assert (spool.stat().st_uid, mode(spool)) == (0, 0o700)
    dirs.remove()
    assert not dirs.root.exists()


def test_a_run_of_its_own_uid_gets_its_own_home_and_folders_whatever_the_node_says(
    tmp_path: Path,
) -> None:
    dirs = RunDirs.create(tmp_path, "r1")
    base = {
        "HOME": "/root",
        "CLAUDE_CONFIG_DIR": "/root/.claude",
        "TMPDIR": "/scratch",
        "USER": "root",
        "LOGNAME": "root",
    }
    identity = RunIdentity(0, 10977, 10977)  # no passwd entry here
    env = child_environment(base, {}, run_marker="r1", dirs=dirs, identity=identity)
    assert env["HOME"] == str(dirs.home)
    assert env["CLAUDE_CONFIG_DIR"] == str(dirs.config)
    assert env["TMPDIR"] == env["CLAUDE_CODE_TMPDIR"] == str(dirs.tmp)
    assert "USER" not in env and "LOGNAME" not in env, "not the node's name"
    shared = child_environment(base, {}, run_marker="r1", dirs=dirs)
    assert shared["HOME"] == "/root", "a shared-uid run keeps the node's HOME"


def test_max_retries_option_is_a_default_the_task_may_override() -> None:
    base = {"CLAUDE_CODE_MAX_RETRIES": "7"}
    assert child_environment(base, {}, run_marker="r", claude_max_retries=2)[MAX_RETRIES_VAR] == "2"
    assert child_environment(base, {}, run_marker="r")[MAX_RETRIES_VAR] == "7"
    task_env = {MAX_RETRIES_VAR: "0"}
    assert (
        child_environment(base, task_env, run_marker="r", claude_max_retries=2)[MAX_RETRIES_VAR]
        == "0"
    )


def test_the_task_cannot_change_the_run_marker() -> None:
    env = child_environment({}, {RUN_MARKER: "someone-else"}, run_marker="mine")
    assert env[RUN_MARKER] == "mine"


@pytest.mark.parametrize(
    "name",
    [
        "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    ],
)
def test_child_environment_strips_other_credential_sources(name: str) -> None:
    assert child_environment({name: "x", "KEEP": "y"}, {}, run_marker="r") == {
        "KEEP": "y",
        **DEFAULTS,
        RUN_MARKER: "r",
    }


def test_task_env_may_set_its_own_credentials() -> None:
    env = child_environment(
        {"AWS_ACCESS_KEY_ID": "node"}, {"AWS_ACCESS_KEY_ID": "task"}, run_marker="r"
    )
    assert env == {"AWS_ACCESS_KEY_ID": "task", **DEFAULTS, RUN_MARKER: "r"}
