"""How git runs for a run: its environment and fixed configuration, and the
credentials task.workspace.git.credentials names, handed to git's own
processes only.

git runs as the run's uid, inside a folder the run controls: a repository's
config and hooks are the run's code. So no system or global config is read,
hooks and fsmonitor are off, no prompt can wait for a terminal, and the
transports are the ones the protocol allows (also for submodules: a
.gitmodules cannot reach ext:: or fd::).

An http(s) password or token reaches git through a credential helper given
on git's command line (`-c credential.<scheme://host>.helper=!...`) that
prints it from an environment variable set for git's processes only: never in
a URL, never on disk, never in the CLI's environment, and only for the host
of the clone URL (a submodule on another host does not get it). What git
prints is redacted like the CLI's output: the value is one of the run's.
An ssh key goes to an ssh-agent instead (node.workspace.ssh).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from claude_code_scheduler.node.workspace import WorkspaceError
from claude_code_scheduler.protocol.workspace import (
    DEFAULT_HTTPS_USERNAME,
    GitCredentials,
    GitWorkspace,
)

GIT_ALLOW_PROTOCOL = "file:git:http:https:ssh"
USERNAME_VAR = "CLAUDE_SCHEDULER_GIT_USERNAME"
PASSWORD_VAR = "CLAUDE_SCHEDULER_GIT_PASSWORD"  # noqa: S105 - a variable's name
# The helper answers `get` only: git's `store` and `erase` keep nothing here.
_HELPER = (
    '!f() { test "$1" = get || exit 0; '
    f'printf "username=%s\\npassword=%s\\n" "${USERNAME_VAR}" "${PASSWORD_VAR}"; }}; f'
)
# Every git command: no hooks, no fsmonitor, no credential helper but ours,
# quiet advice, and messages in English (failures are classified by them).
HARDENING = (
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "credential.helper=",
    "-c",
    "advice.detachedHead=false",
    "-c",
    "init.defaultBranch=main",
)


def git_environment(run_env: Mapping[str, str]) -> dict[str, str]:
    """The run's environment (already without the node's credentials), without
    any GIT_* of the node's, with git's own fixed settings."""
    env = {name: value for name, value in run_env.items() if not name.startswith("GIT_")}
    env.pop("SSH_ASKPASS", None)
    env.pop("SSH_AUTH_SOCK", None)
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL="/dev/null",
        GIT_TERMINAL_PROMPT="0",
        GIT_ALLOW_PROTOCOL=GIT_ALLOW_PROTOCOL,
        GIT_ASKPASS="/bin/false",
        LC_ALL="C",
        LANGUAGE="C",
    )
    return env


def credential_options(
    spec: GitWorkspace, variables: Mapping[str, str], env: dict[str, str]
) -> list[str]:
    """git's -c options for the credentials, and (in `env`) their values. The
    names were checked against the task's variables when the command was
    parsed; the values are the run's (task.env, resolved task.secrets)."""
    credentials = spec.credentials
    if credentials is None:
        return []
    options: list[str] = []
    if credentials.password_from is not None:
        password = _value(variables, credentials.password_from, "password_from")
        username = credentials.username or DEFAULT_HTTPS_USERNAME
        env[USERNAME_VAR] = username
        env[PASSWORD_VAR] = password
        options += ["-c", f"credential.{_origin(spec.url)}.helper={_HELPER}"]
    # ssh_key_from and known_hosts_from: node.workspace.ssh.
    return options


def _value(variables: Mapping[str, str], name: str, field: str) -> str:
    value = variables.get(name)
    if value is None:
        raise WorkspaceError(
            f"task.workspace.git.credentials.{field}: {name} has no value", retryable=False
        )
    # The credential protocol is line-based: a newline would forge a field.
    if "\n" in value or "\r" in value:
        raise WorkspaceError(
            f"task.workspace.git.credentials.{field}: {name} holds a line break, which no "
            "git credential can",
            retryable=False,
        )
    return value


def _origin(url: str) -> str:
    """scheme://host[:port] of the clone URL: what git matches a credential
    helper against, so only that server is offered the password."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def public_url(url: str) -> str:
    """The URL as events and the log may show it (it never carries
    credentials: protocol.workspace refuses one that does)."""
    return re.sub(r"[\x00-\x1f\x7f]", "", url)


def without_credentials(task_env: Mapping[str, str], workspace: object) -> dict[str, str]:
    """The task's variables for the CLI, without those git's credentials name:
    a token for the clone and the push is git's, not the model's to read."""
    credentials = getattr(workspace, "credentials", None)
    if not isinstance(credentials, GitCredentials):
        return dict(task_env)
    named = {credentials.password_from, credentials.ssh_key_from, credentials.known_hosts_from}
    return {name: value for name, value in task_env.items() if name not in named}
