"""What the operator commands share: their AWS and reader options, the clients
and the reader those options name, and stopping on Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from claude_code_scheduler.aws.clients import Clients, make_clients
from claude_code_scheduler.aws.names import (
    check_region,
    parse_queue_url,
    parse_topic_arn,
    resolve_region,
)
from claude_code_scheduler.client.bus import EventFilter, QueueReader, Reader, TemporaryReader
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.protocol import PERMISSION_MODES
from claude_code_scheduler.protocol.commands import (
    EFFORT_LEVELS,
    MAX_BUDGET_USD,
    MAX_RETRY_ATTEMPTS,
)


def aws_options_with(
    region_help: str,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--region, --profile and --endpoint-url; `region_help` says where the
    region comes from when --region is not given."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        options = [
            click.option("--region", envvar="AWS_REGION", help=region_help),
            click.option("--profile", envvar="AWS_PROFILE", help="AWS profile for credentials."),
            click.option(
                "--endpoint-url", help="AWS endpoint for emulators. AWS_ENDPOINT_URL is read too."
            ),
        ]
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


aws_options = aws_options_with("AWS region. Default: from the ARNs.")


def reader_options(function: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--control-bus-arn",
            envvar=["CLAUDE_CONTROL_BUS_ARN", "CLAUDE_NODE_TOPIC_ARN"],
            help="SNS control bus to read (a temporary queue is subscribed to it).",
        ),
        click.option(
            "--server-queue-url",
            envvar="CLAUDE_SERVER_QUEUE_URL",
            help="Read this existing queue instead. Messages read are DELETED from it.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


class JsonObject(click.ParamType[dict[str, Any]]):
    """A JSON object given inline, or as @FILE to read it from a file."""

    name = "json"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        text = str(value)
        if text.startswith("@"):
            try:
                text = Path(text[1:]).read_text("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                self.fail(f"cannot read {text[1:]}: {getattr(exc, 'strerror', None) or exc}")
        try:
            document = json.loads(text)
        except RecursionError:
            self.fail("the JSON is nested too deeply")
        except ValueError as exc:
            self.fail(f"not JSON: {exc}")
        if not isinstance(document, dict):
            self.fail(f"must be a JSON object, got {type(document).__name__}")
        return dict(document)


JSON_OBJECT = JsonObject()


def task_field_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """`submit`'s options for the CLI's own controls per task (task fields of
    the same names, docs/protocol.md)."""
    options = [
        click.option(
            "--max-budget-usd",
            type=click.FloatRange(min=0, min_open=True, max=MAX_BUDGET_USD),
            help="Stop the run when it has spent this many US dollars on API calls "
            "(TaskFailed BudgetExceeded).",
        ),
        click.option("--system-prompt", help="Replace the CLI's default system prompt."),
        click.option("--append-system-prompt", help="Add this text to the system prompt."),
        click.option(
            "--json-schema",
            type=JSON_OBJECT,
            metavar="JSON|@FILE",
            help="JSON Schema (draft-07) the answer must match; TaskCompleted then carries "
            "the object as result.structured_output.",
        ),
        click.option(
            "--mcp-config",
            "mcp_servers",
            type=JSON_OBJECT,
            metavar="JSON|@FILE",
            help='MCP servers for the run: the mcpServers object, or a whole {"mcpServers": '
            "...} config such as a .mcp.json. No other MCP server is started.",
        ),
        click.option(
            "--fallback-model",
            help="Model(s) to switch to when the main one is overloaded, comma-separated.",
        ),
        click.option("--effort", type=click.Choice(EFFORT_LEVELS), help="The CLI's effort level."),
        click.option(
            "--settings",
            type=JSON_OBJECT,
            metavar="JSON|@FILE",
            help="A Claude Code settings object for the run.",
        ),
        click.option(
            "--max-attempts",
            type=click.IntRange(1, MAX_RETRY_ATTEMPTS),
            help="Attempts in all after retryable failures (429, 529, 5xx). "
            "Default: the node's --retry-max-attempts.",
        ),
        click.option(
            "--resume",
            metavar="SESSION_ID",
            help="Continue this session (a TaskCompleted's result.session_id), on any node.",
        ),
        click.option(
            "--fork-session",
            is_flag=True,
            help="With --resume: continue under a new session id, leaving the original as it was.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def task_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The task a command sends, option by option: `submit`'s and `schedule
    create`'s, so the two cannot drift (client.tasks.build_task reads them)."""
    options = [
        click.option("--prompt", help="The prompt."),
        click.option(
            "--prompt-file", type=click.Path(dir_okay=False), help="Read the prompt from a file."
        ),
        click.option("--name", help="Task name, echoed in TaskStarted."),
        click.option("--task-id", help="Your id for the task, echoed in TaskStarted."),
        click.option("--model", help="Model for the Claude CLI, e.g. sonnet."),
        click.option("--permission-mode", type=click.Choice(PERMISSION_MODES)),
        click.option(
            "--allowed-tools", multiple=True, help="Tool names; repeat or comma-separate."
        ),
        click.option(
            "--disallowed-tools", multiple=True, help="Tool names; repeat or comma-separate."
        ),
        click.option("--max-turns", type=click.IntRange(min=1)),
        click.option("--timeout", type=float, help="The run's timeout_seconds."),
        click.option(
            "--env", "env", multiple=True, help="NAME=VALUE for the CLI's environment; repeat."
        ),
        click.option(
            "--secret",
            "secrets",
            multiple=True,
            help="NAME=REFERENCE: a Secrets Manager ARN or SSM parameter the node reads into the "
            "CLI's environment as NAME (docs/secrets.md); repeat.",
        ),
        click.option(
            "--artifact",
            "artifacts",
            multiple=True,
            metavar="GLOB",
            help="Keep the files matching GLOB (relative to the run's working folder, e.g. "
            "'dist/**') under runs/<run_id>/files/ in the log bucket; repeat.",
        ),
        click.option(
            "--workspace",
            metavar="URL|JSON",
            help="What the run starts from (docs/workspaces.md): a git URL, an "
            "s3://<log-bucket>/inputs/... archive, or the task.workspace object as JSON "
            "(for credentials and the rest).",
        ),
        click.option(
            "--git-ref", help="With --workspace URL: the branch, tag or commit to check out."
        ),
        click.option(
            "--push-branch",
            help="With --workspace URL: after a completed run, commit and push the work to "
            "this new branch.",
        ),
    ]
    function = task_field_options(function)
    for option in reversed(options):
        function = option(function)
    return function


