"""The node's configuration: one immutable object, validated once at start-up.

The command line only maps options onto `NodeConfig`; everything that can be
checked without the network is checked here, so a bad value fails before the
node touches AWS.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claude_code_scheduler.aws.limits import MAX_POLL_WAIT_SECONDS, MAX_VISIBILITY_SECONDS
from claude_code_scheduler.aws.names import QueueUrl, TopicArn
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.node.retries import MAX_FIRST_DELAY_SECONDS

# A run's timeout, whoever sets it: the run holds its message for as long.
MAX_TASK_TIMEOUT_SECONDS = MAX_VISIBILITY_SECONDS
STATE_FILE_NAME = "node-state.json"
# Run uids stay clear of the system's (below 1000) and of the overflow and
# "nobody" ids at the top of the 16-bit range that tools still assume.
MIN_RUN_UID = 1000
MAX_RUN_UID = 65533
MAX_PORT = 65535


def default_work_dir() -> Path:
    return Path(tempfile.gettempdir()) / "claude-code-scheduler"


def default_state_file(work_dir: Path) -> Path:
    # Inside the work root: on ECS with a read-only root filesystem that is the
    # one writable place the node has.
    return work_dir / STATE_FILE_NAME


@dataclass(frozen=True)
class NodeConfig:
    queue: QueueUrl
    topic: TopicArn
    log_bucket: str
    region: str
    node_id: str
    node_name: str
    profile: str | None = None
    endpoint_url: str | None = None
    heartbeat_interval: float = 30.0
    mock_mode: bool = False
    max_concurrent_tasks: int = 1
    task_timeout: float = 3600.0
    shutdown_timeout: float = 25.0
    # Seconds start-up keeps trying to reach the queue (a refused connection,
    # a timeout) before it exits 2; an emulator or a network may come up late.
    startup_timeout: float = 60.0
    poll_wait_seconds: int = MAX_POLL_WAIT_SECONDS
    claude_bin: str = "claude"
    work_dir: Path = field(default_factory=default_work_dir)
    # None: <work_dir>/node-state.json.
    state_file: Path | None = None
    # Seconds between SIGTERM to the CLI and SIGKILL to its process group.
    kill_grace: float = 3.0
    # Seconds between SIGINT to a cancelled run's process group and SIGTERM
    # (node.cancels: with the poll and kill_grace, within the 10 s bound).
    cancel_grace: float = 3.0
    # Hand the node's AWS credentials to the CLI (for CLAUDE_CODE_USE_BEDROCK).
    pass_aws_credentials: bool = False
    # CLAUDE_CODE_MAX_RETRIES for the CLI; None leaves the CLI's default (10).
    claude_max_retries: int | None = None
    # Isolation (docs/isolation.md): a node running as root starts run slot i
    # as uid and gid run_uid_base + i; an unprivileged node runs everything as
    # itself, and only one run at a time unless allow_shared_uid says so.
    run_uid_base: int = 10100
    allow_shared_uid: bool = False
    # Turn on the CLI's own Bash sandbox (bubblewrap) through its settings.
    bash_sandbox: bool = False
    # Signed commands (docs/signing.md): a JWKS file path, a Secrets Manager
    # ARN or an SSM parameter holding one; None runs unsigned commands.
    verification_keys: str | None = None
    # Where task.secrets references may point (docs/secrets.md).
    secrets_prefix: str = "claude-code-scheduler/"
    # The fleet's own retries of a retryable failure (node.retries): seconds
    # before the first retry, doubling with each, and the attempts a task gets
    # when it does not set task.retry.max_attempts.
    retry_delay: float = 30.0
    retry_max_attempts: int = 3
    # The HTTP port for /metrics, /healthz and /readyz (node.http); None: off.
    # Loopback unless http_host says otherwise: nothing on it asks for
    # credentials, so who may reach it is the network's decision.
    http_port: int | None = None
    http_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.state_file is None:
            object.__setattr__(self, "state_file", default_state_file(self.work_dir))
        checks: list[tuple[bool, str]] = [
            (bool(self.node_id.strip()), "--node-id: must not be empty"),
            (self.heartbeat_interval >= 1, "--heartbeat-interval: must be at least 1 second"),
            (self.max_concurrent_tasks >= 1, "--max-concurrent-tasks: must be at least 1"),
            (
                0 < self.task_timeout <= MAX_TASK_TIMEOUT_SECONDS,
                f"--task-timeout: must be above 0 and at most {MAX_TASK_TIMEOUT_SECONDS} "
                "seconds (SQS keeps a message invisible for 12 hours at most)",
            ),
            (self.shutdown_timeout >= 0, "--shutdown-timeout: must not be negative"),
            (self.startup_timeout >= 0, "--startup-timeout: must not be negative"),
            (
                1 <= self.poll_wait_seconds <= MAX_POLL_WAIT_SECONDS,
                f"--poll-wait-seconds: must be from 1 to {MAX_POLL_WAIT_SECONDS} (the SQS limit)",
            ),
            (self.kill_grace >= 0, "--kill-grace: must not be negative"),
            (self.cancel_grace >= 0, "--cancel-grace: must not be negative"),
            (
                self.claude_max_retries is None or self.claude_max_retries >= 0,
                "--claude-max-retries: must not be negative",
            ),
            (
                self.run_uid_base >= MIN_RUN_UID
                and self.run_uid_base + self.max_concurrent_tasks - 1 <= MAX_RUN_UID,
                f"--run-uid-base: the run uids (base to base + slots - 1) must lie from "
                f"{MIN_RUN_UID} to {MAX_RUN_UID}",
            ),
            (
                bool(self.secrets_prefix.strip("/")),
                "--secrets-prefix: must name a path such as claude-code-scheduler/",
            ),
            (
                0 <= self.retry_delay <= MAX_FIRST_DELAY_SECONDS,
                f"--retry-delay: must be from 0 to {MAX_FIRST_DELAY_SECONDS} seconds "
                "(the longest backoff; SQS hides a message for 12 hours at most)",
            ),
            (self.retry_max_attempts >= 1, "--retry-max-attempts: must be at least 1"),
            (
                self.http_port is None or 0 <= self.http_port <= MAX_PORT,
                f"--http-port: must be from 0 to {MAX_PORT} (0: any free port)",
            ),
            (bool(self.http_host.strip()), "--http-host: must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def state_path(self) -> Path:
        """Where the health state file is (state_file is set by __post_init__)."""
        assert self.state_file is not None
        return self.state_file

    def log_uri(self, run_id: str) -> str:
        return f"s3://{self.log_bucket}/{log_key(run_id)}"


def log_key(run_id: str) -> str:
    return f"logs/{run_id}.log"


def default(name: str) -> Any:
    """NodeConfig's default for a field, for the command line to show and use."""
    (found,) = (f for f in dataclasses.fields(NodeConfig) if f.name == name)
    return found.default
