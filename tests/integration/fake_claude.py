"""A fake `claude` for real-mode tests: prints stream-json like the CLI.

Its behaviour comes from FAKE_CLAUDE_* environment variables, which the tests
pass through the task's `env` (so they also prove that task env reaches the
CLI). It records its argv, cwd, environment and stdin in FAKE_CLAUDE_RECORD.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time


def emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def record() -> None:
    path = os.environ.get("FAKE_CLAUDE_RECORD")
    if not path:
        return
    stdin_data = sys.stdin.read()  # /dev/null gives EOF at once; a pipe would block
    with open(path, "w") as out:
        json.dump(
            {
                "argv": sys.argv[1:],
                "cwd": os.getcwd(),
                "env": dict(os.environ),
                "stdin": stdin_data,
                "stdin_isatty": sys.stdin.isatty(),
                "pid": os.getpid(),
                "pgid": os.getpgid(0),
            },
            out,
        )


def result(
    text: str | None, *, is_error: bool = False, subtype: str = "success", **extra: object
) -> None:
    line: dict[str, object] = {
        "type": "result",
        "subtype": subtype,
        "is_error": is_error,
        "duration_ms": 12,
        "num_turns": 1,
        "session_id": "fake-session",
        "total_cost_usd": 0.0125,
    }
    if text is not None:
        line["result"] = text
    line.update(extra)
    emit(line)


def main() -> int:
    if sys.argv[1:] == ["--version"]:
        print("9.9.9 (Fake Claude Code)")
        return 0
    record()
    mode = os.environ.get("FAKE_CLAUDE_MODE", "ok")
    emit({"type": "system", "subtype": "init", "session_id": "fake-session", "cwd": os.getcwd()})
    if mode == "ok":
        (open("made-by-fake.txt", "w")).write("hello")
        emit({"type": "assistant", "message": {"content": [{"type": "text", "text": "done"}]}})
        result("all done")
        return 0
    if mode == "api-error":
        result("API Error: 401 invalid x-api-key", is_error=True)
        return 1
    if mode == "is-error-exit-0":
        result("API Error: 529 overloaded", is_error=True)
        return 0
    if mode == "max-turns":
        result(
            None,
            is_error=True,
            subtype="error_max_turns",
            errors=["Reached maximum number of turns (2)"],
        )
        return 1
    if mode == "stderr-only":
        sys.stderr.write("error: unknown option '--bogus'\n")
        return 2
    if mode == "no-result":
        return 0
    if mode == "big":
        size = int(os.environ.get("FAKE_CLAUDE_BYTES", "3000000"))
        text = "x" * size
        emit({"type": "assistant", "message": {"content": [{"type": "text", "text": text}]}})
        result(text)
        return 0
    if mode == "slow":
        # Ignores SIGTERM and leaves a child in its process group, so the test
        # sees the SIGKILL to the group.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen(["sleep", "300"])
        pidfile = os.environ.get("FAKE_CLAUDE_PIDS")
        if pidfile:
            with open(pidfile, "w") as out:
                json.dump({"cli": os.getpid(), "child": child.pid}, out)
        while True:
            time.sleep(0.1)
    if mode == "echo-env":
        # Prints the variables named in FAKE_CLAUDE_ECHO as a run that leaks
        # them would: in a stream-json line (escaped), split across two writes
        # a moment apart (two reads for the node), on stderr and in the result.
        names = [name for name in os.environ.get("FAKE_CLAUDE_ECHO", "").split(",") if name]
        text = " ".join(f"{name}={os.environ.get(name, '')}" for name in names)
        line = json.dumps(
            {"type": "assistant", "message": {"content": [{"type": "text", "text": text}]}}
        )
        half = len(line) // 2
        for part in (line[:half], line[half:] + "\n"):
            sys.stdout.write(part)
            sys.stdout.flush()
            time.sleep(0.2)
        sys.stderr.write(text + "\n")
        result(text)
        return 0
    if mode == "sleep":
        time.sleep(float(os.environ.get("FAKE_CLAUDE_SECONDS", "5")))
        result("slept")
        return 0
    sys.stderr.write(f"fake claude: unknown mode {mode}\n")
    return 3


if __name__ == "__main__":
    sys.exit(main())
