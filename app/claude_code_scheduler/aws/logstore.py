"""Run logs in S3: one PutObject for a small log, boto3's managed transfer
(multipart) for a large one. No logic here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from boto3.s3.transfer import TransferConfig

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


class LogUploader(Protocol):
    """What a run needs of the log bucket; LogStore, and the tests' fakes."""

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
        """Streams from disk, multipart when large."""
        if path.stat().st_size < MULTIPART_THRESHOLD:
            with path.open("rb") as body:
                self._s3.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType=CONTENT_TYPE
                )
            return
        self._s3.upload_file(
            str(path),
            self.bucket,
            key,
            ExtraArgs={"ContentType": CONTENT_TYPE},
            Config=self._transfer,
        )
