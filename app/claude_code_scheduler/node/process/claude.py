"""What the node knows about the Claude Code CLI: how to call it for a task,
how to find its result in stream-json, and how to say why a run failed.

Nothing here starts a process or touches AWS.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from claude_code_scheduler.node.process.supervisor import ProcessResult
from claude_code_scheduler.protocol import TaskSpec
from claude_code_scheduler.protocol.events import RESULT_TEXT_LIMIT, TaskResult, cut_utf8

# The CLI's words when it refuses bypassPermissions to root (2.1.332).
ROOT_REFUSAL_MARK = "cannot be used with root/sudo privileges"
# A node never starts the CLI as root (a root node gives each run slot a uid of
# its own), so the CLI ran as root through something between them.
ROOT_ADVICE = (
    "The CLI ran as root, and it refuses bypassPermissions to root; a node never "
    "starts it as root (a root node runs each slot under a uid of its own), so look "
    "for a --claude-bin wrapper that makes it root, such as sudo."
)
# The CLI's own Bash sandbox (bubblewrap on Linux), for --bash-sandbox. Fail
# rather than run a command unsandboxed, allow no per-command way out of it,
# and approve nothing more than the task's permission mode does.
SANDBOX_SETTINGS = {
    "sandbox": {
        "enabled": True,
        "failIfUnavailable": True,
        "allowUnsandboxedCommands": False,
        "autoAllowBashIfSandboxed": False,
    }
}


def claude_argv(claude_bin: str, task: TaskSpec, *, bash_sandbox: bool = False) -> list[str]:
    argv = [claude_bin, "-p", "--verbose", "--output-format", "stream-json"]
    if bash_sandbox:
        argv += ["--settings", json.dumps(SANDBOX_SETTINGS, separators=(",", ":"))]
    if task.model:
        argv += ["--model", task.model]
    if task.permission_mode:
        argv += ["--permission-mode", task.permission_mode]
    if task.allowed_tools:
        argv += ["--allowedTools", *task.allowed_tools]
    if task.disallowed_tools:
        argv += ["--disallowedTools", *task.disallowed_tools]
    if task.max_turns is not None:
        argv += ["--max-turns", str(task.max_turns)]
    # The tool-list flags are variadic: without `--` they would swallow the prompt.
    return [*argv, "--", task.prompt]


def mock_argv(task: TaskSpec) -> list[str]:
    mock = task.mock
    return [
        sys.executable,
        "-m",
        "claude_code_scheduler.node.process.mockcli",
        "--duration",
        str(mock.duration_seconds),
        "--exit-code",
        str(mock.exit_code),
        "--output-bytes",
        str(mock.output_bytes),
        "--model",
        task.model or "mock",
        # One argument: protocol.workspace bounds it below the kernel's limit.
        "--write-files",
        json.dumps(mock.write_files, ensure_ascii=False),
        "--",
        task.prompt,
    ]


class ResultTracker:
    """Finds the CLI's final `{"type": "result", ...}` line in stdout.

    Lines can be megabytes long (a long answer is repeated in the assistant and
    the result line), so the only limit is the longest line; only lines that can
    be a result are parsed.
    """

    def __init__(self) -> None:
        self._partial = bytearray()
        self.result: dict[str, Any] | None = None

    def feed(self, data: bytes) -> None:
        # Only the new bytes can hold the next newline: a megabyte line fed in
        # 64 KiB reads is scanned once, not once per read.
        scan_from = len(self._partial)
        self._partial += data
        start = 0
        while (end := self._partial.find(b"\n", scan_from)) != -1:
            self._consider(start, end)
            start = scan_from = end + 1
        if start:
            del self._partial[:start]

    def finish(self) -> None:
        if self._partial:
            self._consider(0, len(self._partial))
            self._partial.clear()

    def _consider(self, start: int, end: int) -> None:
        # Looked for in place: a line that cannot be a result is never copied.
        if self._partial.find(b'"result"', start, end) == -1:
            return
        try:
            obj = json.loads(self._partial[start:end])
        except (ValueError, RecursionError):  # not JSON, or nested past what json reads
            return
        if isinstance(obj, dict) and obj.get("type") == "result":
            self.result = obj


def summarize_result(result: dict[str, Any] | None) -> TaskResult | None:
    """TaskCompleted's `result`: the figures the CLI reported, where it reported them."""
    if result is None:
        return None
    text = result.get("result")

    def pick(key: str, kinds: tuple[type, ...]) -> Any:
        value = result.get(key)
        return value if isinstance(value, kinds) and not isinstance(value, bool) else None

    return TaskResult(
        session_id=pick("session_id", (str,)),
        total_cost_usd=pick("total_cost_usd", (int, float)),
        num_turns=pick("num_turns", (int,)),
        duration_ms=pick("duration_ms", (int, float)),
        is_error=bool(result.get("is_error", False)),
        text=text if isinstance(text, str) else None,
    )


def succeeded(process: ProcessResult, result: dict[str, Any] | None) -> bool:
    """Exit 0 with a result line that is not an error; the exit code alone lies
    (API errors come as subtype success with is_error true)."""
    return (
        process.exit_code == 0
        and result is not None
        and not result.get("is_error", False)
        and not process.timed_out
        and not process.cancelled
    )


def failure_message(process: ProcessResult, result: dict[str, Any] | None) -> str:
    """The CLI's own words for why a run failed, and what to do where the
    words alone do not say."""
    message = _cli_words(process, result)
    if ROOT_REFUSAL_MARK in process.stderr_tail:
        message = f"{message}\n{ROOT_ADVICE}"
    return message


def _cli_words(process: ProcessResult, result: dict[str, Any] | None) -> str:
    if result is not None:
        text = result.get("result")
        if isinstance(text, str) and text.strip():
            return cut_utf8(text.strip(), RESULT_TEXT_LIMIT)
        errors = result.get("errors")
        if isinstance(errors, list) and errors:
            return cut_utf8("; ".join(str(e) for e in errors), RESULT_TEXT_LIMIT)
        subtype = result.get("subtype")
        if subtype and subtype != "success":
            return f"claude ended with {subtype}"
    if process.stderr_tail.strip():
        return process.stderr_tail.strip()
    if process.exit_code == 0:
        return "claude exited 0 without a result line"
    return f"claude exited with status {process.exit_code}"