def region_of(region: str | None, *sources: str | None) -> str:
    """The region: --region, else the one in an ARN or queue URL given."""
    named = [
        (
            source,
            parse_topic_arn(source).region
            if source.startswith("arn:")
            else parse_queue_url(source).region,
        )
        for source in sources
        if source
    ]
    return resolve_region(region, named)


def clients_for(options: dict[str, Any], *sources: str | None) -> Clients:
    return make_clients(
        region=region_of(options.get("region"), *sources),
        profile=options.get("profile"),
        endpoint_url=options.get("endpoint_url"),
    )


def require_reader_source(options: dict[str, Any]) -> None:
    """Before anything else: without a source there is nothing to read."""
    if not options.get("server_queue_url") and not options.get("control_bus_arn"):
        raise ConfigError(
            "--control-bus-arn is required (or set CLAUDE_CONTROL_BUS_ARN), "
            "or give --server-queue-url"
        )


@contextlib.contextmanager
def open_reader(
    clients: Clients, options: dict[str, Any], event_filter: EventFilter
) -> Iterator[Reader]:
    require_reader_source(options)
    if options.get("server_queue_url"):
        yield QueueReader(clients.sqs, options["server_queue_url"], event_filter)
        return
    with TemporaryReader(
        clients.sqs, clients.sns, options["control_bus_arn"], event_filter
    ) as reader:
        yield reader


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM only set an Event; the read loops look at it between
    short receives, so the temporary queue is always cleaned up."""
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def validate_sources(options: dict[str, Any], *, reads: bool = True) -> None:
    """Every ARN and URL given is well formed, and a reading command has
    something to read, before any client is made."""
    if options.get("region"):
        check_region(options["region"])
    if reads:
        require_reader_source(options)
    checks = [
        ("command_topic_arn", parse_topic_arn, "--command-topic-arn"),
        ("control_bus_arn", parse_topic_arn, "--control-bus-arn"),
        ("queue_url", parse_queue_url, "--queue-url"),
        ("server_queue_url", parse_queue_url, "--server-queue-url"),
    ]
    for key, parse, option in checks:
        if options.get(key):
            parse(options[key], option)
