"""The node's reading of how a run ended, on what the genuine CLI prints.

Each case drives the pinned CLI against the stand-in into one way of ending
(an API status, no connection, no key, a turn or budget limit), then hands the
CLI's own result line to the node's functions (`failure_type`, `conclude`,
`usage_of`) and checks what an operator would see. CLAUDE_CODE_MAX_RETRIES=0
and `x-should-retry: false` keep each run to one request (FINDINGS.md,
"Retries"). The lines seen are in FINDINGS.md, "Outcomes the CLI's own way".
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from claude_code_scheduler.node.messages import Ending
from claude_code_scheduler.node.outcome import RunEnd, conclude
from claude_code_scheduler.node.process.result import failure_type, summarize_result, usage_of
from claude_code_scheduler.node.process.supervisor import ProcessResult
from claude_code_scheduler.node.workspace.steps import WorkspaceSteps
from claude_code_scheduler.protocol.events import ErrorType, encode_event
from tests.conftest import assert_valid_event
from tests.realcli.anthropic_standin import AnthropicStandin, ApiError, Text, ToolUse, Turn
from tests.realcli.claude_cli import INVALID_API_KEY, NOT_LOGGED_IN, CliRun
from tests.realcli.conftest import RunClaude

NO_RETRIES = {"CLAUDE_CODE_MAX_RETRIES": "0"}
# Enough tokens that one turn costs far more than the budget below.
COSTLY_USAGE = {"input_tokens": 100_000, "output_tokens": 20_000}


def free_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_until_end(claude: RunClaude, turns: list[Turn], *args: str, **options: Any) -> CliRun:
    usage = options.pop("usage", None)
    env = {**NO_RETRIES, **options.pop("env", {})}
    with AnthropicStandin(turns, usage=usage) as api:
        run = claude(api, list(args), "Do the task", env=env, **options)
    assert run.result is not None, run.describe()
    return run


def concluded(run: CliRun, *, final_attempt: bool = False) -> tuple[Ending, dict[str, Any]]:
    """What the node makes of this CLI run: the ending, and the event's data
    as the bus carries it (checked against its schema)."""
    end = RunEnd(
        run_id="real-1",
        process=ProcessResult(run.returncode, 1.0, len(run.stdout), run.stderr[-4096:]),
        result_line=run.result,
        timeout=120,
        log_uri="s3://bucket/logs/real-1.log",
        gave_up=False,
        workspace=WorkspaceSteps(
            None, run_id="real-1", task_env={}, objects=None, log_bucket="b", clock=time.monotonic
        ),
        attempt=1,
        final_attempt=final_attempt,
    )
    outcome = conclude(end, lambda text: text)
    body = json.loads(encode_event(outcome.event.body("node-1", "node", 1)))
    assert_valid_event(body)
    return outcome.ending, body["data"]


CASES: list[tuple[str, list[Turn], ErrorType, bool, str]] = [
    (
        "401",
        [ApiError(401, should_retry=False)],
        ErrorType.AUTHENTICATION_FAILED,
        False,
        INVALID_API_KEY,
    ),
    ("429", [ApiError(429, should_retry=False)], ErrorType.RATE_LIMITED, True, "(429)"),
    ("529", [ApiError(529, should_retry=False)], ErrorType.OVERLOADED, True, "529 Overloaded"),
    ("500", [ApiError(500, should_retry=False)], ErrorType.SERVER_ERROR, True, "API Error: 500"),
]


@pytest.mark.parametrize(
    ("turns", "error_type", "retried", "words"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_an_api_status_is_classified_from_the_real_result_line(
    claude: RunClaude, turns: list[Turn], error_type: ErrorType, retried: bool, words: str
) -> None:
    run = run_until_end(claude, turns)
    result = run.result
    assert result is not None
    # The CLI's way: subtype success, is_error true, the status beside it.
    assert (run.returncode, result["subtype"], result["is_error"]) == (1, "success", True)
    assert failure_type(result) is error_type
    ending, data = concluded(run)
    assert ending is (Ending.RETRY_LATER if retried else Ending.FAILED)
    assert (data["error"]["type"], data["retryable"]) == (error_type.value, retried)
    assert data["error"]["message"] == result["result"]  # the CLI's own words
    assert words in data["error"]["message"]
    assert data["usage"]["total_cost_usd"] == 0
    # On the last attempt allowed: a kind the fleet retries says it was the
    # last; one it never retries was never a series.
    _, last = concluded(run, final_attempt=True)
    assert (last["retryable"], last["final_attempt"]) == (False, retried)


def test_a_refused_connection_is_a_server_error(claude: RunClaude) -> None:
    port = free_port()
    run = run_until_end(claude, [], env={"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}"})
    result = run.result
    assert result is not None
    assert (result["api_error_status"], result["api_error"]) == (None, "connection_failed")
    assert "ECONNREFUSED" in result["result"]
    assert failure_type(result) is ErrorType.SERVER_ERROR
    ending, data = concluded(run)
    assert (ending, data["retryable"]) == (Ending.RETRY_LATER, True)


def test_no_api_key_is_an_authentication_failure(claude: RunClaude) -> None:
    with AnthropicStandin([Text("never asked")]) as api:
        run = claude(api, [], "Do the task", env=NO_RETRIES, api_key=None)
        assert api.main_requests == []
    result = run.result
    assert result is not None and result["result"] == NOT_LOGGED_IN
    assert result["api_error_status"] is None  # only the words say what it is
    assert failure_type(result) is ErrorType.AUTHENTICATION_FAILED
    ending, data = concluded(run)
    assert (ending, data["error"]["message"]) == (Ending.FAILED, NOT_LOGGED_IN)


def test_max_turns_is_its_own_subtype(claude: RunClaude) -> None:
    turns: list[Turn] = [ToolUse("Bash", {"command": "echo one"}), Text("never reached")]
    run = run_until_end(claude, turns, "--max-turns", "1", "--allowedTools", "Bash")
    result = run.result
    assert result is not None and result["subtype"] == "error_max_turns"
    ending, data = concluded(run)
    assert (ending, data["error"]["type"]) == (Ending.FAILED, "MaxTurns")
    assert data["error"]["message"] == "Reached maximum number of turns (1)"
    assert data["usage"]["total_cost_usd"] == result["total_cost_usd"] > 0


def test_a_budget_passed_is_budget_exceeded_with_what_it_cost(claude: RunClaude) -> None:
    turns: list[Turn] = [ToolUse("Bash", {"command": "echo one"}), Text("never reached")]
    run = run_until_end(
        claude,
        turns,
        "--max-budget-usd",
        "0.0001",
        "--allowedTools",
        "Bash",
        usage=COSTLY_USAGE,
    )
    result = run.result
    assert result is not None
    assert (result["subtype"], result["terminal_reason"]) == (
        "error_max_budget_usd",
        "budget_exhausted",
    )
    assert failure_type(result) is ErrorType.BUDGET_EXCEEDED
    ending, data = concluded(run)
    assert (ending, data["retryable"]) == (Ending.FAILED, False)
    assert data["error"]["message"] == "Reached maximum budget ($0.0001)"
    assert data["usage"]["total_cost_usd"] == result["total_cost_usd"] > 0.0001
    model_usage = data["usage"]["model_usage"]
    assert [figures["inputTokens"] for figures in model_usage.values()] == [100_000]


def test_a_success_reports_usage_and_structured_output(claude: RunClaude) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    turns: list[Turn] = [ToolUse("StructuredOutput", {"answer": 42})]
    run = run_until_end(claude, turns, "--json-schema", json.dumps(schema))
    result = run.result
    assert result is not None and result["is_error"] is False
    ending, data = concluded(run)
    assert ending is Ending.COMPLETED
    summary = summarize_result(result)
    assert summary is not None and summary.structured_output == {"answer": 42}
    usage = usage_of(result)
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (100, 20)
    assert usage.total_cost_usd == result["total_cost_usd"] > 0
    assert data["usage"]["num_turns"] == result["num_turns"]
