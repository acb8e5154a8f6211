"""What counts as a secret in text the node sends out, and how it is replaced.

The one owner of the rule, for a run's output (node.output), the node's own
log lines (logsetup.SecretFilter), the words of a TaskFailed or a result
(node.runs) and any artifact the node uploads (`Redactor.redact_file`).

A secret is:
- a known value: the node's own credentials, a run's task env values and
  resolved task.secrets; each value also in the forms it takes inside JSON
  text (the CLI's stream-json escapes quotes, backslashes and control
  characters; a tool that prints JSON escapes them once more, and maybe
  non-ASCII, '/' or '<>&'), and, for a value of several lines, each line;
- a well-known token shape: Anthropic keys, AWS access key ids, GitHub and
  Slack tokens.

Every occurrence of a secret is replaced by MARKER, also inside a longer word:
a program may print a secret glued to other text (`user:SECRET@host`,
`TOKEN=SECRET;`), and matching whole words only would let that through.

What stays:
- values shorter than MIN_SECRET_LENGTH (see there);
- near-misses: a value with one character changed, a part of a value (a
  truncated secret is not the secret), a token shape with too few characters;
- a secret the run transforms (base64, reversed, split by the program
  itself): only the forms above are known.

Streaming: `StreamRedactor` holds back only the longest suffix of what it was
fed that could still become a secret (a prefix of a known value, or a token
shape that can still grow), and releases it as soon as the next text shows it
is not, or at `flush`. So a secret split across two reads or two chunks is
caught, and what is held back is never longer than the longest secret or
token. One compiled alternation finds the secrets; the hold-back looks only at
the end of the text.
"""

from __future__ import annotations

import codecs
import json
import re
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# GitHub Actions' marker; the docs and schemas name it.
MARKER = "***"
# Values shorter than this are left alone. Buildkite's redactor uses 6 for the
# same reason (internal/redact: LengthMin): a task env value such as "true",
# "none" or "prod" is an ordinary word, and blanking every occurrence of it
# wrecks the log (GitHub Actions masks any non-empty value, and a secret
# "docker" blanks that word everywhere: actions/runner#507) while telling a
# reader where the value was. A value that short is not a secret anyway: it is
# guessed in a few million tries. Node and task secrets alike; each line of a
# multi-line value must be as long.
MIN_SECRET_LENGTH = 6
# Literal partials are found by their first characters; every literal has at
# least MIN_SECRET_LENGTH.
_HEAD = 3
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_READ_CHARS = 1024 * 1024


@dataclass(frozen=True)
class TokenShape:
    """A token recognised by its form: one of `prefixes`, then `min_body` to
    `max_body` characters of the `body` class. A `bounded` token has a fixed
    length and is a token only when no body character touches it on either
    side (an AWS key id inside a longer run of capitals is not one)."""

    name: str
    prefixes: tuple[str, ...]
    body: str
    min_body: int
    max_body: int
    bounded: bool = False

    @property
    def longest(self) -> int:
        return max(map(len, self.prefixes)) + self.max_body

    def pattern(self) -> str:
        head = "|".join(map(re.escape, self.prefixes))
        after = f"(?!{self.body})" if self.bounded else ""
        return f"(?:{head}){self.body}{{{self.min_body},{self.max_body}}}{after}"

    def partial(self) -> str:
        """What the end of a text looks like when a token may be starting
        there: a proper prefix of a prefix, or a prefix and a body that can
        still grow (or, bounded, still be followed by a body character)."""
        head = "|".join(map(re.escape, self.prefixes))
        starts = {_proper_prefixes(prefix) for prefix in self.prefixes}
        return "|".join([*sorted(starts), f"(?:{head}){self.body}{{0,{self.max_body}}}"])


def _proper_prefixes(word: str) -> str:
    """A pattern matching word[:1], word[:2], ... word[:-1], in linear size."""
    pattern = ""
    for char in reversed(word[:-1]):
        pattern = re.escape(char) + (f"(?:{pattern})?" if pattern else "")
    return pattern


