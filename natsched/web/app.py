"""The web application: pages, JSON reads, live streams and admin actions (Starlette).

``create_app(WebConfig)`` builds it; ``natsched web`` serves it with uvicorn. The NATS
connection is made when the app starts (lifespan) and shared by every request.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import nats.errors
from nats.aio.client import Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from natsched import subjects
from natsched.connection import close_quietly, connect
from natsched.errors import ApiError, NatschedError, NotConnectedError, NotFoundError
from natsched.settings import ConnectionSettings
from natsched.web import actions, reads
from natsched.web.auth import CSRF_HEADER, SESSION_COOKIE, SESSION_TTL, Auth, is_loopback
from natsched.web.live import Hub, follow_output

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
# vis-network and vis-timeline inject their own styles; everything else comes from this origin.
CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"
LOGIN_MAX = 4096
PUBLIC = ("/login", "/static/style.css", "/static/login.js")


@dataclass(kw_only=True)
class WebConfig:
    connection: ConnectionSettings
    auth: Auth = field(default_factory=Auth)
    actions: bool = False  # admin actions (needs admin NATS credentials)


@dataclass
class State:
    config: WebConfig
    nc: Client | None = None
    hub: Hub | None = None


Endpoint = Callable[[Request], Awaitable[Response]]


def _error(exc: Exception) -> JSONResponse:
    """A NatschedError as one line the page shows; anything else logged, one line too."""
    if isinstance(exc, NatschedError):
        status = 404 if isinstance(exc, NotFoundError) else 503 if isinstance(exc, NotConnectedError) else 400
        return JSONResponse({"error": str(exc).splitlines()[0]}, status)
    if isinstance(exc, nats.errors.Error):  # e.g. no stream yet (no master ever ran), a lost link
        return JSONResponse({"error": f"NATS: {exc}".splitlines()[0]}, 503)
    log.exception("web request failed")
    return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, 500)


def _state(request: Request) -> State:
    state: State = request.app.state.web
    return state


def _nc(request: Request) -> Client:
    nc = _state(request).nc
    if nc is None:
        raise NotConnectedError("not connected to NATS yet")
    return nc


def _read(fetch: Callable[[Request, Client], Awaitable[dict[str, Any]]]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        try:
            return JSONResponse(await fetch(request, _nc(request)))
        except Exception as exc:  # noqa: BLE001 - every failure is a one-line answer, never a crash
            return _error(exc)

    return endpoint


async def _page(request: Request) -> Response:
    return FileResponse(STATIC / "page.html")


async def _login_page(request: Request) -> Response:
    return FileResponse(STATIC / "login.html")


async def _login(request: Request) -> Response:
    auth = _state(request).config.auth
    # A login form is two short fields: parsed here, without a multipart library.
    body = await request.body()
    form = {k: v[0] for k, v in parse_qs(body[:LOGIN_MAX].decode(errors="replace")).items()}
    user = auth.check_login(form.get("user", ""), form.get("password", ""))
    if user is None or not _same_origin(request):
        return RedirectResponse("/login?failed=1", 303)
    response = RedirectResponse("/", 303)
    _set_session(response, auth, auth.new_session(user))
    return response


async def _logout(request: Request) -> Response:
    response = RedirectResponse("/login", 303)
    response.delete_cookie(SESSION_COOKIE)
    return response


async def _session(request: Request) -> Response:
    config = _state(request).config
    cookie = request.cookies.get(SESSION_COOKIE)
    user = config.auth.session_user(cookie)
    fresh = user is None or cookie is None
    if fresh:  # on localhost with no login: an anonymous session, for the CSRF token
        user, cookie = "local", config.auth.new_session("local")
    assert cookie is not None
    response = JSONResponse(
        {
            "user": user,
            "csrf": config.auth.csrf_token(cookie),
            "actions": config.actions,
            "login": config.auth.required,
        }
    )
    if fresh:
        _set_session(response, config.auth, cookie)
    return response


async def _live(request: Request) -> Response:
    hub = _state(request).hub
    if hub is None:
        return _error(NotConnectedError("not connected to NATS yet"))
    return _sse(hub.stream())


async def _output(request: Request) -> Response:
    hub = _state(request).hub
    if hub is None:
        return _error(NotConnectedError("not connected to NATS yet"))
    return _sse(follow_output(_nc(request), hub, request.path_params["run_id"]))


async def _action(request: Request) -> Response:
    config = _state(request).config
    if not config.actions:
        return JSONResponse(
            {"error": "this natsched web is read-only: start it with --actions and admin credentials"}, 403
        )
    if not _same_origin(request) or not config.auth.check_csrf(
        request.cookies.get(SESSION_COOKIE), request.headers.get(CSRF_HEADER)
    ):
        return JSONResponse({"error": "missing or wrong CSRF token: reload the page"}, 403)
    try:
        body = await request.json()
    except ValueError:
        return JSONResponse({"error": "the request body is not JSON"}, 400)
    try:
        if not isinstance(body, dict):
            raise ApiError("the request body must be a JSON object")
        return JSONResponse(await actions.perform(_nc(request), request.path_params["name"], body))
    except Exception as exc:  # noqa: BLE001 - the API's one-line error, shown in the page
        return _error(exc)


def create_app(config: WebConfig) -> Starlette:
    state = State(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        settings = config.connection.with_name("natsched-web").with_inbox(subjects.WEB_INBOX)
        await (await connect(settings)).close()  # bounded first try: a clear error, not a hang
        state.nc = await connect(settings, forever=True)
        state.hub = Hub(state.nc)
        await state.hub.start()
        try:
            yield
        finally:
            await state.hub.stop()
            await close_quietly(state.nc, 2.0)

    routes = [
        *(Route(path, _page) for path in _PAGES),
        Route("/favicon.ico", lambda r: Response(status_code=204)),
        Route("/login", _login_page),
        Route("/login", _login, methods=["POST"]),
        Route("/logout", _logout, methods=["POST"]),
        Route("/api/session", _session),
        Route("/api/overview", _read(lambda r, c: reads.overview(c))),
        Route("/api/jobs", _read(_jobs)),
        Route("/api/jobs/{key}", _read(lambda r, c: reads.job(c, r.path_params["key"]))),
        Route("/api/runs", _read(_runs)),
        Route("/api/runs/{run_id}", _read(lambda r, c: reads.run_detail(c, r.path_params["run_id"]))),
        Route("/api/runs/{run_id}/output", _output),
        Route("/api/chains/{chain_id}", _read(lambda r, c: reads.chain(c, r.path_params["chain_id"]))),
        Route("/api/timeline", _read(_timeline)),
        Route("/api/live", _live),
        Route("/api/actions/{name}", _action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.web = state
    app.add_middleware(Guard, auth=config.auth)
    return app


_PAGES = ("/", "/jobs", "/jobs/{key}", "/runs", "/runs/{run_id}", "/chains/{chain_id}", "/timeline")


def _arg(request: Request, name: str) -> str | None:
    return request.query_params.get(name) or None


def _number(request: Request, name: str, default: float) -> float:
    value = request.query_params.get(name)
    try:
        return float(value) if value else default
    except ValueError:
        raise ApiError(f"query parameter {name!r} must be a number, not {subjects.shown(value)}") from None


async def _jobs(request: Request, nc: Client) -> dict[str, Any]:
    return await reads.jobs(
        nc, group=_arg(request, "group"), agent=_arg(request, "agent"), mode=_arg(request, "mode")
    )


async def _runs(request: Request, nc: Client) -> dict[str, Any]:
    return await reads.runs_page(
        nc,
        job=_arg(request, "job"),
        agent=_arg(request, "agent"),
        state=_arg(request, "state"),
        since=time.time() - _number(request, "hours", 24) * 3600,
        offset=int(_number(request, "offset", 0)),
        limit=int(_number(request, "limit", 100)),
    )


async def _timeline(request: Request, nc: Client) -> dict[str, Any]:
    end = _number(request, "end", time.time())
    start = _number(request, "start", end - 3600)
    if not start < end:
        raise ApiError("the window's start must be before its end")
    return await reads.timeline(nc, start=start, end=end, agent=_arg(request, "agent"))


def _sse(stream: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},  # nginx: don't buffer
    )


def _same_origin(request: Request) -> bool:
    """A browser names the page's origin on a POST; it must be this server (no cross-site form)."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


