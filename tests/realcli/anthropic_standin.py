"""A scripted stand-in for the Anthropic Messages API, for driving the genuine CLI.

Point the CLI at it with ``ANTHROPIC_BASE_URL=standin.url`` and any
``ANTHROPIC_API_KEY`` (`AnthropicStandin.cli_env` gives the whole set). It
answers ``POST /v1/messages`` from a per-test script of turns, streaming
server-sent events when the request asks for ``"stream": true`` and plain JSON
otherwise, in the shapes of the real API, and records every request so tests
can assert on what the CLI sent (model, tools, tool results).

Only the *main conversation* consumes the script. The CLI also makes side
requests of its own (FINDINGS.md: the auto-mode permission classifier; the
WebFetch summariser would be another); `is_side_request` recognises them and
`side_reply` answers them, so they never eat a turn.

Standard library only. ``python -m tests.realcli.anthropic_standin`` runs one by
hand (replies "Hello from the stand-in." to everything) and logs each request.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie"})

# Anthropic error types per HTTP status, as the real API names them.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
ERROR_MESSAGES = {
    401: "invalid x-api-key",
    403: "Your API key does not have permission to use the specified resource.",
    429: "Number of request tokens has exceeded your per-minute rate limit",
    500: "Internal server error",
    529: "Overloaded",
}

# The system prompt of the auto-mode permission classifier (CLI 2.1.332).
AUTO_MODE_CLASSIFIER_MARK = "You are a security monitor for autonomous AI coding agents."


# --- the script -------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """An assistant turn that answers with text and ends the turn."""

    text: str
    stop_reason: str = "end_turn"


@dataclass(frozen=True)
class ToolUse:
    """An assistant turn that asks the CLI to run one tool (optionally after some text).

    The CLI runs the tool and comes back with a new request whose last user
    message holds the tool_result (`Recorded.tool_results`); that request takes
    the next turn of the script.
    """

    name: str
    input: Mapping[str, Any]
    text: str = ""
    id: str = field(default_factory=lambda: f"toolu_{uuid.uuid4().hex[:24]}")


@dataclass(frozen=True)
class ApiError:
    """An HTTP error in the API's own shape.

    ``times`` is how many main requests it answers before the script moves on;
    ``None`` answers every one from here on (the CLI retries: up to 10 times
    for 401/429/5xx, 3 attempts in all for 529, or CLAUDE_CODE_MAX_RETRIES).
    ``should_retry=False`` sends ``x-should-retry: false``, which makes the CLI
    give up at once on any status, without the retry delays.
    """

    status: int
    message: str | None = None
    error_type: str | None = None
    times: int | None = None
    should_retry: bool | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def body(self, request_id: str) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {
                "type": self.error_type or ERROR_TYPES.get(self.status, "api_error"),
                "message": self.message or ERROR_MESSAGES.get(self.status, "error"),
            },
            "request_id": request_id,
        }

    def response_headers(self, request_id: str) -> dict[str, str]:
        headers = {"request-id": request_id}
        if self.should_retry is not None:
            headers["x-should-retry"] = "true" if self.should_retry else "false"
        headers.update(self.headers)
        return headers


Turn = Text | ToolUse | ApiError


@dataclass
class Recorded:
    """One request as the stand-in got it. Secret headers are masked."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float
    side: bool = False
    answer: str = ""

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def tool_names(self) -> list[str]:
        if not isinstance(self.body, dict):
            return []
        return [str(t.get("name", "")) for t in self.body.get("tools") or []]

    @property
    def system_text(self) -> str:
        system = self.body.get("system") if isinstance(self.body, dict) else None
        if isinstance(system, str):
            return system
        if isinstance(system, list):
            return "\n".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
        return ""

    def tool_results(self) -> list[dict[str, Any]]:
        """The tool_result blocks of the last user message."""
        messages = self.body.get("messages") if isinstance(self.body, dict) else None
        if not messages:
            return []
        content = messages[-1].get("content")
        if not isinstance(content, list):
            return []
        return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]

    def tool_result_text(self) -> str:
        """The text of the last user message's tool results, joined."""
        parts: list[str] = []
        for block in self.tool_results():
            content = block.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(c.get("text", "")) for c in content if isinstance(c, dict))
        return "\n".join(parts)