# The lengths are what each vendor documents or issues today, with room above
# for longer tokens; the upper bounds also bound what a stream holds back.
TOKEN_SHAPES: tuple[TokenShape, ...] = (
    # sk-ant-api03-... API keys and sk-ant-oat01-... OAuth tokens (100+ characters).
    TokenShape("anthropic", ("sk-ant-",), "[A-Za-z0-9_-]", 24, 248),
    # Classic and OAuth/app tokens: ghp_ and friends and 36 characters.
    TokenShape("github", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), "[A-Za-z0-9]", 36, 251),
    # Fine-grained personal access tokens: github_pat_ and 82 characters.
    TokenShape("github-pat", ("github_pat_",), "[A-Za-z0-9_]", 22, 244),
    # xoxb-<team>-<bot>-<secret>, xoxp-..., and the other Slack token kinds.
    TokenShape("slack", ("xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-"), "[A-Za-z0-9-]", 10, 250),
    # Access key ids: AKIA (long-term) or ASIA (temporary) and 16 characters.
    TokenShape("aws-access-key-id", ("AKIA", "ASIA"), "[A-Z0-9]", 16, 16, bounded=True),
)


def secret_forms(value: str) -> set[str]:
    """The texts that show `value` in output: itself, its JSON-escaped forms
    and, for a multi-line value, each of its lines (and theirs); nothing for a
    value shorter than MIN_SECRET_LENGTH."""
    pieces = {value}
    if _LINE_BREAK.search(value):
        pieces.update(line.strip() for line in _LINE_BREAK.split(value))
    forms: set[str] = set()
    for piece in pieces:
        if len(piece) >= MIN_SECRET_LENGTH:
            forms.update(_encodings(piece))
    return forms


def _encodings(value: str) -> set[str]:
    as_json = json.dumps(value, ensure_ascii=False)[1:-1]  # JSON.stringify's form: the CLI's
    as_ascii = json.dumps(value)[1:-1]  # Python's default: non-ASCII as \uXXXX
    return {
        value,
        as_json,
        as_ascii,
        # JSON that a tool printed, inside stream-json (or the like)
        json.dumps(as_json, ensure_ascii=False)[1:-1],
        json.dumps(as_json)[1:-1],
        json.dumps(as_ascii)[1:-1],
        as_json.replace("/", "\\/"),  # PHP and some others escape '/'
        # Go's encoding/json: '<', '>' and '&' as \u escapes
        as_ascii.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"),
    }


