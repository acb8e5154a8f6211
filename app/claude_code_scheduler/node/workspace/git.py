"""A git workspace: the clone before the CLI starts, the push after it
completed (docs/workspaces.md).

Every git command runs through `ChildRunner`: as the run's uid, in the run's
working folder, its words in the run's log (redacted), within what is left of
the run's timeout, and stopped by a shutdown. A failure is a WorkspaceError
carrying the tail of git's stderr, retryable when git says the network or the
server failed (`classify`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from claude_code_scheduler.node.process.supervisor import ProcessResult
from claude_code_scheduler.node.workspace import Captured, ChildRunner, WorkspaceError
from claude_code_scheduler.node.workspace.credentials import (
    HARDENING,
    credential_options,
    git_environment,
    public_url,
)
from claude_code_scheduler.node.workspace.ssh import (
    HOST_KEY_HINT,
    SshAccess,
    agent_available,
    over_ssh,
)
from claude_code_scheduler.protocol.events import PushResult
from claude_code_scheduler.protocol.workspace import GitWorkspace, default_push_branch

# A commit named in full: fetched by its name (servers refuse abbreviations).
FULL_COMMIT = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
# How much of git's stderr a TaskFailed quotes: its last lines say why.
MESSAGE_TAIL_CHARS = 1500
COMMITTER_NAME = "Claude Code"
COMMITTER_EMAIL = "claude-code-scheduler@localhost"

# git's words for a cause that is the command's (checked first: a refused
# login also ends in "the remote end hung up")...
_PERMANENT = re.compile(
    r"Authentication failed|could not read (?:Username|Password)|Remote branch .* not found"
    r"|couldn't find remote ref|not our ref|repository .*not found|Repository not found"
    r"|does not appear to be a git repository|not a git repository|access denied"
    r"|returned error: 4\d\d|Permission denied|Host key verification failed"
    r"|SSL certificate problem|\[rejected\]|\[remote rejected\]|non-fast-forward"
    r"|unknown revision|invalid|not a valid",
    re.IGNORECASE,
)
# ...and for one of the network or the server, which another try may not meet.
_TRANSIENT = re.compile(
    r"Could not resolve host|Temporary failure in name resolution|Connection refused"
    r"|Connection timed out|Operation timed out|timed out after|Failed to connect"
    r"|Connection reset|Network is unreachable|No route to host|early EOF"
    r"|unexpected disconnect|returned error: 5\d\d|HTTP 5\d\d|RPC failed|Empty reply from server"
    r"|the remote end hung up unexpectedly|unable to connect",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Checkout:
    """What the clone checked out: the commit (the patch's base, the event's
    workspace.commit) and the branch, None when HEAD is detached (a tag, a
    commit)."""

    commit: str
    branch: str | None


def classify(stderr: str) -> bool:
    """True when git's words say the failure is transient (see above)."""
    return not _PERMANENT.search(stderr) and bool(_TRANSIENT.search(stderr))


def failure(what: str, result: ProcessResult) -> WorkspaceError:
    words = result.stderr_tail.strip()[-MESSAGE_TAIL_CHARS:]
    if result.spawn_error is not None:
        return WorkspaceError(f"{what}: could not run git: {result.spawn_error}", retryable=False)
    return WorkspaceError(
        f"{what} failed (exit {result.exit_code}): {words or 'git said nothing'}",
        retryable=classify(words),
    )


class Git:
    """git for one run: its environment, its credentials, its runner."""

    def __init__(self, spec: GitWorkspace, runner: ChildRunner, variables: Mapping[str, str]):
        self.spec = spec
        self._runner = runner
        self._env = git_environment(runner.env)
        self._credentials = credential_options(spec, variables, self._env)
        if spec.url.startswith("file://"):
            trusting = _trusting(spec.url, runner.env.get("TMPDIR"))
            self._env["GIT_CONFIG_GLOBAL"] = trusting
            if spec.lfs and self._env.get("HOME"):
                # git-lfs's file transfer agent runs git without
                # GIT_CONFIG_GLOBAL, reading $HOME/.gitconfig instead: the
                # run's own HOME, empty until the CLI starts.
                shutil.copyfile(trusting, Path(self._env["HOME"]) / ".gitconfig")
        self._ssh: SshAccess | None = None
        if over_ssh(spec.url):
            if not agent_available(runner.env.get("PATH")):
                raise WorkspaceError(
                    "an ssh URL needs ssh, ssh-agent and ssh-add, which this node lacks",
                    retryable=False,
                )
            self._ssh = SshAccess(spec.url, spec.credentials, variables, self._env, runner.identity)

    def __enter__(self) -> Git:
        return self

    def __exit__(self, *_: object) -> None:
        if self._ssh is not None:
            self._ssh.close()

    def __call__(self, what: str, *args: str, remote: bool = False) -> str:
        """Runs `git args`, with the credentials when it talks to the remote;
        its stdout, or a WorkspaceError naming `what`."""
        argv = ["git", *HARDENING, *(self._credentials if remote else []), *args]
        key = None
        if remote and self._ssh is not None:
            argv, key = self._ssh.wrap(argv)
        captured = Captured()
        result = self._runner.run(argv, env=self._env, stdout_reader=captured, stdin_data=key)
        if result.exit_code != 0:
            raise self._failure(what, result)
        return captured.text

    def _failure(self, what: str, result: ProcessResult) -> WorkspaceError:
        error = failure(what, result)
        ssh = self._ssh
        if ssh is not None and not ssh.known_hosts_given and "Host key verification" in str(error):
            return WorkspaceError(str(error) + HOST_KEY_HINT, retryable=False)
        return error

    def succeeds(self, *args: str) -> bool:
        """A git question answered by its exit status (0 yes, 1 no)."""
        result = self._runner.run(["git", *HARDENING, *args], env=self._env)
        if result.exit_code not in (0, 1):
            raise self._failure(f"git {args[0]}", result)
        return result.exit_code == 0


