"""The dashboard's web app (the only Starlette user): the page, its state, its stream, its actions.

GET  /              the page (it alone holds the action token)
GET  /api/state     the current LiveState as JSON
GET  /api/stream    the same, pushed every half second (server-sent events)
POST /api/actions/K scale | kill | restore | method | verify, JSON body, token in X-Lab-Token
Every request must name the dashboard in its Host header (see `security`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lab.dashboard.actions import ACTIONS, Busy
from lab.dashboard.security import TOKEN_HEADER, host_allowed, origin_allowed, token_ok
from lab.errors import EngineRefused, InvalidInput, LabError
from lab.livestate import LiveState
from lab.render import render_html
from lab.spec import ALGORITHMS

STATIC = Path(__file__).resolve().parent / "static"
STREAM_EVERY_S = 0.5
StateFn = Callable[[], LiveState]
ActionFn = Callable[[str, object], dict[str, Any]]

_SECURITY_HEADERS = {
    # Only our own files, no inline script, and no framing (a foreign page cannot trick clicks).
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def _error(status: int, message: str, detail: str = "") -> JSONResponse:
    body: dict[str, str] = {"error": message}
    if detail:
        body["detail"] = detail
    return JSONResponse(body, status_code=status)


class Guard:
    """Refuses any request whose Host does not name the dashboard; adds security headers."""

    def __init__(self, app: ASGIApp, bind: str, port: int) -> None:
        self.app = app
        self.bind = bind
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host")
        if not host_allowed(host, self.bind, self.port):
            refusal = _error(403, f"refused: Host {host!r} is not this dashboard's address")
            await refusal(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in _SECURITY_HEADERS.items():
                    headers.setdefault(key, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    *, lab: str, state: StateFn, run_action: ActionFn, token: str, bind: str, port: int,
    stream_every: float = STREAM_EVERY_S, stopping: Callable[[], bool] = lambda: False,
) -> ASGIApp:  # fmt: skip
    """The dashboard of lab `lab` served on bind:port; `state` and `run_action` do the work.

    Event streams end by themselves once `stopping()` is true, so a shutdown never has to
    cancel them.
    """

    async def page(_: Request) -> Response:
        html = render_html("dashboard.html.j2", lab=lab, token=token, methods=ALGORITHMS)
        return HTMLResponse(html)

    async def no_icon(_: Request) -> Response:
        return Response(status_code=204)

    async def api_state(_: Request) -> Response:
        return JSONResponse(state().as_json())

    async def stream(_: Request) -> Response:
        async def events() -> AsyncIterator[str]:
            yield "retry: 1000\n\n"
            while not stopping():
                yield f"event: state\ndata: {json.dumps(state().as_json())}\n\n"
                await asyncio.sleep(stream_every)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"x-accel-buffering": "no"}
        )

    async def action(request: Request) -> Response:
        kind = request.path_params["kind"]
        if not token_ok(request.headers.get(TOKEN_HEADER), token):
            return _error(403, "refused: actions need the dashboard's token, which only its page holds")
        if not origin_allowed(request.headers.get("origin"), request.headers.get("host")):
            return _error(403, "refused: the request comes from another site")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _error(415, "send the action's fields as JSON (Content-Type: application/json)")
        if kind not in ACTIONS:
            return _error(404, f"unknown action {kind!r}; choose one of {', '.join(ACTIONS)}")
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return _error(400, "the request body is not JSON")
        try:
            result = await run_in_threadpool(run_action, kind, body)
        except InvalidInput as exc:
            return _error(400, exc.message, exc.detail)
        except Busy as exc:
            return _error(409, exc.message)
        except EngineRefused as exc:
            return _error(502, exc.message)
        except LabError as exc:
            return _error(409, exc.message, exc.detail)
        return JSONResponse({"ok": True, "action": kind, "result": result})

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/favicon.ico", no_icon),
            Route("/api/state", api_state),
            Route("/api/stream", stream),
            Route("/api/actions/{kind}", action, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )
    return Guard(app, bind, port)
