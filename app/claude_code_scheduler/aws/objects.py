"""Reading one object from S3 into a file, bounded in size: HeadObject first,
then boto3's managed transfer (ranged GETs, in parallel for a large object),
with a byte bound on what it writes. No logic here.

IAM: s3:GetObject on the object covers both HeadObject and the ranged GETs.
Without s3:ListBucket a missing key answers 403, not 404.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Protocol, cast

import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from s3transfer.exceptions import RetriesExceededError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# As for uploads (aws.logstore): from 8 MiB on, parts of 8 MiB, two at a time.
MULTIPART_THRESHOLD = 8 * 1024 * 1024
MULTIPART_CONCURRENCY = 2


class ObjectTooLarge(Exception):
    """More bytes arrived than the caller allowed."""


class DownloadStopped(Exception):
    """The caller asked the download to stop (a shutdown, a deadline)."""


class ObjectReader(Protocol):
    """What an archive workspace needs of S3; S3Objects, and the tests' fakes."""

    def size(self, bucket: str, key: str) -> int: ...

    def download(
        self,
        bucket: str,
        key: str,
        into: BinaryIO,
        *,
        max_bytes: int,
        should_stop: Callable[[], bool],
    ) -> None: ...


class S3Objects:
    def __init__(self, s3: S3Client) -> None:
        self._s3 = s3
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_THRESHOLD,
            max_concurrency=MULTIPART_CONCURRENCY,
            use_threads=True,
        )

    def size(self, bucket: str, key: str) -> int:
        """ContentLength from HeadObject."""
        return int(self._s3.head_object(Bucket=bucket, Key=key)["ContentLength"])

    def download(
        self,
        bucket: str,
        key: str,
        into: BinaryIO,
        *,
        max_bytes: int,
        should_stop: Callable[[], bool],
    ) -> None:
        """Writes the object into `into` (a seekable file), raising
        ObjectTooLarge past `max_bytes` (the object may have grown since
        HeadObject) and DownloadStopped once `should_stop()` says so, both
        checked at every write. A connection that broke mid-stream after the
        transfer's own retries is an HTTPClientError, transient to
        aws.errors."""
        # Typed as a file: s3transfer asks only for seekable, seek, tell and write.
        bounded = cast(IO[Any], _BoundedFile(into, max_bytes, should_stop))
        try:
            self._s3.download_fileobj(bucket, key, bounded, Config=self._transfer)
        except RetriesExceededError as exc:
            raise botocore.exceptions.HTTPClientError(error=exc.last_exception) from exc


class _BoundedFile:
    """A file for s3transfer's writes (seek, then write, from its one I/O
    thread) that refuses to grow past a bound. Parts may arrive out of order
    and a retried part is written again, so the bound is on the furthest byte
    written, not on the bytes received."""

    def __init__(self, file: BinaryIO, max_bytes: int, should_stop: Callable[[], bool]) -> None:
        self._file = file
        self._max_bytes = max_bytes
        self._should_stop = should_stop

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def write(self, data: bytes) -> int:
        if self._should_stop():
            raise DownloadStopped("the download was stopped")
        end = self._file.tell() + len(data)
        if end > self._max_bytes:
            raise ObjectTooLarge(f"the object has more than {self._max_bytes} bytes")
        return self._file.write(data)
