"""logsetup.py: the redacting filter's scope: the node's secrets everywhere, a
run's task env values in that run's lines only, and only while it lasts."""

from __future__ import annotations

import logging

import pytest

from claude_code_scheduler.logsetup import SecretFilter


def line(secrets: SecretFilter, message: str, run_id: str | None = None) -> str:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, message, None, None)
    if run_id is not None:
        record.run_id = run_id
    assert secrets.filter(record)
    return record.getMessage()


@pytest.fixture
def secrets() -> SecretFilter:
    return SecretFilter()


def test_the_nodes_secrets_are_redacted_from_every_line(secrets: SecretFilter) -> None:
    secrets.add_node_secrets(["sk-ant-node-key", "short"])
    assert line(secrets, "key sk-ant-node-key", run_id="r1") == "key ***"
    assert line(secrets, "key sk-ant-node-key") == "key ***"
    assert line(secrets, "a short word") == "a short word", "too short to be told from text"


def test_a_tasks_env_values_are_redacted_from_its_own_lines_while_it_runs(
    secrets: SecretFilter,
) -> None:
    """A task whose env value is ordinary words must not blank other runs' lines
    (the old filter kept every task's values for every later line)."""
    with secrets.for_run("r1", ["run ended", "db-password-1"]):
        assert line(secrets, "run ended: TaskCompleted", run_id="r1") == "***: TaskCompleted"
        assert line(secrets, "run ended: TaskCompleted", run_id="r2") == "run ended: TaskCompleted"
        assert line(secrets, "run ended: TaskCompleted") == "run ended: TaskCompleted"
        assert secrets.redact("pw db-password-1", "r1") == "pw ***"
        assert secrets.redact("pw db-password-1", "r2") == "pw db-password-1"
    assert line(secrets, "run ended: TaskCompleted", run_id="r1") == "run ended: TaskCompleted"


def test_a_secret_that_contains_another_is_replaced_whole(secrets: SecretFilter) -> None:
    secrets.add_node_secrets(["abcdef"])
    with secrets.for_run("r1", ["abcdef-and-more"]):
        assert secrets.redact("x abcdef-and-more y abcdef", "r1") == "x *** y ***"
