"""git over ssh for a run: ssh's fixed configuration, the host keys it
accepts, and the private key task.workspace.git.credentials.ssh_key_from
names, handed to an ssh-agent and nowhere else (docs/workspaces.md).

Every ssh git starts reads a config the node wrote (`-F`), never the run's
~/.ssh: no prompt (BatchMode), strict host key checking against the lines of
known_hosts_from and the node's own /etc/ssh/ssh_known_hosts (an unknown or
changed host key fails the clone; nothing is ever added), and the agent only
for the clone URL's host (a submodule elsewhere is not offered the key).

The key goes through a pipe to `ssh-add -` inside `ssh-agent sh -c ...`,
which runs one git command as the run's uid: the agent lives exactly as long
as that command, holds the key in its memory only (it refuses to be traced or
dumped), and is killed with the command's leftovers. The key is never in a
file, an argument or an environment variable.

The config and known_hosts files are not secret, but the run must not change
them (a ProxyCommand would run beside the agent at push time): they live in a
folder of the node's, readable but not writable by the run, removed after.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from claude_code_scheduler.node.process.isolation import RunIdentity
from claude_code_scheduler.node.workspace import WorkspaceError
from claude_code_scheduler.protocol.workspace import GitCredentials

# A private key larger than this is not one (an RSA 16384 key is ~13 KB).
MAX_KEY_BYTES = 16 * 1024
# ssh-add reads the key from the pipe, then git gets /dev/null as its stdin.
_WITH_AGENT = 'ssh-add -q - || exit 1; exec "$@" </dev/null'
HOST_KEY_HINT = (
    " (the host's key is not known: name task.env or task.secrets lines of "
    "known_hosts in credentials.known_hosts_from)"
)


def over_ssh(url: str) -> bool:
    return url.startswith("ssh://") or "://" not in url


def host_of(url: str) -> str:
    """The host ssh is given for `url` (ssh://[user@]host[:port]/path or
    [user@]host:path), without IPv6 brackets: what a config `Host` matches."""
    if url.startswith("ssh://"):
        host = urlsplit(url).hostname or ""
    else:
        host = url.split(":", 1)[0].rpartition("@")[2].strip("[]")
    return host


class SshAccess:
    """ssh for one git session (a clone or a push): `env` gains
    GIT_SSH_COMMAND; `wrap` puts a remote git command under an agent that
    holds the key. `close` removes the node's files."""

    def __init__(
        self,
        url: str,
        credentials: GitCredentials | None,
        variables: Mapping[str, str],
        env: dict[str, str],
        identity: RunIdentity,
    ) -> None:
        self._key = _key(credentials, variables)
        self._agents = 0
        known_hosts = _value(variables, credentials, "known_hosts_from")
        self.known_hosts_given = known_hosts is not None
        self._folder = Path(tempfile.mkdtemp(prefix="claude-scheduler-ssh-"))
        self._folder.chmod(0o711)  # the run's ssh reads the files by name
        try:
            hosts_file = self._write("known_hosts", known_hosts or "")
            config = self._write("config", _config(host_of(url), hosts_file, self._key is not None))
            # The agents' sockets: the run's own folder, at a path short
            # enough for a socket's name (108 bytes), unlike the run's TMPDIR.
            self._sockets = self._folder / "agents"
            self._sockets.mkdir(mode=0o700)
            if identity.uid is not None:
                os.chown(self._sockets, identity.uid, identity.gid or identity.uid)
        except BaseException:
            self.close()
            raise
        env["GIT_SSH_COMMAND"] = f"ssh -F {shlex.quote(str(config))}"
        env["GIT_SSH_VARIANT"] = "ssh"

    def wrap(self, argv: list[str]) -> tuple[list[str], bytes | None]:
        """`argv` under an agent holding the key, and the key for its stdin;
        `argv` as it is when there is no key."""
        if self._key is None:
            return argv, None
        # A socket of its own: the one of a killed agent stays behind.
        self._agents += 1
        socket = str(self._sockets / str(self._agents))
        return ["ssh-agent", "-a", socket, "sh", "-c", _WITH_AGENT, "sh", *argv], self._key

    def close(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)

    def _write(self, name: str, text: str) -> Path:
        path = self._folder / name
        path.write_text(text)
        path.chmod(0o644)
        return path


def _config(host: str, known_hosts: Path, with_agent: bool) -> str:
    """ssh's whole configuration: the first value of each option wins, so the
    clone host's block (the agent) comes before everyone's (no agent)."""
    lines = []
    if with_agent:
        lines += [f"Host {host}", "    IdentityAgent SSH_AUTH_SOCK"]
    lines += [
        "Host *",
        "    IdentityAgent none",
        "    BatchMode yes",
        "    StrictHostKeyChecking yes",
        "    UpdateHostKeys no",
        f'    UserKnownHostsFile "{known_hosts}"',
        "    GlobalKnownHostsFile /etc/ssh/ssh_known_hosts",
        "    ForwardAgent no",
        "    PermitLocalCommand no",
    ]
    return "\n".join(lines) + "\n"


def _key(credentials: GitCredentials | None, variables: Mapping[str, str]) -> bytes | None:
    key = _value(variables, credentials, "ssh_key_from")
    if key is None:
        return None
    # JSON strings often lose the last newline, which ssh-add needs.
    data = (key.replace("\r\n", "\n").rstrip("\n") + "\n").encode()
    if len(data) > MAX_KEY_BYTES:
        raise WorkspaceError(
            f"task.workspace.git.credentials.ssh_key_from: more than {MAX_KEY_BYTES} bytes, "
            "too large for a private key",
            retryable=False,
        )
    return data


def _value(
    variables: Mapping[str, str], credentials: GitCredentials | None, field: str
) -> str | None:
    name = getattr(credentials, field) if credentials is not None else None
    if name is None:
        return None
    value = variables.get(name)
    if value is None:
        raise WorkspaceError(
            f"task.workspace.git.credentials.{field}: {name} has no value", retryable=False
        )
    return value


def agent_available(path: str | None) -> bool:
    return all(shutil.which(tool, path=path) for tool in ("ssh", "ssh-agent", "ssh-add"))
