"""task.workspace.git end to end: a mock-mode node process on the moto server
clones from real git servers on loopback (tests/gitserver.py: git daemon,
git http-backend behind basic auth, file://) into the run's working folder,
the mock CLI writes mock.write_files there, and the push puts them on a new
branch of the server. Failures are WorkspaceErrors with git's own words,
retryable only when the network is to blame; a password or an ssh key never
leaves the node but to the git server.

One node per server kind, several commands each: node start-ups are dear.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from claude_code_scheduler.aws.cancels import CancelRequest, CancelStore
from claude_code_scheduler.protocol.events import iso
from tests.conftest import IN_CI
from tests.fault_proxy import FaultProxy
from tests.gitserver import (
    PASSWORD,
    USER,
    Repository,
    free_port,
    git,
    git_daemon,
    git_http,
    keygen,
    make_repository,
    require_git,
    require_ssh,
    sshd,
)
from tests.integration.conftest import Stack, command
from tests.integration.test_secrets import aws
from tests.unprivileged import let_other_users_through

NODE_ARGS = ("--mock-mode", "--poll-wait-seconds", "1", "--max-concurrent-tasks", "2")
WRITTEN = {"notes/new.txt": "made by the run\n", "README.md": "# project, edited\n"}


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    require_git()
    return make_repository(let_other_users_through(tmp_path) / "served")


def run(workspace: dict[str, Any], **task: Any) -> dict[str, Any]:
    mock = {"duration_seconds": 0.1, "write_files": WRITTEN}
    return command(workspace={"git": workspace}, mock=mock, **task)


def terminal(stack: Stack, run_id: str, timeout: float = 60) -> dict[str, Any]:
    return stack.wait_for(
        lambda e: (
            e["event_type"] in ("TaskCompleted", "TaskFailed") and e["data"]["run_id"] == run_id
        ),
        timeout,
    )


def parent_of(repo: Repository, commit: str) -> str:
    return git("--git-dir", str(repo.path), "rev-parse", f"{commit}^")


def test_clone_at_a_branch_a_tag_and_a_commit_and_push_over_git_and_file_urls(
    stack: Stack, start_node: Any, repo: Repository
) -> None:
    with git_daemon(repo.root) as server:
        url = f"{server}/{repo.name}"
        commands = {
            "branch": run({"url": url, "ref": "feature", "push": {"message": "the run's work"}}),
            "tag": run({"url": url, "ref": "v1"}),
            "commit": run({"url": f"file://{repo.path}", "ref": repo.first, "depth": 1}),
            "default": run({"url": url, "depth": 0}),
            "checked-out": run({"url": url, "ref": "main", "push": {"branch": "main"}}),
            "unknown-ref": run({"url": url, "ref": "no-such-branch"}),
        }
        start_node(stack, *NODE_ARGS)
        for body in commands.values():
            stack.send(body)
        ended = {name: terminal(stack, body["run_id"]) for name, body in commands.items()}

        pushed = ended["branch"]
        assert pushed["event_type"] == "TaskCompleted", pushed
        run_id = commands["branch"]["run_id"]
        assert pushed["data"]["workspace"] == {"commit": repo.feature}
        push = pushed["data"]["push"]
        assert push["remote"] == url and push["branch"] == f"claude/{run_id}"
        # On the server: the run's files on top of the checked-out commit, in
        # the clone's root (feature.txt came with the clone).
        assert repo.ls_remote()[f"refs/heads/claude/{run_id}"] == push["commit"]
        assert parent_of(repo, push["commit"]) == repo.feature
        assert repo.show(push["commit"], "notes/new.txt") == "made by the run"
        assert repo.show(push["commit"], "README.md") == "# project, edited"
        assert repo.show(push["commit"], "feature.txt") == "feature work"
        message = git("--git-dir", str(repo.path), "log", "-1", "--format=%s|%an", push["commit"])
        assert message == "the run's work|Claude Code"

        for name, commit in (("tag", repo.first), ("commit", repo.first), ("default", repo.main)):
            assert ended[name]["event_type"] == "TaskCompleted", ended[name]["data"]["error"]
            assert ended[name]["data"]["workspace"] == {"commit": commit}
            assert "push" not in ended[name]["data"]

        refused = ended["checked-out"]
        assert refused["event_type"] == "TaskFailed", refused
        assert refused["data"]["error"]["type"] == "WorkspaceError"
        assert "refusing to push to 'main'" in refused["data"]["error"]["message"]
        assert refused["data"]["retryable"] is False
        assert repo.ls_remote()["refs/heads/main"] == repo.main

        unknown = ended["unknown-ref"]
        assert unknown["data"]["error"]["type"] == "WorkspaceError"
        assert "Remote branch no-such-branch not found" in unknown["data"]["error"]["message"]
        assert unknown["data"]["retryable"] is False
        assert "workspace" not in unknown["data"]

        # Last: a transient failure goes back to the queue, but not at once
        # (a server that stays down must not be retried hot): no second
        # attempt while the node polls every second.
        closed = run({"url": f"git://127.0.0.1:{free_port()}/{repo.name}"})
        stack.send(closed)
        unreachable = terminal(stack, closed["run_id"])
        assert unreachable["data"]["error"]["type"] == "WorkspaceError"
        assert "Connection refused" in unreachable["data"]["error"]["message"]
        assert unreachable["data"]["retryable"] is True
        stack.drain_events(5.0)
        starts = stack.of("TaskStarted", closed["run_id"])
        assert len(starts) == 1, "retried at once"
        assert stack.queue_counts() == (0, 1)  # hidden for its delay, not lost


def run_uid_processes(uid: int = 10100) -> list[int]:
    """Live processes of the first slot's uid."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        uids = next((line.split()[1:] for line in text.splitlines() if line.startswith("Uid:")), [])
        if str(uid) in uids and "State:\tZ" not in text:
            found.append(int(status.parent.name))
    return found