def _trusting(url: str, folder: str | None) -> str:
    """A global git config that trusts the one repository a file:// URL names.

    That repository belongs to another uid than the run's, which git refuses
    as "dubious" unless its global config says the path is safe (git does not
    pass -c options to a local upload-pack, and upload-pack runs none of the
    repository's hooks). Not secret: written to the run's temp folder."""
    path = unquote(urlsplit(url).path).replace("\\", "\\\\").replace('"', '\\"')
    fd, name = tempfile.mkstemp(prefix="gitconfig-", dir=folder)
    with os.fdopen(fd, "w") as config:
        # The path as named, and its .git: git checks the latter for a
        # repository with a working tree, the former for a bare one.
        config.write(f'[safe]\n\tdirectory = "{path}"\n\tdirectory = "{path}/.git"\n')
    os.chmod(name, 0o644)
    return name


def clone(spec: GitWorkspace, runner: ChildRunner, variables: Mapping[str, str]) -> Checkout:
    """Clones `spec` into the runner's cwd (the run's empty working folder)."""
    if spec.lfs and shutil.which("git-lfs", path=runner.env.get("PATH")) is None:
        raise WorkspaceError(
            "task.workspace.git.lfs is set, but git-lfs is not installed on this node",
            retryable=False,
        )
    with Git(spec, runner, variables) as git:
        return _clone(git, runner)


def _clone(git: Git, runner: ChildRunner) -> Checkout:
    spec = git.spec
    url = public_url(spec.url)
    depth = ["--depth", str(spec.depth)] if spec.depth else []
    runner.say(f"cloning {url}" + (f" at {spec.ref}" if spec.ref else "") + _depth_note(spec))
    if spec.ref is not None and FULL_COMMIT.match(spec.ref):
        # A commit is fetched by name into a new repository: clone takes
        # only branches and tags.
        git("git init", "init", "-q", ".")
        git("git remote add", "remote", "add", "origin", "--", spec.url)
        git("git fetch", "fetch", *depth, "--no-tags", "origin", spec.ref, remote=True)
        git("git checkout", "checkout", "-q", "--detach", "FETCH_HEAD")
        if spec.submodules:
            shallow = ["--depth", "1"] if spec.depth else []
            git(
                "git submodule update",
                "submodule", "update", "--init", "--recursive", *shallow, remote=True,
            )  # fmt: skip
    else:
        branch = ["--branch", spec.ref] if spec.ref is not None else []
        modules = ["--recurse-submodules", "--shallow-submodules"] if spec.submodules else []
        git("git clone", "clone", *depth, *branch, *modules, "--", spec.url, ".", remote=True)
    if spec.lfs:
        # The filters only: its hooks would go to core.hooksPath, /dev/null.
        git("git lfs install", "lfs", "install", "--local", "--skip-repo")
        git("git lfs pull", "lfs", "pull", remote=True)
    commit = git("git rev-parse", "rev-parse", "--verify", "HEAD^{commit}")
    branch_name = git("git branch", "branch", "--show-current") or None
    runner.say(f"checked out {commit}" + (f" (branch {branch_name})" if branch_name else ""))
    return Checkout(commit=commit, branch=branch_name)


def _depth_note(spec: GitWorkspace) -> str:
    return f", depth {spec.depth}" if spec.depth else ", full history"


def push(
    spec: GitWorkspace,
    checkout: Checkout,
    run_id: str,
    runner: ChildRunner,
    variables: Mapping[str, str],
) -> PushResult:
    """Commits what the run left uncommitted and pushes HEAD to a new branch
    (never forced; never the checked-out branch unless the task allows it)."""
    assert spec.push is not None
    branch = spec.push.branch or default_push_branch(run_id)
    if branch == checkout.branch and not spec.push.allow_checked_out_branch:
        raise WorkspaceError(
            f"task.workspace.git.push: refusing to push to {branch!r}, the branch the run "
            "checked out; name another push.branch, or set allow_checked_out_branch",
            retryable=False,
        )
    with Git(spec, runner, variables) as git:
        return _push(git, branch, run_id, runner)


def _push(git: Git, branch: str, run_id: str, runner: ChildRunner) -> PushResult:
    spec = git.spec
    assert spec.push is not None
    git("git add", "add", "-A")
    if not git.succeeds("diff", "--cached", "--quiet"):
        # The run's repo config may name its author; otherwise the node's
        # fixed one (no global config is read, so git has none of its own).
        name = _config(git, "user.name") or COMMITTER_NAME
        email = _config(git, "user.email") or COMMITTER_EMAIL
        message = spec.push.message or f"Work of Claude Code run {run_id}"
        git(
            "git commit",
            "-c", f"user.name={name}", "-c", f"user.email={email}",
            "commit", "-q", "--no-verify", "--no-gpg-sign", "-m", message,
        )  # fmt: skip
    commit = git("git rev-parse", "rev-parse", "--verify", "HEAD^{commit}")
    url = public_url(spec.url)
    runner.say(f"pushing {commit} to {url} as refs/heads/{branch}")
    git("git push", "push", "--no-verify", "--", spec.url, f"HEAD:refs/heads/{branch}", remote=True)
    return PushResult(remote=url, branch=branch, commit=commit)


def _config(git: Git, key: str) -> str | None:
    try:
        return git(f"git config {key}", "config", "--get", key) or None
    except WorkspaceError:
        return None  # not set: git exits 1
