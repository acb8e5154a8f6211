"""`node` and `healthcheck`: their options, mapped onto NodeConfig.

Every default shown here is NodeConfig's own (config.default), so the two
cannot disagree; the command only maps options onto the config.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from claude_code_scheduler import logsetup
from claude_code_scheduler.aws import ecs
from claude_code_scheduler.aws.names import (
    node_region,
    parse_queue_url,
    parse_topic_arn,
    validate_bucket,
)
from claude_code_scheduler.errors import EXIT_FAILURE, EXIT_OK, ConfigError
from claude_code_scheduler.node import health
from claude_code_scheduler.node.config import (
    NodeConfig,
    default,
    default_state_file,
    default_work_dir,
)
from claude_code_scheduler.node.main import run_node
from claude_code_scheduler.node.metrics import METRICS
from claude_code_scheduler.protocol.events import EcsTask

log = logging.getLogger("claude_code_scheduler")

# Shared by `node` and `healthcheck`, which must agree on where the state file is.
work_dir_option = click.option(
    "--work-dir",
    envvar="CLAUDE_NODE_WORK_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Work root: run directories, spooled logs, the state file. "
    "Default: <tmp>/claude-code-scheduler.",
)
state_file_option = click.option(
    "--state-file",
    envvar="CLAUDE_NODE_STATE_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where the node records its last heartbeat for `healthcheck`. "
    "Default: <work-dir>/node-state.json.",
)
REQUIRED = {
    "queue_url": "CLAUDE_NODE_QUEUE_URL",
    "topic_arn": "CLAUDE_NODE_TOPIC_ARN",
    "log_bucket": "CLAUDE_NODE_LOG_BUCKET",
}


@click.command()
@click.option(
    "--queue-url", envvar=REQUIRED["queue_url"], help="SQS queue to take tasks from. Required."
)
@click.option(
    "--topic-arn", envvar=REQUIRED["topic_arn"], help="SNS control bus for events. Required."
)
@click.option(
    "--log-bucket", envvar=REQUIRED["log_bucket"], help="S3 bucket for run logs. Required."
)
@click.option(
    "--node-id",
    envvar="CLAUDE_NODE_ID",
    help="Node id. Default: the ECS task id on ECS, else the host name.",
)
@click.option("--node-name", envvar="CLAUDE_NODE_NAME", help="Display name. Default: the id.")
@click.option("--profile", envvar="AWS_PROFILE", help="AWS profile for credentials.")
@click.option(
    "--region",
    envvar="AWS_REGION",
    help="AWS region. Default: the queue URL's region, else the topic ARN's.",
)
@click.option(
    "--endpoint-url",
    envvar="AWS_ENDPOINT_URL",
    help="AWS endpoint for emulators such as LocalStack. AWS_ENDPOINT_URL_SQS/_SNS/_S3 work too.",
)
@click.option(
    "--heartbeat-interval",
    envvar="CLAUDE_NODE_HEARTBEAT_INTERVAL",
    type=float,
    default=default("heartbeat_interval"),
    show_default=True,
    help="Seconds between NodeHeartbeat events.",
)
@click.option(
    "--mock-mode",
    envvar="CLAUDE_NODE_MOCK_MODE",
    is_flag=True,
    help="Simulate runs without the Claude CLI.",
)
@click.option(
    "--max-concurrent-tasks",
    envvar="CLAUDE_NODE_MAX_CONCURRENT_TASKS",
    type=int,
    default=default("max_concurrent_tasks"),
    show_default=True,
    help="Runs at once.",
)
@click.option(
    "--task-timeout",
    envvar="CLAUDE_NODE_TASK_TIMEOUT",
    type=float,
    default=default("task_timeout"),
    show_default=True,
    help="Seconds a run may take when its task sets no timeout_seconds.",
)
@click.option(
    "--shutdown-timeout",
    envvar="CLAUDE_NODE_SHUTDOWN_TIMEOUT",
    type=float,
    default=default("shutdown_timeout"),
    show_default=True,
    help="Seconds runs may go on after SIGTERM before they are handed back.",
)
@click.option(
    "--startup-timeout",
    envvar="CLAUDE_NODE_STARTUP_TIMEOUT",
    type=float,
    default=default("startup_timeout"),
    show_default=True,
    help="Seconds to keep trying to reach the queue at start-up (connection refused, "
    "timeouts) before exiting 2. 0: try once.",
)
@click.option(
    "--poll-wait-seconds",
    envvar="CLAUDE_NODE_POLL_WAIT_SECONDS",
    type=int,
    default=default("poll_wait_seconds"),
    show_default=True,
    help="SQS long-poll wait, 1 to 20.",
)
@click.option(
    "--claude-bin",
    envvar="CLAUDE_NODE_CLAUDE_BIN",
    default=default("claude_bin"),
    show_default=True,
    help="The Claude Code CLI.",
)
@click.option(
    "--claude-max-retries",
    envvar="CLAUDE_NODE_CLAUDE_MAX_RETRIES",
    type=click.IntRange(min=0),
    default=None,
    help="CLAUDE_CODE_MAX_RETRIES for the CLI: API retries per request. "
    "Default: the CLI's own (10, about 3 minutes).",
)
@click.option(
    "--retry-delay",
    envvar="CLAUDE_NODE_RETRY_DELAY",
    type=float,
    default=default("retry_delay"),
    show_default=True,
    help="Seconds a run that failed retryably (rate limited, overloaded, a git server "
    "down) waits in the queue before its first retry; doubled for each retry after, "
    "plus up to half again of jitter.",
)
@click.option(
    "--retry-max-attempts",
    envvar="CLAUDE_NODE_RETRY_MAX_ATTEMPTS",
    type=int,
    default=default("retry_max_attempts"),
    show_default=True,
    help="Attempts a task gets when its task.retry sets none; always fewer than the "
    "dead-letter queue's maxReceiveCount.",
)
@click.option(
    "--pass-aws-credentials",
    envvar="CLAUDE_NODE_PASS_AWS_CREDENTIALS",
    is_flag=True,
    help="Give the CLI the node's AWS credentials (for CLAUDE_CODE_USE_BEDROCK). "
    "Default: they are removed from its environment.",
)
@click.option(
    "--run-uid-base",
    envvar="CLAUDE_NODE_RUN_UID_BASE",
    type=int,
    default=default("run_uid_base"),
    show_default=True,
    help="When the node runs as root, run slot i runs as uid and gid BASE + i.",
)
@click.option(
    "--allow-shared-uid",
    envvar="CLAUDE_NODE_ALLOW_SHARED_UID",
    is_flag=True,
    help="Let an unprivileged node run several runs at once under its own uid, "
    "where they can read each other's files and environment.",
)
@click.option(
    "--bash-sandbox",
    envvar="CLAUDE_NODE_BASH_SANDBOX",
    is_flag=True,
    help="Turn on the CLI's own Bash sandbox (bubblewrap). Needs a kernel that "
    "allows user namespaces: EC2 hosts, not Fargate.",
)
@click.option(
    "--verification-keys",
    envvar="CLAUDE_NODE_VERIFICATION_KEYS",
    help="Run only commands signed by a key in this JWKS: a file path, a Secrets "
    "Manager ARN or an SSM parameter. Default: signatures are not checked.",
)
@click.option(
    "--secrets-prefix",
    envvar="CLAUDE_NODE_SECRETS_PREFIX",
    default=default("secrets_prefix"),
    show_default=True,
    help="task.secrets may name only secrets and parameters under this prefix.",
)
@click.option(
    "--http-port",
    envvar="CLAUDE_NODE_HTTP_PORT",
    type=int,
    default=None,
    help="Serve /metrics (Prometheus), /healthz and /readyz on this port; 0 takes any "
    "free port. Default: no HTTP port.",
)
@click.option(
    "--http-host",
    envvar="CLAUDE_NODE_HTTP_HOST",
    default=default("http_host"),
    show_default=True,
    help="Address the HTTP port listens on; 0.0.0.0 (or ::) for every interface. "
    "Nothing on it asks for credentials.",
)
@work_dir_option
@state_file_option
@click.option(
    "--kill-grace",
    envvar="CLAUDE_NODE_KILL_GRACE",
    type=float,
    default=default("kill_grace"),
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL when a run is stopped.",
)
@click.option(
    "--cancel-grace",
    envvar="CLAUDE_NODE_CANCEL_GRACE",
    type=float,
    default=default("cancel_grace"),
    show_default=True,
    help="Seconds a cancelled run's processes get between SIGINT and SIGTERM "
    "(then --kill-grace before SIGKILL).",
)
@click.option(
    "--log-format",
    envvar="CLAUDE_NODE_LOG_FORMAT",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Default: json when stderr is not a terminal, else text.",
)
@click.option(
    "-v",
    "--verbose",
    envvar="CLAUDE_NODE_VERBOSE",
    count=True,
    help="-v INFO, -vv DEBUG, -vvv TRACE (default WARNING).",
)
@click.pass_context
def node(ctx: click.Context, /, **options: Any) -> None:
    """Run a worker node until SIGTERM or SIGINT."""
    log_format = options["log_format"] or ("text" if sys.stderr.isatty() else "json")
    logsetup.configure(options["verbose"], log_format, os.environ)
    # An endpoint from AWS_ENDPOINT_URL is left to botocore, so that the
    # per-service AWS_ENDPOINT_URL_SQS and friends keep their precedence.
    if ctx.get_parameter_source("endpoint_url") is ParameterSource.ENVIRONMENT:
        options["endpoint_url"] = None
    ecs_task = ecs.task_metadata(os.environ)
    config = build_config(options, ecs_task)
    # CloudWatch's metrics, one line per run end, beside the log (node.metrics).
    METRICS.start_emf(sys.stderr, node_id=config.node_id, queue=config.queue.name)
    ctx.exit(run_node(config, ecs_task))


def build_config(options: dict[str, Any], ecs_task: EcsTask | None) -> NodeConfig:
    for name, env in REQUIRED.items():
        if not options.get(name):
            raise ConfigError(f"--{name.replace('_', '-')} is required (or set {env})")
    queue = parse_queue_url(options["queue_url"])
    topic = parse_topic_arn(options["topic_arn"])
    node_id = options.get("node_id") or (
        ecs.task_id(ecs_task) if ecs_task else socket.gethostname()
    )
    return NodeConfig(
        queue=queue,
        topic=topic,
        log_bucket=validate_bucket(options["log_bucket"]),
        region=node_region(queue, topic, options.get("region")),
        node_id=node_id,
        node_name=options.get("node_name") or node_id,
        profile=options.get("profile"),
        endpoint_url=options.get("endpoint_url"),
        heartbeat_interval=options["heartbeat_interval"],
        mock_mode=options["mock_mode"],
        max_concurrent_tasks=options["max_concurrent_tasks"],
        task_timeout=options["task_timeout"],
        shutdown_timeout=options["shutdown_timeout"],
        startup_timeout=options["startup_timeout"],
        poll_wait_seconds=options["poll_wait_seconds"],
        claude_bin=options["claude_bin"],
        work_dir=options.get("work_dir") or default_work_dir(),
        state_file=options.get("state_file"),
        kill_grace=options["kill_grace"],
        cancel_grace=options["cancel_grace"],
        pass_aws_credentials=options["pass_aws_credentials"],
        claude_max_retries=options["claude_max_retries"],
        run_uid_base=options["run_uid_base"],
        allow_shared_uid=options["allow_shared_uid"],
        bash_sandbox=options["bash_sandbox"],
        verification_keys=options.get("verification_keys"),
        secrets_prefix=options["secrets_prefix"],
        retry_delay=options["retry_delay"],
        retry_max_attempts=options["retry_max_attempts"],
        http_port=options["http_port"],
        http_host=options["http_host"],
    )


@click.command()
@state_file_option
@work_dir_option
def healthcheck(state_file: Path | None, work_dir: Path | None) -> None:
    """Exit 0 if the node here heartbeated within 3 intervals, else 1."""
    path = state_file or default_state_file(work_dir or default_work_dir())
    result = health.check(path)
    click.echo(("healthy: " if result.healthy else "unhealthy: ") + result.reason)
    raise SystemExit(EXIT_OK if result.healthy else EXIT_FAILURE)
