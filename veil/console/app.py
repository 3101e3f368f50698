"""The console's Starlette application: routes, the request wrapper, login and the audit explorer.

Every page goes through :meth:`Console.page`, which identifies the principal (cookie session or
bearer credential), checks the role, checks CSRF on POSTs, runs the view and writes one audit
event for the request whatever its outcome. Views live next to what they show: the explorer
here, subject requests in ``subjects.py``, reports and charts in ``reports.py``, policies in
``policies.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import anyio.to_thread
import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from veil.audit import events as ev
from veil.console import explorer, integrity
from veil.console.services import CONSOLE_ROLES, ROLLOUT_ROLES, ConsoleServices
from veil.console.web import (
    COOKIE,
    MAX_AGE_S,
    BrowserSession,
    Refused,
    SessionStore,
    check_csrf,
    identify,
    record,
    record_auth_failure,
    require_role,
    same_origin,
)
from veil.errors import AuthError
from veil.principal import Principal

log = logging.getLogger(__name__)
PREFIX = "/console"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}


@dataclass
class Ctx:
    request: Request
    principal: Principal
    session: BrowserSession | None
    form: Any = None
    detail: dict[str, Any] | None = None  # extra audit detail a view wants recorded (codes, digests)
    kind: str = ev.CONSOLE_VIEW


View = Callable[["Console", Ctx], Awaitable[Response]]


class Console:
    def __init__(self, services: ConsoleServices) -> None:
        self.services = services
        self.sessions = SessionStore()
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("veil.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.globals["prefix"] = PREFIX
        self.templates.filters["when"] = _when

    # -- rendering ---------------------------------------------------------------------------

    def render(self, ctx: Ctx | None, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        principal = ctx.principal if ctx else None
        values.setdefault("tried", {})  # the try-it pane's last choices (never the sample)
        html = self.templates.get_template(template).render(
            principal=principal,
            csrf=ctx.session.csrf if ctx and ctx.session else "",
            may_rollout=bool(principal and principal.roles & ROLLOUT_ROLES),
            **values,
        )
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    # -- the request wrapper ------------------------------------------------------------------

    def page(self, name: str, view: View, *, roles: frozenset[str] = CONSOLE_ROLES) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            principal: Principal | None = None
            ctx: Ctx | None = None
            try:
                principal, session = await identify(request, self.services, self.sessions)
                ctx = Ctx(request, principal, session)
                require_role(principal, CONSOLE_ROLES)
                require_role(principal, roles)
                if request.method == "POST":
                    ctx.form = await request.form()
                    check_csrf(request, session, ctx.form)
                response = await view(self, ctx)
            except Refused as exc:
                if (
                    exc.status == 401
                    and "text/html" in request.headers.get("accept", "")
                    and not request.headers.get("authorization")
                ):
                    return RedirectResponse(f"{PREFIX}/login", status_code=303, headers=SECURITY_HEADERS)
                response = self.render(ctx, "error.html", exc.status, message=exc.message)
                if exc.status == 401:
                    response.headers["www-authenticate"] = 'Bearer realm="veil-console"'
                    return response  # recorded as auth.failed by identify()
            except ValueError as exc:  # a filter or form field that does not parse: say which
                response = self.render(ctx, "error.html", 400, message=str(exc))
            except Exception as exc:  # a bug: no traceback to the browser, and the request is still audited
                log.exception("console page %s failed", name)
                response = self.render(ctx, "error.html", 500, message=f"internal error ({type(exc).__name__})")
            await record(
                self.services,
                request,
                principal,
                kind=ctx.kind if ctx else ev.CONSOLE_VIEW,
                page=name,
                status=response.status_code,
                detail=ctx.detail if ctx else None,
            )
            return response

        return endpoint

    # -- login ---------------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        return self.render(None, "login.html", message="")

    async def login(self, request: Request) -> Response:
        form = await request.form()
        if not same_origin(request):
            return self.render(None, "login.html", 403, message="this form was posted from another site")
        credential = str(form.get("credential", "")).strip()
        try:
            principal = await anyio.to_thread.run_sync(
                self.services.authenticator.authenticate, f"Bearer {credential}" if credential else None
            )
        except AuthError as exc:
            await record_auth_failure(request, self.services, exc)
            return self.render(None, "login.html", 401, message=exc.message)
        try:
            require_role(principal)
        except Refused as exc:
            await record(self.services, request, principal, kind=ev.CONSOLE_LOGIN, page="login", status=403)
            return self.render(None, "login.html", 403, message=exc.message)
        cookie, _session = self.sessions.create(principal, credential)
        await record(self.services, request, principal, kind=ev.CONSOLE_LOGIN, page="login", status=303)
        response = RedirectResponse(f"{PREFIX}/audit", status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=MAX_AGE_S,
            path=PREFIX,
            secure=self.services.secure_cookies,
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(self, ctx: Ctx) -> Response:
        self.sessions.drop(ctx.request.cookies.get(COOKIE))
        ctx.kind = ev.CONSOLE_LOGIN
        ctx.detail = {"action": "logout"}
        response = RedirectResponse(f"{PREFIX}/login", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(
            COOKIE, path=PREFIX, secure=self.services.secure_cookies, httponly=True, samesite="strict"
        )
        return response

    # -- audit explorer --------------------------------------------------------------------------

    async def audit(self, ctx: Ctx) -> Response:
        q = ctx.request.query_params
        filters = explorer.Filters.from_query(q)
        before, after = _int(q.get("before")), _int(q.get("after"))

        def load() -> tuple[explorer.Page, dict[str, list[str]]]:
            with self.services.engine.connect() as conn:
                return explorer.page(conn, filters, before=before, after=after), explorer.choices(conn)

        page, choices = await anyio.to_thread.run_sync(load)
        chain = await anyio.to_thread.run_sync(integrity.status, self.services)
        return self.render(
            ctx,
            "audit.html",
            page=page,
            filters=filters,
            choices=choices,
            chain=chain,
            query=filters.query(),
            nav="audit",
        )

    async def audit_event(self, ctx: Ctx) -> Response:
        seq = _int(ctx.request.path_params.get("seq"))

        def load() -> dict[str, Any] | None:
            with self.services.engine.connect() as conn:
                return explorer.event(conn, seq) if seq is not None else None

        row = await anyio.to_thread.run_sync(load)
        if row is None:
            raise Refused(404, "no audit event with that sequence number")
        ctx.detail = {"seq": seq}
        return self.render(ctx, "event.html", row=explorer.plain(row), nav="audit")

    async def verify_chain(self, ctx: Ctx) -> Response:
        chain = await anyio.to_thread.run_sync(lambda: integrity.status(self.services, whole=True))
        ctx.detail = {"action": "verify", "verified": chain.ok, "events_checked": chain.events}
        return self.render(ctx, "verify.html", chain=chain, nav="audit")

    async def export(self, ctx: Ctx) -> Response:
        fmt = ctx.request.path_params["fmt"]
        if fmt not in ("csv", "json"):
            raise Refused(404, "export as csv or json")
        filters = explorer.Filters.from_query(ctx.request.query_params)
        filters.where()  # a bad date is refused now, not half-way through the download
        ctx.kind = ev.CONSOLE_EXPORT
        ctx.detail = {"what": "audit_events", "format": fmt}
        engine = self.services.engine

        def lines() -> Any:
            with engine.connect() as conn:
                chunk = [explorer.csv_line(None)] if fmt == "csv" else []
                for row in explorer.export_rows(conn, filters):
                    chunk.append(explorer.csv_line(row) if fmt == "csv" else explorer.json_line(row))
                    if len(chunk) >= 500:  # one hop to the worker thread per 500 rows, not per row
                        yield "".join(chunk)
                        chunk = []
                yield "".join(chunk)

        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        media = "text/csv" if fmt == "csv" else "application/x-ndjson"
        name = f"veil-audit-{stamp}.{'csv' if fmt == 'csv' else 'jsonl'}"
        headers = {**SECURITY_HEADERS, "content-disposition": f'attachment; filename="{name}"'}
        return StreamingResponse(_threaded(lines), media_type=media, headers=headers)

    async def home(self, request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/audit", status_code=303)

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name != "console.css":
            return Response(status_code=404)
        css = resources.files("veil.console").joinpath("static", name).read_text(encoding="utf-8")
        return Response(css, media_type="text/css", headers={"cache-control": "max-age=3600"})


async def _threaded(make: Callable[[], Any]) -> Any:
    """Run a blocking generator in a worker thread, yielding its items as they come."""
    iterator = await anyio.to_thread.run_sync(make)
    done = object()
    while True:
        item = await anyio.to_thread.run_sync(next, iterator, done)
        if item is done:
            return
        yield item


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        raise ValueError("a page cursor must be a sequence number") from None


def _when(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else str(value)


def create_app(services: ConsoleServices) -> Starlette:
    """The console as an ASGI app; its routes live under ``/console``."""
    from veil.console import policies, reports, subjects

    c = Console(services)
    routes = [
        Route("/", c.home),
        Route("/login", c.login_form, methods=["GET"]),
        Route("/login", c.login, methods=["POST"]),
        Route("/logout", c.page("logout", Console.logout), methods=["POST"]),
        Route("/static/{name}", c.static),
        Route("/audit", c.page("audit", Console.audit)),
        Route("/audit/event/{seq}", c.page("audit.event", Console.audit_event)),
        Route("/audit/verify", c.page("audit.verify", Console.verify_chain), methods=["POST"]),
        Route("/audit/export.{fmt}", c.page("audit.export", Console.export)),
        *subjects.routes(c),
        *reports.routes(c),
        *policies.routes(c),
    ]
    app = Starlette(routes=[Mount(PREFIX, routes=routes), Route("/", c.home)])
    app.state.console = c
    return app
