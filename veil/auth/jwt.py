"""Bearer JWTs verified locally with PyJWT against a configured public key or JWKS file.

Keys are read once at start from files; nothing is fetched at run time. Only asymmetric
algorithms are accepted (a shared HMAC secret would let every verifier mint tokens), issuer,
audience and expiry are required, and every failure maps to a reason code with a message that
never repeats the token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt

from veil.auth.errors import (
    BAD_SIGNATURE,
    EXPIRED,
    INVALID_CLAIMS,
    MALFORMED,
    WRONG_AUDIENCE,
    WRONG_ISSUER,
    auth_error,
)
from veil.config import JwtConfig
from veil.errors import ConfigError
from veil.principal import Principal

ASYMMETRIC = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
LEEWAY_S = 30  # clock skew tolerated on exp/nbf/iat


def looks_like_jwt(credential: str) -> bool:
    return credential.count(".") == 2


class JwtVerifier:
    """Verifies tokens for one issuer and audience; construct once, call ``verify`` per request."""

    def __init__(self, config: JwtConfig) -> None:
        self.config = config
        bad = [a for a in config.algorithms if a not in ASYMMETRIC]
        if bad:
            raise ConfigError(
                f"auth.jwt.algorithms: {', '.join(bad)} not accepted; "
                f"use asymmetric ones ({', '.join(sorted(ASYMMETRIC))})"
            )
        self._key: Any = None
        self._jwks: jwt.PyJWKSet | None = None
        if (config.public_key_file is None) == (config.jwks_file is None):
            raise ConfigError("auth.jwt: set exactly one of public_key_file or jwks_file")
        if config.public_key_file is not None:
            self._key = self._read(config.public_key_file, "public_key_file")
        else:
            raw = self._read(config.jwks_file, "jwks_file")  # type: ignore[arg-type]
            try:
                self._jwks = jwt.PyJWKSet.from_dict(json.loads(raw))
            except (ValueError, jwt.PyJWTError) as exc:
                raise ConfigError(f"auth.jwt.jwks_file {config.jwks_file}: not a usable JWKS ({exc})") from None

    @staticmethod
    def _read(path: Path, field: str) -> str:
        try:
            return Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"auth.jwt.{field}: cannot read {path} ({exc.strerror})") from None

    def _signing_key(self, token: str) -> Any:
        if self._jwks is None:
            return self._key
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.DecodeError:
            raise auth_error(MALFORMED, "malformed bearer token: not a JWT") from None
        keys = [k for k in self._jwks.keys if kid is None or k.key_id == kid]
        if not keys:
            raise auth_error(BAD_SIGNATURE, "JWT signed with a key that is not in the configured JWKS")
        return keys[0]

    def verify(self, token: str) -> Principal:
        cfg = self.config
        key = self._signing_key(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(cfg.algorithms),
                audience=cfg.audience,
                issuer=cfg.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud", cfg.principal_claim]},
            )
        except jwt.ExpiredSignatureError:
            raise auth_error(EXPIRED, "JWT has expired: get a new token") from None
        except jwt.InvalidAudienceError:
            raise auth_error(
                WRONG_AUDIENCE, f"JWT is not for this gateway: audience must be '{cfg.audience}'"
            ) from None
        except jwt.InvalidIssuerError:
            raise auth_error(WRONG_ISSUER, f"JWT issuer is not accepted: issuer must be '{cfg.issuer}'") from None
        except jwt.InvalidSignatureError:
            raise auth_error(BAD_SIGNATURE, "JWT signature does not verify with the configured key") from None
        except jwt.MissingRequiredClaimError as exc:
            raise auth_error(INVALID_CLAIMS, f"JWT lacks the required claim '{exc.claim}'") from None
        except jwt.InvalidAlgorithmError:
            raise auth_error(
                BAD_SIGNATURE, f"JWT algorithm not accepted (accepted: {', '.join(cfg.algorithms)})"
            ) from None
        except jwt.DecodeError:
            raise auth_error(MALFORMED, "malformed bearer token: not a valid JWT") from None
        except jwt.PyJWTError as exc:
            raise auth_error(INVALID_CLAIMS, f"JWT rejected: {type(exc).__name__}") from None
        name = claims.get(cfg.principal_claim)
        if not isinstance(name, str) or not name:
            raise auth_error(INVALID_CLAIMS, f"JWT claim '{cfg.principal_claim}' must be a non-empty string")
        raw_roles = claims.get(cfg.roles_claim, [])
        if isinstance(raw_roles, str):
            raw_roles = raw_roles.split()
        if not isinstance(raw_roles, list) or not all(isinstance(r, str) for r in raw_roles):
            raise auth_error(INVALID_CLAIMS, f"JWT claim '{cfg.roles_claim}' must be a list of strings")
        tenant = claims.get(cfg.tenant_claim) if cfg.tenant_claim else None
        if tenant is not None and not isinstance(tenant, str):
            raise auth_error(INVALID_CLAIMS, f"JWT claim '{cfg.tenant_claim}' must be a string")
        token_id = claims.get("jti") or claims.get("sub") or name
        credential = f"jwt:{claims.get('iss') or ''}:{token_id}"
        return Principal(name=name, roles=frozenset(raw_roles), tenant=tenant, via="jwt", credential=credential)
