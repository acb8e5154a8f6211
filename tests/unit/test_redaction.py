"""redaction.py: what is a secret in output and how it is replaced, whole or in
pieces, and the recorder that keeps the log equal to the chunks after it.

Every redaction test has its control: the same text through a redactor that
does not know the value (or a value below the minimum) keeps the value, so the
test shows the value would have gone out."""

from __future__ import annotations

import io
import itertools
import json
import random
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from claude_code_scheduler.node.output import OutputBatcher, OutputRecorder
from claude_code_scheduler.redaction import (
    MARKER,
    MIN_SECRET_LENGTH,
    TOKEN_SHAPES,
    Redactor,
    SecretRegistry,
    secret_forms,
)

SECRET = "db-pass-7Hq2xZ"


def shortest(name: str) -> str:
    """A token of the shape, with the fewest body characters it may have."""
    (found,) = (s for s in TOKEN_SHAPES if s.name == name)
    return found.prefixes[-1] + ("7Q" * 200)[: found.min_body]


# One of each token shape, at its shortest.
TOKENS = {shape.name: shortest(shape.name) for shape in TOKEN_SHAPES}
TOKENS["aws-access-key-id"] = "AKIAIOSFODNN7EXAMPLE"  # AWS's own example


# --- whole values --------------------------------------------------------------------


def test_a_secret_printed_whole_is_replaced_and_would_show_without_it() -> None:
    text = f"connecting with {SECRET}; done\n"
    assert Redactor([SECRET]).redact(text) == f"connecting with {MARKER}; done\n"
    assert Redactor().redact(text) == text, "control: unknown, it would go out"


def test_every_occurrence_goes_even_inside_a_longer_word() -> None:
    """Decided: a secret glued to other text is still the secret."""
    text = f"{SECRET}{SECRET} url=https://u:{SECRET}@host x{SECRET}y"
    assert (
        Redactor([SECRET]).redact(text)
        == f"{MARKER}{MARKER} url=https://u:{MARKER}@host x{MARKER}y"
    )


def test_a_secret_that_contains_another_is_replaced_whole() -> None:
    redactor = Redactor(["abcdef", "abcdef-and-more"])
    assert redactor.redact("x abcdef-and-more y abcdef") == f"x {MARKER} y {MARKER}"


@pytest.mark.parametrize("length", range(1, MIN_SECRET_LENGTH + 1))
def test_values_below_the_minimum_are_left_alone(length: int) -> None:
    value = "prod-x1234"[:length]
    text = f"env is {value} now"
    expected = text if length < MIN_SECRET_LENGTH else f"env is {MARKER} now"
    assert Redactor([value]).redact(text) == expected


def test_near_misses_stay() -> None:
    redactor = Redactor([SECRET])
    near = [
        SECRET[:-1],  # a part of the value is not the value
        SECRET[1:],
        SECRET[:-1] + "Y",  # one character changed
        SECRET.upper(),
    ]
    for text in near:
        assert redactor.redact(f"<{text}>") == f"<{text}>", text


# --- token shapes --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TOKENS))
def test_each_token_shape_is_replaced_and_one_character_short_is_not(name: str) -> None:
    token = TOKENS[name]
    redactor = Redactor()
    assert redactor.redact(f"key: {token}\n") == f"key: {MARKER}\n"
    short = token[:-1]
    assert redactor.redact(f"key: {short}\n") == f"key: {short}\n"


def test_an_aws_key_id_inside_a_longer_run_of_capitals_is_not_one() -> None:
    key = TOKENS["aws-access-key-id"]
    redactor = Redactor()
    for text in (f"X{key}", f"{key}X", f"9{key}"):
        assert redactor.redact(text) == text
    assert redactor.redact(f"x{key}.") == f"x{MARKER}.", "lower case is not a body character"


def test_a_long_token_is_replaced_whole() -> None:
    token = "sk-ant-oat01-" + "Zz9-_" * 20
    assert Redactor().redact(f'"{token}"') == f'"{MARKER}"'


def test_a_known_value_shaped_like_a_key_id_is_replaced_wherever_it_is() -> None:
    key = TOKENS["aws-access-key-id"]
    assert Redactor([key]).redact(f"X{key}") == f"X{MARKER}"


# --- JSON escapes and lines -------------------------------------------------------------


ESCAPED = 'pa"ss\\wörd\n\t\x01é/<&>'


