"""Who may reach the dashboard: the Host check, the token, the CSRF token and
the Origin check, each shown refusing a request that the same request, with
what the protection asks for, gets through. The app is called as an ASGI
app in-process (starlette's TestClient needs httpx, which the project does
not depend on); the browser suite drives it through a real server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from claude_code_scheduler.client.cancel import CancelResult, CancelStatus
from claude_code_scheduler.client.dashboard.app import CANCEL_REASON, Settings, create_app
from claude_code_scheduler.client.dashboard.live import Hub
from claude_code_scheduler.client.dashboard.security import (
    COOKIE,
    Guard,
    allowed_hosts,
    check_token,
    host_name,
)
from claude_code_scheduler.client.dashboard.state import DashboardState
from claude_code_scheduler.errors import ConfigError

TOKEN = "s3cr3t-token-of-enough-length"
CSRF = "csrf-token-for-this-process"
HOST = "127.0.0.1:8765"
RUN = "run-1"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class Canceller:
    calls: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, run_id: str, reason: str) -> CancelResult:
        self.calls.append((run_id, reason))
        return CancelResult(CancelStatus.RECORDED, run_id)


def call(
    app: Any,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    query: str = "",
) -> Answer:
    """One request through the ASGI app, as uvicorn would make it."""
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in {"host": HOST, **(headers or {})}.items()
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8765),
        }
        await app(scope, receive, send)

    asyncio.run(run())
    start = next(m for m in sent if m["type"] == "http.response.start")
    response_headers: dict[str, str] = {}
    for name, value in start["headers"]:
        response_headers[name.decode("latin-1")] = value.decode("latin-1")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(int(start["status"]), response_headers, body)


def make_app(
    token: str | None = None,
    hosts: frozenset[str] | None = allowed_hosts("127.0.0.1"),
    canceller: Canceller | None = None,
) -> Any:
    settings = Settings(
        guard=Guard(token=token, csrf_token=CSRF, hosts=hosts),
        canceller=canceller,
        source="arn:aws:sns:us-east-1:123456789012:bus",
    )
    return create_app(Hub(DashboardState()), settings)


def cancel_headers(**extra: str) -> dict[str, str]:
    return {"x-csrf-token": CSRF, "origin": f"http://{HOST}", **extra}


# --- the page and the API without any protection in the way -------------------------


def test_the_page_carries_the_csrf_token_and_a_strict_content_security_policy() -> None:
    answer = call(make_app(), "GET", "/")
    assert answer.status == 200
    assert f'<meta name="csrf-token" content="{CSRF}">' in answer.text
    assert '<meta name="can-cancel" content="0">' in answer.text
    assert "{{" not in answer.text
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_static_files_are_served_from_the_package_and_nothing_else_is() -> None:
    app = make_app()
    script = call(app, "GET", "/static/app.js")
    assert script.status == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in script.text, "the page never parses data as HTML"
    assert call(app, "GET", "/static/style.css").status == 200
    assert call(app, "GET", "/static/index.html").status == 404
    assert call(app, "GET", "/static/..%2F__init__.py").status == 404


def test_the_state_is_json() -> None:
    answer = call(make_app(), "GET", "/api/state")
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    assert '"nodes":[]' in answer.text


# --- Host (DNS rebinding) ---------------------------------------------------------


def test_a_foreign_host_header_is_refused_and_the_bound_one_is_not() -> None:
    app = make_app()
    rebound = call(app, "GET", "/api/state", {"host": "attacker.example:8765"})
    assert rebound.status == 403
    assert "DNS rebinding" in rebound.text
    for host in (HOST, "localhost:8765", "[::1]:8765", "LOCALHOST"):
        assert call(app, "GET", "/api/state", {"host": host}).status == 200, host


def test_a_wildcard_bind_takes_any_host_but_needs_the_token() -> None:
    app = make_app(token=TOKEN, hosts=allowed_hosts("0.0.0.0"))
    headers = {"host": "dashboard.internal:8765"}
    assert call(app, "GET", "/api/state", headers).status == 401
    authorised = {**headers, "authorization": f"Bearer {TOKEN}"}
    assert call(app, "GET", "/api/state", authorised).status == 200


def test_host_names_are_read_with_or_without_a_port() -> None:
    assert host_name("[::1]:8765") == "::1"
    assert host_name("Localhost:8765") == "localhost"
    assert host_name("127.0.0.1") == "127.0.0.1"
    assert host_name("::1") == "::1"


# --- the token --------------------------------------------------------------------


def test_without_the_token_every_path_is_refused() -> None:
    app = make_app(token=TOKEN)
    for path in ("/", "/api/state", "/api/events", "/static/app.js"):
        answer = call(app, "GET", path)
        assert answer.status == 401, path
        assert TOKEN not in answer.text
    assert call(app, "POST", f"/api/runs/{RUN}/cancel", cancel_headers()).status == 401


def test_the_first_visit_with_the_token_sets_a_strict_cookie_and_drops_it_from_the_url() -> None:
    app = make_app(token=TOKEN)
    answer = call(app, "GET", "/", query=f"token={TOKEN}&view=compact")
    assert answer.status == 303
    assert answer.headers["location"] == "/?view=compact"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={TOKEN};")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    # The cookie is what lets the next requests through.
    page = call(app, "GET", "/", {"cookie": f"other=1; {COOKIE}={TOKEN}"})
    assert page.status == 200
    assert call(app, "GET", "/api/state", {"cookie": f"{COOKIE}={TOKEN}"}).status == 200


def test_the_login_redirect_stays_on_the_dashboard() -> None:
    """A path of "//other.example/" would make the redirect's Location a
    link to another site, with the token just accepted."""
    app = make_app(token=TOKEN)
    answer = call(app, "GET", "//other.example/", query=f"token={TOKEN}")
    assert answer.status == 303
    assert answer.headers["location"] == "/other.example/"


def test_a_wrong_token_is_refused_in_the_url_the_cookie_and_the_header() -> None:
    app = make_app(token=TOKEN)
    wrong = TOKEN[:-1] + "X"
    refused = call(app, "GET", "/", query=f"token={wrong}")
    assert refused.status == 401
    assert "set-cookie" not in refused.headers
    assert call(app, "GET", "/", {"cookie": f"{COOKIE}={wrong}"}).status == 401
    assert call(app, "GET", "/", {"authorization": f"Bearer {wrong}"}).status == 401
    assert call(app, "GET", "/", {"authorization": f"Bearer {TOKEN}"}).status == 200


def test_a_token_is_required_off_loopback_and_must_be_long_enough() -> None:
    with pytest.raises(ConfigError, match="--token"):
        check_token(None, "0.0.0.0")
    with pytest.raises(ConfigError, match="--token"):
        check_token("", "192.0.2.10")
    with pytest.raises(ConfigError, match="at least 16"):
        check_token("short", "127.0.0.1")
    with pytest.raises(ConfigError, match="at least 16"):
        check_token("has spaces; and=" + "x" * 16, "127.0.0.1")
    assert check_token(None, "127.0.0.1") is None
    assert check_token(None, "localhost") is None
    assert check_token(None, "::1") is None
    assert check_token(TOKEN, "0.0.0.0") == TOKEN


# --- cross-site requests on the cancel POST ------------------------------------------


def test_a_cancel_without_the_csrf_token_is_refused_and_with_it_goes_through() -> None:
    canceller = Canceller()
    app = make_app(canceller=canceller)
    path = f"/api/runs/{RUN}/cancel"
    missing = call(app, "POST", path, {"origin": f"http://{HOST}"})
    assert missing.status == 403
    assert "CSRF" in missing.text
    wrong = call(app, "POST", path, cancel_headers(**{"x-csrf-token": "guess"}))
    assert wrong.status == 403
    assert canceller.calls == []
    accepted = call(app, "POST", path, cancel_headers())
    assert accepted.status == 200, accepted.text
    assert '"status":"recorded"' in accepted.text
    assert canceller.calls == [(RUN, CANCEL_REASON)]


def test_a_cancel_from_another_origin_is_refused_even_with_the_csrf_token() -> None:
    canceller = Canceller()
    app = make_app(canceller=canceller)
    path = f"/api/runs/{RUN}/cancel"
    foreign = call(app, "POST", path, cancel_headers(origin="https://attacker.example"))
    assert foreign.status == 403
    assert "origin" in foreign.text
    cross = call(app, "POST", path, cancel_headers(**{"sec-fetch-site": "cross-site"}))
    assert cross.status == 403
    assert canceller.calls == []
    same_site = call(app, "POST", path, cancel_headers(**{"sec-fetch-site": "same-origin"}))
    assert same_site.status == 200
    assert len(canceller.calls) == 1


def test_a_cancel_with_a_token_needs_both_the_token_and_the_csrf_token() -> None:
    canceller = Canceller()
    app = make_app(token=TOKEN, canceller=canceller)
    path = f"/api/runs/{RUN}/cancel"
    cookie = {"cookie": f"{COOKIE}={TOKEN}"}
    assert call(app, "POST", path, {**cookie, "origin": f"http://{HOST}"}).status == 403
    assert call(app, "POST", path, cancel_headers()).status == 401
    assert call(app, "POST", path, {**cookie, **cancel_headers()}).status == 200
    assert canceller.calls == [(RUN, CANCEL_REASON)]


def test_a_cancel_of_something_that_is_not_a_run_id_is_refused() -> None:
    canceller = Canceller()
    app = make_app(canceller=canceller)
    for run_id in ("has space", "a%2Fb", "x" * 129):
        answer = call(app, "POST", f"/api/runs/{run_id}/cancel", cancel_headers())
        assert answer.status in (400, 404), run_id
    assert canceller.calls == []


def test_a_cancel_without_a_log_bucket_says_why_it_cannot() -> None:
    answer = call(make_app(canceller=None), "POST", f"/api/runs/{RUN}/cancel", cancel_headers())
    assert answer.status == 409
    assert "--log-bucket" in answer.text


def test_a_cancel_the_bucket_refuses_is_one_line() -> None:
    def refused(run_id: str, reason: str) -> CancelResult:
        raise ConfigError("--log-bucket: access denied to the bucket b")

    settings = Settings(
        guard=Guard(token=None, csrf_token=CSRF, hosts=allowed_hosts("127.0.0.1")),
        canceller=refused,
        source="bus",
    )
    app = create_app(Hub(DashboardState()), settings)
    answer = call(app, "POST", f"/api/runs/{RUN}/cancel", cancel_headers())
    assert answer.status == 502
    assert "access denied" in answer.text


def test_get_does_not_cancel() -> None:
    canceller = Canceller()
    answer = call(make_app(canceller=canceller), "GET", f"/api/runs/{RUN}/cancel")
    assert answer.status == 405
    assert canceller.calls == []
