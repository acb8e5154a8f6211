"""Turning a run's output into TaskOutput chunks and a log file that match exactly.

Both sides see the same decoded, redacted text: bytes from each stream go
through an incremental UTF-8 decoder (a character split across reads is held
back, invalid bytes become U+FFFD), then through the stream's redactor (a
secret split across reads is held back until it is whole, see
claude_code_scheduler.redaction), and only then is the text appended to the
spooled log and to the batcher. So the concatenation of the chunks is the log,
byte for byte, and neither holds a secret the node knows.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from claude_code_scheduler.aws.limits import SNS_MAX_MESSAGE_BYTES
from claude_code_scheduler.redaction import Redactor, StreamRedactor

# The protocol's own limit on one chunk's text, in UTF-8 bytes.
MAX_CHUNK_BYTES = 192 * 1024
# The chunk's text as it appears inside the JSON body (escapes included). The
# rest of the 256 KiB is kept for the envelope and the message attributes,
# whose fields (node id and name, run id) are bounded well below 16 KiB.
MAX_CHUNK_ESCAPED_BYTES = SNS_MAX_MESSAGE_BYTES - 16 * 1024
FLUSH_AFTER_SECONDS = 1.0

Emit = Callable[[str, str], None]  # (stream, text)


def escaped_size(text: str) -> int:
    """Bytes `text` takes inside a JSON body encoded with ensure_ascii=False."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8")) - 2


def _fits(text: str, max_bytes: int, max_escaped: int) -> bool:
    return len(text.encode("utf-8")) <= max_bytes and escaped_size(text) <= max_escaped


class OutputBatcher:
    """Collects text of one stream at a time and emits chunks within the limits.

    A chunk is emitted when it is full, when the other stream starts writing,
    or `flush_after` seconds after its first character arrived (`poll`).
    """

    def __init__(
        self,
        emit: Emit,
        *,
        max_bytes: int = MAX_CHUNK_BYTES,
        max_escaped: int = MAX_CHUNK_ESCAPED_BYTES,
        flush_after: float = FLUSH_AFTER_SECONDS,
    ) -> None:
        self._emit = emit
        self._max_bytes = max_bytes
        self._max_escaped = max_escaped
        self._flush_after = flush_after
        self._stream: str | None = None
        self._parts: list[str] = []
        self._bytes = 0
        self._escaped = 0
        self._first_at: float | None = None

    @property
    def deadline(self) -> float | None:
        """When the pending chunk must go out, or None when nothing is pending."""
        return None if self._first_at is None else self._first_at + self._flush_after

    def add(self, stream: str, text: str, now: float) -> None:
        if stream != self._stream:
            self.flush()
            self._stream = stream
        while text:
            size, escaped = len(text.encode("utf-8")), escaped_size(text)
            if (
                self._bytes + size <= self._max_bytes
                and self._escaped + escaped <= self._max_escaped
            ):
                self._append(text, size, escaped, now)
                return
            head = self._largest_fitting_prefix(text)
            if head:
                self._append(head, len(head.encode("utf-8")), escaped_size(head), now)
                text = text[len(head) :]
            self.flush()

    def poll(self, now: float) -> None:
        deadline = self.deadline
        if deadline is not None and now >= deadline:
            self.flush()

    def flush(self) -> None:
        if self._parts and self._stream is not None:
            self._emit(self._stream, "".join(self._parts))
        self._parts, self._bytes, self._escaped, self._first_at = [], 0, 0, None

    def _append(self, text: str, size: int, escaped: int, now: float) -> None:
        if self._first_at is None:
            self._first_at = now
        self._parts.append(text)
        self._bytes += size
        self._escaped += escaped

    def _largest_fitting_prefix(self, text: str) -> str:
        """Binary search on characters: cost grows with length, and cutting a str
        can never split a UTF-8 sequence."""
        room_bytes = self._max_bytes - self._bytes
        room_escaped = self._max_escaped - self._escaped
        low, high = 0, len(text)
        while low < high:
            mid = (low + high + 1) // 2
            if _fits(text[:mid], room_bytes, room_escaped):
                low = mid
            else:
                high = mid - 1
        return text[:low]


# Token shapes only: what a recorder redacts when it is given no run's values.
TOKENS_ONLY = Redactor()


class OutputRecorder:
    """Decodes and redacts raw bytes per stream, and feeds the log file and the
    batcher alike. `redactor` None records the output as it is (tests' control)."""

    def __init__(
        self, log: BinaryIO, batcher: OutputBatcher, redactor: Redactor | None = TOKENS_ONLY
    ) -> None:
        self._log = log
        self._batcher = batcher
        self._decoders = {
            stream: codecs.getincrementaldecoder("utf-8")(errors="replace")
            for stream in ("stdout", "stderr")
        }
        self._redactors: dict[str, StreamRedactor] | None = (
            None
            if redactor is None
            else {stream: redactor.stream() for stream in ("stdout", "stderr")}
        )
        # What the log holds: bytes after redaction.
        self.bytes_written = 0

    def feed(self, stream: str, data: bytes, now: float) -> None:
        text = self._decoders[stream].decode(data)
        if self._redactors is not None:
            text = self._redactors[stream].feed(text)
        self._write(stream, text, now)

    def poll(self, now: float) -> None:
        self._batcher.poll(now)

    def finish(self, now: float) -> None:
        """End of output: whatever a decoder still holds is an incomplete
        character, and what a redactor holds back is released."""
        for stream, decoder in self._decoders.items():
            text = decoder.decode(b"", final=True)
            if self._redactors is not None:
                redactor = self._redactors[stream]
                text = redactor.feed(text) + redactor.flush()
            self._write(stream, text, now)
        self._batcher.flush()
        self._log.flush()

    def _write(self, stream: str, text: str, now: float) -> None:
        if not text:
            return
        encoded = text.encode("utf-8")
        self._log.write(encoded)
        self.bytes_written += len(encoded)
        self._batcher.add(stream, text, now)


def open_spool(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb")
