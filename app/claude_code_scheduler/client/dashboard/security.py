"""Who may reach the dashboard, as one ASGI middleware in front of the app
(docs/dashboard.md, "Security").

In order, for every request:
1. Host: the Host header must name the address the dashboard is bound to
   (or localhost), so a page whose DNS name was rebound to 127.0.0.1 is
   refused (DNS rebinding). A wildcard bind (0.0.0.0, ::) takes any Host:
   it needs a token, which a rebinding page does not have.
2. Token, when there is one: a first visit with `?token=` sets an HttpOnly,
   SameSite=Strict cookie and redirects to the same page without it; after
   that the cookie, or an `Authorization: Bearer` header, must carry it.
   Compared with hmac.compare_digest.
3. A request that changes something (any method but GET and HEAD): no
   foreign Origin, no cross-site Sec-Fetch-Site, and the per-process CSRF
   token the page carries, in the X-CSRF-Token header. A form or fetch from
   another site cannot read the page, so it cannot know the CSRF token.

Every answer carries a Content-Security-Policy that allows only the
dashboard's own scripts and styles, and no framing.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from claude_code_scheduler.errors import ConfigError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "ccs_dashboard_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = ("GET", "HEAD")
# A token is sent in a cookie and a URL: characters that need no quoting
# there, and long enough not to be guessed.
MIN_TOKEN_LENGTH = 16
_TOKEN_CHARACTERS = re.compile(r"[A-Za-z0-9._~-]+")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # noqa: S104 (names, not a bind)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(token: str | None, host: str) -> str | None:
    """The token to require, or a ConfigError: off loopback there must be one."""
    if token is None or token == "":
        if not is_loopback(host):
            raise ConfigError(
                f"--host {host} is not a loopback address: give --token (or set "
                "CLAUDE_DASHBOARD_TOKEN) so that only those who have it can reach the dashboard"
            )
        return None
    if len(token) < MIN_TOKEN_LENGTH or not _TOKEN_CHARACTERS.fullmatch(token):
        raise ConfigError(
            f"--token: at least {MIN_TOKEN_LENGTH} characters of letters, digits, '.', '_', "
            "'~' or '-' (e.g. from `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return token


def allowed_hosts(host: str) -> frozenset[str] | None:
    """The Host header names accepted for a bind address; None: any."""
    if host in WILDCARD_HOSTS:
        return None
    return frozenset({host.lower().strip("[]"), *LOOPBACK_NAMES})


def host_name(header: str) -> str:
    """`[::1]:8765` -> `::1`, `Localhost:8765` -> `localhost`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def cookie_value(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


@dataclass(frozen=True)
class Guard:
    """What the middleware checks against: the token (None: no token), the
    CSRF token the page carries, and the Host names accepted."""

    token: str | None
    csrf_token: str
    hosts: frozenset[str] | None

    def refusal(self, method: str, headers: dict[str, str]) -> tuple[int, str] | None:
        """(status, reason) when the request is refused, else None."""
        refused = self.host_refusal(headers)
        if refused is None and self.token is not None and not self.authorised(headers):
            refused = 401, "a token is needed: open the dashboard's URL with ?token=..."
        if refused is None and method not in SAFE_METHODS:
            refused = self.cross_site(headers)
        return refused

    def host_refusal(self, headers: dict[str, str]) -> tuple[int, str] | None:
        if self.hosts is not None and host_name(headers.get("host", "")) not in self.hosts:
            return 403, "this Host is not the dashboard's (a DNS rebinding is refused)"
        return None

    def authorised(self, headers: dict[str, str]) -> bool:
        assert self.token is not None
        bearer = headers.get("authorization", "")
        if bearer[:7].lower() == "bearer " and same(bearer[7:].strip(), self.token):
            return True
        return same(cookie_value(headers.get("cookie", ""), COOKIE), self.token)

    def cross_site(self, headers: dict[str, str]) -> tuple[int, str] | None:
        origin = headers.get("origin")
        host = headers.get("host", "")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            return 403, "a request from another origin is refused"
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return 403, "a cross-site request is refused"
        if not same(headers.get(CSRF_HEADER), self.csrf_token):
            return 403, "the page's CSRF token is missing or wrong: reload the page"
        return None

    def login(self, method: str, query: str) -> tuple[bool, str] | None:
        """A GET with ?token=: whether the token is right, and the query
        without it (where the cookie-setting redirect goes)."""
        if self.token is None or method not in SAFE_METHODS:
            return None
        pairs = parse_qsl(query, keep_blank_values=True)
        given = [value for key, value in pairs if key == "token"]
        if not given:
            return None
        rest = urlencode([(key, value) for key, value in pairs if key != "token"])
        return same(given[-1], self.token), rest


class GuardMiddleware:
    """Guard in front of an ASGI app, and the security headers on every answer."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            key.decode("latin-1").lower(): value.decode("latin-1")
            for key, value in scope.get("headers", [])
        }
        method = str(scope.get("method", "GET"))
        login = self.guard.login(method, scope.get("query_string", b"").decode("latin-1"))
        if login is not None and login[0] and self.guard.host_refusal(headers) is None:
            await _redirect_with_cookie(send, str(scope.get("path", "/")), login[1], self.guard)
            return
        refused = self.guard.refusal(method, headers)
        if refused is not None:
            await _plain(send, *refused)
            return
        await self.app(scope, receive, _with_headers(send))


def _with_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
        await send(message)

    return wrapped


async def _plain(send: Send, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _redirect_with_cookie(send: Send, path: str, query: str, guard: Guard) -> None:
    """The token moves from the URL (history, screenshots) into a cookie
    the page's scripts cannot read."""
    assert guard.token is not None
    # One leading slash: "//host/..." would send the browser to another site.
    location = "/" + path.lstrip("/") + (f"?{query}" if query else "")
    cookie = f"{COOKIE}={guard.token}; HttpOnly; SameSite=Strict; Path=/"
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", location.encode("latin-1")),
                (b"set-cookie", cookie.encode("latin-1")),
                (b"cache-control", b"no-store"),
                (b"content-length", b"0"),
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})
