"""The environment a run's child process gets, and the folders it works in.

The policy: the node's own environment, minus its AWS credentials (unless
the operator passes them on purpose) and minus what would make the CLI
misbehave, then the task's own variables, then the run marker the reaper
looks for. What the CLI writes outside its working directory is kept in
the run's own folders, which are removed with the run.

A run under a uid of its own (isolation.py) owns its folder, mode 0700, and
gets a HOME of its own inside it; the work root above the run folders stays
the node's, mode 0711, so a run reaches its own folder but cannot list the
others, and the node's spooled logs beside them are mode 0700.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from claude_code_scheduler.node.process.claude import CLAUDE_MD_ENV
from claude_code_scheduler.node.process.isolation import RunIdentity
from claude_code_scheduler.node.process.reaper import RUN_MARKER

# The node's own credentials stay with the node: a task's tools must not act as
# it. These are every way the AWS SDKs find credentials through the environment
# (keys, a profile, a web identity, the ECS/Fargate container endpoint).
STRIPPED_ENV_NAMES = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
    }
)
STRIPPED_ENV_PREFIXES = ("AWS_CONTAINER_CREDENTIALS_", "AWS_CONTAINER_AUTHORIZATION_TOKEN")
# Set inside a Claude Code session; the CLI refuses to start nested when it sees it.
NESTED_SESSION_VAR = "CLAUDECODE"
# How often the CLI retries a failed API request (its default is 10, about 3 minutes).
MAX_RETRIES_VAR = "CLAUDE_CODE_MAX_RETRIES"
# Left unset, the CLI updates itself at run time: the node would then run a CLI
# other than the one it was tested with, changing under a fleet's feet.
AUTOUPDATER_VAR = "DISABLE_AUTOUPDATER"
# The work root: run uids may pass through it to their own folder, not list it.
WORK_ROOT_MODE = 0o711
PRIVATE_MODE = 0o700
SPOOL_FOLDER = ".logs"


def prepare_work_root(work_dir: Path, *, isolated: bool) -> None:
    """The work root and the spool folder, before the first run: the node's
    own, so that no run can rename or list what is in them."""
    work_dir.mkdir(parents=True, exist_ok=True)
    spool = work_dir / SPOOL_FOLDER
    spool.mkdir(exist_ok=True)
    spool.chmod(PRIVATE_MODE)
    if isolated:
        me = os.geteuid()
        if work_dir.stat().st_uid != me:
            os.chown(work_dir, me, os.getegid())
        work_dir.chmod(WORK_ROOT_MODE)


@dataclass(frozen=True)
class RunDirs:
    """A run's scratch: the CLI's working directory, its config and its temp files.

    The config and temp folders keep what the CLI writes outside its cwd (its
    session transcript, settings, tool output, sockets) inside the run, so
    that removing `root` after the run leaves nothing behind.
    """

    root: Path

    @classmethod
    def create(cls, work_dir: Path, run_id: str, owner: RunIdentity | None = None) -> RunDirs:
        """The run's folders, owned by the run's uid when it has one of its own."""
        work_dir.mkdir(parents=True, exist_ok=True)
        # Short on purpose: the CLI puts a unix socket under tmp, and socket
        # paths are limited to 107 bytes. mkdtemp makes it mode 0700.
        root = Path(tempfile.mkdtemp(prefix=f"run-{run_id[:24]}-", dir=work_dir))
        dirs = cls(root)
        for path in (dirs.cwd, dirs.config, dirs.tmp, dirs.home):
            path.mkdir(mode=PRIVATE_MODE)
        if owner is not None and owner.uid is not None and owner.gid is not None:
            for path in (root, dirs.cwd, dirs.config, dirs.tmp, dirs.home):
                os.chown(path, owner.uid, owner.gid)
        return dirs

    @property
    def cwd(self) -> Path:
        return self.root / "work"

    @property
    def config(self) -> Path:
        return self.root / "claude"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def home(self) -> Path:
        return self.root / "home"

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def child_environment(
    base: Mapping[str, str],
    task_env: Mapping[str, str],
    *,
    run_marker: str,
    dirs: RunDirs | None = None,
    identity: RunIdentity | None = None,
    keep_aws_credentials: bool = False,
    claude_max_retries: int | None = None,
) -> dict[str, str]:
    """The CLI's environment: the node's, without its AWS credentials unless the
    operator passes them on purpose, then the task's own, then the run marker.

    Where the node's environment names no config or temp folder of its own,
    the run's scratch folders are used, and the CLI's self-update is off
    unless the node's environment says otherwise. A run under a uid of its
    own always gets its own folders and HOME: the node's are not its to
    write, and sharing them would let one run read another's.
    """
    env = {
        name: value
        for name, value in base.items()
        if name != NESTED_SESSION_VAR
        and (
            keep_aws_credentials
            or (name not in STRIPPED_ENV_NAMES and not name.startswith(STRIPPED_ENV_PREFIXES))
        )
    }
    env.setdefault(AUTOUPDATER_VAR, "1")
    env.setdefault(*CLAUDE_MD_ENV)  # the workspace's CLAUDE.md, not its settings
    if dirs is not None:
        folders = {
            "CLAUDE_CONFIG_DIR": str(dirs.config),
            "CLAUDE_CODE_TMPDIR": str(dirs.tmp),
            "TMPDIR": str(dirs.tmp),
        }
        if identity is not None and identity.isolated:
            env.update(folders, HOME=str(dirs.home))
        else:
            for name, value in folders.items():
                env.setdefault(name, value)
    if identity is not None and identity.uid is not None:
        _name_the_user(env, identity.uid)
    if claude_max_retries is not None:
        env[MAX_RETRIES_VAR] = str(claude_max_retries)
    env.update(task_env)
    env[RUN_MARKER] = run_marker  # last: how the reaper finds the run's processes
    return env


def _name_the_user(env: dict[str, str], uid: int) -> None:
    """USER and LOGNAME of the run's uid (the image has passwd entries for the
    run uids), not the node's."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        env.pop("USER", None)
        env.pop("LOGNAME", None)
        return
    env["USER"] = env["LOGNAME"] = name
