"""Finding the pinned Claude Code CLI and running it against the stand-in.

The version is pinned in `claude-code.version` at the repository root;
`scripts/install-claude.sh` installs it into `.cache/claude-code/<version>/`.
`CLAUDE_CODE_BIN` points the tests at another binary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.realcli.anthropic_standin import AnthropicStandin

REPO = Path(__file__).resolve().parents[2]
VERSION_FILE = REPO / "claude-code.version"
INSTALL_SCRIPT = REPO / "scripts" / "install-claude.sh"
CACHE = REPO / ".cache" / "claude-code"

# The argv every run starts with: what the node runs in real mode.
BASE_ARGV = ("-p", "--verbose", "--output-format", "stream-json")

# The CLI's own words (2.1.332), as FINDINGS.md records them.
ROOT_BYPASS_REFUSAL = (
    "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons"
)
NOT_LOGGED_IN = "Not logged in · Please run /login"
INVALID_API_KEY = "Invalid API key · Fix external API key"


def pinned_version() -> str:
    return VERSION_FILE.read_text().strip()


def pinned_binary() -> Path:
    override = os.environ.get("CLAUDE_CODE_BIN")
    if override:
        return Path(override)
    return CACHE / pinned_version() / "node_modules" / ".bin" / "claude"


def probe(binary: Path) -> str | None:
    """None when `binary` runs and reports the pinned version, else why not."""
    if not binary.exists():
        return (
            f"the Claude Code CLI {pinned_version()} is not installed at {binary}; "
            f"run {INSTALL_SCRIPT.relative_to(REPO)}"
        )
    try:
        out = subprocess.run(
            [str(binary), "--version"],
            check=False,
            env={"PATH": os.environ.get("PATH", ""), "DISABLE_AUTOUPDATER": "1"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{binary} does not run: {exc}"
    if out.returncode != 0 or pinned_version() not in out.stdout:
        return (
            f"{binary} --version said {out.stdout.strip() or out.stderr.strip()!r}, "
            f"not {pinned_version()}"
        )
    return None


@dataclass
class CliRun:
    """One finished CLI run: its exit code and its stream-json lines."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    cwd: Path
    home: Path
    lines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def init(self) -> dict[str, Any] | None:
        return next(
            (o for o in self.lines if o.get("type") == "system" and o.get("subtype") == "init"),
            None,
        )

    @property
    def result(self) -> dict[str, Any] | None:
        """The last result line (a run with background tasks prints more than one)."""
        results = [o for o in self.lines if o.get("type") == "result"]
        return results[-1] if results else None

    def of_type(self, kind: str, subtype: str | None = None) -> list[dict[str, Any]]:
        return [
            o
            for o in self.lines
            if o.get("type") == kind and (subtype is None or o.get("subtype") == subtype)
        ]

    def describe(self) -> str:
        return (
            f"claude exited {self.returncode}\nargv: {self.argv}\n"
            f"stdout:\n{self.stdout[-4000:]}\nstderr:\n{self.stderr[-4000:]}"
        )


def base_env(home: Path, tmpdir: Path | None = None) -> dict[str, str]:
    """A clean environment: nothing of the caller's leaks in (no CLAUDECODE, no AWS keys).

    HOME must be set: without it the CLI writes into the passwd entry's home.
    CLAUDE_CODE_TMPDIR keeps its scratch files (tool output, sockets) out of /tmp.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
    }
    if tmpdir is not None:
        env["CLAUDE_CODE_TMPDIR"] = str(tmpdir)
    return env


def run_claude(
    binary: Path,
    standin: AnthropicStandin,
    args: Sequence[str],
    prompt: str,
    *,
    cwd: Path,
    home: Path,
    tmpdir: Path | None = None,
    env: Mapping[str, str] | None = None,
    api_key: str | None = "test-key",
    user: tuple[int, int] | None = None,
    timeout: float = 120,
) -> CliRun:
    """Runs `claude -p --verbose --output-format stream-json ARGS -- PROMPT` to its end.

    `env` entries win over the defaults; a value of "" removes a variable.
    `user` = (uid, gid) drops to that user for the CLI (needs root).
    """
    full_env = {**base_env(home, tmpdir), **standin.cli_env(api_key)}
    for name, value in (env or {}).items():
        if value == "":
            full_env.pop(name, None)
        else:
            full_env[name] = value
    argv = [str(binary), *BASE_ARGV, *args, "--", prompt]
    drop: dict[str, Any] = {}
    if user is not None:
        drop = {"user": user[0], "group": user[1], "extra_groups": []}
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,  # with an open pipe the CLI waits for input
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **drop,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the CLI stops its own tool processes
        try:
            stdout, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        raise AssertionError(f"claude ran past {timeout} s\n{stdout[-4000:]}\n{stderr}") from None
    finally:
        kill_processes_in(cwd)
    return CliRun(argv, proc.returncode, stdout, stderr, cwd, home, stream_json_lines(stdout))


def stream_json_lines(output: str | bytes) -> list[dict[str, Any]]:
    """The JSON objects among the lines of the CLI's output, in order."""
    lines = []
    for line in output.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            lines.append(obj)
    return lines


def processes_in(root: Path) -> list[int]:
    """Processes whose working directory is inside `root` (tool processes of a run)."""
    found = []
    prefix = str(root.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            where = os.readlink(entry / "cwd")
        except OSError:
            continue
        if where == prefix or where.startswith(prefix + "/"):
            found.append(int(entry.name))
    return found


def kill_processes_in(root: Path) -> None:
    for pid in processes_in(root):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
