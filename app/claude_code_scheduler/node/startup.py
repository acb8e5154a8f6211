"""Start-up checks that need the outside world: the queue and the Claude CLI,
and the warnings a real-mode node gives about its environment.

Each failure becomes a ConfigError naming the option, so the command line can
print one line and exit 2 instead of a traceback.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping

import botocore.exceptions
import tenacity

from claude_code_scheduler.aws.errors import explain, is_transient
from claude_code_scheduler.aws.queue import MessageQueue
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.node.config import NodeConfig

CLI_VERSION_TIMEOUT_SECONDS = 30


def check_queue(queue: MessageQueue, attempts: int = 3) -> int:
    """GetQueueAttributes, retried through a short outage; returns the queue's
    visibility timeout, which sizes the lease steps."""
    try:
        visibility: int = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            wait=tenacity.wait_exponential(multiplier=0.5, max=2),
            stop=tenacity.stop_after_attempt(attempts),
            reraise=True,
        )(queue.visibility_timeout)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise explain(exc, "--queue-url", f"the queue {queue.url}") from None
    return visibility


def check_claude(claude_bin: str) -> tuple[str, str]:
    """The CLI's full path and its version line."""
    path = shutil.which(claude_bin)
    if path is None:
        raise ConfigError(
            f"--claude-bin: {claude_bin!r} was not found or is not executable "
            "(install @anthropic-ai/claude-code or use --mock-mode)"
        )
    try:
        done = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=CLI_VERSION_TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"--claude-bin: {path} --version failed: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise ConfigError(
            f"--claude-bin: {path} --version exited {done.returncode}"
            + (f": {detail[-1]}" if detail else "")
        )
    return path, (done.stdout.strip().splitlines() or ["unknown"])[0]


# Any one of these lets the CLI reach a model without a `claude login`.
CLAUDE_CREDENTIAL_VARS = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
)


def real_mode_warnings(config: NodeConfig, environ: Mapping[str, str], euid: int) -> list[str]:
    """What a real-mode node should tell its operator at start-up. None of it
    stops the node: a task may bring its own key, and only some tasks ask for
    bypassPermissions."""
    warnings = []
    if euid == 0:
        warnings.append(
            "running as root: the Claude CLI refuses permission_mode bypassPermissions "
            "to root, so such tasks will fail; run the node as a non-root user"
        )
    if not any(environ.get(name) for name in CLAUDE_CREDENTIAL_VARS):
        warnings.append(
            "no Claude credentials in the environment ("
            + ", ".join(CLAUDE_CREDENTIAL_VARS)
            + "): runs fail with 'Not logged in' unless their task's env brings a key"
        )
    if config.pass_aws_credentials:
        warnings.append(
            "--pass-aws-credentials: the CLI and every tool it runs act with the node's "
            "AWS credentials"
        )
    return warnings
