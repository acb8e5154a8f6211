"""What a run made, kept: collected from its folder after the CLI ended and
before the folder is removed, redacted, and stored in the log bucket under
runs/<run_id>/ before the terminal event that lists them goes out.

- changes.patch (patch.py): for a git workspace, everything the run changed
  against the checked-out commit, made by git running as the run's own uid;
- transcript.jsonl: the CLI's session file from its config folder, then a
  pointer sessions/<session id>.json to it, so that task.resume finds the
  session by its id on any node (node.sessions);
- files/<path> (files.py): what task.artifacts names in the working folder;
- result.json (collect.py): the CLI's whole result line and what the node
  knows of the run, written once the outcome is known.

The node reads the run's files as itself (root, under isolation), so every
file is opened without following a final link, must resolve inside the
folder it was looked for in, be a regular file and belong to the run's uid:
a link or a hard link cannot make the node copy a file the run could not
read. Every byte stored passes through the run's redactor (redaction.py);
everything left out is named with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class ArtifactLimits:
    """The bounds of what one run may store. A file past one is left out and
    named in artifacts_omitted, never cut: half a file reads as a whole one."""

    # task.artifacts: how many files, how large each, how much in all; a
    # hundred names keep the terminal event well inside SNS's 256 KiB.
    max_files: int = 100
    max_file_bytes: int = 50 * MIB
    max_total_bytes: int = 100 * MIB
    # Entries looked at in the working folder before giving up (a run can
    # leave a node_modules of a million files).
    max_entries_scanned: int = 200_000
    # A file's name as the event lists it, in UTF-8 bytes.
    max_name_bytes: int = 256
    max_patch_bytes: int = 64 * MIB
    max_transcript_bytes: int = 64 * MIB
    # Each git command of the patch (git add -A hashes every file).
    git_timeout_seconds: float = 120.0


DEFAULT_LIMITS = ArtifactLimits()
PATCH_NAME = "changes.patch"
RESULT_NAME = "result.json"
TRANSCRIPT_NAME = "transcript.jsonl"
FILES_PREFIX = "files/"


def artifact_key(run_id: str, name: str) -> str:
    return f"runs/{run_id}/{name}"