def _set_session(response: Response, auth: Auth, cookie: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(SESSION_TTL),
        httponly=True,
        samesite="strict",
        secure=auth.secure_cookies,
    )


class Guard:
    """Refuses what may not pass (no session with a login configured; anyone off localhost
    without one) and adds the security headers to every answer."""

    def __init__(self, app: ASGIApp, *, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            await refusal(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                ]
            await send(message)

        await self.app(scope, receive, with_headers)

    def _refusal(self, request: Request) -> Response | None:
        path = request.url.path
        if not self.auth.required:
            client = request.client.host if request.client else ""
            if client and not is_loopback(client):
                return JSONResponse({"error": "natsched web without a login answers only localhost"}, 403)
            # DNS rebinding: a page of another site whose name now points at 127.0.0.1 comes
            # from localhost with its own name as Host (and Origin): only a loopback name may
            # be served without a login.
            if not is_loopback(_host_name(request.headers.get("host", ""))):
                return JSONResponse(
                    {"error": "natsched web without a login answers only a localhost host name"}, 403
                )
            return None
        if path in PUBLIC or self.auth.session_user(request.cookies.get(SESSION_COOKIE)):
            return None
        if path.startswith("/api/"):
            return JSONResponse({"error": "log in first"}, 401)
        return RedirectResponse("/login", 303)


def _host_name(host: str) -> str:
    """The name of a Host header without its port (``[::1]:8470`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return (host.rsplit(":", 1)[0] if host.count(":") == 1 else host).rstrip(".")
