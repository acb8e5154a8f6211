"""node/sessions.py: a session made findable by its id (the pointer written
after the transcript is stored) and restored for task.resume into the run's
CLI config folder, against fakes of the bucket with the adapters' surface.

The hostile-id tests have their control: the same id joined naively into a
path lands outside the run's config folder."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest
from unit_support import (
    FakeLogs,
    FakeOutbox,
    FakeQueue,
    client_error,
    make_config,
    received_run,
)

from claude_code_scheduler.aws.objects import DownloadStopped, ObjectTooLarge
from claude_code_scheduler.node.artifacts import TRANSCRIPT_NAME, ArtifactLimits
from claude_code_scheduler.node.artifacts.collect import store
from claude_code_scheduler.node.artifacts.staging import Staging
from claude_code_scheduler.node.control import RunControl
from claude_code_scheduler.node.leases import LeaseKeeper
from claude_code_scheduler.node.messages import Ending, MessageLifecycle
from claude_code_scheduler.node.outcome import unresolved
from claude_code_scheduler.node.process.environment import RunDirs
from claude_code_scheduler.node.process.isolation import SHARED, RunIdentity
from claude_code_scheduler.node.sessions import (
    MAX_POINTER_BYTES,
    SessionError,
    SessionRestorer,
    pointer_document,
    pointer_key,
    project_folder_name,
    record_session,
    session_file,
)
from claude_code_scheduler.protocol import MockSpec, RunTask, TaskSpec
from claude_code_scheduler.protocol.commands import ResumeSpec
from claude_code_scheduler.protocol.events import ErrorType
from claude_code_scheduler.redaction import Redactor

SESSION = "7065e054-dc82-4903-9361-8b227fc32814"
BUCKET = "logs-bucket"
TRANSCRIPT = (
    b'{"type":"user","sessionId":"7065e054-dc82-4903-9361-8b227fc32814",'
    b'"message":{"role":"user","content":"the fact is PURPLE-42"}}\n'
    b'{"type":"assistant","message":{"role":"assistant","content":"noted"}}\n'
)


class Bucket:
    """An ObjectReader over a dict of keys; `failures` are raised, one per
    call, before it answers. Records every key it was asked for."""

    def __init__(self, objects: dict[str, bytes] | None = None) -> None:
        self.objects = dict(objects or {})
        self.failures: list[BaseException] = []
        self.asked: list[str] = []
        # A transcript's bytes past what HeadObject said (rewritten meanwhile).
        self.grow_by = 0

    def _answer(self, key: str) -> bytes:
        self.asked.append(key)
        if self.failures:
            raise self.failures.pop(0)
        if key not in self.objects:
            raise client_error("404", 404, "HeadObject")
        return self.objects[key]

    def size(self, bucket: str, key: str) -> int:
        assert bucket == BUCKET
        return len(self._answer(key))

    def download(
        self,
        bucket: str,
        key: str,
        into: BinaryIO,
        *,
        max_bytes: int,
        should_stop: Callable[[], bool],
    ) -> None:
        assert bucket == BUCKET
        body = self._answer(key)
        if key.endswith(".jsonl"):
            body += b"x" * self.grow_by
        if should_stop():
            raise DownloadStopped("stopped")
        if len(body) > max_bytes:
            raise ObjectTooLarge(f"the object has more than {max_bytes} bytes")
        into.write(body)


def stored(
    session_id: str = SESSION, run_id: str = "run-1", transcript: bytes = TRANSCRIPT
) -> Bucket:
    return Bucket(
        {
            pointer_key(session_id): pointer_document(session_id, run_id).encode(),
            f"runs/{run_id}/transcript.jsonl": transcript,
        }
    )


@pytest.fixture
def dirs(tmp_path: Path) -> RunDirs:
    return RunDirs.create(tmp_path / "work", "run-2")


def restore(
    bucket: Bucket,
    dirs: RunDirs,
    session_id: str = SESSION,
    *,
    identity: RunIdentity = SHARED,
    max_bytes: int = 1024 * 1024,
    interrupt: threading.Event | None = None,
    seconds_left: float = 30.0,
) -> Path:
    restorer = SessionRestorer(bucket, BUCKET, max_bytes=max_bytes)
    restored = restorer.restore(
        session_id,
        dirs,
        identity,
        interrupt=interrupt or threading.Event(),
        time_left=lambda: seconds_left,
    )
    return restored.path


def jsonl_files(dirs: RunDirs) -> list[Path]:
    return sorted(dirs.config.rglob("*.jsonl"))


# --- where the CLI looks ---------------------------------------------------------------


def test_the_folder_name_is_the_clis_escaping_of_the_cwd() -> None:
    # As the genuine CLI named them (tests/realcli/FINDINGS.md).
    assert project_folder_name(Path("/tmp/dexp/r2/a/work")) == "-tmp-dexp-r2-a-work"
    assert (
        project_folder_name(Path("/tmp/dexp/r1/My Project.v2/a_b-c~d@e"))
        == "-tmp-dexp-r1-My-Project-v2-a-b-c-d-e"
    )
    # A character past U+FFFF is two UTF-16 code units, so two dashes.
    assert project_folder_name(Path("/a/\U0001f600/b")) == "-a----b"


def test_a_long_cwd_is_cut_and_hashed_as_the_cli_does() -> None:
    cwd = Path("/tmp/dexp/r3/" + "long-folder-name-é-" * 8 + "/" + "x" * 60 + "/work")
    name = project_folder_name(cwd)
    # The folder the genuine CLI 2.1.332 made for this cwd.
    assert name == (
        "-tmp-dexp-r3-long-folder-name---long-folder-name---long-folder-name---"
        "long-folder-name---long-folder-name---long-folder-name---long-folder-name---"
        "long-folder-name----xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-eblv00"
    )


def test_the_session_file_is_in_this_runs_config_folder(dirs: RunDirs) -> None:
    path = session_file(dirs, SESSION)
    assert path == dirs.config / "projects" / project_folder_name(dirs.cwd) / f"{SESSION}.jsonl"


# --- the restore -----------------------------------------------------------------------


def test_a_stored_session_is_restored_where_the_cli_looks_with_private_modes(
    dirs: RunDirs,
) -> None:
    bucket = stored()
    path = restore(bucket, dirs)
    assert path == session_file(dirs, SESSION)
    assert path.read_bytes() == TRANSCRIPT
    # The pointer, then the transcript's size, then the transcript.
    transcript_key = "runs/run-1/transcript.jsonl"
    assert bucket.asked == [f"sessions/{SESSION}.json", transcript_key, transcript_key]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (path.parent, path.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")
def test_the_restored_file_and_its_folders_belong_to_the_runs_uid(tmp_path: Path) -> None:
    identity = RunIdentity(0, 65534, 65534)
    dirs = RunDirs.create(tmp_path / "work", "run-2", identity)
    path = restore(stored(), dirs, identity=identity)
    for entry in (path, path.parent, path.parent.parent):
        assert (entry.stat().st_uid, entry.stat().st_gid) == (65534, 65534), entry


@pytest.mark.parametrize(
    "hostile",
    [
        "../../../../tmp/escaped",
        f"../{SESSION}",
        f"{SESSION}/../../x",
        SESSION.upper(),  # the CLI looks for the file named exactly so: never stored
        f"{SESSION}\n",
        "",
    ],
)
def test_a_hostile_session_id_builds_no_key_and_no_path(dirs: RunDirs, hostile: str) -> None:
    bucket = stored()
    if "/" in hostile:
        # The control: joined as it is, the id names a file outside the config folder.
        naive = dirs.config / "projects" / "x" / f"{hostile}.jsonl"
        assert not Path(os.path.normpath(naive)).is_relative_to(dirs.config / "projects" / "x")
    with pytest.raises(SessionError) as raised:
        restore(bucket, dirs, hostile)
    assert not raised.value.interrupted
    assert bucket.asked == [], "no S3 call"
    assert jsonl_files(dirs) == []


def test_a_pointer_naming_a_hostile_run_is_refused(dirs: RunDirs) -> None:
    bucket = Bucket(
        {pointer_key(SESSION): pointer_document(SESSION, "..").encode(), "runs/../x": b"{}\n"}
    )
    with pytest.raises(SessionError, match=f"record of session {SESSION} is unreadable"):
        restore(bucket, dirs)
    assert bucket.asked == [f"sessions/{SESSION}.json"]


@pytest.mark.parametrize(
    "pointer",
    [
        b"not json",
        b"[]",
        json.dumps({"session_id": "another", "run_id": "run-1"}).encode(),
        json.dumps({"session_id": SESSION, "run_id": 7}).encode(),
    ],
)
def test_an_unreadable_pointer_is_a_session_error(dirs: RunDirs, pointer: bytes) -> None:
    bucket = Bucket({pointer_key(SESSION): pointer})
    with pytest.raises(SessionError, match="unreadable"):
        restore(bucket, dirs)


def test_an_oversized_pointer_is_refused_unread(dirs: RunDirs) -> None:
    bucket = Bucket({pointer_key(SESSION): b" " * (MAX_POINTER_BYTES + 1)})
    with pytest.raises(SessionError, match="not a session record"):
        restore(bucket, dirs)


def test_an_unknown_session_names_the_id_and_is_not_interrupted(dirs: RunDirs) -> None:
    with pytest.raises(SessionError) as raised:
        restore(Bucket(), dirs)
    message_text = str(raised.value)
    assert SESSION in message_text and "no session" in message_text
    assert not raised.value.interrupted
    assert jsonl_files(dirs) == []


def test_a_forbidden_session_says_access_denied(dirs: RunDirs) -> None:
    bucket = stored()
    bucket.failures = [client_error("AccessDenied", 403, "HeadObject")]
    with pytest.raises(SessionError, match="access denied"):
        restore(bucket, dirs)


def test_a_transcript_past_the_bound_is_refused_before_its_download(dirs: RunDirs) -> None:
    bucket = stored(transcript=TRANSCRIPT * 100)
    with pytest.raises(SessionError, match="more than the 1000 a node restores"):
        restore(bucket, dirs, max_bytes=1000)
    assert bucket.asked == [f"sessions/{SESSION}.json", "runs/run-1/transcript.jsonl"]
    assert jsonl_files(dirs) == []


def test_a_transcript_that_grew_while_read_is_refused_and_removed(dirs: RunDirs) -> None:
    bucket = stored()
    bucket.grow_by = 10
    with pytest.raises(SessionError, match="grew while read"):
        restore(bucket, dirs)
    assert jsonl_files(dirs) == []


@pytest.mark.parametrize("body", [b"", b"\n\n", b'{"ok":1}\nsecret-ish-content-3141\n', b"[1]\n"])
def test_a_transcript_that_is_not_json_lines_is_refused_without_its_content(
    dirs: RunDirs, body: bytes
) -> None:
    with pytest.raises(SessionError) as raised:
        restore(stored(transcript=body), dirs)
    assert "secret-ish" not in str(raised.value)
    assert SESSION in str(raised.value)
    assert jsonl_files(dirs) == []


def test_an_outage_is_retried_until_the_session_is_read(dirs: RunDirs) -> None:
    bucket = stored()
    bucket.failures = [client_error("ServiceUnavailable", 503, "GetObject")]
    assert restore(bucket, dirs).read_bytes() == TRANSCRIPT


def test_a_shutdown_during_the_restore_hands_the_run_back(dirs: RunDirs) -> None:
    interrupt = threading.Event()
    interrupt.set()
    with pytest.raises(SessionError) as raised:
        restore(stored(), dirs, interrupt=interrupt)
    assert raised.value.interrupted
    outcome = unresolved("run-2", raised.value, 0.1, lambda text: text)
    assert outcome.ending is Ending.HANDED_BACK
    assert outcome.event.data["error"]["type"] == ErrorType.NODE_SHUTDOWN
    assert jsonl_files(dirs) == []


def test_the_runs_timeout_during_the_restore_fails_it(dirs: RunDirs) -> None:
    with pytest.raises(SessionError, match="before the run's timeout") as raised:
        restore(stored(), dirs, seconds_left=0.0)
    assert not raised.value.interrupted


def test_a_session_error_is_a_failure_that_is_not_retried() -> None:
    outcome = unresolved("run-2", SessionError(f"no session {SESSION}"), 0.1, lambda t: t)
    assert outcome.ending is Ending.FAILED
    data = outcome.event.data
    assert data["error"] == {"type": "SessionError", "message": f"no session {SESSION}"}
    assert data["retryable"] is False


# --- the pointer -------------------------------------------------------------------------


def test_the_pointer_names_the_run_and_its_transcript(tmp_path: Path) -> None:
    logs = FakeLogs()
    assert record_session(SESSION, "run-1", tmp_path / "p", logs, threading.Event())
    document = json.loads(logs.uploads[f"sessions/{SESSION}.json"])
    assert document["session_id"] == SESSION
    assert document["run_id"] == "run-1"
    assert document["transcript"] == "runs/run-1/transcript.jsonl"


def test_no_pointer_for_a_transcript_whose_name_is_not_a_session_id(tmp_path: Path) -> None:
    logs = FakeLogs()
    assert not record_session("../../inputs/x", "run-1", tmp_path / "p", logs, threading.Event())
    assert logs.uploads == {}


def staged_transcript(tmp_path: Path) -> Staging:
    staging = Staging.create(tmp_path, "run-1", Redactor([]))
    staging.add_text(TRANSCRIPT_NAME, TRANSCRIPT.decode())
    staging.session_id = SESSION
    return staging


def test_store_writes_the_pointer_after_the_transcript(tmp_path: Path) -> None:
    logs = FakeLogs()
    order: list[str] = []
    logs.on_upload = order.append
    report = store(staged_transcript(tmp_path), logs, BUCKET, "run-1", threading.Event())
    assert [a.name for a in report.stored] == [TRANSCRIPT_NAME], "the pointer is no artifact"
    assert order == ["runs/run-1/transcript.jsonl", f"sessions/{SESSION}.json"]


def test_store_writes_no_pointer_when_the_transcript_was_not_stored(tmp_path: Path) -> None:
    logs = FakeLogs()
    logs.fail_with = client_error("AccessDenied", 403, "PutObject")
    store(staged_transcript(tmp_path), logs, BUCKET, "run-1", threading.Event())
    logs.fail_with = None
    assert logs.uploads == {}


def test_what_is_stored_is_restored(tmp_path: Path, dirs: RunDirs) -> None:
    """The two halves agree: a stored run's session restores into another run."""
    logs = FakeLogs()
    store(staged_transcript(tmp_path), logs, BUCKET, "run-1", threading.Event())
    assert restore(Bucket(logs.uploads), dirs).read_bytes() == TRANSCRIPT


