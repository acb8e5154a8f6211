"""submit's --workspace, --git-ref and --push-branch, turned into task.workspace."""

from __future__ import annotations

import json

import pytest

from claude_code_scheduler.client.tasks import build_command
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.protocol import parse_command
from claude_code_scheduler.protocol.workspace import ArchiveWorkspace, GitWorkspace


def test_a_git_url_with_a_ref_and_a_push_branch() -> None:
    command = build_command(
        {
            "prompt": "fix it",
            "workspace": "https://git.example/shop.git",
            "git_ref": "main",
            "push_branch": "claude/fix",
        }
    )
    workspace = command.task.workspace
    assert isinstance(workspace, GitWorkspace)
    assert (workspace.url, workspace.ref) == ("https://git.example/shop.git", "main")
    assert workspace.push is not None and workspace.push.branch == "claude/fix"
    # What goes on the wire reads back as the same workspace.
    assert parse_command(command.to_json()).task.workspace == workspace


def test_an_archive_and_a_json_object_with_credentials() -> None:
    archive = build_command({"prompt": "x", "workspace": "s3://bucket/inputs/src.tar.gz"})
    assert archive.task.workspace == ArchiveWorkspace(bucket="bucket", key="inputs/src.tar.gz")
    wire = {
        "git": {
            "url": "https://git.example/shop.git",
            "credentials": {"username": "bot", "password_from": "GIT_TOKEN"},
        }
    }
    command = build_command(
        {
            "prompt": "x",
            "workspace": json.dumps(wire),
            "secrets": ("GIT_TOKEN=/claude-code-scheduler/git/bot",),
        }
    )
    workspace = command.task.workspace
    assert isinstance(workspace, GitWorkspace) and workspace.credentials is not None
    assert workspace.credentials.password_from == "GIT_TOKEN"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"git_ref": "main"}, "need --workspace URL"),
        ({"workspace": "{not json", "push_branch": "b"}, "--git-ref and --push-branch go inside"),
        ({"workspace": "{not json"}, "--workspace: not JSON"),
        ({"workspace": "https://user:pw@git.example/x.git"}, "password_from"),
        (
            {
                "workspace": json.dumps(
                    {"git": {"url": "https://g/x", "credentials": {"password_from": "NOPE"}}}
                )
            },
            "NOPE",
        ),
    ],
)
def test_bad_workspace_options_are_one_line_config_errors(
    options: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_command({"prompt": "x", **options})
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)