def is_side_request(body: Any) -> bool:
    """True for the CLI's own requests that are not the task's conversation.

    Found with 2.1.332 (FINDINGS.md): every request of the main conversation
    sends the tool list and streams; the side requests seen (the auto-mode
    permission classifier) send no tools and do not stream.
    """
    if not isinstance(body, dict):
        return True
    return not body.get("tools")


def default_side_reply(rec: Recorded) -> str:
    """Allows every action the auto-mode classifier asks about; a short text otherwise."""
    if AUTO_MODE_CLASSIFIER_MARK in rec.system_text:
        return "<block>no</block>"
    return "Stand-in side reply."


def block_in_auto_mode(rec: Recorded) -> str:
    """A side reply that makes the auto-mode classifier block every action."""
    if AUTO_MODE_CLASSIFIER_MARK in rec.system_text:
        return (
            "<block>yes</block><category>Test Block</category>"
            "<reason>[Test Block] the stand-in blocks everything</reason>"
        )
    return "Stand-in side reply."


# --- the server -------------------------------------------------------------------


class AnthropicStandin:
    """``with AnthropicStandin([Text("hi")]) as api: ... api.url ... api.requests``"""

    def __init__(
        self,
        turns: Iterable[Turn] = (),
        *,
        side_reply: str | Callable[[Recorded], str] = default_side_reply,
        is_side: Callable[[Any], bool] = is_side_request,
        exhausted: Turn | None = None,
        log: Callable[[str], None] | None = None,
        usage: Mapping[str, int] | None = None,
    ) -> None:
        self._turns: list[Turn] = list(turns)
        self._served = 0  # times the ApiError at the head of the script has answered
        self._lock = threading.Lock()
        self.side_reply = side_reply
        self._is_side = is_side
        self._exhausted = exhausted or Text("(the stand-in's script has run out)")
        self._log = log
        self.usage = dict(usage or {"input_tokens": 100, "output_tokens": 20})
        self.requests: list[Recorded] = []
        self.overrun = 0  # main requests that came after the script ran out
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # life cycle

    def start(self) -> AnthropicStandin:
        handler = type("Handler", (_Handler,), {"owner": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="anthropic-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> AnthropicStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli_env(self, api_key: str | None = "test-key") -> dict[str, str]:
        """What the CLI needs in its environment to talk to this stand-in only.

        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 stops the CLI's own calls to
        api.anthropic.com (telemetry, and a HEAD /api/hello preflight); without
        it the CLI looks api.anthropic.com up even with ANTHROPIC_BASE_URL set.
        """
        env = {
            "ANTHROPIC_BASE_URL": self.url,
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        if api_key is not None:
            env["ANTHROPIC_API_KEY"] = api_key
        return env

    # what tests look at

    @property
    def main_requests(self) -> list[Recorded]:
        """The requests of the task's conversation, in order."""
        return [
            r
            for r in self.requests
            if not r.side and r.method == "POST" and r.path.split("?", 1)[0] == "/v1/messages"
        ]

    @property
    def side_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.side]

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._turns)

    def add(self, *turns: Turn) -> None:
        with self._lock:
            self._turns.extend(turns)

    # the script

    def _next_turn(self) -> Turn:
        with self._lock:
            if not self._turns:
                self.overrun += 1
                return self._exhausted
            turn = self._turns[0]
            if isinstance(turn, ApiError):
                self._served += 1
                if turn.times is not None and self._served >= turn.times:
                    self._turns.pop(0)
                    self._served = 0
            else:
                self._turns.pop(0)
            return turn

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)
        if self._log is not None:
            self._log(describe(rec))

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_standin{next(self._ids):06d}"


