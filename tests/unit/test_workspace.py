"""protocol.workspace: task.workspace and mock.write_files parsed from
untrusted commands, in agreement with the RunTask schema; the wire form; the
terminal events' workspace and push fields; and which of git's failures are
transient (node.workspace.git.classify)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from unit_support import schema_errors

from claude_code_scheduler.node.workspace.git import classify
from claude_code_scheduler.node.workspace.ssh import _config, host_of
from claude_code_scheduler.protocol import InvalidCommand, parse_command
from claude_code_scheduler.protocol.commands import RunTask, command_body
from claude_code_scheduler.protocol.events import (
    ErrorType,
    PushResult,
    task_completed,
    task_failed,
)
from claude_code_scheduler.protocol.workspace import (
    ArchiveWorkspace,
    GitCredentials,
    GitWorkspace,
    PushSpec,
    default_push_branch,
)

URL = "https://git.example.com/org/repo.git"
ENV = {"TOKEN": "t0ken-value"}


def command(workspace: Any = None, mock: Any = None, **task: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": "hi", "env": dict(ENV), **task}
    if workspace is not None:
        body["workspace"] = workspace
    if mock is not None:
        body["mock"] = mock
    return {"type": "RunTask", "version": 1, "run_id": "run-1", "task": body}


def git(**fields: Any) -> dict[str, Any]:
    return command({"git": {"url": URL, **fields}})


def parse(document: dict[str, Any]) -> RunTask:
    return parse_command(json.dumps(document))


def accepted(document: Any) -> bool:
    try:
        parse(document)
    except InvalidCommand:
        return False
    return True


AGREEMENT = [
    ("minimal", git(), True),
    (
        "full",
        git(
            ref="v1.2",
            depth=0,
            submodules=True,
            lfs=True,
            credentials={"username": "me", "password_from": "TOKEN"},
            push={"branch": "claude/x", "message": "m", "allow_checked_out_branch": True},
        ),
        True,
    ),
    ("scp-like", command({"git": {"url": "git@github.com:org/repo.git"}}), True),
    ("ssh", command({"git": {"url": "ssh://git@host:2222/repo.git"}}), True),
    ("git", command({"git": {"url": "git://127.0.0.1:9418/repo"}}), True),
    ("file", command({"git": {"url": "file:///srv/git/repo.git"}}), True),
    ("ipv6", command({"git": {"url": "http://[::1]:8080/repo.git"}}), True),
    ("commit", git(ref="a" * 40), True),
    ("depth-integral-float", git(depth=3.0), True),
    ("s3", command({"s3": "s3://bucket-1/inputs/x.tar.gz"}), True),
    ("s3-zip", command({"s3": "s3://bucket-1/inputs/x.zip"}), True),
    ("write-files", command(mock={"write_files": {"a/b.txt": "x", "c": ""}}), True),
    ("password-in-url", command({"git": {"url": "https://me:pw@host/repo"}}), False),
    ("token-as-user", command({"git": {"url": "https://ghp_token@host/repo"}}), False),
    ("ssh-password", command({"git": {"url": "ssh://me:pw@host/repo"}}), False),
    ("scp-password", command({"git": {"url": "me:pw@host:repo"}}), False),
    ("ext-transport", command({"git": {"url": "ext::sh -c touch% /tmp/x"}}), False),
    ("fd-transport", command({"git": {"url": "fd::17"}}), False),
    ("local-path", command({"git": {"url": "/srv/repo"}}), False),
    ("file-with-host", command({"git": {"url": "file://host/srv/repo"}}), False),
    ("dash-host", command({"git": {"url": "ssh://-oProxyCommand=x/repo"}}), False),
    ("ftp", command({"git": {"url": "ftp://host/repo"}}), False),
    ("url-space", command({"git": {"url": "https://host/a b"}}), False),
    ("url-newline", command({"git": {"url": "https://host/repo\n"}}), False),
    ("url-surrogate", command({"git": {"url": "https://host/\ud800"}}), False),
    ("url-missing", command({"git": {}}), False),
    ("ref-dash", git(ref="--upload-pack=evil"), False),
    ("ref-control", git(ref="main\x01"), False),
    ("ref-dotdot", git(ref="a..b"), False),
    ("ref-lock", git(ref="x.lock"), False),
    ("depth-negative", git(depth=-1), False),
    ("depth-bool", git(depth=True), False),
    ("submodules-string", git(submodules="yes"), False),
    ("unknown-git-field", git(branch="main"), False),
    ("two-kinds", command({"git": {"url": URL}, "s3": "s3://b-1/x.zip"}), False),
    ("unknown-kind", command({"svn": {}}), False),
    ("branch-dash", git(push={"branch": "-f"}), False),
    ("branch-space", git(push={"branch": "a b"}), False),
    ("branch-trailing-slash", git(push={"branch": "a/"}), False),
    ("message-blank", git(push={"message": "  "}), False),
    ("allow-string", git(push={"allow_checked_out_branch": "true"}), False),
    ("username-space", git(credentials={"username": "a b", "password_from": "TOKEN"}), False),
    ("unknown-credential", git(credentials={"token": "x"}), False),
    ("s3-suffix", command({"s3": "s3://bucket-1/x.rar"}), False),
    ("s3-no-key", command({"s3": "s3://bucket-1/"}), False),
    ("write-absolute", command(mock={"write_files": {"/etc/x": "x"}}), False),
    ("write-dotdot", command(mock={"write_files": {"a/../../x": "x"}}), False),
    ("write-dot", command(mock={"write_files": {"./x": "x"}}), False),
    ("write-empty-part", command(mock={"write_files": {"a//b": "x"}}), False),
    ("write-empty-path", command(mock={"write_files": {"": "x"}}), False),
    ("write-not-text", command(mock={"write_files": {"a": 1}}), False),
    ("write-nul", command(mock={"write_files": {"a": "\x00"}}), False),
    ("write-too-many", command(mock={"write_files": {f"f{i}": "" for i in range(65)}}), False),
]


@pytest.mark.parametrize(
    ("document", "valid"), [c[1:] for c in AGREEMENT], ids=[c[0] for c in AGREEMENT]
)
def test_parser_and_schema_agree(document: dict[str, Any], valid: bool) -> None:
    assert accepted(document) is valid
    assert (not schema_errors("RunTask", document)) is valid


@pytest.mark.parametrize(
    ("credentials", "words"),
    [
        ({"password_from": "MISSING"}, "must name a variable in task.env or task.secrets"),
        ({"ssh_key_from": "TOKEN"}, "is for ssh:// and user@host:path URLs"),
    ],
)
def test_checks_the_schema_cannot_make(credentials: dict[str, str], words: str) -> None:
    """Names another field must hold, and credentials of the URL's kind."""
    document = git(credentials=credentials)
    assert not schema_errors("RunTask", document)
    with pytest.raises(InvalidCommand, match=words):
        parse(document)


