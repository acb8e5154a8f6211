"""Keeping a run's processes from outliving the run.

Killing the CLI's process group is not enough. The CLI starts each Bash tool
command in a session of its own, so the group misses it. A SIGKILL of the CLI
orphans those commands, and a command backgrounded with `&` outlives even a
clean exit of the CLI. Two things close the gap:

- a run under a uid of its own (isolation.py) is every descendant of the
  node with that uid: when the run ends they are killed, whatever they did to
  their environment, their session or their parent. (A node that is root in a
  container has no CAP_SYS_PTRACE, so it could not read their environment.)
  The uid is read from /proc/<pid>/status, which anyone can read, even of an
  undumpable process;
- a run under the node's own uid: its environment carries
  `RUN_MARKER=<run id>/<random>` (a marker of its own for each attempt), which
  the CLI hands on to its tools; when the run ends, every process that carries
  its marker, and every descendant of one, is killed;
- the node is a child subreaper (Linux `PR_SET_CHILD_SUBREAPER`): orphans
  reparent to the node instead of PID 1, so the node reaps their exit status
  (no zombies), and when no run is active it kills whatever orphan is left,
  even one that cleared its environment.

Processes are read from /proc, and only when there can be something to find:
a subreaper without a single child has no descendant, so nothing of a run can
be left and nothing can have been adopted. The read that finds nothing left to
kill is also the one zombies are reaped from. The node's own children (the
CLIs it started) are registered while they run, and are never reaped here:
their Popen objects own their exit status.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

RUN_MARKER = "CLAUDE_CODE_SCHEDULER_RUN_ID"
PR_SET_CHILD_SUBREAPER = 36
PROC = Path("/proc")
# Rounds of scan-and-kill: a process may fork between a scan and its kill.
KILL_ROUNDS = 10
KILL_ROUND_PAUSE = 0.05

_lock = threading.Lock()
_own_children: set[int] = set()
# Adopting orphans, killing them and reaping them is done only by a process
# that asked for them: any other (a test runner) has children of its own.
_adopting = threading.Event()


def become_subreaper() -> bool:
    """Makes this process the reaper of its descendants' orphans (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("could not become a child subreaper: %s", os.strerror(ctypes.get_errno()))
        return False
    _adopting.set()
    return True


@contextmanager
def spawning() -> Iterator[set[int]]:
    """Hold while starting a child and add its pid to the yielded set, so that
    the reaper never takes the exit status its Popen object waits for."""
    with _lock:
        yield _own_children


def forget(pid: int) -> None:
    """The child was waited for: its pid may be reused from now on."""
    with _lock:
        _own_children.discard(pid)


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    zombie: bool


def _read_table(proc: Path) -> dict[int, _Proc]:
    table: dict[int, _Proc] = {}
    if not proc.is_dir():
        return table  # not Linux: nothing to find
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) < 2:
            continue
        pid = int(entry.name)
        table[pid] = _Proc(pid, int(fields[1]), fields[0] == b"Z")
    return table


def _carries(proc: Path, pid: int, marker: bytes) -> bool:
    try:
        environ = (proc / str(pid) / "environ").read_bytes()
    except OSError:
        return False
    return marker in environ.split(b"\0")


def _uids(proc: Path, pid: int) -> tuple[int, ...]:
    """The real, effective, saved and file-system uids of a process."""
    try:
        status = (proc / str(pid) / "status").read_bytes()
    except OSError:
        return ()
    for line in status.splitlines():
        if line.startswith(b"Uid:"):
            return tuple(int(field) for field in line.split()[1:])
    return ()


def _with_descendants(table: dict[int, _Proc], roots: set[int]) -> set[int]:
    children: defaultdict[int, list[int]] = defaultdict(list)
    for p in table.values():
        children[p.ppid].append(p.pid)
    found: set[int] = set()
    pending = list(roots)
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.add(pid)
            pending.extend(children[pid])
    return found


def new_marker(run_id: str) -> str:
    """The marker of one attempt of a run on one node. Unique, because nodes
    that share a PID namespace (several on one host), or two attempts of one
    run, must never kill each other's processes."""
    return f"{run_id}/{uuid.uuid4().hex}"


