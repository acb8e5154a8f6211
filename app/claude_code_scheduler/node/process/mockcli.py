"""A stand-in for `claude -p --output-format stream-json` used by mock mode.

It prints the shape of a real session (a system init line, assistant lines
that echo the prompt, a result line), padded to the requested size and spread
over the requested duration, and exits with the requested code. It first
writes the task's mock.write_files into its working folder, so a mock run
leaves work behind as a real one does (a patch, artifacts). Running it as
a real child process keeps mock mode on the same path as real mode: process
group, deadline, signals, pipes.

It is a child of every mock run, so it imports only what it uses: no typing,
no uuid (random ids come from os.urandom), nothing of the package at import.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

MAX_ASSISTANT_LINES = 10
# What every mock run says it used and cost, in the result line's own shape
# (FINDINGS.md: the genuine CLI's figures for 100 input and 20 output tokens
# on opus), so the events, the node's running total and `submit --wait` show
# a cost in mock mode too.
MOCK_INPUT_TOKENS = 100
MOCK_OUTPUT_TOKENS = 20
MOCK_COST_USD = 0.0008


def _random_id() -> str:
    """A random (version 4) UUID in its usual form."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _line(obj: dict[str, object]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")


def _assistant(session_id: str, model: str, text: str) -> bytes:
    return _line(
        {
            "type": "assistant",
            "message": {
                "id": f"msg_mock_{_random_id().replace('-', '')[:20]}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
            "parent_tool_use_id": None,
            "session_id": session_id,
        }
    )


def session_lines(
    prompt: str, model: str, output_bytes: int, exit_code: int, structured_output: object = None
) -> list[bytes]:
    session_id = _random_id()
    reply = f"Mock reply to: {prompt}"
    init = _line(
        {
            "type": "system",
            "subtype": "init",
            "cwd": os.getcwd(),
            "session_id": session_id,
            "tools": ["Bash", "Edit", "Read", "Write"],
            "model": model,
            "permissionMode": "default",
            "apiKeySource": "none",
        }
    )
    result: dict[str, object] = {
        "type": "result",
        "subtype": "success" if exit_code == 0 else "error_during_execution",
        "is_error": exit_code != 0,
        "duration_ms": 0,
        "duration_api_ms": 0,
        "num_turns": 1,
        "session_id": session_id,
        **_usage(model),
    }
    if exit_code == 0:
        result["result"] = reply
        if structured_output is not None:
            result["structured_output"] = structured_output
    else:
        result["errors"] = [f"mock run failed with exit code {exit_code}"]
    first = _assistant(session_id, model, reply)
    fixed = len(init) + len(first) + len(_line(result))
    padding = _padding_lines(session_id, model, output_bytes - fixed)
    return [init, first, *padding, _line(result)]


def _usage(model: str) -> dict[str, object]:
    return {
        "total_cost_usd": MOCK_COST_USD,
        "usage": {
            "input_tokens": MOCK_INPUT_TOKENS,
            "output_tokens": MOCK_OUTPUT_TOKENS,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
        "modelUsage": {
            model: {
                "inputTokens": MOCK_INPUT_TOKENS,
                "outputTokens": MOCK_OUTPUT_TOKENS,
                "cacheReadInputTokens": 0,
                "cacheCreationInputTokens": 0,
                "costUSD": MOCK_COST_USD,
            }
        },
    }


def aborted_result(result: dict[str, object]) -> dict[str, object]:
    """The result line of a run stopped by SIGINT: the usage so far, no answer."""
    aborted = {key: value for key, value in result.items() if key != "result"}
    aborted.update(
        subtype="error_during_execution",
        is_error=True,
        terminal_reason="aborted_tools",
        errors=["mock run interrupted"],
    )
    return aborted


def _filler(size: int) -> str:
    """ASCII text of exactly `size` bytes that reads like output."""
    sentence = "Mock output line, standing in for the model's work. "
    return (sentence * (size // len(sentence) + 1))[:size]


def _padding_lines(session_id: str, model: str, budget: int) -> list[bytes]:
    """Assistant lines whose total size comes as close to `budget` as it can."""
    empty = len(_assistant(session_id, model, ""))
    count = min(MAX_ASSISTANT_LINES, max(0, budget // (empty + 1)))
    lines = []
    for index in range(count):
        share = budget // (count - index)
        lines.append(_assistant(session_id, model, _filler(max(0, share - empty))))
        budget -= len(lines[-1])
    return lines


def write_files(files: dict[str, str]) -> None:
    """Writes each relative path's text under the working folder. The parser
    refused absolute paths and '..'; a link in a cloned repository could still
    lead out, so each target is checked against the folder once resolved."""
    root = Path.cwd().resolve()
    for relative, text in files.items():
        target = (root / relative).resolve()
        if target == root or root not in target.parents:
            raise SystemExit(f"mock: refusing to write {relative!r}: outside the working folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mock-claude")
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--output-bytes", type=int, default=2000)
    parser.add_argument("--model", default="mock")
    parser.add_argument("--write-files", default="{}", help="JSON: relative path -> text")
    parser.add_argument("--structured-output", default=None, help="JSON: the result's object")
    parser.add_argument("prompt")
    args = parser.parse_args(argv)
    write_files(json.loads(args.write_files))
    structured = None if args.structured_output is None else json.loads(args.structured_output)
    lines = session_lines(args.prompt, args.model, args.output_bytes, args.exit_code, structured)
    pause = args.duration / len(lines)
    out = sys.stdout.buffer
    try:
        for line in lines:
            time.sleep(pause)
            out.write(line)
            out.flush()
    except KeyboardInterrupt:
        # As the real CLI does on SIGINT (FINDINGS.md, "Cancel"): an aborted
        # result line, exit 0, nothing on stderr.
        out.write(_line(aborted_result(json.loads(lines[-1]))))
        out.flush()
        return 0
    if args.exit_code:
        sys.stderr.write(f"mock run failed with exit code {args.exit_code}\n")
    return int(args.exit_code)


if __name__ == "__main__":
    sys.exit(main())
