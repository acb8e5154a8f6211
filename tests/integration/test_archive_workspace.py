"""An archive workspace, end to end: a real node process (mock mode, as root,
so each run has a uid of its own) against the moto server. An archive under
the log bucket's inputs/ is unpacked and is the CLI's working folder (a file
from it comes back as an artifact); one elsewhere in the bucket, a missing
key and a hostile archive fail with WorkspaceError, not retryable, and the
hostile one writes nothing outside its run's folder.

One node takes all the runs at once, to keep to one start-up.
"""

from __future__ import annotations

import io
import json
import tarfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest

from claude_code_scheduler.aws.objects import ObjectTooLarge, S3Objects
from tests.integration.conftest import REGION, Stack, command


def tar_gz(entries: list[tuple[str, bytes | str]]) -> bytes:
    """(name, data) for a file; (name, "->target") for a symbolic link."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data.removeprefix("->")
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def a_zip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name, data in entries.items():
            zipped.writestr(name, data)
    return out.getvalue()


def terminal(stack: Stack, run_id: str) -> dict[str, Any]:
    return stack.wait_for(
        lambda e: (
            e["event_type"] in ("TaskCompleted", "TaskFailed") and e["data"]["run_id"] == run_id
        ),
        timeout=60,
    )


def stored(stack: Stack, uri: str) -> bytes:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return bytes(stack.s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_archive_workspaces(stack: Stack, start_node: Any, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    s3 = f"s3://{stack.bucket}"
    put = {
        "inputs/job.tar.gz": tar_gz(
            [("src/hello.py", b"print('from the archive')\n"), ("README", b"read me\n")]
        ),
        "inputs/job.zip": a_zip({"notes/todo.txt": b"from the zip\n"}),
        "elsewhere/job.tar.gz": tar_gz([("a.txt", b"a")]),
        "inputs/hostile.tar.gz": tar_gz(
            [
                ("fine.txt", b"fine"),
                ("up", "->../../.."),
                (f"up/evil-{tag}", b"written through the link"),
                (f"../../evil-{tag}", b"zip-slip"),
            ]
        ),
    }
    for key, body in put.items():
        stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=body)
    runs = {
        "tar": command(
            workspace={"s3": f"{s3}/inputs/job.tar.gz"},
            artifacts=["src/hello.py"],
            mock={"duration_seconds": 0.2},
        ),
        "zip": command(
            workspace={"s3": f"{s3}/inputs/job.zip"},
            artifacts=["notes/*"],
            mock={"duration_seconds": 0.2},
        ),
        "elsewhere": command(workspace={"s3": f"{s3}/elsewhere/job.tar.gz"}),
        "missing": command(workspace={"s3": f"{s3}/inputs/missing-{tag}.tar.gz"}),
        "hostile": command(workspace={"s3": f"{s3}/inputs/hostile.tar.gz"}),
    }
    node = start_node(
        stack, "--mock-mode", "--poll-wait-seconds", "1", "--max-concurrent-tasks", str(len(runs))
    )
    for cmd in runs.values():
        stack.send(cmd)
    ends = {name: terminal(stack, cmd["run_id"]) for name, cmd in runs.items()}

    # Unpacked, and the CLI's working folder: the mock CLI's init line names
    # its cwd, the folder the node unpacked into; a file of the archive is
    # there to collect at the end.
    for name, body in (("tar", b"print('from the archive')\n"), ("zip", b"from the zip\n")):
        event = ends[name]
        assert event["event_type"] == "TaskCompleted", event
        [artifact] = [a for a in event["data"]["artifacts"] if a["name"] not in _node_made]
        assert stored(stack, artifact["uri"]) == body
        log = stack.log_text(runs[name]["run_id"]).decode()
        init = json.loads(next(line for line in log.splitlines() if '"subtype":"init"' in line))
        assert f"unpacking {runs[name]['task']['workspace']['s3']} into {init['cwd']}" in log
        assert "unpacked " in log  # the child's own words

    def failed(name: str, words: str) -> str:
        event = ends[name]
        assert event["event_type"] == "TaskFailed", event
        error = event["data"]["error"]
        assert error["type"] == "WorkspaceError", event
        assert event["data"]["retryable"] is False
        assert words in error["message"], error["message"]
        return str(error["message"])

    failed("elsewhere", f"{s3}/elsewhere/job.tar.gz: this node reads archives only from")
    failed("missing", "does not exist")
    message = failed("hostile", "archive refused")
    assert "outside the folder" in message or "'..' in the path" in message
    assert (
        "the workspace could not be prepared" in stack.log_text(runs["hostile"]["run_id"]).decode()
    )
    # Nothing of the hostile archive anywhere near the node: not in its work
    # folder (run folders are gone by now), nor above it.
    assert not [p for p in tmp_path.rglob(f"evil-{tag}")]
    assert node.process.poll() is None


# What the node stores for every run beside task.artifacts (node.artifacts).
_node_made = frozenset({"result.json", "transcript.jsonl", "changes.patch"})


def test_the_download_is_bounded_while_it_streams(stack: Stack, tmp_path: Path) -> None:
    """S3Objects against the moto server: an object past the bound is cut off
    at the bound, whatever HeadObject said before."""
    client = boto3.client(
        "s3",
        endpoint_url=stack.endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret-key",
    )
    body = bytes(3 * 1024 * 1024)
    stack.s3.put_object(Bucket=stack.bucket, Key="inputs/big.tar", Body=body)
    objects = S3Objects(client)
    assert objects.size(stack.bucket, "inputs/big.tar") == len(body)
    target = tmp_path / "big.tar"
    with target.open("wb") as file:
        objects.download(
            stack.bucket, "inputs/big.tar", file, max_bytes=len(body), should_stop=lambda: False
        )
    assert target.stat().st_size == len(body)
    with target.open("wb") as file, pytest.raises(ObjectTooLarge, match="more than 1048576"):
        objects.download(
            stack.bucket, "inputs/big.tar", file, max_bytes=1024 * 1024, should_stop=lambda: False
        )
    assert target.stat().st_size <= 1024 * 1024