class Redactor:
    """Replaces the given values (in all their forms) and the token shapes by
    MARKER. Immutable: build another one for other values.

    Finding: every secret starts with an anchor (a literal, or a token
    shape's prefix), found with str.find, and the compiled alternation decides
    at the earliest anchor what is there. Measured on stream-json text, one
    str.find per anchor (a few GB/s each) beats CPython's regex alternation
    by 3 to 10 times at 4 to 100 values: `re` has no multi-literal search, and
    tries the alternation at every character that can start one.
    """

    def __init__(self, values: Iterable[str] = (), shapes: Sequence[TokenShape] = TOKEN_SHAPES):
        literals = sorted({f for v in values for f in secret_forms(v)}, key=lambda s: (-len(s), s))
        self._literals = frozenset(literals)
        # Longest first, so that a secret that contains another is replaced whole.
        alternatives = [re.escape(literal) for literal in literals]
        alternatives += [shape.pattern() for shape in shapes]
        self._pattern = re.compile("|".join(alternatives)) if alternatives else None
        self._anchors = tuple(
            dict.fromkeys([*literals, *(prefix for shape in shapes for prefix in shape.prefixes)])
        )
        self._bounded = tuple(
            (re.compile(shape.pattern()), re.compile(shape.body))
            for shape in shapes
            if shape.bounded
        )
        self._longest_literal = len(literals[0]) if literals else 0
        by_head: dict[str, list[str]] = {}
        for literal in literals:
            by_head.setdefault(literal[:_HEAD], []).append(literal)
        self._by_head = {head: tuple(found) for head, found in by_head.items()}
        heads = "|".join(map(re.escape, sorted(by_head)))
        self._heads = re.compile(f"(?=({heads}))") if literals else None
        self._short_heads = frozenset(s[:k] for s in literals for k in range(1, _HEAD))
        self._longest_token = max((shape.longest for shape in shapes), default=0)
        partials = "|".join(shape.partial() for shape in shapes)
        self._token_partial = re.compile(f"(?:{partials})\\Z") if shapes else None

    @property
    def literal_count(self) -> int:
        """How many texts are searched for (the values in all their forms)."""
        return len(self._literals)

    @property
    def max_hold(self) -> int:
        """The most a StreamRedactor holds back, in characters."""
        return max(self._longest_literal - 1, self._longest_token, 0)

    def redact(self, text: str) -> str:
        """`text`, complete, with every secret replaced."""
        redacted, _ = self._redact(text, before="", final=True)
        return redacted

    def stream(self) -> StreamRedactor:
        """A redactor for one stream of text that arrives in pieces."""
        return StreamRedactor(self)

    def redact_bytes(self, data: bytes) -> bytes:
        """For a file's content: bytes that are not UTF-8 pass through as they are."""
        return self.redact(data.decode("utf-8", "surrogateescape")).encode(
            "utf-8", "surrogateescape"
        )

    def redact_file(self, source: BinaryIO, target: BinaryIO) -> None:
        """Copies `source` to `target` redacted, in bounded memory (an artifact
        before it is uploaded)."""
        decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        stream = self.stream()
        while block := source.read(_READ_CHARS):
            target.write(stream.feed(decoder.decode(block)).encode("utf-8", "surrogateescape"))
        tail = stream.feed(decoder.decode(b"", final=True)) + stream.flush()
        target.write(tail.encode("utf-8", "surrogateescape"))

    def redact_path(self, path: Path) -> None:
        """Redacts the file at `path` in place (through a temporary file beside it)."""
        scratch = path.with_name(path.name + ".redacting")
        with path.open("rb") as source, scratch.open("wb") as target:
            self.redact_file(source, target)
        scratch.replace(path)

    # --- the scan ---------------------------------------------------------------

    def _redact(self, buf: str, *, before: str, final: bool) -> tuple[str, int]:
        """Redacts `buf` as far as it is decided; returns the text and where the
        undecided rest starts (len(buf) when `final`). `before` is the
        character that came before `buf`, for the bounded shapes' boundary."""
        pieces: list[str] = []
        pos = 0
        hold = len(buf) if final else self._undecided_from(buf, 0)
        anchors_at = [buf.find(anchor) for anchor in self._anchors]
        while (match := self._next_match(buf, pos, before, anchors_at)) is not None:
            # A match that starts before the undecided rest cannot change with
            # more text: a longer alternative there would make that start undecided.
            if match.start() >= hold:
                break
            pieces += [buf[pos : match.start()], MARKER]
            pos = match.end()
            if hold < pos:
                hold = len(buf) if final else self._undecided_from(buf, pos)
        pieces.append(buf[pos:hold])
        return "".join(pieces), hold

    def _next_match(
        self, buf: str, pos: int, before: str, anchors_at: list[int]
    ) -> re.Match[str] | None:
        """The first secret from `pos`. `anchors_at[i]` is where anchor i was
        found last (-1: nowhere from there on), updated as `pos` moves on."""
        assert self._pattern is not None or not anchors_at
        while True:
            first = -1
            for index, last in enumerate(anchors_at):
                at = last if not 0 <= last < pos else buf.find(self._anchors[index], pos)
                anchors_at[index] = at
                if at != -1 and (first == -1 or at < first):
                    first = at
            if first == -1 or self._pattern is None:
                return None
            match = self._pattern.match(buf, first)
            if match is not None and self._stands_alone(buf, match, before):
                return match
            pos = first + 1

    def _stands_alone(self, buf: str, match: re.Match[str], before: str) -> bool:
        """False for a bounded shape glued to a body character before it."""
        if match.group() in self._literals:
            return True
        previous = buf[match.start() - 1] if match.start() > 0 else before
        return not previous or not any(
            pattern.fullmatch(match.group()) and body.fullmatch(previous)
            for pattern, body in self._bounded
        )

    def _undecided_from(self, buf: str, pos: int) -> int:
        """The earliest position from `pos` where the rest of `buf` could still
        become (part of) a secret with more text; len(buf) if there is none."""
        end = len(buf)
        hold = end
        if self._heads is not None:
            start = max(pos, end - self._longest_literal + 1)
            for candidate in self._heads.finditer(buf, start):
                rest = buf[candidate.start() :]
                if any(
                    len(literal) > len(rest) and literal.startswith(rest)
                    for literal in self._by_head[candidate.group(1)]
                ):
                    hold = candidate.start()
                    break
            else:
                for at in range(max(start, end - _HEAD + 1), end):
                    if buf[at:] in self._short_heads:
                        hold = at
                        break
        if self._token_partial is not None:
            token = self._token_partial.search(buf, max(pos, end - self._longest_token))
            if token is not None and token.start() < hold:
                hold = token.start()
        return hold