def test_a_clone_that_outlasts_the_run_timeout_ends_as_timeout_and_leaves_nothing(
    stack: Stack, start_node: Any, repo: Repository
) -> None:
    """A server that accepts and then goes silent (a big repository on a slow
    link looks the same to git): the run's timeout bounds the clone."""
    with git_daemon(repo.root) as server, FaultProxy(server) as link:
        link.drop()
        url = f"git://127.0.0.1:{link.port}/{repo.name}"
        body = run({"url": url}, timeout_seconds=5)
        start_node(stack, *NODE_ARGS)
        stack.send(body)
        ended = terminal(stack, body["run_id"], timeout=90)
    assert ended["event_type"] == "TaskFailed", ended
    assert ended["data"]["error"]["type"] == "Timeout"
    assert ended["data"]["duration_seconds"] < 60
    assert run_uid_processes() == [], "a git process of the run outlived it"


def test_a_cancel_stops_a_clone_that_hangs_within_the_bound(
    stack: Stack, start_node: Any, repo: Repository
) -> None:
    """The same silent server, and a run timeout far away: an operator's
    cancel interrupts git (docs/cancel.md), the run ends Cancelled within the
    documented 10 s, and no git process of the run is left."""
    with git_daemon(repo.root) as server, FaultProxy(server) as link:
        link.drop()
        body = run({"url": f"git://127.0.0.1:{link.port}/{repo.name}"}, timeout_seconds=600)
        start_node(stack, *NODE_ARGS)
        stack.send(body)
        run_id = body["run_id"]
        stack.wait_event("TaskStarted", run_id)
        time.sleep(2.0)  # into the clone, which the server leaves hanging
        stack.poll_events()
        assert stack.of("TaskFailed", run_id) == [], "the clone does not end by itself"
        requested = time.monotonic()
        CancelStore(stack.s3, stack.bucket).request(
            CancelRequest(run_id, "wrong repository", "tester@integration", iso())
        )
        ended = terminal(stack, run_id, timeout=60)
        # Seen on the server queue, which adds up to one long poll of 1 s.
        assert ended["_seen_at"] - requested < 10.0 + 1.0
    assert ended["event_type"] == "TaskFailed", ended
    assert ended["data"]["error"]["type"] == "Cancelled"
    assert ended["data"]["cancel"]["reason"] == "wrong repository"
    assert run_uid_processes() == [], "a git process of the run outlived it"


def test_credentials_over_http_from_secrets_and_env_never_leave_the_node(
    stack: Stack, start_node: Any, repo: Repository
) -> None:
    secret = aws(stack, "secretsmanager").create_secret(
        Name=f"claude-code-scheduler/{uuid.uuid4().hex[:8]}/git", SecretString=PASSWORD
    )["ARN"]
    with git_http(repo.root) as server:
        url = f"{server}/{repo.name}"
        credentials = {"username": USER, "password_from": "GIT_TOKEN"}
        commands = {
            "secret": run(
                {"url": url, "credentials": credentials, "push": {}}, secrets={"GIT_TOKEN": secret}
            ),
            "env": run({"url": url, "credentials": credentials}, env={"GIT_TOKEN": PASSWORD}),
            "wrong": run({"url": url, "credentials": credentials}, env={"GIT_TOKEN": "nope-1234"}),
            "none": run({"url": url}),
        }
        node = start_node(stack, *NODE_ARGS)
        for body in commands.values():
            stack.send(body)
        ended = {name: terminal(stack, body["run_id"]) for name, body in commands.items()}

    for name in ("secret", "env"):
        assert ended[name]["event_type"] == "TaskCompleted", ended[name]["data"]["error"]
        assert ended[name]["data"]["workspace"] == {"commit": repo.main}
    push = ended["secret"]["data"]["push"]
    assert repo.ls_remote()[f"refs/heads/{push['branch']}"] == push["commit"]
    assert repo.show(push["commit"], "notes/new.txt") == "made by the run"
    for name in ("wrong", "none"):
        error = ended[name]["data"]
        assert error["error"]["type"] == "WorkspaceError", error
        assert error["retryable"] is False
    assert "Authentication failed" in ended["wrong"]["data"]["error"]["message"]
    assert "could not read Username" in ended["none"]["data"]["error"]["message"]

    stack.drain_events(1.0)
    everything = [node.stderr, json.dumps(stack.events)]
    everything += [stack.log_text(body["run_id"]).decode() for body in commands.values()]
    assert all(PASSWORD not in text for text in everything)
    # The control: the logs hold git's words, so a leak would be seen there.
    assert "Cloning into '.'" in stack.log_text(commands["env"]["run_id"]).decode()


