"""output.py: chunks within SNS limits whose concatenation is exactly the log."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable

import pytest
from unit_support import schema_errors

from claude_code_scheduler.aws.limits import SNS_MAX_MESSAGE_BYTES
from claude_code_scheduler.node.output import (
    FLUSH_AFTER_SECONDS,
    MAX_CHUNK_BYTES,
    MAX_CHUNK_ESCAPED_BYTES,
    OutputBatcher,
    OutputRecorder,
    escaped_size,
)
from claude_code_scheduler.protocol.events import encode_event, task_output

Chunks = list[tuple[str, str]]


def chunks_into(chunks: Chunks) -> Callable[[str, str], None]:
    return lambda stream, text: chunks.append((stream, text))


def collector() -> tuple[Chunks, OutputBatcher]:
    chunks: Chunks = []
    return chunks, OutputBatcher(lambda stream, text: chunks.append((stream, text)))


def recorder() -> tuple[Chunks, io.BytesIO, OutputRecorder]:
    chunks, batcher = collector()
    log = io.BytesIO()
    return chunks, log, OutputRecorder(log, batcher)


def assert_within_limits(chunks: Chunks, max_bytes: int, max_escaped: int) -> None:
    for _, text in chunks:
        assert text, "no empty chunk is emitted"
        assert len(text.encode("utf-8")) <= max_bytes
        assert escaped_size(text) <= max_escaped


def per_stream(chunks: Chunks, stream: str) -> str:
    return "".join(text for s, text in chunks if s == stream)


# --- escaped_size -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("", 0), ("abc", 3), ('"', 2), ("\\", 2), ("\n", 2), ("\x01", 6), ("é", 2), ("😀", 4)],
)
def test_escaped_size(text: str, size: int) -> None:
    assert escaped_size(text) == size


def test_limits_leave_room_for_the_envelope() -> None:
    assert MAX_CHUNK_BYTES == 192 * 1024
    assert MAX_CHUNK_ESCAPED_BYTES < SNS_MAX_MESSAGE_BYTES
    assert MAX_CHUNK_BYTES <= MAX_CHUNK_ESCAPED_BYTES


# --- OutputBatcher ----------------------------------------------------------------------


def test_nothing_is_emitted_before_a_flush() -> None:
    chunks, batcher = collector()
    batcher.add("stdout", "hello ", now=0.0)
    batcher.add("stdout", "world", now=0.1)
    assert chunks == []
    assert batcher.deadline == pytest.approx(FLUSH_AFTER_SECONDS)
    batcher.flush()
    assert chunks == [("stdout", "hello world")]
    assert batcher.deadline is None


def test_a_stream_switch_flushes_the_other_stream() -> None:
    chunks, batcher = collector()
    batcher.add("stdout", "a", now=0.0)
    batcher.add("stdout", "b", now=0.0)
    batcher.add("stderr", "c", now=0.0)
    assert chunks == [("stdout", "ab")]
    batcher.add("stdout", "d", now=0.0)
    batcher.flush()
    assert chunks == [("stdout", "ab"), ("stderr", "c"), ("stdout", "d")]


def test_poll_flushes_one_second_after_the_first_byte() -> None:
    chunks, batcher = collector()
    batcher.poll(100.0)
    assert chunks == []
    batcher.add("stdout", "first", now=10.0)
    batcher.add("stdout", "second", now=10.9)
    batcher.poll(10.99)
    assert chunks == []
    batcher.poll(11.0)
    assert chunks == [("stdout", "firstsecond")]
    batcher.poll(50.0)
    assert len(chunks) == 1, "an empty batch is never emitted"
    batcher.add("stdout", "third", now=20.0)
    assert batcher.deadline == pytest.approx(21.0)
    batcher.poll(20.5)
    batcher.poll(21.5)
    assert chunks[-1] == ("stdout", "third")


def test_flush_after_is_configurable() -> None:
    chunks: Chunks = []
    batcher = OutputBatcher(lambda s, t: chunks.append((s, t)), flush_after=0.25)
    batcher.add("stderr", "x", now=1.0)
    batcher.poll(1.2)
    assert chunks == []
    batcher.poll(1.25)
    assert chunks == [("stderr", "x")]


def test_a_full_chunk_is_emitted_at_once() -> None:
    chunks, batcher = collector()
    batcher.add("stdout", "a" * (MAX_CHUNK_BYTES + 10), now=0.0)
    assert chunks == [("stdout", "a" * MAX_CHUNK_BYTES)]
    batcher.flush()
    assert chunks[-1] == ("stdout", "a" * 10)


@pytest.mark.parametrize(
    ("unit", "binding"),
    [
        ("\x01", "escaped"),  # 1 byte of UTF-8, 6 escaped
        ('"', "escaped"),  # 1 byte, 2 escaped
        ("\\", "escaped"),
        ("😀", "bytes"),  # 4 bytes, 4 escaped
        ("€", "bytes"),
        ("a", "bytes"),
    ],
)
def test_chunks_stay_within_both_limits(unit: str, binding: str) -> None:
    chunks, batcher = collector()
    text = unit * (2 * MAX_CHUNK_ESCAPED_BYTES // len(unit.encode()) + 7)
    for start in range(0, len(text), 50_000):
        batcher.add("stdout", text[start : start + 50_000], now=0.0)
    batcher.flush()
    assert len(chunks) >= 2
    assert "".join(t for _, t in chunks) == text
    assert_within_limits(chunks, MAX_CHUNK_BYTES, MAX_CHUNK_ESCAPED_BYTES)
    first = chunks[0][1]
    # Chunks are filled: the first one is as large as a limit allows.
    if binding == "escaped":
        assert MAX_CHUNK_ESCAPED_BYTES - escaped_size(first) < escaped_size(unit)
    else:
        assert MAX_CHUNK_BYTES - len(first.encode()) < len(unit.encode())
    for _, chunk in chunks:
        body = encode_event(task_output("r" * 128, 0, "stdout", chunk).body("n" * 64, "m" * 64, 1))
        assert len(body.encode("utf-8")) < SNS_MAX_MESSAGE_BYTES


def test_random_text_with_tiny_limits_keeps_every_property() -> None:
    rng = random.Random(1234)
    alphabet = ["a", "Z", " ", "\n", '"', "\\", "\x01", "\x1f", "é", "€", "中", "😀", "\u2028"]
    for _ in range(200):
        max_bytes = rng.randint(6, 40)
        max_escaped = rng.randint(6, 60)
        chunks: Chunks = []
        batcher = OutputBatcher(
            chunks_into(chunks),
            max_bytes=max_bytes,
            max_escaped=max_escaped,
        )
        written: Chunks = []
        now = 0.0
        for _ in range(rng.randint(1, 30)):
            stream = rng.choice(["stdout", "stderr"])
            text = "".join(rng.choices(alphabet, k=rng.randint(0, 50)))
            now += rng.choice([0.0, 0.3, 1.2])
            batcher.poll(now)
            batcher.add(stream, text, now)
            written.append((stream, text))
        batcher.flush()
        assert "".join(t for _, t in chunks) == "".join(t for _, t in written)
        for stream in ("stdout", "stderr"):
            assert per_stream(chunks, stream) == "".join(t for s, t in written if s == stream)
        assert_within_limits(chunks, max_bytes, max_escaped)


# --- OutputRecorder -------------------------------------------------------------------------


def test_multibyte_characters_split_across_feeds_are_reassembled() -> None:
    chunks, log, rec = recorder()
    for byte in "€😀".encode():
        rec.feed("stdout", bytes([byte]), now=0.0)
    rec.finish(now=0.0)
    assert chunks == [("stdout", "€😀")]
    assert log.getvalue() == "€😀".encode()
    assert rec.bytes_written == 7


def test_split_characters_on_two_streams_do_not_mix() -> None:
    chunks, log, rec = recorder()
    euro, smile = "€".encode(), "😀".encode()
    rec.feed("stdout", euro[:1], now=0.0)
    rec.feed("stderr", smile[:2], now=0.0)
    rec.feed("stdout", euro[1:], now=0.0)
    rec.feed("stderr", smile[2:], now=0.0)
    rec.finish(now=0.0)
    assert chunks == [("stdout", "€"), ("stderr", "😀")]
    assert log.getvalue() == "€😀".encode()


@pytest.mark.parametrize(
    ("feeds", "expected"),
    [
        ([b"ok \xff\xfe end"], "ok \ufffd\ufffd end"),
        ([b"cut \xe2\x82"], "cut \ufffd"),  # an incomplete character at the end of output
        ([b"a\xe2", b"\x82\xac", b"\x80b"], "a€\ufffdb"),
        ([b"\xed\xa0\x80"], "\ufffd\ufffd\ufffd"),  # an encoded surrogate is invalid UTF-8
    ],
)
def test_invalid_bytes_become_replacement_characters_in_log_and_chunks(
    feeds: list[bytes], expected: str
) -> None:
    chunks, log, rec = recorder()
    for data in feeds:
        rec.feed("stdout", data, now=0.0)
    rec.finish(now=0.0)
    assert "".join(t for _, t in chunks) == expected
    assert log.getvalue() == expected.encode("utf-8")
    assert rec.bytes_written == len(expected.encode("utf-8"))


def test_recorder_poll_flushes_by_time() -> None:
    chunks, _, rec = recorder()
    rec.feed("stderr", b"warning\n", now=5.0)
    rec.poll(5.5)
    assert chunks == []
    rec.poll(6.0)
    assert chunks == [("stderr", "warning\n")]


def test_recorder_log_equals_chunks_in_arrival_order() -> None:
    chunks, log, rec = recorder()
    rec.feed("stdout", b"line 1\n", now=0.0)
    rec.feed("stderr", b"oops\n", now=0.1)
    rec.feed("stdout", b"line 2\n", now=0.2)
    rec.finish(now=0.3)
    assert chunks == [("stdout", "line 1\n"), ("stderr", "oops\n"), ("stdout", "line 2\n")]
    assert log.getvalue() == b"line 1\noops\nline 2\n"


def test_twenty_megabytes_through_the_recorder() -> None:
    """Mixed streams, random multi-byte text fed in random pieces (splitting
    characters), with a moving clock: every chunk fits an SNS message, and the
    log is exactly the chunks."""
    rng = random.Random(20)
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789 ") * 4 + [
        "\n",
        "\t",
        '"',
        "\\",
        "\x01",
        "\x1b",
        "é",
        "ß",
        "€",
        "中",
        "✓",
        "😀",
        "🚀",
    ]
    base = "".join(rng.choices(alphabet, k=300_000))
    streams_text = {"stdout": [], "stderr": []}  # type: dict[str, list[str]]
    chunks, log, rec = recorder()
    total = 0
    now = 0.0
    target = 20 * 1024 * 1024
    while total < target:
        stream = "stdout" if rng.random() < 0.7 else "stderr"
        start = rng.randrange(len(base))
        length = rng.choice([rng.randint(1, 200), rng.randint(1000, 300_000)])
        text = base[start : start + length]
        data = text.encode("utf-8")
        streams_text[stream].append(text)
        total += len(data)
        offset = 0
        while offset < len(data):
            piece = rng.randint(1, 65536)
            rec.feed(stream, data[offset : offset + piece], now)
            offset += piece
            now += rng.choice([0.0, 0.001, 0.4])
            rec.poll(now)
    rec.finish(now)

    logged = log.getvalue()
    assert rec.bytes_written == total == len(logged)
    assert logged == "".join(text for _, text in chunks).encode("utf-8")
    for stream, pieces in streams_text.items():
        assert per_stream(chunks, stream) == "".join(pieces)
    assert_within_limits(chunks, MAX_CHUNK_BYTES, MAX_CHUNK_ESCAPED_BYTES)

    run_id = "r" * 128
    largest = 0
    for index, (stream, text) in enumerate(chunks):
        event = task_output(run_id, index, stream, text)
        body = encode_event(event.body("node-" + "x" * 59, "Node " + "y" * 59, index + 1))
        largest = max(largest, len(body.encode("utf-8")))
        assert len(body.encode("utf-8")) < 256 * 1024
    assert largest > MAX_CHUNK_BYTES // 2, "some chunks are large: the limits were exercised"
    for index in (0, len(chunks) // 2, len(chunks) - 1):
        stream, text = chunks[index]
        body = json.loads(encode_event(task_output(run_id, index, stream, text).body("n", "n", 1)))
        assert schema_errors("TaskOutput", body) == []