class StreamRedactor:
    """Redacts one stream of text fed in pieces (see the module's top)."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._held = ""
        self._before = ""

    @property
    def held(self) -> int:
        """How many characters wait for the next text."""
        return len(self._held)

    def feed(self, text: str) -> str:
        """What of the stream so far is decided, redacted."""
        if not text:
            return ""
        buf = self._held + text
        redacted, hold = self._redactor._redact(buf, before=self._before, final=False)
        if hold:
            self._before = buf[hold - 1]
        self._held = buf[hold:]
        return redacted

    def flush(self) -> str:
        """The end of the stream: whatever was held back, redacted."""
        buf, self._held = self._held, ""
        redacted, _ = self._redactor._redact(buf, before=self._before, final=True)
        if buf:
            self._before = buf[-1]
        return redacted


class SecretRegistry:
    """The values that are secrets right now: the node's own everywhere, a
    run's (its task env values and resolved secrets) only in that run's text,
    while the run lasts. Scoped so that one task's env value (it may be
    ordinary words) never blanks another run's output or log lines."""

    # The node's credentials as resolved now and the set before: clients that
    # refreshed at another moment may still hold the older set for a while.
    CREDENTIAL_SETS_KEPT = 2

    def __init__(self, shapes: Sequence[TokenShape] = TOKEN_SHAPES) -> None:
        self._shapes = tuple(shapes)
        self._lock = threading.Lock()
        self._node: set[str] = set()
        self._credentials: deque[frozenset[str]] = deque(maxlen=self.CREDENTIAL_SETS_KEPT)
        self._runs: dict[str, frozenset[str]] = {}
        self._compiled: dict[str | None, Redactor] = {}

    def add_node_values(self, values: Iterable[str]) -> None:
        with self._lock:
            self._node.update(values)
            self._compiled.clear()

    def remove_node_values(self, values: Iterable[str]) -> None:
        with self._lock:
            self._node.difference_update(values)
            self._compiled.clear()

    def set_credentials(self, values: Iterable[str]) -> None:
        """The node's AWS credentials as resolved now (they rotate)."""
        current = frozenset(v for v in values if v)
        with self._lock:
            if self._credentials and self._credentials[-1] == current:
                return
            self._credentials.append(current)
            self._compiled.clear()

    @contextmanager
    def for_run(self, run_id: str, values: Iterable[str]) -> Iterator[None]:
        """`values` are secrets in the run's text while the block lasts."""
        with self._lock:
            self._runs[run_id] = frozenset(values)
            self._compiled.pop(run_id, None)
        try:
            yield
        finally:
            with self._lock:
                self._runs.pop(run_id, None)
                self._compiled.pop(run_id, None)

    def redactor(self, run_id: str | None = None) -> Redactor:
        """The redactor for a run's text (or the node's, with None)."""
        with self._lock:
            key = run_id if run_id in self._runs else None
            found = self._compiled.get(key)
            if found is None:
                values = set(self._node).union(*self._credentials)
                if key is not None:
                    values |= self._runs[key]
                found = self._compiled[key] = Redactor(values, self._shapes)
            return found
