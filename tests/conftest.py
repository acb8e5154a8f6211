"""Helpers shared by every suite: schema validation of protocol messages, and the
package installed from its wheel."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from claude_code_scheduler.protocol import EVENT_TYPES, load_schema

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# scripts/run-tests.sh runs the slow suites in a second pytest beside the
# first. A root node kills and cleans up by its runs' uids (node.process),
# so the second lane's nodes get run uids of their own.
LANE_RUN_UID_BASE = os.environ.get("CLAUDE_TEST_RUN_UID_BASE")


def lane_env() -> dict[str, str]:
    """What a node started by a test needs from its lane (see LANE_RUN_UID_BASE)."""
    return {} if LANE_RUN_UID_BASE is None else {"CLAUDE_NODE_RUN_UID_BASE": LANE_RUN_UID_BASE}


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Polls `predicate` until it holds or `timeout` seconds have passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@functools.cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema(name))


def assert_valid_event(event: dict[str, Any]) -> None:
    """Every event a test sees must match the schema shipped for its type."""
    event_type = event.get("event_type")
    assert event_type in EVENT_TYPES, f"unknown event type {event_type!r}"
    errors = sorted(validator(str(event_type)).iter_errors(event), key=str)
    assert not errors, f"{event_type} does not match its schema: {errors[0].message}"


def assert_valid_command(command: dict[str, Any]) -> None:
    errors = sorted(validator("RunTask").iter_errors(command), key=str)
    assert not errors, f"RunTask does not match its schema: {errors[0].message}"


@pytest.fixture(scope="session")
def installed_wheel() -> Iterator[Path]:
    """The package as the image installs it, runnable by an unprivileged user."""
    # Imported here: tests.unprivileged imports IN_CI from this module.
    from tests.unprivileged import install_wheel  # noqa: PLC0415

    with install_wheel() as venv:
        yield venv
