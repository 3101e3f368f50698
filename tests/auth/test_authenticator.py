"""Authorization header -> Principal, and the ASGI helper that answers 401."""

from __future__ import annotations

import httpx
import pytest

from veil.auth import Authenticator, BearerAuthMiddleware, create_key
from veil.config import AuthConfig, JwtConfig
from veil.errors import AuthError
from veil.principal import Principal

ISSUER = "https://idp.example.com/"  # as in conftest.py
AUDIENCE = "veil-gateway"


@pytest.fixture
def auth(engine, rsa_pair) -> Authenticator:
    jwt_config = JwtConfig(issuer=ISSUER, audience=AUDIENCE, public_key_file=rsa_pair.public_pem_file)
    return Authenticator(engine, AuthConfig(jwt=jwt_config))


def _reason(auth: Authenticator, header: str | None) -> str:
    with pytest.raises(AuthError) as info:
        auth.authenticate(header)
    return info.value.reason


@pytest.mark.req("auth:http")
def test_api_key_and_jwt(auth, engine, rsa_pair):
    _id, key = create_key(engine, "alice", ["support"])
    assert auth.authenticate(f"Bearer {key}").via == "api_key"
    assert auth.authenticate(f"bearer {rsa_pair.token()}").via == "jwt"


@pytest.mark.req("auth:http")
@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Basic dXNlcjpwdw==", "malformed"),
        ("Bearer", "malformed"),
        ("Bearer a b", "malformed"),
        ("Bearer opaque-token", "malformed"),
        ("Bearer veil_aaaaaaaaaaaa_" + "b" * 43, "unknown_key"),
    ],
)
def test_rejections(auth, header, reason):
    assert _reason(auth, header) == reason


def test_disabled_mechanisms_are_refused(engine, rsa_pair):
    _id, key = create_key(engine, "alice")
    no_keys = Authenticator(None, AuthConfig(api_keys=False))
    assert _reason(no_keys, f"Bearer {key}") == "not_accepted"
    assert _reason(no_keys, f"Bearer {rsa_pair.token()}") == "not_accepted"


def test_optional_auth_uses_fallback_only_without_credentials(engine):
    local = Principal("ops", frozenset({"admin"}), via="config")
    auth = Authenticator(engine, AuthConfig(required=False), fallback=local)
    assert auth.authenticate(None) is local
    assert _reason(auth, "Bearer veil_aaaaaaaaaaaa_" + "b" * 43) == "unknown_key"


async def _app(scope, receive, send):
    principal = scope["veil.principal"]
    body = principal.name.encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.req("auth:http")
def test_middleware_answers_401_and_reports(auth, engine):
    import anyio

    failures: list[str] = []

    async def on_failure(scope, error):
        failures.append(error.reason)

    app = BearerAuthMiddleware(_app, auth, on_failure=on_failure)
    _id, key = create_key(engine, "alice")

    async def run() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://veil.test") as client:
            ok = await client.get("/mcp", headers={"Authorization": f"Bearer {key}"})
            bad = await client.get("/mcp", headers={"Authorization": "Bearer veil_aaaaaaaaaaaa_" + "b" * 43})
        return ok, bad

    ok, bad = anyio.run(run)
    assert ok.status_code == 200 and ok.text == "alice"
    assert bad.status_code == 401
    assert bad.headers["www-authenticate"] == 'Bearer realm="veil"'
    assert bad.json()["reason"] == "unknown_key"
    assert "b" * 43 not in bad.text
    assert failures == ["unknown_key"]
