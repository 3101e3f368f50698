"""Key pairs made in the test (never checked in) and JWT helpers."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

ISSUER = "https://idp.example.com/"
AUDIENCE = "veil-gateway"


@dataclass
class KeyPair:
    private: Any
    public_pem_file: Path
    algorithm: str
    kid: str

    def token(self, claims: dict[str, Any] | None = None, *, drop: tuple[str, ...] = (), **headers: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "roles": ["support"], "iat": now, "exp": now + 600}
        body.update(claims or {})
        for name in drop:
            body.pop(name, None)
        return jwt.encode(body, self.private, algorithm=self.algorithm, headers={"kid": self.kid, **headers})


def _write_public(tmp: Path, name: str, private: Any) -> Path:
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp / f"{name}.pem"
    path.write_bytes(pem)
    return path


@pytest.fixture(scope="session")
def rsa_pair(tmp_path_factory) -> KeyPair:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KeyPair(private, _write_public(tmp_path_factory.mktemp("rsa"), "rsa", private), "RS256", "rsa-1")


@pytest.fixture(scope="session")
def ed_pair(tmp_path_factory) -> KeyPair:
    private = ed25519.Ed25519PrivateKey.generate()
    return KeyPair(private, _write_public(tmp_path_factory.mktemp("ed"), "ed", private), "EdDSA", "ed-1")


@pytest.fixture(scope="session")
def jwks_file(tmp_path_factory, rsa_pair: KeyPair, ed_pair: KeyPair) -> Path:
    keys = []
    for pair in (rsa_pair, ed_pair):
        algo = jwt.algorithms.RSAAlgorithm if pair.algorithm == "RS256" else jwt.algorithms.OKPAlgorithm
        jwk = json.loads(algo.to_jwk(pair.private.public_key()))
        jwk.update({"kid": pair.kid, "use": "sig", "alg": pair.algorithm})
        keys.append(jwk)
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    return path
