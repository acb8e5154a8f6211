"""What a run's Bash tool tries in order to get out of its run; the tests of
test_isolation.py run it inside runs (and, for their controls, outside).

Standard library only: it runs under the run's uid with `python -I`. Prints
one JSON object.

  node                  the node (the first ancestor running the package):
                        its environ and memory, and this process's own status
  target PID            the same reads of any process
  credentials URL PID   the container-credentials URI, from wherever a run could
                        learn it, then a GET of URL + each URI found (and a guess)
  fetch URL             a GET of URL
  peer FILE PID         another run's file, the work root's listing, and
                        /proc/PID/environ
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

URI_VAR = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"


def attempt(read: Any) -> dict[str, Any]:
    try:
        return {"ok": True, "text": read()}
    except OSError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc.strerror or exc}"}


def environ_of(pid: int) -> dict[str, Any]:
    return attempt(lambda: Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode())


def memory_of(pid: int) -> dict[str, Any]:
    def read() -> str:
        first = Path(f"/proc/{pid}/maps").read_text().split("-", 1)[0]
        with open(f"/proc/{pid}/mem", "rb") as mem:
            mem.seek(int(first, 16))
            return mem.read(16).hex()

    return attempt(read)


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return 0


def node_pid() -> int:
    """The node is an ancestor of every run: the first one running the package."""
    pid = os.getppid()
    while pid > 1:
        try:
            if b"claude_code_scheduler" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            pass
        pid = parent_of(pid)
    return 0


def own_status() -> dict[str, str]:
    wanted = ("Uid", "Gid", "Groups", "NoNewPrivs")
    status = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            status[name] = " ".join(value.split())
    return status


def get(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return {"status": answer.status, "body": answer.read().decode()}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": ""}
    except OSError as exc:
        return {"status": None, "body": str(exc)}


def learned_uris(pid: int) -> list[str]:
    found = [os.environ[URI_VAR]] if URI_VAR in os.environ else []
    for source in (pid, 1):
        environ = environ_of(source)
        if environ["ok"]:
            found += [
                line.split("=", 1)[1]
                for line in environ["text"].splitlines()
                if line.startswith(f"{URI_VAR}=")
            ]
    return found


def main(args: list[str]) -> dict[str, Any]:
    command = args[0]
    if command == "node":
        pid = node_pid()
        return {"pid": pid, "environ": environ_of(pid), "mem": memory_of(pid), "me": own_status()}
    if command == "target":
        pid = int(args[1])
        return {"pid": pid, "environ": environ_of(pid), "mem": memory_of(pid)}
    if command == "credentials":
        base, pid = args[1], int(args[2]) or node_pid()
        uris = learned_uris(pid)
        return {
            "uris": uris,
            "answers": [get(base + uri) for uri in uris],
            "guess": get(base + "/v2/credentials/"),
        }
    if command == "fetch":
        return get(args[1])
    if command == "peer":
        file, pid = Path(args[1]), int(args[2])
        return {
            "file": attempt(file.read_text),
            "work_root": attempt(lambda: sorted(os.listdir(file.parents[2]))),
            "environ": environ_of(pid),
        }
    raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
