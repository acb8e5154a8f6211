"""Thin adapter over EventBridge Scheduler's schedules in one schedule group,
for the `schedule` commands. No logic here: what a schedule holds is
client.schedules'.

A definition is the dict the API takes (CreateSchedule's and UpdateSchedule's
parameters without Name and GroupName); `get` answers the same shape, so an
update can send back every field it read. UpdateSchedule replaces the whole
definition: a field left out is reset, not kept ("UpdateSchedule" in the
EventBridge Scheduler API reference).

IAM (deploy/iam/operator-policy.json): scheduler:CreateSchedule,
GetSchedule, ListSchedules, UpdateSchedule and DeleteSchedule on the group's
schedules, and iam:PassRole on the scheduler's execution role, which
CreateSchedule and UpdateSchedule need.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import botocore.exceptions

from claude_code_scheduler.aws.errors import error_code, explain
from claude_code_scheduler.errors import ConfigError

if TYPE_CHECKING:
    from mypy_boto3_scheduler import EventBridgeSchedulerClient

# ListSchedules answers at most 100 schedules a page (the API reference,
# ListSchedules MaxResults).
MAX_SCHEDULES_PER_PAGE = 100
# How much of an unexpected error message a ConfigError quotes.
_MESSAGE_CHARS = 300
# What GetSchedule answers that UpdateSchedule takes back (the rest, Arn and
# the dates of creation and last change, are the service's own).
DEFINITION_FIELDS = (
    "ScheduleExpression",
    "ScheduleExpressionTimezone",
    "FlexibleTimeWindow",
    "Target",
    "State",
    "Description",
    "StartDate",
    "EndDate",
    "KmsKeyArn",
    "ActionAfterCompletion",
)


class ScheduleStore:
    """CreateSchedule, GetSchedule, ListSchedules, UpdateSchedule and
    DeleteSchedule on the schedules of `group`; every AWS error a user can fix
    is a one-line ConfigError."""

    def __init__(self, scheduler: EventBridgeSchedulerClient, group: str) -> None:
        self._scheduler = scheduler
        self.group = group

    def create(self, name: str, definition: dict[str, Any]) -> str:
        """The new schedule's ARN."""
        with self._errors(name, creating=True):
            answer = self._scheduler.create_schedule(Name=name, GroupName=self.group, **definition)
        return str(answer["ScheduleArn"])

    def get(self, name: str) -> dict[str, Any]:
        """The schedule's definition (DEFINITION_FIELDS that are set) and its Arn."""
        with self._errors(name):
            answer = self._scheduler.get_schedule(Name=name, GroupName=self.group)
        fields = {key: answer.get(key) for key in ("Arn", *DEFINITION_FIELDS)}
        return {key: value for key, value in fields.items() if value is not None}

    def names(self) -> Iterator[str]:
        """Every schedule's name in the group, a page at a time."""
        token: str | None = None
        while True:
            with self._errors(None):
                if token is None:
                    page = self._scheduler.list_schedules(
                        GroupName=self.group, MaxResults=MAX_SCHEDULES_PER_PAGE
                    )
                else:
                    page = self._scheduler.list_schedules(
                        GroupName=self.group, MaxResults=MAX_SCHEDULES_PER_PAGE, NextToken=token
                    )
            for summary in page.get("Schedules", []):
                yield summary["Name"]
            token = page.get("NextToken")
            if not token:
                return

    def update(self, name: str, definition: dict[str, Any]) -> None:
        """Replace the schedule's whole definition with `definition`."""
        sent = {key: value for key, value in definition.items() if key in DEFINITION_FIELDS}
        with self._errors(name):
            self._scheduler.update_schedule(Name=name, GroupName=self.group, **sent)

    def delete(self, name: str) -> None:
        with self._errors(name):
            self._scheduler.delete_schedule(Name=name, GroupName=self.group)

    @contextlib.contextmanager
    def _errors(self, name: str | None, *, creating: bool = False) -> Iterator[None]:
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            raise self._explain(exc, name, creating) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise explain(exc, "--endpoint-url", "EventBridge Scheduler") from None

    def _explain(
        self, exc: botocore.exceptions.ClientError, name: str | None, creating: bool
    ) -> ConfigError:
        code = error_code(exc)
        # One line, whatever the endpoint answered (an emulator's HTML page).
        message = " ".join(str(exc.response.get("Error", {}).get("Message") or code).split())
        if code == "ResourceNotFoundException":
            if name is None or "group" in message.lower():
                return ConfigError(
                    f"--group: no schedule group {self.group!r} (deploy/cloudformation/"
                    "schedules.yaml makes it)"
                )
            return ConfigError(f"no schedule {name!r} in group {self.group!r}")
        if code == "ConflictException" and creating:
            return ConfigError(f"schedule {name!r} already exists in group {self.group!r}")
        if code == "ValidationException":
            return ConfigError(f"EventBridge Scheduler refused the schedule: {message}")
        if code in {"AccessDeniedException", "ConflictException"} or message == code:
            return explain(exc, "--group", f"schedule group {self.group!r}")
        return ConfigError(f"--group {self.group}: {code}: {message[:_MESSAGE_CHARS]}")
