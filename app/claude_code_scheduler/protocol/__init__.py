"""Protocol version 1: the RunTask command and the control-bus events.

The node and the operator commands share this package and nothing else of
each other's. `commands` is the RunTask, `parsing` turns what arrives on the
queue into one, `events` builds what goes on the bus, and `schemas/` holds the
same shapes as JSON Schemas for other languages and for the tests.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from claude_code_scheduler.protocol.commands import (
    PERMISSION_MODES,
    PROTOCOL_VERSION,
    InvalidCommand,
    MockSpec,
    RunTask,
    TaskSpec,
)
from claude_code_scheduler.protocol.events import (
    EVENT_TYPES,
    TERMINAL_EVENT_TYPES,
    ErrorType,
    Event,
    EventType,
    NodeStatus,
)
from claude_code_scheduler.protocol.parsing import parse_command


def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema shipped for a command or event type, e.g. 'RunTask'."""
    text = resources.files(__package__).joinpath("schemas", f"{name}.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


__all__ = [
    "EVENT_TYPES",
    "PERMISSION_MODES",
    "PROTOCOL_VERSION",
    "TERMINAL_EVENT_TYPES",
    "ErrorType",
    "Event",
    "EventType",
    "InvalidCommand",
    "MockSpec",
    "NodeStatus",
    "RunTask",
    "TaskSpec",
    "load_schema",
    "parse_command",
]
