"""What a schedule sends: a RunTask template that EventBridge Scheduler fills in
at each firing (docs/schedules.md).

A schedule's target input is the text of a RunTask with three of EventBridge
Scheduler's context keywords in it:

  run_id                   "<name>-<aws.scheduler.execution-id>"
  schedule.name            the schedule's name, fixed
  schedule.execution_id    "<aws.scheduler.execution-id>"
  schedule.scheduled_time  "<aws.scheduler.scheduled-time>"
  schedule.arn             "<aws.scheduler.schedule-arn>"

The scheduler replaces each keyword in the text whenever it invokes the
target, with an execution id of its own for every invocation, so every firing
is a command with a run id no other firing has.

A signature cannot cover what is filled in after it was made, so a schedule
signs its template: `signed_form` turns a fired command back into the template
(the firing's three values back into their keywords, in those fields only),
and that is what the node verifies. Everything else, the whole task included,
is signed as sent. The task may not hold a keyword itself: the scheduler would
fill it in too and the signature would no longer match.

No I/O here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from claude_code_scheduler.protocol.commands import (
    Firing,
    InvalidCommand,
    RunTask,
    TaskSpec,
    command_body,
)
from claude_code_scheduler.protocol.parsing import parse_command

EXECUTION_ID = "<aws.scheduler.execution-id>"
SCHEDULED_TIME = "<aws.scheduler.scheduled-time>"
SCHEDULE_ARN = "<aws.scheduler.schedule-arn>"
# Every context keyword starts so, the attempt number's and any added later.
KEYWORD_PREFIX = "<aws.scheduler."
_PLACEHOLDERS = {
    "execution_id": EXECUTION_ID,
    "scheduled_time": SCHEDULED_TIME,
    "arn": SCHEDULE_ARN,
}
# What `check_template` fills in: the shapes the scheduler's own values have.
SAMPLE_FIRING = {
    EXECUTION_ID: "d32c5kddcf5bb8c3",
    SCHEDULED_TIME: "2027-01-01T09:00:00Z",
    SCHEDULE_ARN: "arn:aws:scheduler:us-east-1:123456789012:schedule/default/sample",
}


def template(name: str, task: TaskSpec) -> dict[str, Any]:
    """The unsigned RunTask template for schedule `name`; ValueError if the
    task holds a context keyword of its own."""
    body = command_body(RunTask(run_id=name, task=task))
    if KEYWORD_PREFIX in json.dumps(body["task"]):
        raise ValueError(
            f"the task holds {KEYWORD_PREFIX}...>: EventBridge Scheduler would fill it in at "
            "each firing, and a signed schedule's signature would no longer match"
        )
    body["run_id"] = f"{name}-{EXECUTION_ID}"
    body["schedule"] = {"name": name, **_PLACEHOLDERS}
    return body


def render(text: str, *, execution_id: str, scheduled_time: str, arn: str) -> str:
    """What EventBridge Scheduler does to the input text when it fires: each
    keyword replaced by its value, wherever it stands."""
    for keyword, value in (
        (EXECUTION_ID, execution_id),
        (SCHEDULED_TIME, scheduled_time),
        (SCHEDULE_ARN, arn),
    ):
        text = text.replace(keyword, value)
    return text


def check_template(text: str) -> RunTask:
    """The command a stored target input gives when it fires, checked as a node
    checks it (with sample values); InvalidCommand if it would be refused."""
    for keyword in _PLACEHOLDERS.values():
        if keyword not in text:
            raise InvalidCommand(f"the schedule's input has no {keyword}")
    command = parse_command(
        render(
            text,
            execution_id=SAMPLE_FIRING[EXECUTION_ID],
            scheduled_time=SAMPLE_FIRING[SCHEDULED_TIME],
            arn=SAMPLE_FIRING[SCHEDULE_ARN],
        )
    )
    if command.schedule is None:
        raise InvalidCommand("the schedule's input has no schedule object")
    return command


def signed_form(command: Mapping[str, Any]) -> Mapping[str, Any]:
    """What a schedule signed: for a fired command, its template; any other
    command as it is. Only the fields the scheduler fills in change, and only
    when they hold what the firing says, so a command changed anywhere else
    still fails its signature."""
    firing = command.get("schedule")
    if not isinstance(firing, dict) or not all(
        isinstance(firing.get(key), str) for key in ("name", *_PLACEHOLDERS)
    ):
        return command  # the parser says what is wrong, if the signature holds
    unfilled = dict(command)
    unfilled["schedule"] = {**firing, **_PLACEHOLDERS}
    if command.get("run_id") == f"{firing['name']}-{firing['execution_id']}":
        unfilled["run_id"] = f"{firing['name']}-{EXECUTION_ID}"
    return unfilled


__all__ = [
    "EXECUTION_ID",
    "SCHEDULED_TIME",
    "SCHEDULE_ARN",
    "Firing",
    "check_template",
    "render",
    "signed_form",
    "template",
]
