"""The dashboard's web app: the page, a JSON snapshot, the live stream and
the cancel button's POST, behind security.GuardMiddleware. It holds no
state of its own: the Hub has it, the feeds fill it.

GET  /                         the page (static/index.html, the CSRF token in a meta tag)
GET  /static/{app.js,style.css}
GET  /api/state                everything the page shows, as JSON
GET  /api/events               text/event-stream: a snapshot, then changes (live.py)
POST /api/runs/{run_id}/cancel client.cancel's request, in the operator's name
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from claude_code_scheduler.client.cancel import CancelResult
from claude_code_scheduler.client.dashboard.live import Hub
from claude_code_scheduler.client.dashboard.security import ASGIApp, Guard, GuardMiddleware
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.protocol.commands import RUN_ID_PATTERN

log = logging.getLogger(__name__)

STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
CSRF_PLACEHOLDER = "{{csrf_token}}"
NO_STORE = {"cache-control": "no-store"}
# The reason a cancel from the page gives, in the run's TaskFailed.
CANCEL_REASON = "cancelled from the dashboard"

Canceller = Callable[[str, str], CancelResult]


@dataclass(frozen=True)
class Settings:
    guard: Guard
    # client.cancel's request (run_id, reason); None without --log-bucket.
    canceller: Canceller | None
    # What the page says it reads, in its footer.
    source: str


def static_text(name: str) -> str:
    return (resources.files(__package__) / "static" / name).read_text("utf-8")


def create_app(hub: Hub, settings: Settings) -> ASGIApp:
    page = static_text("index.html").replace(
        CSRF_PLACEHOLDER, html.escape(settings.guard.csrf_token)
    )
    page = page.replace("{{source}}", html.escape(settings.source)).replace(
        "{{can_cancel}}", "1" if settings.canceller is not None else "0"
    )
    assets = {name: static_text(name) for name in STATIC}

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=NO_STORE)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            return Response("not found\n", status_code=404, media_type="text/plain")
        return Response(assets[name], media_type=f"{STATIC[name]}; charset=utf-8")

    async def state(request: Request) -> Response:
        return JSONResponse(hub.state.snapshot(hub.clock()), headers=NO_STORE)

    async def events(request: Request) -> Response:
        subscribed = hub.add_page()
        if subscribed is None:
            return Response(
                "too many pages are streaming, or the dashboard is stopping\n",
                status_code=503,
                media_type="text/plain",
            )
        subscriber, first = subscribed
        return StreamingResponse(
            hub.stream(subscriber, first),
            media_type="text/event-stream",
            headers={**NO_STORE, "x-accel-buffering": "no"},
        )

    async def cancel(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        if not RUN_ID_PATTERN.fullmatch(run_id):
            return JSONResponse({"error": "not a run id"}, status_code=400)
        if settings.canceller is None:
            return JSONResponse(
                {"error": "the dashboard was started without --log-bucket: it cannot cancel"},
                status_code=409,
            )
        try:
            result = await run_in_threadpool(settings.canceller, run_id, CANCEL_REASON)
        except ConfigError as exc:
            # The bucket refused or could not be reached: say so, one line.
            return JSONResponse({"error": str(exc)}, status_code=502)
        log.info("cancel of run %s from the dashboard: %s", run_id, result.status.value)
        return JSONResponse({"status": result.status.value, "line": result.line()})

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/static/{name}", asset, methods=["GET"]),
            Route("/api/state", state, methods=["GET"]),
            Route("/api/events", events, methods=["GET"]),
            Route("/api/runs/{run_id}/cancel", cancel, methods=["POST"]),
        ]
    )
    return GuardMiddleware(app, settings.guard)
