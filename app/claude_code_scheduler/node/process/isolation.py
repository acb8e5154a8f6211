"""As whom a run's processes run, and what the node does to keep them from it
and from each other (docs/isolation.md).

A node running as root (inside its container, with the default capabilities
ECS and Fargate give) starts the run in slot i as uid and gid
`run_uid_base + i`, with no supplementary groups: a run cannot read the node's
environment or memory, nor another run's folder or environment. A node that
is not root can only start runs as itself; then concurrent runs would share a
uid, so more than one slot needs `--allow-shared-uid`.

In every mode the node makes itself undumpable, so that no process of its own
uid can read /proc/<node>/environ or /proc/<node>/mem or ptrace it, and sets
no_new_privs, which every child inherits: no setuid binary gives a run
privileges back.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_code_scheduler.errors import ConfigError

log = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
# The world-writable places a run can leave files in outside its own folder:
# named to be cleaned, not to be written to (hence the noqa).
WORLD_WRITABLE = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))  # noqa: S108
# How deep to look for a run's files below a world-writable place: its own
# files are removed whole; deeper only through folders that others can write.
SCAN_DEPTH = 4


@dataclass(frozen=True)
class RunIdentity:
    """Who a run's processes are: a uid and gid of the slot's own, or (None)
    the node's."""

    slot: int
    uid: int | None = None
    gid: int | None = None

    @property
    def isolated(self) -> bool:
        return self.uid is not None

    def popen_options(self) -> dict[str, Any]:
        """subprocess.Popen's arguments for the drop: done in C between fork and
        exec, so no Python code runs in the child of a threaded node."""
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def describe(self) -> str:
        return f"uid {self.uid}" if self.uid is not None else "the node's own uid"


SHARED = RunIdentity(0)


@dataclass(frozen=True)
class IsolationPolicy:
    """The identities of a node's run slots, decided once at start-up."""

    isolated: bool
    slots: int
    run_uid_base: int
    node_uid: int

    @classmethod
    def decide(
        cls, *, euid: int, slots: int, run_uid_base: int, allow_shared_uid: bool
    ) -> IsolationPolicy:
        isolated = euid == 0
        if not isolated and slots > 1 and not allow_shared_uid:
            raise ConfigError(
                f"--max-concurrent-tasks: the node is not root (uid {euid}), so its runs "
                "would share its uid and could read and change each other's folders and "
                "environment; run the node as root, as the image does (a uid per run "
                "slot), or accept shared-uid runs with --allow-shared-uid"
            )
        return cls(isolated, slots, run_uid_base, euid)

    def identity(self, slot: int) -> RunIdentity:
        if not 0 <= slot < self.slots:
            raise ValueError(f"no run slot {slot} (slots 0 to {self.slots - 1})")
        if not self.isolated:
            return RunIdentity(slot)
        uid = self.run_uid_base + slot
        return RunIdentity(slot, uid, uid)

    def identities(self) -> list[RunIdentity]:
        return [self.identity(slot) for slot in range(self.slots)]

    def describe(self) -> list[tuple[int, str]]:
        """What the node tells its operator at start-up: (log level, line)."""
        always = (
            "not isolated either way: the network (a run reaches whatever the task's "
            "security group and routes allow) and the run's own environment (its "
            "task env and the Claude API key); see docs/isolation.md"
        )
        if self.isolated:
            last = self.run_uid_base + self.slots - 1
            uids = f"{self.run_uid_base}" if self.slots == 1 else f"{self.run_uid_base}-{last}"
            return [
                (
                    logging.INFO,
                    f"isolation: each run slot has a uid of its own ({uids}), a run folder "
                    "and HOME of mode 0700, no supplementary groups and no way to gain "
                    "privileges (no_new_privs); the node is undumpable, so no run can read "
                    "its environment or memory",
                ),
                (logging.INFO, always),
            ]
        lines = [
            (
                logging.WARNING,
                f"isolation: the node is not root, so runs run as its own uid "
                f"{self.node_uid}: the node is undumpable (its environment and memory "
                "are out of a run's reach), but a run can read and change the node's "
                "files (its spooled logs and state file) and signal it; run the node as "
                "root, as the image does, for a uid per run slot",
            )
        ]
        if self.slots > 1:
            lines.append(
                (
                    logging.WARNING,
                    f"--allow-shared-uid: {self.slots} concurrent runs share uid "
                    f"{self.node_uid} and can read and change each other's folders and "
                    "read each other's environment (their task secrets)",
                )
            )
        lines.append((logging.WARNING, always))
        return lines