@pytest.mark.parametrize(
    "encode",
    [
        lambda v: json.dumps({"text": v}, ensure_ascii=False),  # the CLI's stream-json
        lambda v: json.dumps({"text": v}),  # non-ASCII as \\u escapes
        lambda v: json.dumps({"line": json.dumps({"text": v}, ensure_ascii=False)}),  # twice
        lambda v: json.dumps({"t": v}).replace("/", "\\/"),  # PHP's escaped slash
        lambda v: (
            json.dumps({"t": v})
            .replace("<", "\\u003c")
            .replace(">", "\\u003e")
            .replace("&", "\\u0026")
        ),  # Go's encoding/json
    ],
    ids=["stream-json", "ascii", "json-in-json", "escaped-slash", "go"],
)
def test_a_secret_inside_json_escapes_is_replaced(encode) -> None:  # type: ignore[no-untyped-def]
    text = encode(ESCAPED)
    assert ESCAPED not in text, "the value is only there escaped"
    redacted = Redactor([ESCAPED]).redact(text)
    assert MARKER in redacted
    assert Redactor().redact(text) == text, "control"
    # What is left is the JSON around it, nothing of the value.
    assert "ss" not in redacted and "rd" not in redacted


def test_each_line_of_a_multi_line_value_is_a_secret() -> None:
    key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\r\nhkiG9w0BAQEFAASC\nok\n-----END KEY-----\n"
    redactor = Redactor([key])
    assert redactor.redact(key) == MARKER
    # A program that prints the lines one by one, or re-indents them:
    printed = "line: MIIEvQIBADANBgkq\n    hkiG9w0BAQEFAASC\n"
    assert redactor.redact(printed) == f"line: {MARKER}\n    {MARKER}\n"
    assert Redactor().redact(printed) == printed, "control"
    # A line too short to be a secret is text like any other.
    assert redactor.redact("ok then") == "ok then"


def test_forms_of_a_short_value_are_none() -> None:
    assert secret_forms("abc") == set()
    assert SECRET in secret_forms(SECRET)


# --- streams ---------------------------------------------------------------------------


STREAM_TEXT = (
    f'{{"type":"assistant","text":"the key is {SECRET} and {TOKENS["anthropic"]}"}}\n'
    f"plain {TOKENS['aws-access-key-id']} and {json.dumps(ESCAPED)[1:-1]} end\n"
)


def fed(redactor: Redactor, pieces: list[str]) -> str:
    stream = redactor.stream()
    return "".join(stream.feed(piece) for piece in pieces) + stream.flush()


def test_a_secret_split_across_two_chunks_at_every_boundary_is_replaced() -> None:
    redactor = Redactor([SECRET, ESCAPED])
    whole = redactor.redact(STREAM_TEXT)
    assert SECRET not in whole and TOKENS["anthropic"] not in whole
    for cut in range(len(STREAM_TEXT) + 1):
        assert fed(redactor, [STREAM_TEXT[:cut], STREAM_TEXT[cut:]]) == whole, cut
    control = Redactor()
    cut = STREAM_TEXT.index(SECRET) + 3
    assert SECRET in fed(control, [STREAM_TEXT[:cut], STREAM_TEXT[cut:]]), "control"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(STREAM_TEXT)), max_size=12))
def test_any_split_gives_the_same_text_as_the_whole(cuts: list[int]) -> None:
    redactor = Redactor([SECRET, ESCAPED])
    points = [0, *sorted(cuts), len(STREAM_TEXT)]
    pieces = [STREAM_TEXT[a:b] for a, b in itertools.pairwise(points)]
    assert fed(redactor, pieces) == redactor.redact(STREAM_TEXT)


def test_what_is_held_back_is_released_when_the_next_text_shows_it_is_no_secret() -> None:
    stream = Redactor([SECRET]).stream()
    assert stream.feed("abc db-pa") == "abc "
    assert stream.held == len("db-pa")
    assert stream.feed("rty\n") == "db-party\n"
    assert stream.held == 0
    assert stream.feed("nothing held here\n") == "nothing held here\n"


def test_a_token_that_can_still_grow_waits_and_the_end_releases_it() -> None:
    stream = Redactor().stream()
    start = "ghp_" + "x" * 10
    assert stream.feed("token " + start) == "token "
    assert stream.flush() == start, "too short at the end: text like any other"


