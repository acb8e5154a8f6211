"""node/secrets.py and a run's secrets: read within the prefix only, retried
through an outage within the run's time, failing with SecretError that names
the reference and never the value; the value redacted from the run's output.

The runs use the mock CLI as the child (it echoes its prompt: a prompt that
holds the value is a run that prints its secret) and a fake SecretSource."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from unit_support import (
    FakeLogs,
    FakeOutbox,
    FakeQueue,
    assert_event_valid,
    client_error,
    make_config,
    received_run,
)

from claude_code_scheduler.aws.names import SecretRef, parse_secret_ref
from claude_code_scheduler.aws.secrets import SecretMissingValue
from claude_code_scheduler.client.tasks import build_command
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.node.control import RunControl
from claude_code_scheduler.node.leases import LeaseKeeper
from claude_code_scheduler.node.messages import Ending, MessageLifecycle
from claude_code_scheduler.node.outcome import RunOutcome
from claude_code_scheduler.node.secrets import SecretError, SecretResolver
from claude_code_scheduler.protocol import MockSpec, RunTask, TaskSpec
from claude_code_scheduler.redaction import MARKER

PREFIX = "claude-code-scheduler/"
DB = "arn:aws:secretsmanager:us-east-1:123456789012:secret:claude-code-scheduler/db-AbCdEf"
TOKEN = "/claude-code-scheduler/token"
VALUES = {DB: "db-secret-V4lue-91", TOKEN: "tok-secret-V4lue-37"}


class FakeSource:
    """aws.secrets.SecretSource: values by reference; `failures` are raised
    first, one per read; `on_read` runs before each read."""

    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.values = dict(VALUES if values is None else values)
        self.failures: list[Exception] = []
        self.reads: list[str] = []
        self.on_read: Callable[[], None] | None = None

    def read(self, ref: SecretRef) -> str:
        self.reads.append(ref.ref)
        if self.on_read is not None:
            self.on_read()
        if self.failures:
            raise self.failures.pop(0)
        if ref.ref not in self.values:
            raise client_error("ResourceNotFoundException", operation="GetSecretValue")
        return self.values[ref.ref]


def refs(**names: str) -> dict[str, SecretRef]:
    return {name: parse_secret_ref(ref) for name, ref in names.items()}


def resolve(source: FakeSource, time_left: float = 60.0, **names: str) -> dict[str, str]:
    resolver = SecretResolver(source, PREFIX)
    return resolver.resolve(refs(**names), interrupt=threading.Event(), time_left=lambda: time_left)


# --- the resolver --------------------------------------------------------------------


def test_secrets_are_read_by_reference_from_both_services() -> None:
    source = FakeSource()
    assert resolve(source, DB_PASSWORD=DB, API_TOKEN=TOKEN) == {
        "DB_PASSWORD": VALUES[DB],
        "API_TOKEN": VALUES[TOKEN],
    }
    assert source.reads == [DB, TOKEN]


@pytest.mark.parametrize(
    "outside",
    [
        "/other-app/token",
        "claude-code-scheduler-evil/token",  # a prefix is a path, not a string start
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf",
    ],
)
def test_a_reference_outside_the_prefix_is_refused_before_any_call(outside: str) -> None:
    source = FakeSource({outside: "never-read-value"})
    with pytest.raises(SecretError) as info:
        resolve(source, DB_PASSWORD=DB, OTHER=outside)
    assert source.reads == [], "nothing is read, not even the secrets inside the prefix"
    assert outside in str(info.value) and "--secrets-prefix" in str(info.value)
    assert "OTHER" in str(info.value)


def test_control_the_same_reference_is_read_with_a_wider_prefix() -> None:
    source = FakeSource({"/other-app/token": "other-value-123"})
    resolver = SecretResolver(source, "other-app/")
    found = resolver.resolve(
        refs(OTHER="/other-app/token"), interrupt=threading.Event(), time_left=lambda: 60.0
    )
    assert found == {"OTHER": "other-value-123"}


def test_a_missing_secret_names_the_reference_and_the_aws_error() -> None:
    with pytest.raises(SecretError) as info:
        resolve(FakeSource({}), DB_PASSWORD=DB)
    text = str(info.value)
    assert DB in text and "ResourceNotFoundException" in text and "DB_PASSWORD" in text
    assert not info.value.interrupted


@pytest.mark.parametrize(
    ("failure", "fragment"),
    [
        (client_error("AccessDeniedException", operation="GetSecretValue"), "AccessDenied"),
        (client_error("ParameterNotFound", operation="GetParameter"), "ParameterNotFound"),
        (SecretMissingValue("holds binary data, not a string"), "binary"),
    ],
)
def test_a_secret_that_cannot_be_read_fails_at_once(failure: Exception, fragment: str) -> None:
    source = FakeSource()
    source.failures = [failure]
    with pytest.raises(SecretError) as info:
        resolve(source, TOKEN_VAR=TOKEN)
    assert fragment in str(info.value) and TOKEN in str(info.value)
    assert source.reads == [TOKEN], "not retried: it will not get better"


def test_an_outage_is_retried_and_then_read() -> None:
    source = FakeSource()
    source.failures = [client_error("ThrottlingException", 400, "GetSecretValue")]
    assert resolve(source, DB_PASSWORD=DB) == {"DB_PASSWORD": VALUES[DB]}
    assert source.reads == [DB, DB]


def test_an_outage_that_outlasts_the_runs_time_is_a_secret_error() -> None:
    source = FakeSource()
    source.failures = [client_error("ServiceUnavailable", 503, "GetSecretValue")] * 5
    with pytest.raises(SecretError) as info:
        resolve(source, time_left=0.0, DB_PASSWORD=DB)
    assert "before the run's timeout" in str(info.value) and "ServiceUnavailable" in str(info.value)
    assert source.reads == [DB], "no sleep past the deadline"


def test_a_node_that_stops_while_reading_hands_the_run_back() -> None:
    source = FakeSource()
    source.failures = [client_error("ServiceUnavailable", 503, "GetSecretValue")]
    stop = threading.Event()
    stop.set()
    with pytest.raises(SecretError) as info:
        SecretResolver(source, PREFIX).resolve(
            refs(DB_PASSWORD=DB), interrupt=stop, time_left=lambda: 60.0
        )
    assert info.value.interrupted


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("a\x00b-value", "NUL"), ("x" * (128 * 1024), "kernel's limit")],
    ids=["nul", "too-long"],
)
def test_a_value_no_environment_can_hold_is_refused(value: str, fragment: str) -> None:
    with pytest.raises(SecretError) as info:
        resolve(FakeSource({DB: value}), DB_PASSWORD=DB)
    assert fragment in str(info.value)
    assert value[:20] not in str(info.value)


# --- a run with secrets ----------------------------------------------------------------


class Runs:
    """One TaskRun at a time, with the mock CLI, fakes for the bus and the
    bucket, the real message lifecycle, and a clock the source can move."""

    def __init__(self, tmp_path: Path, source: FakeSource | None) -> None:
        self.queue = FakeQueue()
        self.outbox = FakeOutbox()
        self.logs = FakeLogs()
        self.leases = LeaseKeeper(self.queue, 30)
        self.messages = MessageLifecycle(self.leases, self.outbox.publish)
        self.control = RunControl()
        self.config = make_config(tmp_path, secrets_prefix=PREFIX)
        self.source = source
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def run(self, **task: Any) -> RunOutcome:
        command = RunTask("run-1", TaskSpec(mock=MockSpec(duration_seconds=0.0), **task))
        run = received_run(
            self.config,
            command,
            messages=self.messages,
            outbox=self.outbox,
            logs=self.logs,
            control=self.control,
            secret_source=self.source,
            clock=self.clock,
        )
        outcome = run.execute()
        self.leases.tick()
        for body in self.outbox.bodies:
            assert_event_valid(body)
        return outcome

    def output(self) -> str:
        chunks = [b["data"] for b in self.outbox.bodies if b["event_type"] == "TaskOutput"]
        return "".join(c["data"] for c in sorted(chunks, key=lambda c: c["chunk_index"]))

    def log(self) -> str:
        return self.logs.uploads["logs/run-1.log"].decode()

    def published(self) -> str:
        return repr(self.outbox.bodies)


def test_a_run_that_prints_its_secret_shows_the_marker_and_its_control_the_value(
    tmp_path: Path,
) -> None:
    value = VALUES[DB]
    runs = Runs(tmp_path, FakeSource())
    outcome = runs.run(prompt=f"echo {value}", secrets={"DB_PASSWORD": parse_secret_ref(DB)})
    assert outcome.ending is Ending.COMPLETED
    assert value not in runs.published() and MARKER in runs.output()
    assert runs.output() == runs.log()
    control = Runs(tmp_path, FakeSource())
    control.run(prompt=f"echo {value}")
    assert value in control.output() and value in control.log(), "control: not a secret there"


def test_a_secret_error_fails_the_run_without_starting_it(tmp_path: Path) -> None:
    runs = Runs(tmp_path, FakeSource({}))
    outcome = runs.run(prompt="hi", secrets={"DB_PASSWORD": parse_secret_ref(DB)})
    assert outcome.ending is Ending.FAILED
    error = outcome.event.data["error"]
    assert error["type"] == "SecretError" and DB in error["message"]
    assert "ResourceNotFoundException" in error["message"]
    assert outcome.event.data["retryable"] is False
    assert runs.outbox.types() == ["TaskStarted", "TaskFailed"], "no output: no CLI"
    assert [c[0] for c in runs.queue.calls] == ["delete"], "a missing secret stays missing"


def test_a_reference_outside_the_prefix_fails_the_run(tmp_path: Path) -> None:
    runs = Runs(tmp_path, FakeSource({"/other/x": "other-value-1"}))
    outcome = runs.run(prompt="hi", secrets={"X": parse_secret_ref("/other/x")})
    assert outcome.event.data["error"]["type"] == "SecretError"
    assert "/other/x" in outcome.event.data["error"]["message"]
    assert runs.source is not None and runs.source.reads == []


def test_a_node_with_no_secret_reader_fails_a_run_that_needs_one(tmp_path: Path) -> None:
    runs = Runs(tmp_path, None)
    outcome = runs.run(prompt="hi", secrets={"X": parse_secret_ref(TOKEN)})
    assert outcome.event.data["error"]["type"] == "SecretError"


def test_a_node_stopping_while_reading_hands_the_run_back(tmp_path: Path) -> None:
    runs = Runs(tmp_path, FakeSource())
    assert runs.source is not None
    runs.source.failures = [client_error("ServiceUnavailable", 503, "GetSecretValue")]
    runs.source.on_read = runs.control.cancel.set
    outcome = runs.run(prompt="hi", secrets={"X": parse_secret_ref(TOKEN)})
    assert outcome.ending is Ending.HANDED_BACK
    assert outcome.event.data["error"]["type"] == "NodeShutdown"
    assert outcome.event.data["retryable"] is True


@pytest.mark.parametrize(("seconds", "ending"), [(6.0, "TaskFailed"), (1.0, "TaskCompleted")])
def test_the_time_spent_reading_secrets_counts_against_the_runs_timeout(
    tmp_path: Path, seconds: float, ending: str
) -> None:
    """A 5 s run whose secrets take 6 s to read has no time left for its CLI;
    the control, 1 s, runs."""
    runs = Runs(tmp_path, FakeSource())
    assert runs.source is not None

    def slow() -> None:
        runs.now += seconds

    runs.source.on_read = slow
    outcome = runs.run(prompt="hi", timeout_seconds=5.0, secrets={"X": parse_secret_ref(TOKEN)})
    assert outcome.event.event_type == ending
    if ending == "TaskFailed":
        assert outcome.event.data["error"]["type"] == "Timeout"


# --- submit --secret ---------------------------------------------------------------


def test_submit_puts_references_in_task_secrets() -> None:
    command = build_command({"prompt": "hi", "secrets": (f"DB={DB}", f"API_TOKEN={TOKEN}")})
    assert {name: ref.ref for name, ref in command.task.secrets.items()} == {
        "DB": DB,
        "API_TOKEN": TOKEN,
    }
    assert '"secrets":{"DB":' in command.to_json()
    for bad in ("NOVALUE", "=x", "X=arn:aws:s3:::bucket"):
        with pytest.raises(ConfigError, match="--secret"):
            build_command({"prompt": "hi", "secrets": (bad,)})
    with pytest.raises(ConfigError, match=r"both task\.env and task\.secrets"):
        build_command({"prompt": "hi", "env": ("DB=x",), "secrets": (f"DB={DB}",)})