# --- in a run ------------------------------------------------------------------------------


def run_resuming(tmp_path: Path, bucket: Bucket) -> tuple[FakeOutbox, FakeLogs]:
    outbox, logs = FakeOutbox(), FakeLogs()
    leases = LeaseKeeper(FakeQueue(), 30)
    lifecycle = MessageLifecycle(leases, outbox.publish)
    command = RunTask(
        "run-2",
        TaskSpec(
            prompt="what was the fact?",
            mock=MockSpec(duration_seconds=0.0),
            resume=ResumeSpec(SESSION),
        ),
    )
    received_run(
        make_config(tmp_path),
        command,
        messages=lifecycle,
        outbox=outbox,
        logs=logs,
        control=RunControl(),
        objects=bucket,
        artifact_limits=ArtifactLimits(),
    ).execute()
    return outbox, logs


def test_a_run_resuming_an_unknown_session_fails_before_its_cli_starts(tmp_path: Path) -> None:
    outbox, logs = run_resuming(tmp_path, Bucket())
    assert outbox.types() == ["TaskStarted", "TaskFailed"], "no output: the CLI never ran"
    error = outbox.events[-1].data["error"]
    assert error["type"] == "SessionError" and SESSION in error["message"]
    assert outbox.events[-1].data["retryable"] is False
    assert [key.split("/")[0] for key in logs.uploads] == ["records"], "no log, the run's record"
    assert [p.name for p in (tmp_path / "work").iterdir() if p.name.startswith("run-")] == []


def test_a_run_resuming_a_stored_session_says_so_in_its_log(tmp_path: Path) -> None:
    outbox, logs = run_resuming(tmp_path, stored())
    assert outbox.types()[-1] == "TaskCompleted", outbox.events[-1].data
    log_text = logs.uploads["logs/run-2.log"].decode()
    assert f"session: resuming {SESSION} from the transcript of run run-1" in log_text
