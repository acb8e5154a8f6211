"""Run logs in S3, through boto3's managed transfer. No logic here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from boto3.s3.transfer import TransferConfig

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Above this size an upload goes multipart, in parts of this size, so a large
# log streams from disk instead of being read into memory.
MULTIPART_THRESHOLD = 8 * 1024 * 1024


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
            use_threads=True,
        )

    def upload(self, path: Path, key: str) -> None:
        """Streams from disk, multipart when large."""
        self._s3.upload_file(
            str(path),
            self.bucket,
            key,
            ExtraArgs={"ContentType": "text/plain; charset=utf-8"},
            Config=self._transfer,
        )