def describe(rec: Recorded) -> str:
    """One line about a request, for logs."""
    bits = [f"{rec.method} {rec.path}"]
    if isinstance(rec.body, dict):
        body = rec.body
        bits += [
            f"model={body.get('model')}",
            f"stream={body.get('stream')}",
            f"max_tokens={body.get('max_tokens')}",
            f"tools={len(body.get('tools') or [])}",
            f"messages={len(body.get('messages') or [])}",
            f"system={rec.system_text[:60]!r}",
        ]
    bits.append(f"side={rec.side} -> {rec.answer}")
    return " ".join(bits)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The CLI drops connections when it is killed or gives up; that is not news.
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: AnthropicStandin
    protocol_version = "HTTP/1.1"
    server_version = "anthropic-standin/1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are recorded, not printed

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def _handle(self) -> None:
        owner = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", errors="replace")
        headers = {
            k.lower(): ("<redacted>" if k.lower() in SECRET_HEADERS else v)
            for k, v in self.headers.items()
        }
        rec = Recorded(self.command, self.path, headers, body, time.time())
        path = self.path.split("?", 1)[0]
        try:
            if self.command == "POST" and path == "/v1/messages":
                self._messages(rec, body)
            elif self.command == "POST" and path == "/v1/messages/count_tokens":
                rec.answer = "count_tokens"
                self._json(200, {"input_tokens": owner.usage.get("input_tokens", 100)})
            elif self.command == "HEAD":
                # The CLI's connectivity preflight (HEAD /api/hello); any answer will do.
                rec.answer = "200 empty"
                self._head(200, "text/plain", 0)
            else:
                rec.answer = "404"
                self._json(404, ApiError(404, "Not found").body(owner.new_id("req")))
        finally:
            owner._record(rec)

    def _messages(self, rec: Recorded, body: Any) -> None:
        owner = self.owner
        is_dict = isinstance(body, dict)
        turn: Turn
        if owner._is_side(body):
            rec.side = True
            reply = owner.side_reply
            turn = Text(reply if isinstance(reply, str) else reply(rec))
            rec.answer = "side text"
        else:
            turn = owner._next_turn()
            rec.answer = type(turn).__name__
        if isinstance(turn, ApiError):
            rec.answer = f"error {turn.status}"
            request_id = owner.new_id("req")
            self._json(turn.status, turn.body(request_id), turn.response_headers(request_id))
            return
        model = str(body.get("model", "claude-standin")) if is_dict else "claude-standin"
        stops = body.get("stop_sequences") if is_dict else None
        message = build_message(owner, turn, model, stops or ())
        if is_dict and body.get("stream"):
            self._sse(stream_events(message))
        else:
            self._json(200, message, {"request-id": owner.new_id("req")})

    # responses

    def _head(
        self,
        status: int,
        ctype: str,
        length: int | None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()

    def _json(self, status: int, obj: Any, extra: Mapping[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self._head(status, "application/json", len(data), extra)
        self.wfile.write(data)

    def _sse(self, events: Iterator[tuple[str, dict[str, Any]]]) -> None:
        extra = {"Cache-Control": "no-cache", "request-id": self.owner.new_id("req")}
        self._head(200, "text/event-stream; charset=utf-8", None, extra)
        for name, data in events:
            chunk = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def build_message(
    owner: AnthropicStandin, turn: Text | ToolUse, model: str, stop_sequences: Iterable[str]
) -> dict[str, Any]:
    """The complete Message object for a turn, as the non-streaming API returns it."""
    content: list[dict[str, Any]] = []
    stop_sequence = None
    if isinstance(turn, Text):
        text, stop = turn.text, turn.stop_reason
        for seq in stop_sequences:  # as the API does: cut before the stop sequence
            if seq and seq in text:
                text, stop, stop_sequence = text[: text.index(seq)], "stop_sequence", seq
                break
        content.append({"type": "text", "text": text})
    else:
        if turn.text:
            content.append({"type": "text", "text": turn.text})
        content.append(
            {"type": "tool_use", "id": turn.id, "name": turn.name, "input": dict(turn.input)}
        )
        stop = "tool_use"
    return {
        "id": owner.new_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": owner.usage.get("input_tokens", 100),
            "output_tokens": owner.usage.get("output_tokens", 20),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def stream_events(message: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The message as the streaming API sends it: (event name, data) pairs."""
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**message["usage"], "output_tokens": 1},
    }
    yield "message_start", {"type": "message_start", "message": start}
    yield "ping", {"type": "ping"}
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            text = block["text"]
            step = max(1, len(text) // 4) if len(text) < 4096 else 65536
            for i in range(0, len(text), step):
                delta = {"type": "text_delta", "text": text[i : i + step]}
                yield (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
        else:
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {
                        "type": "tool_use",
                        "id": block["id"],
                        "name": block["name"],
                        "input": {},
                    },
                },
            )
            partial = json.dumps(block["input"])
            cut = len(partial) // 2
            for piece in (partial[:cut], partial[cut:]):
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {
                "stop_reason": message["stop_reason"],
                "stop_sequence": message["stop_sequence"],
            },
            "usage": {"output_tokens": message["usage"]["output_tokens"]},
        },
    )
    yield "message_stop", {"type": "message_stop"}


def main() -> None:
    api = AnthropicStandin(
        exhausted=Text("Hello from the stand-in."),
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    with api:
        print(api.url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
