"""What `schedule list` and `schedule show` say of a stored schedule: its
state, expression, signature and task, with the task's env and the like
reduced to names."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from claude_code_scheduler.client.schedules.definition import signature_header
from claude_code_scheduler.client.schedules.expressions import When, iso

# What `list` shows of a prompt.
PROMPT_CHARS = 40
# Task fields whose values may hold secrets (env values, an MCP server's env, a
# settings object's env): `show` prints their names only, as TaskSpec's repr does.
NAMES_ONLY = ("env", "secrets", "mcp_servers", "settings")


@dataclass(frozen=True)
class ScheduleView:
    """What `list` and `show` say of one stored schedule."""

    name: str
    definition: dict[str, Any]
    command: dict[str, Any] | None  # the decoded input; None when it is not JSON

    @property
    def when(self) -> When:
        return When.stored(str(self.definition.get("ScheduleExpression", "")))

    @property
    def timezone(self) -> str:
        return str(self.definition.get("ScheduleExpressionTimezone") or "UTC")

    @property
    def header(self) -> dict[str, Any] | None:
        return signature_header(self.command) if self.command is not None else None

    @property
    def signed_until(self) -> datetime | None:
        header = self.header
        return datetime.fromtimestamp(header["exp"], UTC) if header else None

    @property
    def task(self) -> dict[str, Any]:
        task = (self.command or {}).get("task")
        return task if isinstance(task, dict) else {}

    def summary(self) -> dict[str, Any]:
        task = self.task
        prompt = " ".join(str(task.get("prompt", "")).split())  # one table row
        return {
            "name": self.name,
            "state": self.definition.get("State"),
            "expression": self.definition.get("ScheduleExpression"),
            "timezone": self.timezone,
            "signed_until": iso(self.signed_until) if self.signed_until else None,
            "task_name": task.get("name"),
            "task_id": task.get("task_id"),
            "prompt": prompt[:PROMPT_CHARS],
        }

    def details(self) -> dict[str, Any]:
        target = self.definition.get("Target", {})
        header = self.header
        end = self.definition.get("EndDate")
        return {
            "name": self.name,
            "arn": self.definition.get("Arn"),
            "state": self.definition.get("State"),
            "expression": self.definition.get("ScheduleExpression"),
            "timezone": self.timezone,
            "description": self.definition.get("Description"),
            "end_date": iso(end) if isinstance(end, datetime) else end,
            "target": {
                "topic_arn": target.get("Arn"),
                "role_arn": target.get("RoleArn"),
                "dead_letter_arn": target.get("DeadLetterConfig", {}).get("Arn"),
                "retry_policy": target.get("RetryPolicy"),
            },
            "signature": (
                {
                    "kid": header.get("kid"),
                    "issued": iso(datetime.fromtimestamp(header["iat"], UTC))
                    if isinstance(header.get("iat"), int | float)
                    else None,
                    "expires": iso(datetime.fromtimestamp(header["exp"], UTC)),
                }
                if header
                else None
            ),
            "run_id": (self.command or {}).get("run_id"),
            "task": shown_task(self.task),
        }


def shown_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """The task as `show` prints it: NAMES_ONLY fields reduced to their names."""
    shown = dict(task)
    for field in NAMES_ONLY:
        value = shown.get(field)
        if isinstance(value, dict):
            shown[field] = sorted(value)
    return shown


def view_of(name: str, definition: dict[str, Any]) -> ScheduleView:
    text = definition.get("Target", {}).get("Input")
    try:
        command = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        command = None
    return ScheduleView(name, definition, command if isinstance(command, dict) else None)


def table(views: list[ScheduleView]) -> str:
    rows = [("NAME", "STATE", "SCHEDULE", "SIGNED UNTIL", "TASK")]
    for view in views:
        summary = view.summary()
        until = summary["signed_until"] or ("unsigned" if view.command is not None else "-")
        task = summary["task_name"] or summary["prompt"] or "-"
        rows.append(
            (
                view.name,
                str(summary["state"]),
                f"{summary['expression']} {summary['timezone']}",
                until,
                task,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in rows
    )
