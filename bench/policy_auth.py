"""Cost of a policy decision and of authenticating one HTTP request, side by side with baselines.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test .venv/bin/python bench/policy_auth.py

Policy: ``decide_flow`` for one token against (a) no flow rules (the built-in fallback: the
baseline), (b) 20 unconditional rules where the 20th matches, (c) the same with a CEL ``when`` on
every rule, evaluated with common-expression-language (what Veil uses) and, for comparison, with
cel-python when it is installed. Auth: one ``Authenticator.authenticate`` call with an API key
(one indexed SELECT, HMAC check) and with an RS256 / EdDSA JWT, against parsing the header only.
Creates a scratch database on the server in DATABASE_URL (dropped at the end). Each measurement
is the median of 5 rounds, rounds alternating between configurations.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from scratch import scratch_database

from veil import db
from veil.auth import Authenticator, create_key
from veil.config import AuthConfig, JwtConfig
from veil.policies import load_policy
from veil.policies.cel import activation
from veil.principal import Principal
from veil.tokenizer.tokens import TokenRef

ROUNDS = 5
PRINCIPAL = Principal("alice", frozenset({"support"}), "acme")
REF = TokenRef("[EMAIL_ADDRESS_1]", "EMAIL_ADDRESS", frozenset({"crm"}))


def _per_call_us(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def _rules(with_when: bool) -> str:
    lines = ["metadata: {name: bench}", "flows:"]
    for i in range(19):
        lines.append(f"  - id: r{i}\n    entities: [PERSON]\n    to: ['x{i}__*']\n    effect: allow")
        if with_when:
            lines.append('    when: \'"support" in principal.roles && principal.tenant == "acme"\'')
    lines.append("  - id: last\n    entities: [EMAIL_ADDRESS]\n    to: [mailer__send_email]\n    effect: allow")
    if with_when:
        lines.append('    when: \'"support" in principal.roles && principal.tenant == "acme"\'')
    return "\n".join(lines) + "\n"


def bench_policy(tmp: Path) -> list[tuple[str, float]]:
    docs = {
        "no rules (fallback) - baseline": "metadata: {name: bench}\n",
        "20 rules, 20th matches": _rules(False),
        "20 rules with CEL when, 20th matches": _rules(True),
    }
    policies = {}
    for name, text in docs.items():
        path = tmp / f"{abs(hash(name))}.yaml"
        path.write_text(text)
        policies[name] = load_policy(path)
    results: dict[str, list[float]] = {name: [] for name in policies}
    for _ in range(ROUNDS):
        for name, policy in policies.items():
            results[name].append(
                _per_call_us(lambda p=policy: p.decide_flow(PRINCIPAL, REF, "mailer", "send_email", "$.to"), 2000)
            )
    out = [(name, statistics.median(v)) for name, v in results.items()]

    # One condition on its own: the CEL engine Veil uses vs cel-python (pure Python).
    src = '"support" in principal.roles && principal.tenant == "acme" && now.getHours() < 25'
    act = activation(principal_name="alice", roles=["support"], tenant="acme", upstream="m", tool="t")
    import cel

    prog = cel.compile(src)
    engines = {"one CEL condition: common-expression-language": lambda: prog.execute(act)}
    try:
        import celpy

        env = celpy.Environment()
        cprog = env.program(env.compile(src))
        cact = {k: celpy.json_to_cel(v) if k != "now" else celpy.celtypes.TimestampType(v) for k, v in act.items()}
        engines["one CEL condition: cel-python 0.5 (not used)"] = lambda: cprog.evaluate(cact)
    except ImportError:
        pass
    timings: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(ROUNDS):
        for k, fn in engines.items():
            timings[k].append(_per_call_us(fn, 500))
    out += [(k, statistics.median(v)) for k, v in timings.items()]
    return out


def bench_auth(url: str, tmp: Path) -> list[tuple[str, float]]:
    engine = db.create_engine(url)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    verifiers = {}
    tokens = {}
    for name, key, alg in (("RS256", rsa_key, "RS256"), ("EdDSA", ed_key, "EdDSA")):
        pem = tmp / f"{name}.pem"
        pem.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        cfg = AuthConfig(jwt=JwtConfig(issuer="iss", audience="aud", public_key_file=pem))
        verifiers[name] = Authenticator(engine, cfg)
        now = int(datetime.now(UTC).timestamp())
        claims = {"iss": "iss", "aud": "aud", "sub": "alice", "roles": ["support"], "exp": now + 3600}
        tokens[name] = "Bearer " + jwt.encode(claims, key, algorithm=alg)
    _id, api_key = create_key(engine, "alice", ["support"])
    auth = verifiers["RS256"]
    cases = {
        "header parse only (malformed, no lookup) - baseline": lambda: _swallow(auth, "Bearer opaque"),
        "API key (SELECT + HMAC)": lambda: auth.authenticate(f"Bearer {api_key}"),
        "JWT RS256": lambda: verifiers["RS256"].authenticate(tokens["RS256"]),
        "JWT EdDSA": lambda: verifiers["EdDSA"].authenticate(tokens["EdDSA"]),
    }
    results: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(ROUNDS):
        for k, fn in cases.items():
            results[k].append(_per_call_us(fn, 300))
    engine.dispose()
    return [(k, statistics.median(v)) for k, v in results.items()]


def _swallow(auth: Authenticator, header: str) -> None:
    with contextlib.suppress(Exception):
        auth.authenticate(header)


def main() -> int:
    server = os.environ.get("DATABASE_URL")
    if not server:
        print("set DATABASE_URL to a PostgreSQL server (a scratch database is created there)", file=sys.stderr)
        return 2
    with scratch_database(server) as url, tempfile.TemporaryDirectory() as tmp:
        rows = bench_policy(Path(tmp))
        auth_rows = bench_auth(url, Path(tmp))
    for title, data in (("decide_flow, one token", rows[:3]), ("CEL engines", rows[3:]), ("authenticate", auth_rows)):
        base = data[0][1]
        print(f"\n{title}")
        for label, us in data:
            print(f"  {label:55s} {us:9.1f} us/call  x{us / base:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