def test_ssh_keys_from_secrets_and_env_clone_and_push_and_never_leave_the_node(
    stack: Stack, start_node: Any, repo: Repository, tmp_path: Path
) -> None:
    require_ssh()
    key = keygen(tmp_path / "client_key", "the-task-key")
    wrong_key = keygen(tmp_path / "wrong_key", "another-key")
    secret = aws(stack, "secretsmanager").create_secret(
        Name=f"claude-code-scheduler/{uuid.uuid4().hex[:8]}/ssh", SecretString=key
    )["ARN"]
    with sshd(tmp_path / "sshd", Path(f"{tmp_path / 'client_key'}.pub")) as server:
        ssh_url, scp_url = server.ssh_url(repo.path), server.scp_url(repo.path)
        trusted = {"ssh_key_from": "GIT_KEY", "known_hosts_from": "KNOWN_HOSTS"}
        hosts = {"KNOWN_HOSTS": server.known_hosts}
        commands = {
            "secret": run(
                {"url": ssh_url, "credentials": trusted, "push": {}},
                secrets={"GIT_KEY": secret},
                env=hosts,
            ),
            "env": run({"url": scp_url, "credentials": trusted}, env={**hosts, "GIT_KEY": key}),
            "wrong": run(
                {"url": ssh_url, "credentials": trusted}, env={**hosts, "GIT_KEY": wrong_key}
            ),
            "unknown-host": run(
                {"url": ssh_url, "credentials": {"ssh_key_from": "GIT_KEY"}}, env={"GIT_KEY": key}
            ),
            # The control: the server lets no one in without the key.
            "no-key": run(
                {"url": ssh_url, "credentials": {"known_hosts_from": "KNOWN_HOSTS"}}, env=hosts
            ),
        }
        node = start_node(stack, *NODE_ARGS)
        for body in commands.values():
            stack.send(body)
        ended = {name: terminal(stack, body["run_id"]) for name, body in commands.items()}

    for name in ("secret", "env"):
        assert ended[name]["event_type"] == "TaskCompleted", ended[name]["data"]["error"]
        assert ended[name]["data"]["workspace"] == {"commit": repo.main}
    push = ended["secret"]["data"]["push"]
    assert push["remote"] == ssh_url
    assert repo.ls_remote()[f"refs/heads/{push['branch']}"] == push["commit"]
    assert repo.show(push["commit"], "notes/new.txt") == "made by the run"
    for name in ("wrong", "unknown-host", "no-key"):
        failed = ended[name]["data"]
        assert failed["error"]["type"] == "WorkspaceError", failed
        assert failed["retryable"] is False
    assert "Permission denied (publickey)" in ended["wrong"]["data"]["error"]["message"]
    assert "Permission denied (publickey)" in ended["no-key"]["data"]["error"]["message"]
    unknown = ended["unknown-host"]["data"]["error"]["message"]
    assert "Host key verification failed" in unknown and "known_hosts_from" in unknown

    stack.drain_events(1.0)
    everything = [node.stderr, json.dumps(stack.events)]
    everything += [stack.log_text(body["run_id"]).decode() for body in commands.values()]
    key_body = key.splitlines()[1]  # the first line after -----BEGIN ...-----
    assert all(key_body not in text and "PRIVATE KEY" not in text for text in everything)
    # The control: the logs hold ssh's and git's words, so a leak would be seen there.
    assert "Cloning into '.'" in stack.log_text(commands["env"]["run_id"]).decode()


