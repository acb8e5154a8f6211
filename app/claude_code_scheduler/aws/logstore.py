"""Run logs and artifacts in S3: one PutObject for a small file, boto3's
managed transfer (multipart) for a large one. No logic here."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from boto3.s3.transfer import TransferConfig

from claude_code_scheduler.node.metrics import METRICS

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# From this size on an upload goes multipart, in parts of this size, so a large
# log streams from disk instead of being read into memory. Below it, one
# PutObject streamed from the file: the managed transfer would make the same
# single call, after setting up a transfer manager and its threads for it.
MULTIPART_THRESHOLD = 8 * 1024 * 1024
# Parts in flight at once: each holds a buffer and a thread of its own, and
# two already keep a log upload well ahead of what a run writes.
MULTIPART_CONCURRENCY = 2
CONTENT_TYPE = "text/plain; charset=utf-8"
# The run's own artifacts (node.artifacts) by their names; a file of
# task.artifacts by its suffix, else as bytes.
CONTENT_TYPES = {
    ".log": CONTENT_TYPE,
    ".patch": "text/x-diff; charset=utf-8",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
}
BINARY = "application/octet-stream"


def content_type(key: str) -> str:
    suffix = Path(key).suffix.lower()
    if suffix in CONTENT_TYPES:
        return CONTENT_TYPES[suffix]
    guessed, encoding = mimetypes.guess_type(key, strict=True)
    return guessed if guessed is not None and encoding is None else BINARY


class LogUploader(Protocol):
    """What a run needs of the log bucket (its log and its artifacts);
    LogStore, and the tests' fakes."""

    def upload(self, path: Path, key: str) -> None: ...


class LogStore:
    def __init__(self, s3: S3Client, bucket: str) -> None:
        self._s3 = s3
        self.bucket = bucket
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_THRESHOLD,
            max_concurrency=MULTIPART_CONCURRENCY,
            use_threads=True,
        )

    def upload(self, path: Path, key: str) -> None:
        """Streams from disk, multipart when large; the content type comes from the key."""
        try:
            self._upload(path, key)
        except Exception as exc:
            METRICS.upload_failed(exc)
            raise

    def _upload(self, path: Path, key: str) -> None:
        kind = content_type(key)
        if path.stat().st_size < MULTIPART_THRESHOLD:
            with path.open("rb") as body:
                self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=kind)
            return
        self._s3.upload_file(
            str(path),
            self.bucket,
            key,
            ExtraArgs={"ContentType": kind},
            Config=self._transfer,
        )
