"""Who is asking, and the record of it: browser sessions, CSRF, roles, and one audit event per request.

A browser logs in with an API key or JWT (the gateway's identities, ``veil.auth``). The console
keeps the credential in its own memory, never in the cookie: the cookie carries a random session
id (``Secure; HttpOnly; SameSite=Strict``), and the credential is checked again at most every
``RECHECK_S`` seconds, so a revoked key ends its console sessions too. Scripts may instead send
``Authorization: Bearer ...`` on every request (no cookie, so no CSRF to fear).

Every POST must come from the console's own pages: an ``Origin`` header naming another site is
refused, and a cookie session's POST carries the session's CSRF token. A principal needs one of
``CONSOLE_ROLES``. Every request, allowed or not, is one ``console.*`` audit event with the page
name, the status, the names of the filters used and a digest of the query: never their values.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
from starlette.requests import Request

from veil.audit import events as ev
from veil.console.services import CONSOLE_ROLES, ConsoleServices
from veil.errors import AuthError
from veil.principal import Principal

COOKIE = "veil_console"
IDLE_S = 30 * 60
MAX_AGE_S = 8 * 3600
RECHECK_S = 60.0


@dataclass
class BrowserSession:
    principal: Principal
    credential: str  # memory only: re-checked so that revocation and expiry apply at once
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    created: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)
    checked: float = field(default_factory=time.monotonic)
    scratch: dict[str, Any] = field(default_factory=dict)  # e.g. a pending erasure (tokens, never values)


class SessionStore:
    """Console sessions by the SHA-256 of their cookie value (a leaked memory dump holds no cookie)."""

    def __init__(self) -> None:
        self._by_id: dict[str, BrowserSession] = {}

    @staticmethod
    def _key(cookie: str) -> str:
        return hashlib.sha256(cookie.encode()).hexdigest()

    def create(self, principal: Principal, credential: str) -> tuple[str, BrowserSession]:
        self._expire()
        cookie = secrets.token_urlsafe(32)
        session = BrowserSession(principal, credential)
        self._by_id[self._key(cookie)] = session
        return cookie, session

    def get(self, cookie: str | None) -> BrowserSession | None:
        if not cookie:
            return None
        session = self._by_id.get(self._key(cookie))
        now = time.monotonic()
        if session is None or now - session.seen > IDLE_S or now - session.created > MAX_AGE_S:
            self._by_id.pop(self._key(cookie), None)
            return None
        session.seen = now
        return session

    def drop(self, cookie: str | None) -> None:
        if cookie:
            self._by_id.pop(self._key(cookie), None)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._by_id.items() if now - s.seen > IDLE_S or now - s.created > MAX_AGE_S]:
            del self._by_id[key]


class Refused(Exception):
    """A request the console will not serve: ``status`` and a message safe to show."""

    def __init__(self, status: int, message: str, reason: str = "denied") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason


async def identify(request: Request, services: ConsoleServices, store: SessionStore) -> tuple[Principal, Any]:
    """The principal behind a request and its browser session (None for bearer requests)."""
    header = request.headers.get("authorization")
    if header:
        try:
            return await anyio.to_thread.run_sync(services.authenticator.authenticate, header), None
        except AuthError as exc:
            await record_auth_failure(request, services, exc)
            raise Refused(401, exc.message, getattr(exc, "reason", "invalid")) from None
    session = store.get(request.cookies.get(COOKIE))
    if session is None:
        raise Refused(401, "log in with an API key", "missing")
    if time.monotonic() - session.checked > RECHECK_S:
        try:
            session.principal = await anyio.to_thread.run_sync(
                services.authenticator.authenticate, f"Bearer {session.credential}"
            )
        except AuthError as exc:
            store.drop(request.cookies.get(COOKIE))
            await record_auth_failure(request, services, exc)
            raise Refused(
                401, f"your console session ended: {exc.message}", getattr(exc, "reason", "invalid")
            ) from None
        session.checked = time.monotonic()
    return session.principal, session


def require_role(principal: Principal, allowed: frozenset[str] = CONSOLE_ROLES) -> None:
    if not principal.roles & allowed:
        need = " or ".join(sorted(allowed))
        raise Refused(403, f"{principal.name} may not use this: it needs the {need} role", "role")


def same_origin(request: Request) -> bool:
    """A POST's ``Origin`` (or, without one, ``Referer``) must be this console's own host."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return request.headers.get("sec-fetch-site") in (None, "same-origin", "none")
    return urlsplit(origin).netloc == request.headers.get("host", "")


def check_csrf(request: Request, session: BrowserSession | None, form: Any) -> None:
    if not same_origin(request):
        raise Refused(403, "this form was posted from another site", "csrf")
    if session is not None:  # bearer requests carry no ambient credential to abuse
        sent = str(form.get("csrf", ""))
        if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise Refused(403, "the form has expired or did not come from this console: reload and try again", "csrf")


def query_digest(request: Request) -> str | None:
    query = request.url.query
    return "sha256:" + hashlib.sha256(query.encode()).hexdigest() if query else None


async def record(
    services: ConsoleServices,
    request: Request,
    principal: Principal | None,
    *,
    kind: str = ev.CONSOLE_VIEW,
    page: str,
    status: int,
    detail: dict[str, Any] | None = None,
) -> None:
    """One audit event for a console request: page name, status, filter names and a query digest."""
    outcome = ev.OK if status < 400 else (ev.DENIED if status in (401, 403) else ev.ERROR)
    filters = sorted(k for k, v in request.query_params.items() if v and k != "csrf")
    info: dict[str, Any] = {"page": page, "http_method": request.method, "status": status}
    if filters:
        info["filters"] = filters
        info["query_digest"] = query_digest(request)
    info.update(detail or {})
    await services.audit.record(
        ev.AuditEvent(
            kind=kind,
            outcome=outcome,
            principal=principal.name if principal else None,
            roles=sorted(principal.roles) if principal else [],
            tenant=principal.tenant if principal else None,
            policy_version=services.policy_version(),
            detail=info,
        )
    )


async def record_auth_failure(request: Request, services: ConsoleServices, exc: AuthError) -> None:
    client = request.client.host if request.client else "?"
    await services.audit.auth_failures.failed(
        source=client,
        reason=getattr(exc, "reason", None) or "unknown",
        message=exc.message,
        path=request.url.path,
        policy_version=services.policy_version(),
    )
