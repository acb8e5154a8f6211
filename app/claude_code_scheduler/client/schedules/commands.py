"""`schedule`: recurring tasks on EventBridge Scheduler (docs/schedules.md).

A schedule is an EventBridge Scheduler schedule whose templated SNS target
publishes a RunTask template (protocol.schedules) on the command topic, so
nothing of ours stays up for it to fire. Each firing gets its own run id,
"<name>-<execution id>", filled in by the scheduler.

A signed schedule signs its template once, for every firing until the
signature expires; the schedule's EndDate stops it firing before then, by the
retry window, since a firing published after the signature's exp is refused.
`schedule renew` signs the template again and moves the EndDate.

Here: the click commands. What they check and send is in expressions.py and
definition.py, what they print in views.py, and AWS I/O is aws.schedules'.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import click

from claude_code_scheduler.aws.clients import make_scheduler_client
from claude_code_scheduler.aws.names import check_region, parse_topic_arn, resolve_region
from claude_code_scheduler.aws.schedules import ScheduleStore
from claude_code_scheduler.client.keys import read_signing_key
from claude_code_scheduler.client.options import aws_options_with, task_options
from claude_code_scheduler.client.schedules.definition import (
    DEFAULT_EVENT_AGE_SECONDS,
    DEFAULT_RETRY_ATTEMPTS,
    MAX_DESCRIPTION_CHARS,
    MAX_EVENT_AGE_SECONDS,
    MAX_RETRY_ATTEMPTS,
    MIN_EVENT_AGE_SECONDS,
    QUEUE_ARN,
    check_signed_by,
    check_window,
    definition_of,
    delivery_of,
    end_date,
    make_input,
    sign_input,
)
from claude_code_scheduler.client.schedules.expressions import (
    check_timezone,
    iso,
    when_of,
)
from claude_code_scheduler.client.schedules.views import ScheduleView, table, view_of
from claude_code_scheduler.client.tasks import build_task
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.protocol.commands import SCHEDULE_NAME_PATTERN
from claude_code_scheduler.protocol.signing import (
    DEFAULT_SCHEDULE_TTL_SECONDS,
    MAX_SCHEDULE_TTL_SECONDS,
)

DEFAULT_GROUP = "claude-code-scheduler"
GROUP_ENVVAR = "CLAUDE_SCHEDULE_GROUP"


def group_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """--group and the AWS options every subcommand takes."""
    function = aws_options_with("AWS region of the schedules (required, or set AWS_REGION).")(
        function
    )
    return click.option(
        "--group",
        envvar=GROUP_ENVVAR,
        default=DEFAULT_GROUP,
        show_default=True,
        help="The EventBridge Scheduler schedule group (deploy/cloudformation/schedules.yaml).",
    )(function)


def signing_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option(
        "--signature-ttl",
        type=click.FloatRange(min=0, min_open=True, max=MAX_SCHEDULE_TTL_SECONDS),
        default=DEFAULT_SCHEDULE_TTL_SECONDS,
        show_default=True,
        help="Seconds the template's signature stays valid, for every firing. The "
        "schedule's end date is set so that no firing outlives it; `schedule renew` "
        "signs it again.",
    )(function)
    return click.option(
        "--signing-key",
        envvar="CLAUDE_SIGNING_KEY",
        help="Sign the template with this private Ed25519 JWK: a file path or a Secrets "
        "Manager ARN (docs/signing.md).",
    )(function)


def check_name(name: str) -> None:
    if not SCHEDULE_NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"NAME: {name!r} must be 1 to 64 letters, digits, '.', '_' or '-' "
            "(EventBridge Scheduler's rule)"
        )


def store_for(options: Mapping[str, Any], *regions: tuple[str, str | None]) -> ScheduleStore:
    """The store of --group, in the region --region or the ARNs given name."""
    group = options["group"]
    if not SCHEDULE_NAME_PATTERN.fullmatch(group):
        raise ConfigError(f"--group: {group!r} must be 1 to 64 letters, digits, '.', '_' or '-'")
    region = resolve_region(
        options.get("region"),
        list(regions),
        required="--region is required (or set AWS_REGION)",
    )
    client = make_scheduler_client(
        region=region, profile=options.get("profile"), endpoint_url=options.get("endpoint_url")
    )
    return ScheduleStore(client, options["group"])


def _status(message: str) -> None:
    click.echo(message, err=True)


@click.group()
def schedule() -> None:
    """Recurring tasks: EventBridge Scheduler schedules that publish a RunTask
    on the command topic at each firing (docs/schedules.md)."""


@schedule.command()
# Not "name": the task options have a --name of their own (the task's name).
@click.argument("schedule_name", metavar="NAME")
@click.option("--cron", help='A cron expression without cron(...), e.g. "0 9 ? * MON-FRI *".')
@click.option("--rate", help='A rate without rate(...): "5 minutes", "1 hour", "2 days".')
@click.option("--at", help="One firing at this time, YYYY-MM-DDTHH:MM:SS in --timezone.")
@click.option(
    "--timezone",
    default="UTC",
    show_default=True,
    help="IANA time zone the expression is read in, e.g. Europe/Berlin.",
)
@click.option(
    "--command-topic-arn",
    envvar="CLAUDE_COMMAND_TOPIC_ARN",
    help="SNS command topic each firing publishes to.",
)
@click.option(
    "--role-arn",
    envvar="CLAUDE_SCHEDULER_ROLE_ARN",
    help="The scheduler's execution role, allowed to publish on the command topic.",
)
@click.option(
    "--dead-letter-arn",
    envvar="CLAUDE_SCHEDULER_DLQ_ARN",
    help="SQS queue for firings that could not be published.",
)
@click.option(
    "--max-event-age",
    type=click.IntRange(MIN_EVENT_AGE_SECONDS, MAX_EVENT_AGE_SECONDS),
    default=DEFAULT_EVENT_AGE_SECONDS,
    show_default=True,
    help="Seconds a firing that failed to publish is retried before it goes to the DLQ.",
)
@click.option(
    "--max-retries",
    type=click.IntRange(0, MAX_RETRY_ATTEMPTS),
    default=DEFAULT_RETRY_ATTEMPTS,
    show_default=True,
    help="Retries of a firing that failed to publish, within --max-event-age.",
)
@click.option("--description", help="The schedule's description (512 characters at most).")
@click.option("--disabled", is_flag=True, help="Create it paused (`schedule resume` starts it).")
@signing_options
@task_options
@group_options
def create(schedule_name: str, **options: Any) -> None:
    """Create schedule NAME, which sends the task of the task options at each
    firing; print its ARN. The task id defaults to NAME, so `runs --task NAME`
    finds its runs."""
    name = schedule_name
    now = time.time()
    check_name(name)
    if options["region"]:
        check_region(options["region"])
    zone = check_timezone(options["timezone"])
    when = when_of(options, zone, now)
    if options["description"] and len(options["description"]) > MAX_DESCRIPTION_CHARS:
        raise ConfigError(f"--description: at most {MAX_DESCRIPTION_CHARS} characters")
    delivery = delivery_of(options)
    task = build_task(options)
    if task.task_id is None:
        task = dataclasses.replace(task, task_id=name)
    key = read_signing_key(options["signing_key"], options) if options["signing_key"] else None
    schedule_input = make_input(name, task, key, now=now, ttl=options["signature_ttl"])
    if schedule_input.expires is not None:
        check_window(when, zone, schedule_input.expires, delivery.max_event_age, now)
    definition = definition_of(
        when,
        zone.key,
        delivery,
        schedule_input,
        description=options["description"],
        disabled=options["disabled"],
    )
    store = store_for(
        options,
        ("--command-topic-arn", parse_topic_arn(delivery.topic_arn).region),
        ("--dead-letter-arn", _queue_region(delivery.dead_letter_arn)),
    )
    arn = store.create(name, definition)
    click.echo(arn)
    _status(f"schedule {name}: created, {_describe(view_of(name, definition))}")


def _queue_region(arn: str) -> str | None:
    match = QUEUE_ARN.fullmatch(arn)
    return match.group("region") if match else None


def _describe(view: ScheduleView) -> str:
    until = view.signed_until
    signed = f"signed until {iso(until)}" if until else "unsigned"
    state = str(view.definition.get("State", "")).lower()
    return f"{view.when.expression} {view.timezone}, {state}, {signed}"


@schedule.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per schedule, in an array.")
@group_options
def list_schedules(as_json: bool, **options: Any) -> None:
    """The group's schedules: state, expression and time zone, until when
    their signature holds, and their task."""
    store = store_for(options)
    views = [view_of(name, store.get(name)) for name in store.names()]
    views.sort(key=lambda view: view.name)
    if as_json:
        click.echo(json.dumps([view.summary() for view in views], indent=2))
    elif views:
        click.echo(table(views))
    else:
        _status(f"no schedules in group {store.group}")


@schedule.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print it as one JSON object.")
@group_options
def show(name: str, as_json: bool, **options: Any) -> None:
    """Schedule NAME: its definition, the signature's key id and expiry, and
    the task it sends (task.env and the like by name only)."""
    details = view_of(name, _store(name, options).get(name)).details()
    if as_json:
        click.echo(json.dumps(details, indent=2))
        return
    for key, value in details.items():
        if value is not None:
            click.echo(f"{key}: {value if isinstance(value, str) else json.dumps(value)}")


def _store(name: str, options: dict[str, Any]) -> ScheduleStore:
    check_name(name)
    return store_for(options)


def _set_state(name: str, options: dict[str, Any], state: str) -> dict[str, Any]:
    store = _store(name, options)
    definition = store.get(name)
    definition["State"] = state
    store.update(name, definition)
    return definition


@schedule.command()
@click.argument("name")
@group_options
def pause(name: str, **options: Any) -> None:
    """Stop schedule NAME firing until `schedule resume`."""
    _set_state(name, options, "DISABLED")
    _status(f"schedule {name}: paused")


@schedule.command()
@click.argument("name")
@group_options
def resume(name: str, **options: Any) -> None:
    """Let paused schedule NAME fire again."""
    definition = _set_state(name, options, "ENABLED")
    view = view_of(name, definition)
    until = view.signed_until
    if until is not None and until.timestamp() <= time.time():
        _status(f"schedule {name}: its signature expired at {iso(until)}: `schedule renew` it")
    _status(f"schedule {name}: resumed")


@schedule.command()
@click.argument("name")
@group_options
def delete(name: str, **options: Any) -> None:
    """Delete schedule NAME. Runs it already started go on."""
    _store(name, options).delete(name)
    _status(f"schedule {name}: deleted")


@schedule.command()
@click.argument("name")
@signing_options
@group_options
def renew(name: str, **options: Any) -> None:
    """Sign schedule NAME's template again, valid for --signature-ttl from
    now, and move its end date with it. A signature is made once for every
    firing, so a schedule stops when it expires unless renewed. Only a
    template this key signed is signed again."""
    if not options["signing_key"]:
        raise ConfigError("--signing-key is required (or set CLAUDE_SIGNING_KEY)")
    now = time.time()
    store = _store(name, options)
    definition = store.get(name)
    view = view_of(name, definition)
    if view.command is None or "schedule" not in view.command:
        raise ConfigError(f"schedule {name!r} does not send a RunTask template")
    key = read_signing_key(options["signing_key"], options)
    check_signed_by(name, view.command, key)
    schedule_input = sign_input(view.command, key, now=now, ttl=options["signature_ttl"])
    target = dict(definition["Target"])
    max_event_age = int(
        target.get("RetryPolicy", {}).get("MaximumEventAgeInSeconds", MAX_EVENT_AGE_SECONDS)
    )
    expires = schedule_input.expires
    if expires is None:  # cannot be: it was just signed
        raise ConfigError(f"schedule {name!r}: the new signature cannot be read back")
    zone = check_timezone(view.timezone)
    check_window(view.when, zone, expires, max_event_age, now)
    target["Input"] = schedule_input.text
    definition["Target"] = target
    if view.when.kind != "at":
        definition["EndDate"] = end_date(expires, max_event_age)
    store.update(name, definition)
    _status(f"schedule {name}: renewed, {_describe(view_of(name, definition))}")
