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


def test_token_shapes_are_redacted_from_any_line(secrets: SecretFilter) -> None:
    key = "AKIAIOSFODNN7EXAMPLE"
    assert line(secrets, f"using {key} now") == "using *** now"
    assert line(secrets, "using AKIAIOSFODNN7EXAMPL now") == "using AKIAIOSFODNN7EXAMPL now"


def test_the_nodes_credentials_are_tracked_as_they_rotate(secrets: SecretFilter) -> None:
    current = [["AKIAOLD0000000000000", "old-secret-key-value"]]
    secrets.track_credentials(lambda: current[0])
    assert line(secrets, "old-secret-key-value") == "***"
    current[0] = ["ASIANEW0000000000000", "new-secret-key-value", "new-session-token"]
    assert line(secrets, "new-secret-key-value") == "new-secret-key-value", "not read yet"
    secrets.refresh_credentials()
    assert line(secrets, "new-session-token old-secret-key-value") == "*** ***"


def test_credentials_that_cannot_be_read_keep_the_known_ones(
    secrets: SecretFilter, caplog: pytest.LogCaptureFixture
) -> None:
    answers: list[object] = [["first-secret-key-1"], OSError("endpoint down")]

    def current() -> list[str]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    secrets.track_credentials(current)
    secrets.refresh_credentials()
    assert "could not read the node's AWS credentials" in caplog.text
    assert line(secrets, "first-secret-key-1") == "***"
