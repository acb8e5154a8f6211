"""task.artifacts: the files of the working folder that its glob patterns
match, within the bounds (ArtifactLimits), each staged redacted under
files/<relative path>, and each one left out named with its reason.

Patterns match files, relative to the working folder: `*` and `?` within one
name (a leading dot included), `[...]` a class, `**` any run of folders (none
included), a trailing `/` everything below. The walk never enters a link nor
a `.git` folder (the repository's insides; changes.patch carries its
changes), and stops after `max_entries_scanned` entries.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from claude_code_scheduler.node.artifacts import FILES_PREFIX, ArtifactLimits
from claude_code_scheduler.node.artifacts.staging import Staging, Unreadable, open_run_file

_NOT_PRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def glob_regex(pattern: str) -> re.Pattern[str]:
    """The regex a relative path must match in full for `pattern`."""
    segments = [s for s in pattern.split("/") if s not in ("", ".")]
    if pattern.endswith("/"):
        segments.append("**")
    parts = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            parts.append(".+" if last else "(?:[^/]+/)*")
        else:
            parts.append(_segment(segment) + ("" if last else "/"))
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


def _segment(segment: str) -> str:
    out, index = [], 0
    while index < len(segment):
        char = segment[index]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := segment.find("]", index + 2)) != -1:
            body = segment[index + 1 : end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            escaped = "".join("\\" + c if c in "\\^[]" else c for c in body)
            out.append(f"[{'^' if negate else ''}{escaped}]")
            index = end
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)


def _walk(root: Path, budget: list[int]) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(relative path, entry) of everything below `root` but links' insides
    and .git folders, depth first; `budget[0]` counts entries down."""
    stack = [""]
    while stack and budget[0] > 0:
        relative = stack.pop()
        try:
            with os.scandir(root / relative if relative else root) as entries:
                found = sorted(entries, key=lambda e: e.name)
        except OSError:
            continue
        folders = []
        for entry in found:
            budget[0] -= 1
            if budget[0] < 0:
                return
            path = f"{relative}/{entry.name}" if relative else entry.name
            if entry.is_dir(follow_symlinks=False):
                if entry.name != ".git":
                    folders.append(path)
                continue
            yield path, entry
        # A folder's files, then its folders in name order.
        stack.extend(reversed(folders))


def collect_files(
    staging: Staging,
    cwd: Path,
    patterns: Sequence[str],
    limits: ArtifactLimits,
    owner_uid: int | None,
) -> None:
    """Stages the matching files and notes the ones left out."""
    if not patterns:
        return
    matchers = [glob_regex(p) for p in patterns]
    budget = [limits.max_entries_scanned]
    stored = total = 0
    for relative, entry in _walk(cwd, budget):
        if not any(m.match(relative) for m in matchers):
            continue
        name = FILES_PREFIX + relative
        reason = _name_problem(relative, limits)
        if reason is None and stored >= limits.max_files:
            reason = f"more than {limits.max_files} files matched task.artifacts"
        if reason is not None:
            staging.omit(_printable(name), reason)
            continue
        try:
            with open_run_file(cwd, Path(entry.path), owner_uid) as (source, size):
                if size > limits.max_file_bytes:
                    raise Unreadable(
                        f"{size} bytes, past the bound of {limits.max_file_bytes} bytes a file"
                    )
                if total + size > limits.max_total_bytes:
                    raise Unreadable(
                        f"{size} bytes, past the bound of {limits.max_total_bytes} bytes "
                        "for all files together"
                    )
                staging.add_redacted(name, source, size)
        except Unreadable as exc:
            staging.omit(name, str(exc))
            continue
        stored += 1
        total += size
    if budget[0] < 0:
        staging.omit(
            FILES_PREFIX + "*",
            f"the working folder has more than {limits.max_entries_scanned} entries; "
            "stopped looking for task.artifacts",
        )


def _name_problem(relative: str, limits: ArtifactLimits) -> str | None:
    if _NOT_PRINTABLE.search(relative):
        return "the name is not printable UTF-8"
    if len((FILES_PREFIX + relative).encode("utf-8")) > limits.max_name_bytes:
        return f"the name is longer than {limits.max_name_bytes} bytes"
    return None


def _printable(name: str) -> str:
    return _NOT_PRINTABLE.sub("\ufffd", name)