def harden_node() -> list[str]:
    """Makes this process undumpable and sets no_new_privs on it (inherited by
    every thread and child started after this). Returns what could not be
    done; call it before the node starts a thread.

    Undumpable: /proc/<pid>/environ, mem and ptrace need CAP_SYS_PTRACE, even
    for a process of the same uid. A child is dumpable again once it execs a
    program, so the node still reads its children's /proc."""
    if not sys.platform.startswith("linux"):
        return ["undumpable and no_new_privs need Linux"]
    libc = ctypes.CDLL(None, use_errno=True)
    missing = []
    for option, value, what in (
        (PR_SET_NO_NEW_PRIVS, 1, "no_new_privs"),
        (PR_SET_DUMPABLE, 0, "undumpable"),
    ):
        if libc.prctl(option, value, 0, 0, 0) != 0:
            missing.append(f"{what}: {os.strerror(ctypes.get_errno())}")
    return missing


# --- what a run uid can reach -------------------------------------------------------


def _permits(st: os.stat_result, uid: int, gid: int, bits: int) -> bool:
    """Whether the mode bits give `bits` (a combination of 4, 2, 1) to uid/gid."""
    if st.st_uid == uid:
        shift = 6
    elif st.st_gid == gid:
        shift = 3
    else:
        shift = 0
    return (st.st_mode >> shift) & bits == bits


def unreachable_reason(path: Path, uid: int, gid: int, *, bits: int = 1) -> str | None:
    """Why uid/gid cannot use `path` (bits: 1 execute, 4 read), by the mode bits
    of the path and of every folder on its way; None when nothing stops it.

    The mode bits explain a failed probe; the probe itself, a process of that
    uid, is the proof (ACLs and mount options count there)."""
    for candidate in dict.fromkeys((Path(os.path.abspath(path)), Path(path).resolve())):
        for folder in reversed(candidate.parents):
            st = folder.stat()
            if not _permits(st, uid, gid, 1):
                return (
                    f"the folder {folder} on its path is not searchable by other users "
                    f"(mode {stat.S_IMODE(st.st_mode):04o})"
                )
        st = candidate.stat()
        if not _permits(st, uid, gid, bits):
            what = "executable" if bits & 1 else "readable"
            return f"{candidate} is not {what} by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


# --- what a run uid leaves behind ----------------------------------------------------


def remove_files_of(uid: int, roots: Iterable[Path] = WORLD_WRITABLE) -> int:
    """Removes what `uid` left in the world-writable places, so that the next
    run on its slot cannot read it; returns how many entries went.

    Call it only once no process of that uid is alive: then nothing can swap a
    folder for a link meanwhile (and rmtree does not follow links anyway)."""
    removed = 0
    for root in roots:
        removed += _remove_below(root, uid, SCAN_DEPTH)
    return removed


def _remove_below(folder: Path, uid: int, depth: int) -> int:
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        if st.st_uid == uid:
            try:
                if is_dir:
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed += 1
            except OSError as exc:
                log.warning("could not remove %s left by uid %d: %s", entry.path, uid, exc)
        elif is_dir and depth > 1 and st.st_mode & stat.S_IWOTH:
            # A folder others may write in (/tmp/.X11-unix): the uid may have files there.
            removed += _remove_below(Path(entry.path), uid, depth - 1)
    return removed