def test_a_password_in_the_url_is_refused_pointing_at_password_from() -> None:
    with pytest.raises(InvalidCommand) as info:
        parse(command({"git": {"url": "https://me:hunter22@host/repo"}}))
    assert "credentials.password_from" in str(info.value)
    assert "hunter22" not in str(info.value)


def test_refusals_are_short() -> None:
    for document in (git(ref="-" * 10_000), command({"git": {"url": "x" * 100_000}})):
        with pytest.raises(InvalidCommand) as info:
            parse(document)
        assert len(str(info.value)) < 300


def test_the_wire_form_parses_back_to_the_same_task() -> None:
    spec = GitWorkspace(
        url=URL,
        ref="v1",
        depth=0,
        submodules=True,
        credentials=GitCredentials(username="me", password_from="TOKEN"),
        push=PushSpec(branch="claude/work", allow_checked_out_branch=True),
    )
    for workspace in (spec, ArchiveWorkspace(bucket="bucket-1", key="inputs/a.tgz")):
        document = command()
        document["task"]["workspace"] = workspace.to_wire()
        task = parse(document).task
        assert task.workspace == workspace
        assert command_body(RunTask("run-1", task))["task"]["workspace"] == workspace.to_wire()
        assert not schema_errors("RunTask", command_body(RunTask("run-1", task)))