def test_the_hold_back_is_bounded_by_the_longest_secret_or_token() -> None:
    value = "Q" * 300
    redactor = Redactor([value])
    stream = redactor.stream()
    released = [stream.feed("Q" * 7) for _ in range(200)]  # never becomes the value... yet
    assert stream.held <= redactor.max_hold
    assert "".join(released) + stream.flush() == redactor.redact("Q" * 1400)
    assert redactor.max_hold == max(299, *(s.longest for s in TOKEN_SHAPES))


# --- the recorder: the log is the chunks ---------------------------------------------------


def record(redactor: Redactor | None, pieces: list[bytes]) -> tuple[bytes, str]:
    chunks: list[tuple[str, str]] = []
    log = io.BytesIO()
    recorder = OutputRecorder(log, OutputBatcher(lambda s, t: chunks.append((s, t))), redactor)
    for index, piece in enumerate(pieces):
        recorder.feed("stdout", piece, float(index))
    recorder.finish(float(len(pieces)))
    return log.getvalue(), "".join(text for _, text in chunks)


def test_the_log_equals_the_chunks_and_neither_holds_the_secret() -> None:
    value = "pässwörd-" + uuid.uuid4().hex[:8]  # non-ASCII: a read may split a character
    data = f"one {value}\ntwo {json.dumps(value)}\n".encode()
    for cut in range(1, len(data)):
        log, chunks = record(Redactor([value]), [data[:cut], data[cut:]])
        assert log == chunks.encode()
        assert value.encode() not in log and MARKER.encode() in log, cut
    log, chunks = record(None, [data[:7], data[7:]])
    assert value.encode() in log and log == chunks.encode(), "control: redaction off"


def test_a_recorder_redacts_token_shapes_by_default() -> None:
    log = io.BytesIO()
    recorder = OutputRecorder(log, OutputBatcher(lambda s, t: None))
    recorder.feed("stderr", TOKENS["github"].encode(), 0.0)
    recorder.finish(1.0)
    assert log.getvalue() == MARKER.encode()


def test_eight_megabytes_with_twenty_values_pass_through_unchanged() -> None:
    """Throughput sanity, no timing: the search and the hold-back look at each
    read once, whatever its size."""
    rng = random.Random(7)
    values = [uuid.uuid4().hex for _ in range(20)]
    line = json.dumps({"type": "assistant", "text": "status is fine " * 20}) + "\n"
    data = (line * (8 * 1024 * 1024 // len(line))).encode()
    pieces, at = [], 0
    while at < len(data):
        size = rng.randint(1, 65536)
        pieces.append(data[at : at + size])
        at += size
    log, chunks = record(Redactor(values), pieces)
    assert log == data and chunks.encode() == data


# --- artifacts --------------------------------------------------------------------------


def test_a_file_is_redacted_and_bytes_that_are_not_utf8_pass() -> None:
    redactor = Redactor([SECRET])
    data = b"\xff\xfe binary " + SECRET.encode() + b" \x80 end"
    expected = b"\xff\xfe binary " + MARKER.encode() + b" \x80 end"
    assert redactor.redact_bytes(data) == expected
    target = io.BytesIO()
    redactor.redact_file(io.BytesIO(data), target)
    assert target.getvalue() == expected


def test_a_file_redacted_in_place(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "artifact.txt"
    path.write_text(f"a {SECRET} b")
    Redactor([SECRET]).redact_path(path)
    assert path.read_text() == f"a {MARKER} b"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact.txt"]


# --- the registry --------------------------------------------------------------------------


def test_a_runs_values_redact_only_that_runs_text_while_it_lasts() -> None:
    registry = SecretRegistry()
    registry.add_node_values(["node-key-123"])
    with registry.for_run("r1", [SECRET]):
        assert registry.redactor("r1").redact(f"{SECRET} node-key-123") == f"{MARKER} {MARKER}"
        assert registry.redactor("r2").redact(SECRET) == SECRET
        assert registry.redactor(None).redact("node-key-123") == MARKER
    assert registry.redactor("r1").redact(SECRET) == SECRET


def test_rotated_credentials_keep_the_set_before() -> None:
    registry = SecretRegistry()
    sets = [[f"AKIA-old-{n}", f"secret-{n}-xyz"] for n in range(3)]
    for values in sets:
        registry.set_credentials(values)
    redactor = registry.redactor()
    assert redactor.redact(" ".join(sets[2] + sets[1])) == " ".join([MARKER] * 4)
    assert redactor.redact(sets[0][1]) == sets[0][1], "two rotations ago: dropped"
