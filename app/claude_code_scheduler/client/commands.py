"""`submit`, `events` and `nodes`: the scheduler's side of the bus from a terminal
(`submit --wait` follows its run with client.follow).

They speak protocol version 1 through the same code the node uses: a RunTask
is built with protocol.TaskSpec and checked with protocol.parse_command before
it is sent (and signed with protocol.signing when --signing-key names a key),
and events are read with the same types the node publishes.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click
from click.core import ParameterSource

from claude_code_scheduler.aws.clients import Clients
from claude_code_scheduler.aws.names import validate_bucket
from claude_code_scheduler.client.bus import EventFilter, send_to_queue, send_to_topic
from claude_code_scheduler.client.cancel import LOG_BUCKET_ENVVARS, cancel_as_caller
from claude_code_scheduler.client.follow import RECEIVE_WAIT_SECONDS, follow_run, status
from claude_code_scheduler.client.keys import read_signing_key
from claude_code_scheduler.client.options import (
    aws_options,
    clients_for,
    open_reader,
    reader_options,
    stop_on_signals,
    task_options,
    validate_sources,
)
from claude_code_scheduler.client.tasks import build_command
from claude_code_scheduler.client.watch import Fleet, describe, table
from claude_code_scheduler.errors import EXIT_INTERRUPTED, ConfigError
from claude_code_scheduler.protocol import EVENT_TYPES, RunTask
from claude_code_scheduler.protocol.commands import command_body
from claude_code_scheduler.protocol.signing import (
    DEFAULT_TTL_SECONDS,
    MAX_TTL_SECONDS,
    sign_command,
)

# --- submit -------------------------------------------------------------------


@click.command()
@task_options
@click.option("--run-id", help="Run id. Default: a new uuid.")
@click.option(
    "--command-topic-arn",
    envvar="CLAUDE_COMMAND_TOPIC_ARN",
    help="SNS command topic to publish to.",
)
@click.option(
    "--queue-url",
    envvar="CLAUDE_NODE_QUEUE_URL",
    help="Or send straight to the nodes' SQS queue.",
)
@click.option(
    "--signing-key",
    envvar="CLAUDE_SIGNING_KEY",
    help="Sign the command with this private Ed25519 JWK: a file path or a Secrets "
    "Manager ARN (docs/signing.md).",
)
@click.option(
    "--signature-ttl",
    type=click.FloatRange(min=0, min_open=True, max=MAX_TTL_SECONDS),
    default=DEFAULT_TTL_SECONDS,
    show_default=True,
    help="Seconds the signature stays valid: how long the command may wait in the "
    "queue before a node takes it.",
)
@click.option("--wait", is_flag=True, help="Follow the run: output, status, exit code.")
@click.option("--wait-timeout", type=float, default=None, help="Give up waiting (exit 124).")
@click.option("--raw", is_flag=True, help="With --wait: print stream-json lines as they are.")
@click.option(
    "--cancel-on-interrupt",
    is_flag=True,
    help="With --wait: Ctrl-C cancels the run (as `cancel` does) instead of only "
    "stopping to follow it. Needs --log-bucket.",
)
@click.option(
    "--log-bucket",
    envvar=LOG_BUCKET_ENVVARS,
    help="With --cancel-on-interrupt: the nodes' log bucket, where the request is written.",
)
@reader_options
@aws_options
def submit(**options: Any) -> None:
    """Send a RunTask to the nodes; print its run id. With --wait, follow it and
    exit 0 on TaskCompleted, 1 on TaskFailed, 124 on --wait-timeout, 130 on
    Ctrl-C (which leaves the run going, unless --cancel-on-interrupt)."""
    validate_sources(options, reads=options["wait"])
    _check_cancel_on_interrupt(options)
    command = build_command(options)
    topic, queue = _send_target(click.get_current_context(), options)
    body = wire_body(command, options)
    clients = clients_for(options, topic, queue, options.get("control_bus_arn"))

    def send() -> None:
        if topic:
            send_to_topic(clients.sns, topic, body)
        else:
            send_to_queue(clients.sqs, str(queue), body)
        click.echo(command.run_id)

    if not options["wait"]:
        send()
        return
    with (
        stop_on_signals() as stop,
        open_reader(clients, options, EventFilter(run_id=command.run_id)) as reader,
    ):
        send()  # after subscribing, so no event can be missed
        code = follow_run(reader, command.run_id, options, stop)
        if code == EXIT_INTERRUPTED:
            # Still inside stop_on_signals: a second Ctrl-C cannot cut the cancel short.
            _interrupted(clients, command.run_id, options)
            code = EXIT_INTERRUPTED
    raise SystemExit(code)


def _check_cancel_on_interrupt(options: dict[str, Any]) -> None:
    if not options["cancel_on_interrupt"]:
        return
    if not options["wait"]:
        raise ConfigError("--cancel-on-interrupt needs --wait")
    if not options.get("log_bucket"):
        raise ConfigError("--cancel-on-interrupt needs --log-bucket (or CLAUDE_LOG_BUCKET)")
    validate_bucket(options["log_bucket"])


def _interrupted(clients: Clients, run_id: str, options: dict[str, Any]) -> None:
    """Ctrl-C while following: the run goes on, and how to stop it is one
    line away; or, with --cancel-on-interrupt, it is cancelled."""
    if not options["cancel_on_interrupt"]:
        status(
            f"run {run_id}: stopped following; the run goes on. To stop it: "
            f"claude-code-scheduler cancel {run_id}"
        )
        return
    result = cancel_as_caller(
        clients,
        options,
        log_bucket=options["log_bucket"],
        run_id=run_id,
        reason="interrupted: submit --wait --cancel-on-interrupt",
    )
    status(result.line())


def wire_body(command: RunTask, options: dict[str, Any]) -> str:
    """The JSON to send: the command, signed when --signing-key names a key."""
    if not options.get("signing_key"):
        return command.to_json()
    key = read_signing_key(options["signing_key"], options)
    try:
        signed = sign_command(
            command_body(command), key, now=time.time(), ttl=options["signature_ttl"]
        )
    except ValueError as exc:
        raise ConfigError(f"--signing-key: {exc}") from None
    return json.dumps(signed, separators=(",", ":"))


def _send_target(ctx: click.Context, options: dict[str, Any]) -> tuple[str | None, str | None]:
    """Where to send: the command topic or the queue. When both are set, one
    given on the command line beats one from the environment (a shell set up
    for a node has CLAUDE_NODE_QUEUE_URL), and when both come from the
    environment the command topic wins: it is how the scheduler sends, and
    the queue is its subscriber. Both on the command line is an error."""
    topic, queue = options.get("command_topic_arn"), options.get("queue_url")
    if topic and queue:
        typed = {
            name
            for name in ("command_topic_arn", "queue_url")
            if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
        }
        if typed == {"queue_url"}:
            return None, queue
        if len(typed) < 2:
            return topic, None
    if bool(topic) == bool(queue):
        raise ConfigError("give one of --command-topic-arn or --queue-url")
    return topic, queue


# --- events -------------------------------------------------------------------


@click.command()
@click.option("--follow", "-f", is_flag=True, help="Keep going until interrupted.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--run-id", help="Only this run's events.")
@click.option("--node-id", help="Only this node's events.")
@click.option("--type", "types", multiple=True, type=click.Choice(EVENT_TYPES), help="Repeatable.")
@click.option(
    "--listen",
    type=float,
    default=10.0,
    show_default=True,
    help="Without --follow: listen this long (a server queue: until it is drained).",
)
@reader_options
@aws_options
def events(**options: Any) -> None:
    """Print control-bus events as they arrive."""
    validate_sources(options)
    clients = clients_for(options, options.get("control_bus_arn"), options.get("server_queue_url"))
    event_filter = EventFilter(options.get("run_id"), options.get("node_id"), options["types"])
    draining = bool(options.get("server_queue_url"))
    end = time.monotonic() + options["listen"]
    with stop_on_signals() as stop, open_reader(clients, options, event_filter) as reader:
        while not stop.is_set() and (options["follow"] or time.monotonic() < end):
            batch = reader.receive(RECEIVE_WAIT_SECONDS)
            for event in sorted(batch, key=lambda e: (e.node_id, e.body.get("sequence", 0))):
                line = json.dumps(event.body) if options["as_json"] else describe(event.body)
                click.echo(line)
            if draining and not batch and not options["follow"]:
                break


# --- nodes --------------------------------------------------------------------


@click.command()
@click.option(
    "--listen",
    type=float,
    default=35.0,
    show_default=True,
    help="Seconds to listen; a little over one heartbeat interval.",
)
@click.option(
    "--heartbeat-interval",
    type=float,
    default=30.0,
    show_default=True,
    help="Assumed for nodes whose NodeRegistered was not seen.",
)
@click.option("--json", "as_json", is_flag=True, help="A JSON list for machines.")
@reader_options
@aws_options
def nodes(**options: Any) -> None:
    """Listen to the bus and print a table of the nodes heard. A node silent for
    three heartbeat intervals shows as lost, a deregistered one as gone."""
    validate_sources(options)
    clients = clients_for(options, options.get("control_bus_arn"), options.get("server_queue_url"))
    fleet = Fleet()
    with stop_on_signals() as stop, open_reader(clients, options, EventFilter()) as reader:
        end = time.monotonic() + options["listen"]
        while not stop.is_set() and time.monotonic() < end:
            wait = max(1, min(RECEIVE_WAIT_SECONDS, int(end - time.monotonic())))
            for event in reader.receive(wait):
                fleet.add(event.body)
    rows = fleet.rows(time.time(), options["heartbeat_interval"])
    if options["as_json"]:
        click.echo(json.dumps(rows, indent=2))
    elif rows:
        click.echo(table(rows))
    else:
        click.echo(f"no node was heard in {options['listen']:g}s", err=True)


COMMANDS = (submit, events, nodes)
