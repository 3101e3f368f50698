"""Identities for HTTP requests: API keys and JWTs mapped to ``veil.principal.Principal``.

auth = Authenticator(engine, config.auth, fallback=configured_principal)
principal = auth.authenticate(request.headers.get("authorization"))   # AuthError -> 401
principal = await auth.authenticate_scope(scope)                       # ASGI/Starlette
app = BearerAuthMiddleware(app, auth, on_failure=audit_auth_failure)  # optional wrapper
"""

from __future__ import annotations

from veil.auth.authenticator import Authenticator, BearerAuthMiddleware, authorization_header
from veil.auth.keys import ApiKeyInfo, create_key, list_keys, revoke_key, verify_key

__all__ = [
    "ApiKeyInfo",
    "Authenticator",
    "BearerAuthMiddleware",
    "authorization_header",
    "create_key",
    "list_keys",
    "revoke_key",
    "verify_key",
]
