"""Turning `submit`'s options into a RunTask, checked as a node would check it.

Every problem is a ConfigError naming the option, so bad input is one line and
exit 2 before anything is sent.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from claude_code_scheduler.aws.names import SecretRef, parse_secret_ref
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.protocol import InvalidCommand, RunTask, TaskSpec, parse_command
from claude_code_scheduler.protocol.commands import ResumeSpec, RetrySpec
from claude_code_scheduler.protocol.workspace import Workspace, parse_workspace


def _env_pairs(values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--env: {item.split('=')[0]!r} must look like NAME=VALUE")
        env[name] = value
    return env


def _secret_pairs(values: tuple[str, ...]) -> dict[str, SecretRef]:
    """--secret NAME=REF: where the node reads the value, not the value."""
    secrets = {}
    for item in values:
        name, sep, ref = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--secret: {item!r} must look like NAME=REFERENCE")
        try:
            secrets[name] = parse_secret_ref(ref)
        except ValueError as exc:
            raise ConfigError(f"--secret {name}: {exc}") from None
    return secrets


def _workspace(options: dict[str, Any], variable_names: list[str]) -> Workspace | None:
    """--workspace: the task.workspace object as JSON, or a shortcut: an
    s3:// archive, or a git URL with --git-ref and --push-branch."""
    value = options.get("workspace")
    ref, push_branch = options.get("git_ref"), options.get("push_branch")
    if value is None:
        if ref or push_branch:
            raise ConfigError("--git-ref and --push-branch need --workspace URL")
        return None
    if value.lstrip().startswith("{"):
        if ref or push_branch:
            raise ConfigError("--git-ref and --push-branch go inside a --workspace JSON object")
        try:
            wire = json.loads(value)
        except ValueError as exc:
            raise ConfigError(f"--workspace: not JSON: {exc}") from None
    elif value.startswith("s3://"):
        wire = {"s3": value}
    else:
        git: dict[str, Any] = {"url": value}
        if ref:
            git["ref"] = ref
        if push_branch:
            git["push"] = {"branch": push_branch}
        wire = {"git": git}
    try:
        return parse_workspace(wire, variable_names)
    except InvalidCommand as exc:
        raise ConfigError(f"--workspace: {exc}") from None


def _tools(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(t.strip() for value in values for t in value.split(",") if t.strip())


def _mcp_servers(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """--mcp-config: the mcpServers object, or a whole MCP config file's object
    (what .mcp.json and `claude --mcp-config` hold)."""
    if config is not None and set(config) == {"mcpServers"}:
        servers = config["mcpServers"]
        if not isinstance(servers, dict):
            raise ConfigError("--mcp-config: mcpServers must be an object")
        return servers
    return config


def _resume(options: dict[str, Any]) -> ResumeSpec | None:
    session_id, fork = options.get("resume"), bool(options.get("fork_session"))
    if session_id is None:
        if fork:
            raise ConfigError("--fork-session needs --resume SESSION_ID")
        return None
    return ResumeSpec(session_id=session_id, fork=fork)


def build_command(options: dict[str, Any]) -> RunTask:
    """`submit`'s RunTask, checked as a node would check it."""
    command = RunTask(run_id=options.get("run_id") or str(uuid.uuid4()), task=build_task(options))
    try:
        return parse_command(command.to_json())  # the node's own check, before sending
    except InvalidCommand as exc:
        raise ConfigError(f"invalid task: {exc}") from None


def build_task(options: dict[str, Any]) -> TaskSpec:
    """The task that client.options.task_options describe (submit's and
    schedule create's). The caller checks the whole command it goes into."""
    prompt = options.get("prompt")
    if options.get("prompt_file"):
        if prompt:
            raise ConfigError("--prompt and --prompt-file: give one, not both")
        try:
            prompt = Path(options["prompt_file"]).read_text()
        except OSError as exc:
            raise ConfigError(f"--prompt-file: {exc.strerror}: {options['prompt_file']}") from None
    if not prompt or not prompt.strip():
        raise ConfigError("--prompt: the prompt must not be empty")
    env = _env_pairs(options.get("env", ()))
    secrets = _secret_pairs(options.get("secrets", ()))
    return TaskSpec(
        prompt=prompt,
        name=options.get("name"),
        task_id=options.get("task_id"),
        model=options.get("model"),
        permission_mode=options.get("permission_mode"),
        allowed_tools=_tools(options.get("allowed_tools", ())),
        disallowed_tools=_tools(options.get("disallowed_tools", ())),
        max_turns=options.get("max_turns"),
        timeout_seconds=options.get("timeout"),
        env=env,
        secrets=secrets,
        workspace=_workspace(options, [*env, *secrets]),
        artifacts=tuple(options.get("artifacts", ())),
        max_budget_usd=options.get("max_budget_usd"),
        system_prompt=options.get("system_prompt"),
        append_system_prompt=options.get("append_system_prompt"),
        json_schema=options.get("json_schema"),
        mcp_servers=_mcp_servers(options.get("mcp_servers")),
        fallback_model=options.get("fallback_model"),
        effort=options.get("effort"),
        settings=options.get("settings"),
        retry=(
            RetrySpec(options["max_attempts"]) if options.get("max_attempts") is not None else None
        ),
        resume=_resume(options),
    )