def make_superproject(root: Path) -> None:
    """`app.git` with a submodule `lib` at the relative URL ../lib.git, both
    bare under `root`, so that one server serves both."""
    lib = root / "lib-source"
    lib.mkdir()
    git("init", "-q", "-b", "main", cwd=lib)
    (lib / "lib.txt").write_text("from the submodule\n")
    git("add", "-A", cwd=lib)
    git("commit", "-q", "-m", "lib", cwd=lib)
    git("clone", "-q", "--bare", str(lib), str(root / "lib.git"))
    app = root / "app-source"
    app.mkdir()
    git("init", "-q", "-b", "main", cwd=app)
    (app / ".gitmodules").write_text('[submodule "lib"]\n\tpath = lib\n\turl = ../lib.git\n')
    (app / "README.md").write_text("# app\n")
    lib_commit = git("rev-parse", "HEAD", cwd=lib)
    git("update-index", "--add", "--cacheinfo", f"160000,{lib_commit},lib", cwd=app)
    # Not `add -A`: the gitlink has no folder here, which -A stages as deleted.
    git("add", ".gitmodules", "README.md", cwd=app)
    git("commit", "-q", "-m", "app with lib", cwd=app)
    git("clone", "-q", "--bare", str(app), str(root / "app.git"))
    for path in (root, *root.rglob("*")):
        path.chmod(path.stat().st_mode | (0o755 if path.is_dir() else 0o644))


def test_submodules_are_cloned_when_asked(stack: Stack, start_node: Any, tmp_path: Path) -> None:
    require_git()
    root = let_other_users_through(tmp_path) / "served"
    root.mkdir()
    make_superproject(root)
    with git_daemon(root) as server:
        url = f"{server}/app.git"
        wanted = command(
            workspace={"git": {"url": url, "submodules": True}}, artifacts=["lib/lib.txt"]
        )
        without = command(workspace={"git": {"url": url}}, artifacts=["lib/lib.txt"])
        start_node(stack, *NODE_ARGS)
        stack.send(wanted)
        stack.send(without)
        with_lib = terminal(stack, wanted["run_id"])
        without_lib = terminal(stack, without["run_id"])
    assert with_lib["event_type"] == "TaskCompleted", with_lib
    names = {a["name"] for a in with_lib["data"]["artifacts"]}
    assert "files/lib/lib.txt" in names
    stored = stack.s3.get_object(
        Bucket=stack.bucket, Key=f"runs/{wanted['run_id']}/files/lib/lib.txt"
    )["Body"].read()
    assert stored == b"from the submodule\n"
    # The control: without submodules the folder is there but empty.
    assert without_lib["event_type"] == "TaskCompleted", without_lib
    names = {a["name"] for a in without_lib["data"].get("artifacts", [])}
    assert "files/lib/lib.txt" not in names


def make_lfs_repository(root: Path) -> bytes:
    """`lfs.git`, bare under `root`, with big.bin kept in Git LFS (its objects
    in the bare repository, where git-lfs's file transfer finds them)."""
    source = root / "lfs-source"
    source.mkdir()
    git("init", "-q", "-b", "main", cwd=source)
    git("lfs", "install", "--local", cwd=source)
    git("lfs", "track", "*.bin", cwd=source)
    content = bytes(range(256)) * 16
    (source / "big.bin").write_bytes(content)
    git("add", "-A", cwd=source)
    git("commit", "-q", "-m", "lfs", cwd=source)
    bare = root / "lfs.git"
    git("clone", "-q", "--bare", str(source), str(bare))
    git("remote", "add", "served", f"file://{bare}", cwd=source)
    git("lfs", "push", "served", "main", cwd=source)
    for path in (root, *root.rglob("*")):
        path.chmod(path.stat().st_mode | (0o755 if path.is_dir() else 0o644))
    return content


def test_lfs_objects_are_fetched_when_asked(stack: Stack, start_node: Any, tmp_path: Path) -> None:
    require_git()
    if shutil.which("git-lfs") is None:
        if IN_CI:
            pytest.fail("CI=true: git-lfs is needed (scripts/install-system-packages.sh)")
        pytest.skip("git-lfs is not installed (apt-get install git-lfs)")
    root = let_other_users_through(tmp_path) / "served"
    root.mkdir()
    content = make_lfs_repository(root)
    url = f"file://{root / 'lfs.git'}"
    wanted = command(workspace={"git": {"url": url, "lfs": True}}, artifacts=["big.bin"])
    pointer = command(workspace={"git": {"url": url}}, artifacts=["big.bin"])
    start_node(stack, *NODE_ARGS)
    stack.send(wanted)
    stack.send(pointer)
    for body in (wanted, pointer):
        ended = terminal(stack, body["run_id"])
        assert ended["event_type"] == "TaskCompleted", ended
    key = "runs/{}/files/big.bin"
    fetched = stack.s3.get_object(Bucket=stack.bucket, Key=key.format(wanted["run_id"]))
    assert fetched["Body"].read() == content
    # The control: without lfs the file is the LFS pointer git keeps in its place.
    kept = stack.s3.get_object(Bucket=stack.bucket, Key=key.format(pointer["run_id"]))
    assert kept["Body"].read().startswith(b"version https://git-lfs.github.com/spec/v1")
