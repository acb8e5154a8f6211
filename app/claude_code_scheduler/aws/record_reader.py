"""Reading run records back from the log bucket, for the `runs` commands:
ListObjectsV2 a page at a time, GetObject per record, a ranged GetObject for
the end of a log. No logic here; the layout is aws.records'.

IAM: s3:ListBucket with the condition s3:prefix like records/*, s3:GetObject
on records/* (and on logs/* for `runs show`'s log tail). Only the operator
commands import this module: the node writes records, it never lists them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectTypeDef

# ListObjectsV2 returns at most 1,000 keys per page (the S3 API reference,
# ListObjectsV2 MaxKeys).
MAX_KEYS_PER_PAGE = 1000
# A record is some 1-2 KiB; its largest parts are bounded by the event it
# copies (model_usage ~20 KiB, about a hundred artifact URIs). More than this
# is not one of ours, and is not read into memory.
MAX_RECORD_BYTES = 256 * 1024


class RecordTooLarge(Exception):
    """The object is larger than any record the node writes."""


class RecordReader:
    """ListObjectsV2 and GetObject on the log bucket, for the `runs` command."""

    def __init__(self, s3: S3Client, bucket: str) -> None:
        self._s3 = s3
        self.bucket = bucket

    def keys(self, prefix: str) -> Iterator[str]:
        """Every key under `prefix`, a page at a time (never the whole list in memory)."""
        for item in self._items(prefix):
            yield item["Key"]

    def listing(self, prefix: str) -> Iterator[tuple[str, datetime]]:
        """Every key under `prefix` with its LastModified (the dashboard reads
        the newest records first), a page at a time."""
        for item in self._items(prefix):
            yield item["Key"], item["LastModified"]

    def _items(self, prefix: str) -> Iterator[ObjectTypeDef]:
        token: str | None = None
        while True:
            if token is None:
                page = self._s3.list_objects_v2(
                    Bucket=self.bucket, Prefix=prefix, MaxKeys=MAX_KEYS_PER_PAGE
                )
            else:
                page = self._s3.list_objects_v2(
                    Bucket=self.bucket,
                    Prefix=prefix,
                    MaxKeys=MAX_KEYS_PER_PAGE,
                    ContinuationToken=token,
                )
            yield from page.get("Contents", [])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def read(self, key: str, max_bytes: int = MAX_RECORD_BYTES) -> bytes:
        answer = self._s3.get_object(Bucket=self.bucket, Key=key)
        with answer["Body"] as body:
            raw = body.read(max_bytes + 1)
        if len(raw) > max_bytes:
            raise RecordTooLarge(f"{key}: more than {max_bytes} bytes")
        return bytes(raw)

    def tail(self, key: str, max_bytes: int) -> bytes:
        """The last `max_bytes` of an object (a ranged GET: a large log is
        not downloaded to show its end)."""
        answer = self._s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=-{max_bytes}")
        with answer["Body"] as body:
            return bytes(body.read(max_bytes))
