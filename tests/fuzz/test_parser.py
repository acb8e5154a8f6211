"""parse_command on any text: its answer is a RunTask or an InvalidCommand and
nothing else; what it accepts round-trips through RunTask.to_json() and is
what the shipped schema accepts; what it rejects names the run_id exactly
when one can be read, and fits in a TaskFailed the bus takes."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from claude_code_scheduler.aws.limits import SNS_MAX_MESSAGE_BYTES
from claude_code_scheduler.protocol import InvalidCommand, RunTask, parse_command
from claude_code_scheduler.protocol.events import ErrorType, encode_event, task_failed
from tests.conftest import assert_valid_command, assert_valid_event
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.oracle import RUN_ID, readable_run_ids, schema_error, unwrapped
from tests.fuzz.strategies import (
    RUN_ID_REGEX,
    commands,
    edged,
    finite_floats,
    firings,
    hostile_text,
    huge_ints,
    json_documents,
    lone_surrogates,
    near_valid,
    poisoned,
    set_path,
    sns_envelope,
)


def reply(body: str) -> RunTask | InvalidCommand:
    """parse_command's answer. Any other exception escapes: the property fails."""
    try:
        return parse_command(body)
    except InvalidCommand as exc:
        return exc


def check(body: str) -> RunTask | InvalidCommand:
    answer = reply(body)
    if isinstance(answer, InvalidCommand):
        check_rejection(body, answer)
    else:
        check_round_trip(answer)
    return answer


def check_rejection(body: str, exc: InvalidCommand) -> None:
    allowed = readable_run_ids(body)
    if allowed is None:
        assert exc.run_id is None or RUN_ID.fullmatch(exc.run_id)
    else:
        assert exc.run_id in allowed, f"rejected with run_id {exc.run_id!r}, expected {allowed}"
    # The node answers with this event (messages.py): it must match its schema
    # and fit in one SNS message, whatever the body was.
    event = task_failed(exc.run_id, ErrorType.INVALID_COMMAND, str(exc), retryable=False)
    stamped = event.body("fuzz-node", "fuzz node", 1)
    assert_valid_event(stamped)
    attributes = sum(len(k) + len(v) + len("String") for k, v in event.attributes("n").items())
    size = len(encode_event(stamped).encode("utf-8")) + attributes
    assert size <= SNS_MAX_MESSAGE_BYTES, f"the TaskFailed is {size} bytes, over SNS's limit"


def check_round_trip(command: RunTask) -> None:
    wire = command.to_json()
    assert_valid_command(json.loads(wire))
    assert parse_command(wire) == command
    assert parse_command(json.dumps(sns_envelope(wire))) == command


def check_agreement(document: Any) -> RunTask | InvalidCommand:
    """The parser accepts the document exactly when the schema accepts its command."""
    answer = check(json.dumps(document))
    error = schema_error(unwrapped(document))
    if isinstance(answer, RunTask):
        assert error is None, f"the parser accepts what the schema rejects: {error}"
    else:
        assert error is not None, f"the schema accepts what the parser rejects: {answer}"
    return answer


# --- the properties -----------------------------------------------------------------


@fuzz_settings()
@given(st.text(st.one_of(st.characters(), lone_surrogates)))
def test_any_text_gets_a_command_or_invalid_command(body: str) -> None:
    check(body)


@fuzz_settings()
@given(hostile_text())
def test_damaged_json_gets_a_command_or_invalid_command(body: str) -> None:
    check(body)


@fuzz_settings()
@given(json_documents)
def test_any_json_document_agrees_with_the_schema(document: Any) -> None:
    check_agreement(document)


@fuzz_settings()
@given(commands())
def test_valid_commands_are_accepted_and_round_trip(document: dict[str, Any]) -> None:
    assert schema_error(document) is None, "the strategy made an invalid command"
    answer = check_agreement(document)
    assert isinstance(answer, RunTask)
    assert answer.run_id == document["run_id"]
    assert answer.task.prompt == document["task"]["prompt"]


@fuzz_settings()
@given(near_valid())
def test_documents_close_to_valid_agree_with_the_schema(document: dict[str, Any]) -> None:
    check_agreement(document)


@fuzz_settings()
@given(
    commands(),
    firings(),
    st.sampled_from(["run_id", "name", "execution_id", "scheduled_time"]),
    st.data(),
)
def test_a_fired_command_whose_firing_does_not_add_up_agrees_with_the_schema(
    document: dict[str, Any], firing: dict[str, str], change: str, data: st.DataObject
) -> None:
    """The rules of a `schedule` object the schema cannot state (its run id is
    its name and execution id; its day exists), each broken on its own."""
    document = {**document, "run_id": f"{firing['name']}-{firing['execution_id']}"}
    document["schedule"] = dict(firing)
    if change == "run_id":
        document["run_id"] = data.draw(st.from_regex(RUN_ID_REGEX, fullmatch=True))
    elif change == "scheduled_time":
        day = data.draw(st.sampled_from(["2027-02-29", "2027-02-31", "2027-04-31", "2028-02-29"]))
        document["schedule"]["scheduled_time"] = day + firing["scheduled_time"][10:]
    else:
        document["schedule"][change] = data.draw(
            st.from_regex(r"[A-Za-z0-9._-]{1,63}", fullmatch=True)
        )
    check_agreement(document)


@fuzz_settings()
@given(
    st.one_of(commands(), near_valid()),
    st.sampled_from(["plain", "extra field", "message object", "lower-case type", "twice"]),
)
def test_an_sns_envelope_carries_the_same_verdict(document: dict[str, Any], shape: str) -> None:
    text = json.dumps(document)
    envelope: Any = sns_envelope(text)
    if shape == "extra field":
        envelope["UnsubscribeURL"] = "https://sns.example/?unsubscribe"
    elif shape == "message object":
        envelope["Message"] = document
    elif shape == "lower-case type":
        envelope["Type"] = "notification"
    elif shape == "twice":
        envelope = sns_envelope(json.dumps(envelope))
    answer = check_agreement(envelope)
    if shape in ("plain", "extra field"):
        direct = reply(text)
        assert type(answer) is type(direct)
        if isinstance(direct, RunTask):
            assert answer == direct
        else:
            assert isinstance(answer, InvalidCommand)
            assert answer.run_id == direct.run_id


@fuzz_settings()
@given(commands().flatmap(poisoned))
def test_nul_and_lone_surrogates_are_invalid_commands(case: tuple[dict[str, Any], Any]) -> None:
    document, path = case
    answer = check_agreement(document)
    assert isinstance(answer, InvalidCommand), f"a NUL or lone surrogate at {path} was accepted"


@fuzz_settings()
@given(commands().flatmap(edged))
def test_line_ends_around_patterned_values_agree_with_the_schema(
    case: tuple[dict[str, Any], str],
) -> None:
    document, _ = case
    check_agreement(document)


NUMBER_PATHS = (
    ("version",),
    ("task", "max_turns"),
    ("task", "timeout_seconds"),
    ("task", "mock", "duration_seconds"),
    ("task", "mock", "exit_code"),
    ("task", "mock", "output_bytes"),
)


@fuzz_settings()
@given(
    commands(),
    st.sampled_from(NUMBER_PATHS),
    st.one_of(huge_ints, finite_floats, st.sampled_from([1e308, -1e308, 5e-324, 2**63, 2**64 + 1])),
)
def test_numbers_out_of_any_range_agree_with_the_schema(
    document: dict[str, Any], path: tuple[str, ...], number: float
) -> None:
    set_path(document, path, number)
    check_agreement(document)
