"""How a run ended, the CLI's own way: the classifier (node.process.result
`failure_type`) on the result lines the genuine CLI printed, `conclude`'s
endings and events for them, `usage`, structured_output, and what `submit
--wait` makes of terminal events (client.watch). The lines in
cli_result_lines.json came from CLI 2.1.332 against the stand-in
(tests/realcli/test_realcli_outcomes.py makes them afresh and checks the same)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
from unit_support import assert_event_valid, schema_errors

from claude_code_scheduler.client.watch import RunCost, describe, ends_the_run, usd
from claude_code_scheduler.node.messages import Ending
from claude_code_scheduler.node.outcome import RunEnd, RunOutcome, conclude
from claude_code_scheduler.node.process.result import failure_type, usage_of
from claude_code_scheduler.node.process.supervisor import ProcessResult
from claude_code_scheduler.node.workspace.steps import WorkspaceSteps
from claude_code_scheduler.protocol.events import (
    MODEL_USAGE_MODELS,
    STRUCTURED_OUTPUT_LIMIT,
    ArtifactReport,
    ErrorType,
    Event,
    NodeCounters,
    NodeStatus,
    StoredArtifact,
    encode_event,
    node_deregistered,
    node_heartbeat,
    with_artifacts,
)

LINES: dict[str, dict[str, Any]] = {
    name: line
    for name, line in json.loads(
        (Path(__file__).parent / "cli_result_lines.json").read_text()
    ).items()
    if not name.startswith("_")
}
LOG_URI = "s3://bucket/logs/r-1.log"
# SNS's limit on a message (the quota the outbox names).
SNS_LIMIT = 256 * 1024

# The real line, its error type, and whether the fleet tries again later.
CLASSIFIED = [
    ("API 401", ErrorType.AUTHENTICATION_FAILED, False),
    ("no API key", ErrorType.AUTHENTICATION_FAILED, False),
    ("API 429", ErrorType.RATE_LIMITED, True),
    ("API 529", ErrorType.OVERLOADED, True),
    ("API 500", ErrorType.SERVER_ERROR, True),
    ("API 503", ErrorType.SERVER_ERROR, True),
    ("connection refused", ErrorType.SERVER_ERROR, True),
    ("max turns", ErrorType.MAX_TURNS, False),
    ("budget exceeded", ErrorType.BUDGET_EXCEEDED, False),
]


def run_end(
    result_line: dict[str, Any] | None,
    *,
    exit_code: int | None = 1,
    attempt: int = 1,
    final_attempt: bool = False,
    wants_structured_output: bool = False,
) -> RunEnd:
    return RunEnd(
        wants_structured_output=wants_structured_output,
        run_id="r-1",
        process=ProcessResult(exit_code, 1.5, 2048, ""),
        result_line=result_line,
        timeout=60,
        log_uri=LOG_URI,
        gave_up=False,
        workspace=WorkspaceSteps(
            None, run_id="r-1", task_env={}, objects=None, log_bucket="b", clock=time.monotonic
        ),
        attempt=attempt,
        final_attempt=final_attempt,
    )


def body(event: Event) -> dict[str, Any]:
    """The event as a subscriber gets it, checked against its schema."""
    encoded = encode_event(event.body("node-1", "Node One", 1))
    assert len(encoded.encode()) < SNS_LIMIT, len(encoded.encode())
    decoded: dict[str, Any] = json.loads(encoded)
    assert_event_valid(decoded)
    return decoded


def same(text: str) -> str:
    return text


# --- the classifier on the CLI's own lines ----------------------------------------------


@pytest.mark.parametrize(("name", "error_type", "_"), CLASSIFIED, ids=[c[0] for c in CLASSIFIED])
def test_each_real_failure_line_has_its_error_type(
    name: str, error_type: ErrorType, _: bool
) -> None:
    assert failure_type(LINES[name]) is error_type


def test_the_lines_are_what_the_table_says_they_are() -> None:
    """The facts the classifier keys on, so a rename in the CLI shows here first."""
    assert LINES["budget exceeded"]["subtype"] == "error_max_budget_usd"
    assert LINES["max turns"]["subtype"] == "error_max_turns"
    assert LINES["connection refused"]["api_error_status"] is None
    assert LINES["connection refused"]["api_error"] == "connection_failed"
    assert LINES["no API key"]["api_error_status"] is None
    assert "api_error" not in LINES["no API key"]
    for name, _, _ in CLASSIFIED:
        assert LINES[name]["is_error"] is True
        assert LINES[name]["subtype"] in ("success", "error_max_turns", "error_max_budget_usd")


@pytest.mark.parametrize(
    ("line", "error_type"),
    [
        pytest.param(None, ErrorType.CLAUDE_ERROR, id="no-result-line"),
        pytest.param(
            {"type": "result", "subtype": "error_during_execution", "is_error": True},
            ErrorType.CLAUDE_ERROR,
            id="during-execution",
        ),
        pytest.param(
            {"is_error": True, "api_error_status": 400, "terminal_reason": "api_error"},
            ErrorType.CLAUDE_ERROR,
            id="400-the-request-itself",
        ),
        pytest.param(
            {"is_error": True, "api_error_status": 403}, ErrorType.AUTHENTICATION_FAILED, id="403"
        ),
        pytest.param(
            {"is_error": True, "api_error_status": None, "api_error": "api_key_auth_disabled"},
            ErrorType.AUTHENTICATION_FAILED,
            id="typed-credential-kind",
        ),
        pytest.param(
            {"is_error": True, "api_error_status": None, "terminal_reason": "api_error"},
            ErrorType.SERVER_ERROR,
            id="untyped-no-status: the client's own timeout",
        ),
        pytest.param(
            {
                "is_error": True,
                "api_error_status": None,
                "terminal_reason": "api_error",
                "api_error": "max_output_tokens",
            },
            ErrorType.CLAUDE_ERROR,
            id="typed-kind-of-the-request-itself",
        ),
        pytest.param(
            {"is_error": True, "api_error_status": True, "api_error": ["connection_failed"]},
            ErrorType.CLAUDE_ERROR,
            id="hostile-types",
        ),
        pytest.param(
            {"is_error": True, "api_error_status": "429", "result": 7},
            ErrorType.CLAUDE_ERROR,
            id="status-as-text",
        ),
    ],
)
def test_lines_the_cli_did_not_print_here(
    line: dict[str, Any] | None, error_type: ErrorType
) -> None:
    assert failure_type(line) is error_type


# --- conclude: endings, attempts, usage --------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error_type", "retried"), CLASSIFIED, ids=[c[0] for c in CLASSIFIED]
)
def test_conclude_ends_each_real_failure_as_the_table_says(
    name: str, error_type: ErrorType, retried: bool
) -> None:
    outcome = conclude(run_end(LINES[name], attempt=2), same)
    data = body(outcome.event)["data"]
    assert outcome.ending is (Ending.RETRY_LATER if retried else Ending.FAILED)
    assert data["error"]["type"] == error_type.value
    assert (data["retryable"], data["final_attempt"], data["attempt"]) == (retried, False, 2)
    line = LINES[name]
    # The CLI's own words: its result text, or its errors where it gave none.
    assert data["error"]["message"] == line.get("result", "; ".join(line.get("errors", [])))
    assert data["usage"]["total_cost_usd"] == line["total_cost_usd"]


@pytest.mark.parametrize(
    ("name", "error_type", "retried"), CLASSIFIED, ids=[c[0] for c in CLASSIFIED]
)
def test_on_the_last_attempt_a_retried_kind_fails_and_says_final(
    name: str, error_type: ErrorType, retried: bool
) -> None:
    outcome = conclude(run_end(LINES[name], attempt=3, final_attempt=True), same)
    data = body(outcome.event)["data"]
    assert outcome.ending is Ending.FAILED
    assert data["retryable"] is False
    # final_attempt only for a kind the fleet retries: the rest were never a series.
    assert data["final_attempt"] is retried
    assert data["error"]["type"] == error_type.value


def test_a_timeout_on_the_last_attempt_is_not_final_it_is_never_retried() -> None:
    end = run_end(None, exit_code=None, final_attempt=True)
    end = RunEnd(**{**end.__dict__, "process": ProcessResult(None, 60, 0, "", timed_out=True)})
    data = body(conclude(end, same).event)["data"]
    assert (data["error"]["type"], data["final_attempt"], data["usage"]) == ("Timeout", False, None)


def test_a_success_carries_the_usage_of_its_result_line() -> None:
    outcome = conclude(run_end(LINES["text reply"], exit_code=0), same)
    data = body(outcome.event)["data"]
    assert outcome.completed
    assert data["usage"] == {
        "total_cost_usd": 0.0008,
        "input_tokens": 100,
        "output_tokens": 20,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "model_usage": {
            "claude-opus-5-5": {
                # Only the figures: canonicalModel, provider and costBasis are words.
                key: value
                for key, value in LINES["text reply"]["modelUsage"]["claude-opus-5-5"].items()
                if isinstance(value, int | float)
            }
        },
        "num_turns": 1,
        "duration_api_ms": LINES["text reply"]["duration_api_ms"],
    }
    assert outcome.cost_usd == 0.0008


def test_the_budget_line_keeps_what_the_cli_said_even_where_it_looks_odd() -> None:
    """The CLI's top-level usage says 0 tokens for the budget stop while
    modelUsage has them (FINDINGS.md): the event reports both as said."""
    usage = usage_of(LINES["budget exceeded"])
    assert usage is not None
    assert (usage.total_cost_usd, usage.input_tokens) == (0.8, 0)
    assert usage.model_usage is not None
    assert usage.model_usage["claude-opus-5-5"]["inputTokens"] == 100000


def test_no_result_line_means_no_usage_and_no_cost() -> None:
    outcome = conclude(run_end(None, exit_code=1), same)
    assert body(outcome.event)["data"]["usage"] is None
    assert outcome.cost_usd == 0.0


HOSTILE = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "result": "ok",
    "total_cost_usd": float("nan"),
    "duration_api_ms": -5,
    "num_turns": 2.5,
    "usage": {
        "input_tokens": True,
        "output_tokens": "20",
        "cache_read_input_tokens": float("inf"),
        "cache_creation_input_tokens": -1,
    },
    "modelUsage": {
        **{f"model-{n}-" + "x" * 300: {"costUSD": 1, "w": "x" * 10_000} for n in range(50)},
    },
}


def test_a_hostile_result_line_gives_nulls_and_a_valid_event() -> None:
    outcome = conclude(run_end(HOSTILE, exit_code=0), same)
    usage = body(outcome.event)["data"]["usage"]
    assert {k: v for k, v in usage.items() if k != "model_usage"} == dict.fromkeys(
        [
            "total_cost_usd",
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "num_turns",
            "duration_api_ms",
        ]
    )
    assert len(usage["model_usage"]) == MODEL_USAGE_MODELS
    assert all(figures == {"costUSD": 1} for figures in usage["model_usage"].values())
    assert outcome.cost_usd == 0.0
    assert body(outcome.event)["data"]["result"]["total_cost_usd"] is None


@pytest.mark.parametrize(
    "model_usage",
    [None, [], "x", {"m": None}, {"m": {"costUSD": {"nested": 1}}}, {"m": [1, 2]}],
    ids=["null", "list", "text", "model-null", "nested", "model-list"],
)
def test_odd_model_usage_never_breaks_the_event(model_usage: Any) -> None:
    line = {**LINES["text reply"], "modelUsage": model_usage}
    body(conclude(run_end(line, exit_code=0), same).event)


# --- structured_output --------------------------------------------------------------------


def test_structured_output_is_in_the_result_and_redacted() -> None:
    line = {**LINES["text reply"], "structured_output": {"answer": 42, "token": "sk-hidden-1"}}
    data = body(
        conclude(run_end(line, exit_code=0), lambda t: t.replace("sk-hidden-1", "***")).event
    )
    assert data["data"]["result"]["structured_output"] == {"answer": 42, "token": "***"}
    assert "structured_output_omitted" not in data["data"]["result"]


@pytest.mark.parametrize(
    "value", [float("nan"), {"x": [float("inf")]}], ids=["nan", "nested-infinity"]
)
def test_a_structured_output_that_is_not_json_is_left_out(value: Any) -> None:
    """Python's json reads NaN and Infinity from the CLI's line; no event may carry them."""
    line = {**LINES["text reply"], "structured_output": value}
    result = body(conclude(run_end(line, exit_code=0), same).event)["data"]["result"]
    assert result["structured_output"] is None
    assert result["structured_output_omitted"] == "not encodable as JSON"


def test_a_json_schema_run_without_its_structured_output_failed() -> None:
    """The CLI ends `success` when the model answers in text and never gives
    the object: for a task that asked for one, that is not success. Control:
    the same line for a task without json_schema completes."""
    line = LINES["text reply"]
    asked = conclude(run_end(line, exit_code=0, wants_structured_output=True), same)
    assert asked.ending is Ending.FAILED
    data = body(asked.event)["data"]
    assert data["error"]["type"] == ErrorType.CLAUDE_ERROR
    assert "structured_output" in data["error"]["message"]
    assert conclude(run_end(line, exit_code=0), same).completed
    given = {**line, "structured_output": {"answer": 42}}
    assert conclude(run_end(given, exit_code=0, wants_structured_output=True), same).completed


def test_a_huge_structured_output_is_left_out_with_a_note() -> None:
    """Control: the same value, smaller, is carried."""
    huge = {"items": ["x" * 1000] * (STRUCTURED_OUTPUT_LIMIT // 1000 + 1)}
    line = {**LINES["text reply"], "structured_output": huge}
    result = body(conclude(run_end(line, exit_code=0), same).event)["data"]["result"]
    assert result["structured_output"] is None
    assert "result.json" in result["structured_output_omitted"]
    small = {"items": huge["items"][:3]}
    line = {**LINES["text reply"], "structured_output": small}
    result = body(conclude(run_end(line, exit_code=0), same).event)["data"]["result"]
    assert result["structured_output"] == small


def test_the_largest_terminal_event_still_fits_sns() -> None:
    """Every bounded part at its bound at once: message or text, structured
    output, model_usage and the artifact lists."""
    figures = {f"figure-{n}-" + "f" * 200: 1.5e300 for n in range(40)}
    line = {
        **LINES["text reply"],
        "result": "€" * 5000,
        "structured_output": "s" * (STRUCTURED_OUTPUT_LIMIT - 2),
        "modelUsage": {f"model-{n}-" + "m" * 200: figures for n in range(40)},
    }
    stored = tuple(
        StoredArtifact(f"files/{n}-" + "a" * 250, "s3://b/runs/r-1/x" + "a" * 250, 1, "0" * 64)
        for n in range(1000)
    )
    event = conclude(run_end(line, exit_code=0), same).event
    event = with_artifacts(event, ArtifactReport(stored=stored))
    data = body(event)["data"]
    assert data["result"]["structured_output"] == line["structured_output"]
    assert len(data["usage"]["model_usage"]) == MODEL_USAGE_MODELS


# --- the node's running total --------------------------------------------------------------


def test_the_node_total_is_in_heartbeat_and_deregistered() -> None:
    counters = NodeCounters(10, 2, 1, total_cost_usd=0.0008 * 3)
    for event in (node_heartbeat(NodeStatus.IDLE, [], counters), node_deregistered("x", counters)):
        assert body(event)["data"]["total_cost_usd"] == 0.0024  # the sum, not 0.0024000000000000002


def test_a_negative_total_is_refused_by_the_schema() -> None:
    event = copy.deepcopy(body(node_heartbeat(NodeStatus.IDLE, [], NodeCounters(1, 0, 0))))
    event["data"]["total_cost_usd"] = -1
    assert schema_errors("NodeHeartbeat", event)


# --- submit --wait and events (client.watch) -------------------------------------------------


def event_body(outcome: RunOutcome) -> dict[str, Any]:
    return body(outcome.event)


def test_a_retryable_failure_does_not_end_the_wait_a_final_one_does() -> None:
    retried = event_body(conclude(run_end(LINES["API 429"]), same))
    final = event_body(conclude(run_end(LINES["API 429"], attempt=3, final_attempt=True), same))
    done = event_body(conclude(run_end(LINES["text reply"], exit_code=0), same))
    assert not ends_the_run(retried["event_type"], retried["data"])
    assert ends_the_run(final["event_type"], final["data"])
    assert ends_the_run(done["event_type"], done["data"])
    assert "attempt=3 (final)" in describe(final)


def test_the_cost_adds_up_over_attempts_and_counts_a_duplicate_once() -> None:
    failed = event_body(conclude(run_end(LINES["budget exceeded"]), same))
    done = event_body(conclude(run_end(LINES["text reply"], exit_code=0), same))
    single = RunCost()
    single.add(done)
    single.add(done)  # SNS delivers at least once
    assert single.line() == "cost $0.0008 (100 in / 20 out tokens, 1 turn)"
    both = RunCost()
    both.add(failed)
    both.add(done)
    assert both.line() == "cost $0.8008 (2 attempts)"
    assert RunCost().line() is None
    assert "cost=$0.0008" in describe(done)


@pytest.mark.parametrize(
    ("amount", "shown"), [(0, "$0"), (0.0008, "$0.0008"), (2e-05, "$0.00002"), (1.5, "$1.5")]
)
def test_dollars_read_as_dollars(amount: float, shown: str) -> None:
    assert usd(amount) == shown
