"""`schedule create`'s checks before any call: the expressions, the time zone,
the retry policy and the signature's window; the template it stores, signed
or not; what `show` prints of it; and the adapter's one-line errors.

Against a real endpoint: tests/integration/test_schedules.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

import botocore.exceptions
import click
import pytest

from claude_code_scheduler.aws.schedules import ScheduleStore
from claude_code_scheduler.cli import main
from claude_code_scheduler.client.options import task_options
from claude_code_scheduler.client.schedules.commands import create
from claude_code_scheduler.client.schedules.definition import (
    DEFAULT_EVENT_AGE_SECONDS,
    FIRING_PRECISION_SECONDS,
    Delivery,
    Input,
    check_signed_by,
    check_window,
    definition_of,
    delivery_of,
    end_date,
    make_input,
    sign_input,
)
from claude_code_scheduler.client.schedules.expressions import (
    When,
    check_at,
    check_cron,
    check_rate,
    check_timezone,
    when_of,
)
from claude_code_scheduler.client.schedules.views import shown_task, table, view_of
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.protocol import TaskSpec
from claude_code_scheduler.protocol.schedules import render
from claude_code_scheduler.protocol.signing import (
    KeySet,
    SignatureRejected,
    generate_key,
    verify_command,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()
UTC_ZONE = ZoneInfo("UTC")
KEY = generate_key("unit-2026")
TOPIC = "arn:aws:sns:us-east-1:123456789012:claude-code-scheduler-command-topic"
ROLE = "arn:aws:iam::123456789012:role/claude-code-scheduler-scheduler"
DLQ = "arn:aws:sqs:us-east-1:123456789012:claude-code-scheduler-scheduler-dlq"
DELIVERY = Delivery(topic_arn=TOPIC, role_arn=ROLE, dead_letter_arn=DLQ)


# --- expressions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "0 9 ? * MON-FRI *",
        "*/15 * * * ? *",
        "0 18 L * ? *",
        "30 2 ? * 6#3 2027",
        "0 0/2 1,15 JAN-JUN ? *",
    ],
)
def test_cron_expressions_the_service_takes_pass(text: str) -> None:
    assert check_cron(text) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 9 * * MON", "has 5 fields; it needs 6"),
        ("0 0 9 ? * MON-FRI *", "has 7 fields"),
        ("0 9 * * MON-FRI *", "exactly one of day-of-month"),
        ("0 9 ? * ? *", "exactly one of day-of-month"),
        ("61 9 ? * * *", "minutes go from 0 to 59, not 61"),
        ("0 24 ? * * *", "hours go from 0 to 23, not 24"),
        ("0 9 ? * MON;rm *", "not a valid day-of-week field"),
    ],
)
def test_bad_cron_expressions_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^--cron: ") as caught:
        check_cron(text)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("5 minutes", "5 minutes"),
        ("1 minute", "1 minute"),
        ("1 day", "1 day"),
        ("12 hours", "12 hours"),
    ],
)
def test_rates(text: str, stored: str) -> None:
    assert check_rate(text) == stored


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 minutes", 'write "1 minute"'),
        ("5 minute", 'write "5 minutes"'),
        ("0 minutes", "1 or more"),
        ("30 seconds", "seconds are not supported"),
        ("rate(5 minutes)", 'must be "<N> minutes"'),
        ("-5 minutes", 'must be "<N> minutes"'),
    ],
)
def test_bad_rates(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^--rate: ") as caught:
        check_rate(text)
    assert message in str(caught.value)


def test_at_is_a_naive_time_in_the_timezone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    moment = check_at("2027-01-01T09:00:00", berlin, NOW)
    assert moment.astimezone(UTC) == datetime(2027, 1, 1, 8, 0, tzinfo=UTC)
    for text, message in [
        ("2027-01-01T09:00:00Z", "without a zone"),
        ("2027-01-01 09:00", "must be YYYY-MM-DDTHH:MM:SS"),
        ("2027-02-30T09:00:00", "day is out of range"),
        ("2026-11-30T09:00:00", "is in the past"),
    ]:
        with pytest.raises(ConfigError, match=r"^--at: ") as caught:
            check_at(text, berlin, NOW)
        assert message in str(caught.value), text


def test_timezones_are_iana_names() -> None:
    assert check_timezone("America/New_York").key == "America/New_York"
    for name in ("Mars/Olympus", "../etc/passwd", ""):
        with pytest.raises(ConfigError, match=r"^--timezone: .* is not an IANA time zone name"):
            check_timezone(name)


def test_exactly_one_kind_of_expression() -> None:
    assert when_of({"rate": "5 minutes"}, UTC_ZONE, NOW) == When("rate", "5 minutes")
    assert when_of({"cron": "0 9 ? * * *"}, UTC_ZONE, NOW).expression == "cron(0 9 ? * * *)"
    for given in ({}, {"rate": "5 minutes", "cron": "0 9 ? * * *"}):
        with pytest.raises(ConfigError, match=r"exactly one of --cron, --rate and --at"):
            when_of(given, UTC_ZONE, NOW)


def test_a_stored_expression_reads_back() -> None:
    assert When.stored("at(2027-01-01T09:00:00)") == When("at", "2027-01-01T09:00:00")
    assert When.stored("cron(0 9 ? * * *)").text == "0 9 ? * * *"


# --- the signature's window --------------------------------------------------------------


def test_the_end_date_leaves_the_retry_window_and_a_minute_before_exp() -> None:
    expires = NOW + 90 * 86400
    end = end_date(expires, 3600)
    assert end.timestamp() == expires - 3600 - FIRING_PRECISION_SECONDS
    # The last firing, a minute late and retried for its whole event age, is
    # still published before the signature's exp.
    assert end.timestamp() + FIRING_PRECISION_SECONDS + 3600 <= expires


def test_a_signature_too_short_for_the_retry_window_is_refused() -> None:
    rate = When("rate", "5 minutes")
    check_window(rate, UTC_ZONE, NOW + 3600 + 61, 3600, NOW)
    with pytest.raises(ConfigError, match=r"^--signature-ttl: .*outlive --max-event-age"):
        check_window(rate, UTC_ZONE, NOW + 3600 + 60, 3600, NOW)


def test_a_one_time_schedule_must_fire_inside_the_signatures_window() -> None:
    """The service ignores EndDate for at() schedules: the time itself is checked."""
    at = When("at", "2026-12-02T12:00:00")
    check_window(at, UTC_ZONE, NOW + 2 * 86400, 3600, NOW)
    with pytest.raises(ConfigError, match=r"^--at: .*raise --signature-ttl"):
        check_window(at, UTC_ZONE, NOW + 86400, 3600, NOW)


# --- the template ------------------------------------------------------------------------


def fired(schedule_input: Input, execution_id: str) -> dict[str, Any]:
    return dict(
        json.loads(
            render(
                schedule_input.text,
                execution_id=execution_id,
                scheduled_time="2026-12-01T12:05:00Z",
                arn="arn:aws:scheduler:us-east-1:123456789012:schedule/claude-code-scheduler/n",
            )
        )
    )


def test_a_signed_template_verifies_for_every_firing_and_not_when_changed() -> None:
    task = TaskSpec(prompt="nightly review", task_id="nightly")
    schedule_input = make_input("nightly", task, KEY, now=NOW, ttl=86400)
    assert schedule_input.expires == NOW + 86400
    keys = KeySet.of_public_jwks([KEY.public_jwk()])
    for execution_id in ("a1", "b2"):
        command = fired(schedule_input, execution_id)
        assert command["run_id"] == f"nightly-{execution_id}"
        assert verify_command(command, keys, now=NOW + 600) == KEY.kid
    changed = fired(schedule_input, "c3")
    changed["task"]["prompt"] = "something else"
    with pytest.raises(SignatureRejected, match=r"signature invalid"):
        verify_command(changed, keys, now=NOW + 600)


def test_renew_signs_again_only_what_its_key_signed() -> None:
    """Whoever may update a schedule could change its stored task and wait
    for the next renew to sign it; renew refuses a template its key did not
    sign as it stands, and what it would have signed shows the attack."""
    keys = KeySet.of_public_jwks([KEY.public_jwk()])
    signed = json.loads(make_input("nightly", TaskSpec(prompt="review"), KEY, now=NOW, ttl=60).text)
    check_signed_by("nightly", signed, KEY)  # expired by now: renew is for that
    changed = {**signed, "task": {**signed["task"], "prompt": "print the deploy keys"}}
    with pytest.raises(ConfigError, match=r"not signed by key 'unit-2026' \(signature invalid"):
        check_signed_by("nightly", changed, KEY)
    # Without the check, renew's next step would have signed the change.
    laundered = json.loads(sign_input(changed, KEY, now=NOW, ttl=86400).text)
    assert verify_command(fired_text(laundered, "x1"), keys, now=NOW) == KEY.kid
    with pytest.raises(ConfigError, match=r"not signed by key 'unit-2026'"):
        check_signed_by("nightly", signed, generate_key("unit-2026"))
    unsigned = json.loads(make_input("plain", TaskSpec(prompt="hi"), None, now=NOW, ttl=60).text)
    with pytest.raises(ConfigError, match="is not signed"):
        check_signed_by("plain", unsigned, KEY)


def fired_text(command: dict[str, Any], execution_id: str) -> dict[str, Any]:
    text = render(
        json.dumps(command),
        execution_id=execution_id,
        scheduled_time="2027-01-01T09:00:00Z",
        arn="arn:aws:scheduler:us-east-1:123456789012:schedule/g/n",
    )
    return dict(json.loads(text))


def test_an_unsigned_template_has_no_expiry_and_no_signature() -> None:
    schedule_input = make_input("plain", TaskSpec(prompt="hi"), None, now=NOW, ttl=86400)
    assert schedule_input.expires is None
    assert "signature" not in json.loads(schedule_input.text)


def test_a_task_holding_a_keyword_is_refused() -> None:
    task = TaskSpec(prompt="echo <aws.scheduler.attempt-number>")
    with pytest.raises(ConfigError, match=r"^invalid task: the task holds <aws.scheduler"):
        make_input("n", task, None, now=NOW, ttl=86400)


def test_the_definition() -> None:
    signed = make_input("n", TaskSpec(prompt="hi"), KEY, now=NOW, ttl=86400)
    rate = When("rate", "1 hour")
    definition = definition_of(
        rate, "Europe/Berlin", DELIVERY, signed, description="hourly", disabled=True
    )
    assert definition == {
        "ScheduleExpression": "rate(1 hour)",
        "ScheduleExpressionTimezone": "Europe/Berlin",
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "Target": {
            "Arn": TOPIC,
            "RoleArn": ROLE,
            "Input": signed.text,
            "RetryPolicy": {
                "MaximumEventAgeInSeconds": DEFAULT_EVENT_AGE_SECONDS,
                "MaximumRetryAttempts": 3,
            },
            "DeadLetterConfig": {"Arn": DLQ},
        },
        "State": "DISABLED",
        "Description": "hourly",
        "EndDate": end_date(NOW + 86400, DEFAULT_EVENT_AGE_SECONDS),
    }
    unsigned = make_input("n", TaskSpec(prompt="hi"), None, now=NOW, ttl=86400)
    plain = definition_of(rate, "UTC", DELIVERY, unsigned, description=None, disabled=False)
    assert "EndDate" not in plain and "Description" not in plain and plain["State"] == "ENABLED"
    once = definition_of(
        When("at", "2026-12-01T18:00:00"), "UTC", DELIVERY, signed, description=None, disabled=False
    )
    assert "EndDate" not in once, "ignored for one-time schedules"


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("command_topic_arn", "--command-topic-arn is required"),
        ("role_arn", "--role-arn: the scheduler's execution role"),
        ("dead_letter_arn", "--dead-letter-arn: an SQS queue ARN"),
    ],
)
def test_delivery_needs_the_topic_the_role_and_the_dlq(missing: str, message: str) -> None:
    options = {"command_topic_arn": TOPIC, "role_arn": ROLE, "dead_letter_arn": DLQ, missing: None}
    with pytest.raises(ConfigError, match=rf"^{message}"):
        delivery_of(options)
    option = message.split(maxsplit=1)[0].rstrip(":")
    with pytest.raises(ConfigError, match=rf"^{option}"):
        delivery_of({**options, missing: "arn:aws:s3:::not-this"})


# --- what show and list print ---------------------------------------------------------------


def test_show_prints_env_and_the_like_by_name_only() -> None:
    task = TaskSpec(
        prompt="deploy",
        env={"DEPLOY_TOKEN": "tok-123-secret"},
        settings={"env": {"OTHER": "also-secret"}},
        mcp_servers={"github": {"command": "gh-mcp", "env": {"GH_TOKEN": "ghp_secret"}}},
    )
    schedule_input = make_input("deploy", task, KEY, now=NOW, ttl=86400)
    definition = definition_of(
        When("rate", "1 day"), "UTC", DELIVERY, schedule_input, description=None, disabled=False
    )
    view = view_of("deploy", {"Arn": "arn:x", **definition})
    details = json.dumps(view.details())
    for secret in ("tok-123-secret", "also-secret", "ghp_secret"):
        assert secret not in details
    assert view.details()["task"]["env"] == ["DEPLOY_TOKEN"]
    assert view.details()["signature"]["kid"] == KEY.kid
    assert shown_task({"prompt": "p", "env": {"A": "1"}}) == {"prompt": "p", "env": ["A"]}
    rows = table([view]).splitlines()
    assert rows[0].split() == ["NAME", "STATE", "SCHEDULE", "SIGNED", "UNTIL", "TASK"]
    assert rows[1].split() == [
        "deploy",
        "ENABLED",
        "rate(1",
        "day)",
        "UTC",
        "2026-12-02T12:00:00Z",
        "deploy",
    ]


def test_a_schedule_that_is_not_ours_reads_as_such() -> None:
    view = view_of("other", {"ScheduleExpression": "rate(1 day)", "Target": {"Input": "hello"}})
    assert view.command is None and view.signed_until is None and view.task == {}
    assert table([view]).splitlines()[1].split()[-2:] == ["-", "-"]


# --- the command line -----------------------------------------------------------------------


def test_create_takes_exactly_submits_task_options() -> None:
    @click.command()
    @task_options
    def probe(**_: Any) -> None:
        pass

    task_names = {param.name for param in probe.params}
    create_names = {param.name for param in create.params}
    assert task_names <= create_names
    assert "schedule_name" in create_names, "NAME must not clash with the task's --name"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "bad name", "--rate", "1 day", "--prompt", "p"], "NAME: 'bad name' must be"),
        (["create", "n", "--rate", "1 day", "--prompt", "p"], "--command-topic-arn is required"),
        (["create", "n", "--cron", "0 9 * * * *", "--prompt", "p"], "--cron: exactly one of"),
        (["create", "n", "--rate", "1 day", "--prompt", "p", "--max-retries", "186"], "186"),
        (["list", "--group", "bad/group"], "--group: 'bad/group' must be"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "CLAUDE_COMMAND_TOPIC_ARN",
        "CLAUDE_SCHEDULER_ROLE_ARN",
        "CLAUDE_SCHEDULER_DLQ_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    with pytest.raises(SystemExit) as caught:
        main(["schedule", *args])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


# --- the adapter's errors -----------------------------------------------------------------------


class Refusing:
    """A scheduler client whose every call fails with one AWS error."""

    def __init__(self, code: str, message: str) -> None:
        self.error = botocore.exceptions.ClientError(
            {"Error": {"Code": code, "Message": message}}, "Call"
        )

    def __getattr__(self, _name: str) -> Any:
        def call(**_: Any) -> Any:
            raise self.error

        return call


def store(code: str, message: str) -> ScheduleStore:
    return ScheduleStore(cast(Any, Refusing(code, message)), "team")


def test_aws_errors_are_one_line_naming_the_schedule() -> None:
    missing = store("ResourceNotFoundException", "Schedule nightly does not exist.")
    with pytest.raises(ConfigError, match=r"^no schedule 'nightly' in group 'team'$"):
        missing.get("nightly")
    with pytest.raises(ConfigError, match=r"^no schedule 'nightly' in group 'team'$"):
        missing.delete("nightly")
    no_group = store("ResourceNotFoundException", "Schedule group team does not exist.")
    with pytest.raises(ConfigError, match=r"^--group: no schedule group 'team'"):
        no_group.create("nightly", {})
    with pytest.raises(ConfigError, match=r"^--group: no schedule group 'team'"):
        list(no_group.names())
    exists = store("ConflictException", "Schedule nightly already exists.")
    with pytest.raises(ConfigError, match=r"^schedule 'nightly' already exists in group 'team'$"):
        exists.create("nightly", {})
    busy = store("ConflictException", "Updating the resource conflicts with another request.")
    with pytest.raises(ConfigError, match=r"ConflictException: Updating the resource") as caught:
        busy.update("nightly", {})
    assert "already exists" not in str(caught.value)
    denied = store("AccessDeniedException", "not authorized to perform: iam:PassRole")
    with pytest.raises(ConfigError, match=r"access denied .*iam:PassRole"):
        denied.create("nightly", {})
    broken = store("500", "<!doctype html>\n<title>500 Internal Server Error</title>\n")
    with pytest.raises(ConfigError) as caught:
        broken.create("nightly", {})
    assert "\n" not in str(caught.value) and "500 Internal Server Error" in str(caught.value)
