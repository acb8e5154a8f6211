"""What the protocol says a body is, worked out without the parser: the JSON
it holds, the command inside an SNS envelope, the run_id a reply must name,
and the shipped schema's verdict."""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Any

from tests.conftest import validator
from tests.fuzz.strategies import RUN_ID_REGEX

RUN_ID = re.compile(RUN_ID_REGEX)
# Linux's limit on one argument (MAX_ARG_STRLEN less its NUL), and the bytes
# of it each object field leaves for the node: --mcp-config's
# {"mcpServers":...} wrapper, --settings' room for the node's own settings.
MAX_ARGUMENT_BYTES = 128 * 1024 - 1
ARGUMENT_OBJECTS = {"json_schema": 0, "mcp_servers": len('{"mcpServers":{}}'), "settings": 1024}
NOT_JSON = object()


def strict_json(text: str) -> Any:
    """`text` read as JSON proper: NaN and Infinity are not JSON."""

    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def unwrapped(document: Any) -> Any:
    """The command a body carries: the document, or its SNS envelope's Message
    read as JSON (NOT_JSON when that is not JSON)."""
    if (
        isinstance(document, dict)
        and document.get("Type") == "Notification"
        and isinstance(document.get("Message"), str)
    ):
        try:
            return strict_json(document["Message"])
        except (ValueError, RecursionError):
            return NOT_JSON
    return document


def run_id_of(command: Any) -> str | None:
    """The command's run_id if it is a valid one."""
    if isinstance(command, dict):
        run_id = command.get("run_id")
        if isinstance(run_id, str) and RUN_ID.fullmatch(run_id):
            return run_id
    return None


def readable_run_ids(body: str) -> set[str | None] | None:
    """The run_ids a rejection of `body` may name: the command's, if it has a
    valid one, else None. Text that is not JSON proper but that Python's json
    module reads (NaN, Infinity) may go either way. No expectation (None) when
    the json module cannot read the text but a JSON reader could: thousands of
    digits, nesting deeper than Python's recursion limit."""
    try:
        return {run_id_of(unwrapped(strict_json(body)))}
    except json.JSONDecodeError:
        return {None}
    except (ValueError, RecursionError):
        pass
    try:
        return {None, run_id_of(unwrapped(json.loads(body)))}
    except (ValueError, RecursionError):
        return None


def schema_error(command: Any) -> str | None:
    """Why the shipped RunTask schema rejects `command`, or None if it accepts it."""
    if command is NOT_JSON:
        return "not JSON"
    error = next(iter(validator("RunTask").iter_errors(command)), None)
    if error is not None:
        return f"{list(error.absolute_path)}: {error.message[:300]}"
    # The rules JSON Schema cannot state: a name in both env and secrets, and
    # an object the CLI takes as one argument that the kernel's limit on one
    # argument cannot hold (with what the node wraps around it; the schema's
    # descriptions say so).
    firing = command.get("schedule")
    if firing is not None:
        # One firing, one run id; and the pattern lets February 31 through.
        if command["run_id"] != f"{firing['name']}-{firing['execution_id']}":
            return "run_id: not schedule.name-execution_id"
        try:
            date.fromisoformat(firing["scheduled_time"][:10])
        except ValueError:
            return "schedule.scheduled_time: no such day"
    task = command["task"]
    shared = set(task.get("env", {})) & set(task.get("secrets", {}))
    if shared:
        return f"task: {sorted(shared)} in both env and secrets"
    for key, reserved in ARGUMENT_OBJECTS.items():
        if key in task and len(json.dumps(task[key], separators=(",", ":"))) > (
            MAX_ARGUMENT_BYTES - reserved
        ):
            return f"task.{key}: larger than one argument"
    return None
