"""The command line: maps options and environment variables onto NodeConfig.

Exit codes: 0 after a clean stop, 1 on an unexpected error, 2 for anything the
user must fix (one line on stderr, never a traceback).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import click
from click.core import ParameterSource

from claude_code_scheduler import __version__, ecs, health, logsetup, reaper
from claude_code_scheduler.aws import BusClient, LogStore, QueueClient, make_clients
from claude_code_scheduler.client_cli import COMMANDS
from claude_code_scheduler.config import (
    MAX_TASK_TIMEOUT_SECONDS,
    ConfigError,
    NodeConfig,
    parse_queue_url,
    parse_topic_arn,
    resolve_region,
    validate_bucket,
)
from claude_code_scheduler.leases import LeaseKeeper
from claude_code_scheduler.node import Node, registration_data
from claude_code_scheduler.outbox import Outbox
from claude_code_scheduler.protection import TaskProtection
from claude_code_scheduler.startup import check_claude, check_queue, real_mode_warnings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

log = logging.getLogger("claude_code_scheduler")


@click.group()
@click.version_option(__version__, prog_name="claude-code-scheduler")
def cli() -> None:
    """Run Claude Code tasks from an SQS queue and report on an SNS control bus."""


def _default_log_format() -> str:
    return "text" if sys.stderr.isatty() else "json"


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


@cli.command()
@click.option("--queue-url", envvar="CLAUDE_NODE_QUEUE_URL", help="SQS queue to take tasks from.")
@click.option("--topic-arn", envvar="CLAUDE_NODE_TOPIC_ARN", help="SNS control bus for events.")
@click.option("--log-bucket", envvar="CLAUDE_NODE_LOG_BUCKET", help="S3 bucket for run logs.")
@click.option(
    "--node-id",
    envvar="CLAUDE_NODE_ID",
    help="Node id. Default: the ECS task id on ECS, else the host name.",
)
@click.option("--node-name", envvar="CLAUDE_NODE_NAME", help="Display name. Default: the id.")
@click.option("--profile", envvar="AWS_PROFILE", help="AWS profile for credentials.")
@click.option("--region", envvar="AWS_REGION", help="AWS region. Default: the queue URL's region.")
@click.option(
    "--endpoint-url",
    envvar="AWS_ENDPOINT_URL",
    help="AWS endpoint for emulators such as LocalStack. AWS_ENDPOINT_URL_SQS/_SNS/_S3 work too.",
)
@click.option(
    "--heartbeat-interval",
    envvar="CLAUDE_NODE_HEARTBEAT_INTERVAL",
    type=float,
    default=30.0,
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
    default=1,
    show_default=True,
    help="Runs at once.",
)
@click.option(
    "--task-timeout",
    envvar="CLAUDE_NODE_TASK_TIMEOUT",
    type=float,
    default=3600.0,
    show_default=True,
    help="Seconds a run may take when its task sets no timeout_seconds.",
)
@click.option(
    "--shutdown-timeout",
    envvar="CLAUDE_NODE_SHUTDOWN_TIMEOUT",
    type=float,
    default=25.0,
    show_default=True,
    help="Seconds runs may go on after SIGTERM before they are handed back.",
)
@click.option(
    "--poll-wait-seconds",
    envvar="CLAUDE_NODE_POLL_WAIT_SECONDS",
    type=int,
    default=20,
    show_default=True,
    help="SQS long-poll wait, 1 to 20.",
)
@click.option(
    "--claude-bin",
    envvar="CLAUDE_NODE_CLAUDE_BIN",
    default="claude",
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
    "--pass-aws-credentials",
    envvar="CLAUDE_NODE_PASS_AWS_CREDENTIALS",
    is_flag=True,
    help="Give the CLI the node's AWS credentials (for CLAUDE_CODE_USE_BEDROCK). "
    "Default: they are removed from its environment.",
)
@work_dir_option
@state_file_option
@click.option(
    "--kill-grace",
    envvar="CLAUDE_NODE_KILL_GRACE",
    type=float,
    default=3.0,
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL when a run is stopped.",
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
    logsetup.configure(
        options["verbose"], options["log_format"] or _default_log_format(), os.environ
    )
    # An endpoint from AWS_ENDPOINT_URL is left to botocore, so that the
    # per-service AWS_ENDPOINT_URL_SQS and friends keep their precedence.
    if ctx.get_parameter_source("endpoint_url") is ParameterSource.ENVIRONMENT:
        options["endpoint_url"] = None
    ctx.exit(run_node(options))


def default_work_dir() -> Path:
    return Path(tempfile.gettempdir()) / "claude-code-scheduler"


def build_config(options: dict[str, Any], ecs_metadata: dict[str, Any] | None) -> NodeConfig:
    for name in ("queue_url", "topic_arn", "log_bucket"):
        if not options.get(name):
            option = "--" + name.replace("_", "-")
            env = {"queue_url": "QUEUE_URL", "topic_arn": "TOPIC_ARN", "log_bucket": "LOG_BUCKET"}
            raise ConfigError(f"{option} is required (or set CLAUDE_NODE_{env[name]})")
    queue = parse_queue_url(options["queue_url"])
    topic = parse_topic_arn(options["topic_arn"])
    work_dir = options.get("work_dir") or default_work_dir()
    node_id = options.get("node_id") or (
        ecs.task_id(ecs_metadata) if ecs_metadata else socket.gethostname()
    )
    return NodeConfig(
        queue=queue,
        topic=topic,
        log_bucket=validate_bucket(options["log_bucket"]),
        region=resolve_region(queue, topic, options.get("region")),
        node_id=node_id,
        node_name=options.get("node_name") or node_id,
        profile=options.get("profile"),
        endpoint_url=options.get("endpoint_url"),
        heartbeat_interval=options["heartbeat_interval"],
        mock_mode=options["mock_mode"],
        max_concurrent_tasks=options["max_concurrent_tasks"],
        task_timeout=options["task_timeout"],
        shutdown_timeout=options["shutdown_timeout"],
        poll_wait_seconds=options["poll_wait_seconds"],
        claude_bin=options["claude_bin"],
        work_dir=work_dir,
        state_file=options.get("state_file") or health.default_state_file(work_dir),
        kill_grace=options["kill_grace"],
        pass_aws_credentials=options["pass_aws_credentials"],
        claude_max_retries=options["claude_max_retries"],
    )


def run_node(options: dict[str, Any]) -> int:
    ecs_metadata = ecs.task_metadata(os.environ)
    config = build_config(options, ecs_metadata)
    claude_version = None
    if not config.mock_mode:
        path, claude_version = check_claude(config.claude_bin)
        log.info("claude CLI %s at %s", claude_version, path)
        for warning in real_mode_warnings(config, os.environ, os.geteuid()):
            log.warning(warning)
    clients = make_clients(
        region=config.region, profile=config.profile, endpoint_url=config.endpoint_url
    )
    queue = QueueClient(clients.sqs, config.queue.url)
    visibility_timeout = check_queue(queue)
    log.info("queue reachable; visibility timeout %ds", visibility_timeout)
    outbox = Outbox(
        BusClient(clients.sns, config.topic.arn, fifo=config.topic.is_fifo),
        config.node_id,
        config.node_name,
    )
    worker = Node(
        config,
        queue=queue,
        outbox=outbox,
        logs=LogStore(clients.s3, config.log_bucket),
        leases=LeaseKeeper(queue, visibility_timeout),
        # A task may ask for up to the SQS maximum, whatever --task-timeout says.
        protection=TaskProtection.from_environment(os.environ, MAX_TASK_TIMEOUT_SECONDS),
        registration=registration_data(
            config,
            hostname=socket.gethostname(),
            version=__version__,
            claude_version=claude_version,
            ecs=ecs_metadata,
        ),
    )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        worker.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # After the start-up checks, whose own children must not be reaped here.
    if reaper.become_subreaper():
        log.debug("child subreaper: orphaned tool processes reparent to the node")
    return worker.run()


@cli.command()
@state_file_option
@work_dir_option
def healthcheck(state_file: Path | None, work_dir: Path | None) -> None:
    """Exit 0 if the node here heartbeated within 3 intervals, else 1."""
    path = state_file or health.default_state_file(work_dir or default_work_dir())
    result = health.check(path)
    click.echo(("healthy: " if result.healthy else "unhealthy: ") + result.reason)
    raise SystemExit(EXIT_OK if result.healthy else EXIT_FAILURE)


for _command in COMMANDS:
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv, prog_name="claude-code-scheduler", standalone_mode=False)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.format_message(), err=True)
        sys.exit(EXIT_USAGE)
    except click.UsageError as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(EXIT_USAGE)
    except click.exceptions.Abort:
        sys.exit(130)
    except Exception:
        log.exception("unexpected error")
        sys.exit(EXIT_FAILURE)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