def test_default_push_branch_is_a_valid_ref_for_any_run_id() -> None:
    for run_id in ("abc", "..x", ".hidden", "end.", "x.lock", "a...b"):
        branch = default_push_branch(run_id)
        assert branch.startswith("claude/")
        assert accepted(git(push={"branch": branch})), branch


def test_terminal_events_carry_workspace_and_push_as_their_schemas_say() -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    completed = task_completed(
        "r",
        exit_code=0,
        duration_seconds=1,
        log_uri="s3://b/logs/r.log",
        output_bytes=1,
        result=None,
        workspace_commit=commit,
        push=PushResult(remote=URL, branch="claude/r", commit=commit),
    )
    failed = task_failed("r", ErrorType.WORKSPACE_ERROR, "git said no", workspace_commit=commit)
    for event in (completed, failed):
        body = event.body("node", "node", 1)
        assert schema_errors(event.event_type, body) == []
        assert body["data"]["workspace"] == {"commit": commit}
    assert completed.data["push"] == {"remote": URL, "branch": "claude/r", "commit": commit}
    bare = task_completed(
        "r",
        exit_code=0,
        duration_seconds=1,
        log_uri="s3://b/logs/r.log",
        output_bytes=1,
        result=None,
    )
    assert "workspace" not in bare.data and "push" not in bare.data


# git's own words (git 2.39), as the tail of its stderr shows them.
TRANSIENT = [
    "fatal: unable to access 'https://h/r/': Could not resolve host: h",
    "fatal: unable to connect to 127.0.0.1:\n127.0.0.1[0: 127.0.0.1]: errno=Connection refused",
    "fatal: unable to access 'https://h/r/': Failed to connect to h port 443: Connection timed out",
    "error: RPC failed; HTTP 502 curl 22 The requested URL returned error: 502\n"
    "fatal: the remote end hung up unexpectedly",
    "fatal: unable to access 'http://h/r/': The requested URL returned error: 503",
    "fetch-pack: unexpected disconnect while reading sideband packet\nfatal: early EOF",
]
PERMANENT = [
    "fatal: Authentication failed for 'http://h/r/'",
    "fatal: could not read Username for 'http://h': terminal prompts disabled",
    "warning: Could not find remote branch nope to clone.\n"
    "fatal: Remote branch nope not found in upstream origin",
    "fatal: remote error: access denied or repository not exported: /r.git",
    "remote: Repository not found.\nfatal: repository 'https://h/r/' not found",
    "fatal: unable to access 'https://h/r/': The requested URL returned error: 403",
    "git@h: Permission denied (publickey).\nfatal: Could not read from remote repository.",
    "Host key verification failed.\nfatal: the remote end hung up unexpectedly",
    " ! [rejected]        HEAD -> claude/x (fetch first)\nerror: failed to push some refs",
    "fatal: something nobody has seen before",
]


@pytest.mark.parametrize("words", TRANSIENT)
def test_the_network_and_the_server_are_transient(words: str) -> None:
    assert classify(words) is True


@pytest.mark.parametrize("words", PERMANENT)
def test_the_commands_fault_is_not(words: str) -> None:
    assert classify(words) is False


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("ssh://git@example.com:2222/org/repo.git", "example.com"),
        ("ssh://[::1]/repo.git", "::1"),
        ("git@example.com:org/repo.git", "example.com"),
        ("example.com:/srv/repo.git", "example.com"),
    ],
)
def test_the_ssh_host_is_the_one_ssh_is_given(url: str, host: str) -> None:
    assert host_of(url) == host


def test_only_the_clone_host_is_offered_the_agent() -> None:
    """ssh takes an option's first value: the clone host's block comes first,
    and every other host (a submodule's) gets no agent."""
    config = _config("git.example.com", Path("/k/known_hosts"), with_agent=True).splitlines()
    assert config[:2] == ["Host git.example.com", "    IdentityAgent SSH_AUTH_SOCK"]
    assert config[2:4] == ["Host *", "    IdentityAgent none"]
    assert "    StrictHostKeyChecking yes" in config
    assert "SSH_AUTH_SOCK" not in "".join(_config("h", Path("/k"), with_agent=False))
