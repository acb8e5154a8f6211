"""What `schedule create` and `schedule renew` send: the target (the command
topic, the execution role, the retry policy, the dead-letter queue), the
RunTask template as its input, signed or not, and the end date that keeps a
signed schedule from firing after its signature expires."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import jwt

from claude_code_scheduler.aws.names import parse_topic_arn
from claude_code_scheduler.client.schedules.expressions import When, iso
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.protocol import InvalidCommand, TaskSpec
from claude_code_scheduler.protocol.schedules import check_template, template
from claude_code_scheduler.protocol.signing import (
    SIGNATURE_FIELD,
    KeySet,
    SignatureRejected,
    SigningKey,
    sign_command,
    verify_command,
)

# RetryPolicy's bounds (the EventBridge Scheduler API reference, RetryPolicy):
# MaximumEventAgeInSeconds 60-86400, MaximumRetryAttempts 0-185.
MIN_EVENT_AGE_SECONDS = 60
MAX_EVENT_AGE_SECONDS = 86400
MAX_RETRY_ATTEMPTS = 185
# The service's own defaults (a day, 185 retries) keep a firing that cannot be
# published (a role missing from the topic policy, a deleted topic) retrying
# for a day before it reaches the dead-letter queue. An hour and 3 retries
# fail a broken schedule into the DLQ quickly, and a firing an hour late is
# still one the task's owner expects; see docs/schedules.md.
DEFAULT_EVENT_AGE_SECONDS = 3600
DEFAULT_RETRY_ATTEMPTS = 3
# "All schedule types on EventBridge Scheduler invoke their targets with 60
# second precision" (the user guide, Schedule types): a firing may start up to
# a minute after its time.
FIRING_PRECISION_SECONDS = 60
# Description: at most 512 characters (the API reference, CreateSchedule).
MAX_DESCRIPTION_CHARS = 512
# The API reference's patterns for Target.RoleArn and DeadLetterConfig.Arn.
ROLE_ARN = re.compile(r"^arn:aws(-[a-z]+)?:iam::\d{12}:role/[\w+=,.@/-]+$")
QUEUE_ARN = re.compile(r"^arn:aws[a-z-]*:sqs:(?P<region>[a-z0-9-]+):\d{12}:[a-zA-Z0-9_-]+$")


@dataclass(frozen=True)
class Delivery:
    """Where a firing goes and how it is retried: the target's RoleArn,
    RetryPolicy and DeadLetterConfig."""

    topic_arn: str
    role_arn: str
    dead_letter_arn: str
    max_event_age: int = DEFAULT_EVENT_AGE_SECONDS
    max_retries: int = DEFAULT_RETRY_ATTEMPTS

    def target(self, text: str) -> dict[str, Any]:
        return {
            "Arn": self.topic_arn,
            "RoleArn": self.role_arn,
            "Input": text,
            "RetryPolicy": {
                "MaximumEventAgeInSeconds": self.max_event_age,
                "MaximumRetryAttempts": self.max_retries,
            },
            "DeadLetterConfig": {"Arn": self.dead_letter_arn},
        }


def end_date(expires: float, max_event_age: int) -> datetime:
    """The last moment a signed schedule may fire: a firing is retried for up
    to `max_event_age` and starts up to a minute late, and what it publishes
    after the signature's exp is refused."""
    return datetime.fromtimestamp(expires - max_event_age - FIRING_PRECISION_SECONDS, UTC)


def check_window(
    when: When, zone: ZoneInfo, expires: float, max_event_age: int, now: float
) -> None:
    """A signed schedule can fire at least once before its signature expires.
    EventBridge Scheduler ignores EndDate for one-time schedules, so an --at
    time must itself fall inside the window."""
    last = end_date(expires, max_event_age)
    if when.kind == "at":
        moment = datetime.fromisoformat(when.text).replace(tzinfo=zone)
        if moment > last:
            raise ConfigError(
                f"--at: {when.text} is after the signature's last firing time "
                f"({iso(last)}, its exp less the retry window): raise --signature-ttl"
            )
    elif last.timestamp() <= now:
        raise ConfigError(
            "--signature-ttl: the signature must outlive --max-event-age by more than a "
            "minute, or the schedule could never fire"
        )


@dataclass(frozen=True)
class Input:
    """The target's input text and, when signed, the signature's exp."""

    text: str
    expires: int | None


