"""JWTs verified locally against a PEM public key or a JWKS file."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from veil.auth.jwt import JwtVerifier
from veil.config import JwtConfig
from veil.errors import AuthError, ConfigError

ISSUER = "https://idp.example.com/"  # as in conftest.py
AUDIENCE = "veil-gateway"


def _verifier(**kwargs) -> JwtVerifier:
    return JwtVerifier(JwtConfig(issuer=ISSUER, audience=AUDIENCE, **kwargs))


def _reason(verifier: JwtVerifier, token: str) -> tuple[str, str]:
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    assert token not in info.value.message
    return info.value.reason, info.value.message


@pytest.mark.req("auth:jwt")
@pytest.mark.parametrize("pair_name", ["rsa_pair", "ed_pair"])
def test_valid_token_gives_principal(request, pair_name):
    pair = request.getfixturevalue(pair_name)
    verifier = _verifier(public_key_file=pair.public_pem_file, tenant_claim="org")
    principal = verifier.verify(pair.token({"roles": ["support", "admin"], "org": "acme"}))
    assert principal.name == "alice"
    assert principal.roles == frozenset({"support", "admin"})
    assert principal.tenant == "acme"
    assert principal.via == "jwt"


@pytest.mark.req("auth:jwt")
def test_jwks_file_selects_key_by_kid(rsa_pair, ed_pair, jwks_file):
    verifier = _verifier(jwks_file=jwks_file)
    assert verifier.verify(rsa_pair.token({"sub": "r"})).name == "r"
    assert verifier.verify(ed_pair.token({"sub": "e"})).name == "e"
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({"sub": "x"}, stranger, algorithm="RS256", headers={"kid": "unknown"})
    assert _reason(verifier, token)[0] == "bad_signature"


@pytest.mark.req("auth:jwt")
def test_rejections(rsa_pair, ed_pair):
    verifier = _verifier(public_key_file=rsa_pair.public_pem_file)
    now = int(time.time())
    assert _reason(verifier, rsa_pair.token({"exp": now - 3600, "iat": now - 7200}))[0] == "expired"
    assert _reason(verifier, rsa_pair.token({"aud": "someone-else"}))[0] == "wrong_audience"
    assert _reason(verifier, rsa_pair.token({"iss": "https://evil.example/"}))[0] == "wrong_issuer"
    # Signed by a key pair that is not the configured one: bad signature.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 60}, other, algorithm="RS256")
    assert _reason(verifier, forged)[0] == "bad_signature"
    assert _reason(verifier, rsa_pair.token(drop=("exp",)))[0] == "invalid_claims"
    assert _reason(verifier, "abc.def.ghi")[0] == "malformed"
    assert _reason(verifier, rsa_pair.token({"roles": "support admin", "sub": ""}))[0] == "invalid_claims"


@pytest.mark.req("auth:jwt")
def test_unsigned_and_hmac_tokens_are_refused(rsa_pair):
    verifier = _verifier(public_key_file=rsa_pair.public_pem_file)
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": int(time.time()) + 60}
    unsigned = jwt.encode(claims, None, algorithm="none")
    assert _reason(verifier, unsigned)[0] == "bad_signature"
    # HS256 keyed with the public key's PEM text: the classic algorithm-confusion attack.
    hmac_token = jwt.encode(claims, "x" * 64, algorithm="HS256")
    assert _reason(verifier, hmac_token)[0] == "bad_signature"


def test_space_separated_roles_claim(rsa_pair):
    verifier = _verifier(public_key_file=rsa_pair.public_pem_file, roles_claim="scope")
    assert verifier.verify(rsa_pair.token({"scope": "read write"})).roles == frozenset({"read", "write"})


def test_configuration_errors(tmp_path, rsa_pair, jwks_file):
    with pytest.raises(ConfigError, match="exactly one of public_key_file or jwks_file"):
        _verifier()
    with pytest.raises(ConfigError, match="exactly one"):
        _verifier(public_key_file=rsa_pair.public_pem_file, jwks_file=jwks_file)
    with pytest.raises(ConfigError, match="HS256 not accepted"):
        _verifier(public_key_file=rsa_pair.public_pem_file, algorithms=["HS256"])
    with pytest.raises(ConfigError, match="cannot read"):
        _verifier(public_key_file=tmp_path / "missing.pem")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="not a usable JWKS"):
        _verifier(jwks_file=bad)
