"""An operator's cancel of a real-mode run: the genuine CLI, in the middle of
a Bash tool that backgrounds a `sleep` and blocks on a `tail`, is sent SIGINT
(FINDINGS.md: it aborts the tool, prints an error_during_execution result and
exits 0), the run ends Cancelled, and nothing of it is left."""

from __future__ import annotations

import time

from claude_code_scheduler.aws.cancels import CancelRequest, CancelStore
from claude_code_scheduler.protocol.events import iso
from tests.conftest import wait_until
from tests.realcli.anthropic_standin import AnthropicStandin
from tests.realcli.test_node_real_mode import (  # noqa: F401 (fixtures)
    Launch,
    api,
    assert_nothing_left,
    launch,
    processes_with,
    start_blocking_tool,
    sweep,
)


def test_a_cancel_stops_the_cli_and_its_tools_and_leaves_nothing(
    launch: Launch,  # noqa: F811 (the fixtures imported above)
    api: AnthropicStandin,  # noqa: F811
    sweep: list[str],  # noqa: F811
) -> None:
    # A long grace: what stops the run here is the CLI's own answer to SIGINT.
    node = launch(api, "--cancel-grace", "20")
    run_id, token = start_blocking_tool(node, sweep)
    requested = time.monotonic()
    store = CancelStore(node.stack.s3, node.stack.bucket)
    store.request(CancelRequest(run_id, "runaway", "tester@realcli", iso()))
    terminal = node.terminal(run_id)
    assert terminal["_seen_at"] - requested < 10, "within the documented bound"
    data = terminal["data"]
    assert terminal["event_type"] == "TaskFailed", terminal
    assert data["error"]["type"] == "Cancelled"
    assert data["cancel"]["requested_by"] == "tester@realcli"
    # The CLI stopped on SIGINT, before any SIGTERM: it exits 0 with an error result.
    assert data["exit_code"] == 0
    result = [line for line in node.log_lines(run_id) if line.get("type") == "result"]
    assert [(r["subtype"], r.get("terminal_reason")) for r in result] == [
        ("error_during_execution", "aborted_tools")
    ]
    assert wait_until(lambda: not processes_with(token), 10), processes_with(token)
    assert_nothing_left(node)
