"""How the node calls the Claude Code CLI for a task: its argv, its one
settings object, and the mock CLI's argv. What the CLI's output says is
`result`'s.

Nothing here starts a process or touches AWS.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from claude_code_scheduler.protocol import TaskSpec
from claude_code_scheduler.protocol.commands import compact_json

# The CLI's own Bash sandbox (bubblewrap on Linux), for --bash-sandbox. Fail
# rather than run a command unsandboxed, allow no per-command way out of it,
# and approve nothing more than the task's permission mode does.
SANDBOX_SETTINGS = {
    "sandbox": {
        "enabled": True,
        "failIfUnavailable": True,
        "allowUnsandboxedCommands": False,
        "autoAllowBashIfSandboxed": False,
    }
}


BASE_FLAGS = (
    "-p",
    "--verbose",
    "--output-format",
    "stream-json",
    "--strict-mcp-config",
    "--setting-sources=user",
    "--add-dir=.",
)
# The CLI reads CLAUDE.md from an --add-dir folder only with this set.
CLAUDE_MD_ENV = ("CLAUDE_CODE_ADDITIONAL_DIRECTORIES_CLAUDE_MD", "1")


def claude_argv(claude_bin: str, task: TaskSpec, *, bash_sandbox: bool = False) -> list[str]:
    # --strict-mcp-config always: in -p mode the CLI starts, unasked, the
    # servers of a workspace repository's own .mcp.json and of the run's user
    # config (FINDINGS.md), each a command of someone else's choosing. Sealed,
    # a run has the task's mcp_servers and nothing else.
    # --setting-sources=user always: the CLI reads a workspace's own
    # .claude/settings.json and settings.local.json otherwise, and their
    # `env` can point ANTHROPIC_BASE_URL, with the node's API key, at any host
    # (FINDINGS.md); their hooks and permissions are someone else's too. The
    # run's user settings are the run's own empty config folder's; the task's
    # --settings and the machine's managed settings still apply. That also
    # drops the workspace's CLAUDE.md, which is text for the model, not
    # configuration: --add-dir=. with CLAUDE_MD_ENV (child_environment sets it)
    # reads it again, and still no settings.
    argv = [claude_bin, *BASE_FLAGS]
    settings = run_settings(task, bash_sandbox=bash_sandbox)
    if settings is not None:
        argv += ["--settings", compact_json(settings)]
    if task.model:
        argv += ["--model", task.model]
    if task.fallback_model:
        argv += ["--fallback-model", task.fallback_model]
    if task.effort:
        argv += ["--effort", task.effort]
    if task.permission_mode:
        argv += ["--permission-mode", task.permission_mode]
    if task.allowed_tools:
        argv += ["--allowedTools", *task.allowed_tools]
    if task.disallowed_tools:
        argv += ["--disallowedTools", *task.disallowed_tools]
    if task.max_turns is not None:
        argv += ["--max-turns", str(task.max_turns)]
    if task.max_budget_usd is not None:
        argv += ["--max-budget-usd", repr(task.max_budget_usd)]
    if task.system_prompt is not None:
        argv += ["--system-prompt", task.system_prompt]
    if task.append_system_prompt is not None:
        argv += ["--append-system-prompt", task.append_system_prompt]
    if task.json_schema is not None:
        argv += ["--json-schema", compact_json(task.json_schema)]
    if task.mcp_servers:
        argv += ["--mcp-config", compact_json({"mcpServers": task.mcp_servers})]
    if task.resume is not None:
        argv += ["--resume", task.resume.session_id]
        if task.resume.fork:
            argv += ["--fork-session"]
    # The tool-list flags and --mcp-config are variadic: without `--` they
    # would swallow the prompt.
    return [*argv, "--", task.prompt]


def run_settings(task: TaskSpec, *, bash_sandbox: bool) -> dict[str, Any] | None:
    """The one --settings object of a run: the task's, with the node's sandbox
    over it."""
    if not bash_sandbox:
        return task.settings
    return {**(task.settings or {}), **SANDBOX_SETTINGS}


def mock_argv(task: TaskSpec) -> list[str]:
    mock = task.mock
    return [
        sys.executable,
        "-m",
        "claude_code_scheduler.node.process.mockcli",
        "--duration",
        str(mock.duration_seconds),
        "--exit-code",
        str(mock.exit_code),
        "--output-bytes",
        str(mock.output_bytes),
        "--model",
        task.model or "mock",
        # One argument: protocol.workspace bounds it below the kernel's limit.
        "--write-files",
        json.dumps(mock.write_files, ensure_ascii=False),
        # A mock has no model to fill the schema: it answers with an empty object.
        *(["--structured-output", "{}"] if task.json_schema is not None else []),
        "--",
        task.prompt,
    ]