def make_input(
    name: str, task: TaskSpec, key: SigningKey | None, *, now: float, ttl: float
) -> Input:
    """The RunTask template for `name`, signed when a key is given, checked as a
    node checks each firing."""
    try:
        body = template(name, task)
    except ValueError as exc:
        raise ConfigError(f"invalid task: {exc}") from None
    return sign_input(body, key, now=now, ttl=ttl)


def sign_input(body: dict[str, Any], key: SigningKey | None, *, now: float, ttl: float) -> Input:
    unsigned = {field: value for field, value in body.items() if field != SIGNATURE_FIELD}
    if key is not None:
        try:
            unsigned = sign_command(unsigned, key, now=now, ttl=ttl)
        except ValueError as exc:
            raise ConfigError(f"--signing-key: {exc}") from None
    text = json.dumps(unsigned, separators=(",", ":"))
    try:
        check_template(text)
    except InvalidCommand as exc:
        raise ConfigError(f"invalid task: {exc}") from None
    header = signature_header(unsigned)
    return Input(text, int(header["exp"]) if header else None)


def check_signed_by(name: str, command: Mapping[str, Any], key: SigningKey) -> None:
    """`renew` signs again only what `key` signed before, whenever that was.
    Whoever may update a schedule in the group could otherwise change its
    task and wait for the next renew to sign it."""
    header = signature_header(command)
    if header is None:
        raise ConfigError(
            f"schedule {name!r} is not signed: renew signs again only a template this key "
            "signed; to sign it, delete it and create it again with --signing-key"
        )
    try:
        # As of when it was signed: an expired signature is what renew is for.
        verify_command(command, KeySet.of_public_jwks([key.public_jwk()]), now=header["iat"])
    except SignatureRejected as exc:
        raise ConfigError(
            f"schedule {name!r}: its template is not signed by key {key.kid!r} "
            f"({exc}; it names key {header.get('kid')!r}): renew it with the key that signed "
            "it, or delete it and create it again"
        ) from None


def signature_header(command: Mapping[str, Any]) -> dict[str, Any] | None:
    """The signature's protected header (kid, iat, exp), unverified: for showing
    only. None when the command is not signed or the header cannot be read."""
    token = command.get(SIGNATURE_FIELD)
    if not isinstance(token, str):
        return None
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return None
    if not isinstance(header.get("exp"), int | float):
        return None
    return dict(header)


def delivery_of(options: Mapping[str, Any]) -> Delivery:
    topic, role, queue = (
        options.get("command_topic_arn"),
        options.get("role_arn"),
        options.get("dead_letter_arn"),
    )
    if not topic:
        raise ConfigError("--command-topic-arn is required (or set CLAUDE_COMMAND_TOPIC_ARN)")
    parse_topic_arn(topic, "--command-topic-arn")
    if not role or not ROLE_ARN.fullmatch(role):
        raise ConfigError(
            "--role-arn: the scheduler's execution role, arn:aws:iam::<account>:role/<name>, "
            "is required (or set CLAUDE_SCHEDULER_ROLE_ARN; schedules.yaml's output RoleArn)"
        )
    if not queue or not QUEUE_ARN.fullmatch(queue):
        raise ConfigError(
            "--dead-letter-arn: an SQS queue ARN, arn:aws:sqs:<region>:<account>:<name>, "
            "is required (or set CLAUDE_SCHEDULER_DLQ_ARN; schedules.yaml's output "
            "DeadLetterQueueArn)"
        )
    return Delivery(
        topic_arn=topic,
        role_arn=role,
        dead_letter_arn=queue,
        max_event_age=options.get("max_event_age", DEFAULT_EVENT_AGE_SECONDS),
        max_retries=options.get("max_retries", DEFAULT_RETRY_ATTEMPTS),
    )


def definition_of(
    when: When,
    timezone: str,
    delivery: Delivery,
    schedule_input: Input,
    *,
    description: str | None,
    disabled: bool,
) -> dict[str, Any]:
    """CreateSchedule's parameters (without Name and GroupName)."""
    definition: dict[str, Any] = {
        "ScheduleExpression": when.expression,
        "ScheduleExpressionTimezone": timezone,
        # Each firing at its time: a window would only blur when a run starts.
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "Target": delivery.target(schedule_input.text),
        "State": "DISABLED" if disabled else "ENABLED",
    }
    if description:
        definition["Description"] = description
    if schedule_input.expires is not None and when.kind != "at":
        definition["EndDate"] = end_date(schedule_input.expires, delivery.max_event_age)
    return definition
