"""``Authorization: Bearer …`` → ``Principal``, for every HTTP request.

A credential starting with ``veil_`` is an API key (looked up in ``api_keys``); a three-part
dot-separated one is a JWT (verified locally). Anything else, and any failure, raises
``AuthError`` whose ``reason`` is a stable code for the audit trail and whose message is safe to
return in a 401: it never contains the credential.

With ``auth.required: false`` a request *without* credentials runs as the fallback principal
(the configured one); a request with *bad* credentials is still refused — a wrong key never
silently downgrades to anonymous access.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio.to_thread
import sqlalchemy as sa

from veil.auth.errors import MALFORMED, MISSING, NOT_ACCEPTED, auth_error
from veil.auth.jwt import JwtVerifier, looks_like_jwt
from veil.auth.keys import looks_like_key, verify_key
from veil.config import AuthConfig
from veil.errors import AuthError, ConfigError
from veil.principal import Principal

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class Authenticator:
    """Maps bearer credentials to principals; thread-safe, one per gateway."""

    def __init__(self, engine: sa.Engine | None, config: AuthConfig, *, fallback: Principal | None = None) -> None:
        if config.api_keys and engine is None:
            raise ConfigError("auth.api_keys is on but no database engine was given to check keys against")
        self.engine = engine
        self.config = config
        self.fallback = fallback
        self.jwt = JwtVerifier(config.jwt) if config.jwt is not None else None

    def authenticate(self, header: str | None) -> Principal:
        """The principal for an ``Authorization`` header value, or ``AuthError`` with a ``reason``."""
        if header is None or not header.strip():
            if not self.config.required and self.fallback is not None:
                return self.fallback
            raise auth_error(MISSING, "missing credentials: send 'Authorization: Bearer <API key or JWT>'")
        scheme, _, credential = header.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential or " " in credential:
            raise auth_error(MALFORMED, "malformed Authorization header: expected 'Bearer <API key or JWT>'")
        if looks_like_key(credential):
            if not self.config.api_keys or self.engine is None:
                raise auth_error(NOT_ACCEPTED, "API keys are not accepted by this gateway (auth.api_keys is off)")
            return verify_key(self.engine, credential)
        if looks_like_jwt(credential):
            if self.jwt is None:
                raise auth_error(NOT_ACCEPTED, "JWTs are not accepted by this gateway (auth.jwt is not configured)")
            return self.jwt.verify(credential)
        raise auth_error(MALFORMED, "malformed bearer credential: neither a Veil API key nor a JWT")

    async def authenticate_scope(self, scope: Scope) -> Principal:
        """The same for an ASGI/Starlette request scope (the database lookup runs in a worker thread)."""
        return await anyio.to_thread.run_sync(self.authenticate, authorization_header(scope))


def authorization_header(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            return value.decode("latin-1")
    return None


class BearerAuthMiddleware:
    """ASGI middleware: 401 for requests without valid credentials, else ``scope["veil.principal"]``.

    ``on_failure(scope, error)`` runs before the 401 is sent (the gateway audits there); the
    request never reaches the wrapped app, so it can never reach an upstream."""

    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator,
        on_failure: Callable[[Scope, AuthError], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.on_failure = on_failure

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            principal = await self.authenticator.authenticate_scope(scope)
        except AuthError as exc:
            if self.on_failure is not None:
                await self.on_failure(scope, exc)
            reason = getattr(exc, "reason", "invalid")
            body = json.dumps({"error": "unauthorized", "reason": reason, "message": exc.message}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"www-authenticate", b'Bearer realm="veil"'),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        scope["veil.principal"] = principal
        await self.app(scope, receive, send)