def _marker(marker_value: str) -> bytes:
    return f"{RUN_MARKER}={marker_value}".encode()


def run_processes(marker_value: str, proc: Path = PROC, *, uid: int | None = None) -> set[int]:
    """Live processes of a run: those of its uid when it has one of its own,
    else those carrying its marker, and their descendants."""
    table = _read_table(proc)
    if uid is not None:
        return _uid_targets(table, uid, proc)
    return _run_targets(table, _marker(marker_value), proc)


def _candidates(table: dict[int, _Proc]) -> set[int] | dict[int, _Proc]:
    if not _adopting.is_set():
        return table
    # Under a subreaper every process a run started stays below it (an orphan
    # reparents to the nearest subreaper): only those need looking at, not
    # every process on the host (another node's, with the same uids).
    me = os.getpid()
    return _with_descendants(table, {me}) - {me}


def _run_targets(table: dict[int, _Proc], marker: bytes, proc: Path) -> set[int]:
    candidates = _candidates(table)
    marked = {pid for pid in candidates if not table[pid].zombie and _carries(proc, pid, marker)}
    return _alive(table, _with_descendants(table, marked))


def _uid_targets(table: dict[int, _Proc], uid: int, proc: Path) -> set[int]:
    # A run's process cannot change its uid (no privileges, no_new_privs), so
    # any of the four being the slot's is the run's.
    candidates = _candidates(table)
    owned = {pid for pid in candidates if not table[pid].zombie and uid in _uids(proc, pid)}
    return _alive(table, owned)


def orphans(proc: Path = PROC) -> set[int]:
    """Live processes that reparented to this one (not children it started), and
    their descendants."""
    if not _adopting.is_set():
        return set()
    return _orphan_targets(_read_table(proc))


def _orphan_targets(table: dict[int, _Proc]) -> set[int]:
    me = os.getpid()
    with _lock:
        own = set(_own_children)
    adopted = {p.pid for p in table.values() if p.ppid == me and p.pid not in own}
    return _alive(table, _with_descendants(table, adopted))


def _alive(table: dict[int, _Proc], pids: set[int]) -> set[int]:
    return {pid for pid in pids if not table[pid].zombie and pid != os.getpid()}


def kill_run(marker_value: str, *, uid: int | None = None) -> int:
    """Kills what is left of a run (by its uid when it has one of its own, else
    by its marker); returns how many processes were signalled."""
    if uid is not None:
        run_uid = uid
        return _kill_until_gone(lambda table: _uid_targets(table, run_uid, PROC))
    marker = _marker(marker_value)
    return _kill_until_gone(lambda table: _run_targets(table, marker, PROC))


def kill_orphans() -> int:
    """Kills every adopted orphan; only safe when no run is active."""
    if not _adopting.is_set():
        return 0
    return _kill_until_gone(_orphan_targets)


def _kill_until_gone(targets: Callable[[dict[int, _Proc]], set[int]]) -> int:
    signalled: set[int] = set()
    for _ in range(KILL_ROUNDS):
        if _childless():
            return len(signalled)
        table = _read_table(PROC)
        pids = targets(table)
        if not pids:
            _reap(table)
            return len(signalled)
        for pid in pids:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        signalled |= pids
        time.sleep(KILL_ROUND_PAUSE)
    reap_zombies()
    return len(signalled)


def reap_zombies(proc: Path = PROC) -> int:
    """Collects the exit status of adopted orphans that have ended."""
    if not _adopting.is_set():
        return 0
    return _reap(_read_table(proc))


def _reap(table: dict[int, _Proc]) -> int:
    """Reaps the adopted zombies that `table` shows."""
    if not _adopting.is_set():
        return 0
    me = os.getpid()
    with _lock:
        own = set(_own_children)
        zombies = [p.pid for p in table.values() if p.ppid == me and p.zombie and p.pid not in own]
        reaped = 0
        for pid in zombies:
            with suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped += 1
    return reaped


def _childless() -> bool:
    """Whether this process, a subreaper, has no child at all, and so no
    descendant: nothing a run started can be left, nothing can be adopted.
    Asked without reaping (WNOWAIT), so no Popen loses its exit status."""
    if not _adopting.is_set():
        return False
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return False
