"""The vault against a real PostgreSQL: encryption, tamper evidence, erasure, expiry, look-up by
value across scopes, and agreement between threads and between OS processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from veil.errors import TokenError
from veil.tokenizer import Keyring, Vault
from veil.tokenizer.keyring import key_id_of


def new_scope() -> str:
    return f"session:{uuid.uuid4().hex}"


@pytest.fixture
def vault(session_engine, keyring) -> Vault:
    return Vault(session_engine, keyring)


def row(engine, scope: str, token: str):
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT * FROM vault_entries WHERE scope = :s AND token = :t"), {"s": scope, "t": token}
        ).one()


@pytest.mark.req("vault:encrypted")
def test_ciphertext_does_not_contain_the_value(vault, session_engine):
    scope = new_scope()
    value = "Bartholomew Quigley-Featherstone"
    [e] = vault.assign(scope, [(value, "PERSON")], "crm")
    r = row(session_engine, scope, e.token)
    stored = b"".join(bytes(r._mapping[c] or b"") for c in ("ciphertext", "wrapped_key", "nonce", "value_hmac"))
    assert value.encode() not in stored and value.lower().encode() not in stored
    assert r.key_id == vault.keyring.current_id
    assert r.sources == ["crm"]
    assert vault.resolve(scope, [e.token])[e.token].value == value


@pytest.mark.req("vault:encrypted")
def test_associated_data_binds_scope_token_and_type(vault, session_engine):
    scope = new_scope()
    [a, b] = vault.assign(scope, [("ann@example.com", "EMAIL_ADDRESS"), ("bob@example.com", "EMAIL_ADDRESS")], "crm")
    # move a's ciphertext onto b's row: decryption must fail, not return a's value under b's token
    with session_engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE vault_entries SET (wrapped_key, nonce, ciphertext) = "
                "(SELECT wrapped_key, nonce, ciphertext FROM vault_entries WHERE scope = :s AND token = :a) "
                "WHERE scope = :s AND token = :b"
            ),
            {"s": scope, "a": a.token, "b": b.token},
        )
    with pytest.raises(TokenError, match=r"integrity check") as exc:
        vault.resolve(scope, [b.token])
    assert "ann@example.com" not in str(exc.value)
    # and relabelling a row's type is caught too
    with session_engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE vault_entries SET entity_type = 'PERSON' WHERE scope = :s AND token = :a"),
            {"s": scope, "a": a.token},
        )
    with pytest.raises(TokenError, match="integrity check"):
        vault.resolve(scope, [a.token])


@pytest.mark.req("tokenize:deterministic")
def test_same_value_same_token_normalised(vault):
    scope = new_scope()
    entries = vault.assign(
        scope,
        [
            ("Maria.Lopez@Example.com", "EMAIL_ADDRESS"),
            ("maria.lopez@example.com", "EMAIL_ADDRESS"),
            ("(415) 555-0132", "PHONE_NUMBER"),
            ("+1 415 555 0132", "PHONE_NUMBER"),
            ("other@example.com", "EMAIL_ADDRESS"),
        ],
        "crm",
    )
    assert entries[0].token == entries[1].token
    assert entries[2].token == entries[3].token
    assert entries[4].token != entries[0].token
    # and again later, from a fresh process-level cache
    fresh = Vault(vault.engine, vault.keyring)
    assert fresh.assign(scope, [("MARIA.LOPEZ@EXAMPLE.COM", "EMAIL_ADDRESS")], "crm")[0].token == entries[0].token


@pytest.mark.req("vault:erase")
def test_find_and_erase_across_scopes(vault, session_engine):
    s1, s2, s3 = new_scope(), new_scope(), new_scope()
    [a] = vault.assign(s1, [("Zanele Okonkwo-Brandt", "PERSON")], "crm")
    [b] = vault.assign(s2, [("zanele okonkwo-brandt", "PERSON")], "tickets")
    vault.assign(s3, [("Someone Else Entirely", "PERSON")], "crm")
    found = vault.find_entries("Zanele  Okonkwo-Brandt")
    assert {(f.scope, f.token) for f in found} == {(s1, a.token), (s2, b.token)}
    assert all(f.erased_at is None and f.entity_type == "PERSON" for f in found)
    assert {f.sources for f in found} == {("crm",), ("tickets",)}

    erased = vault.erase_entries("Zanele Okonkwo-Brandt")
    assert {(f.scope, f.token) for f in erased} == {(s1, a.token), (s2, b.token)}
    r = row(session_engine, s1, a.token)
    assert r.ciphertext is None and r.wrapped_key is None and r.nonce is None and r.erased_at is not None
    with pytest.raises(TokenError, match="erased"):
        vault.resolve(s1, [a.token])
    # still listed (as erased) for the compliance record
    assert all(f.erased_at is not None for f in vault.find_entries("Zanele Okonkwo-Brandt"))
    # seen again from an upstream: a new token, the erased one stays erased
    [again] = vault.assign(s1, [("Zanele Okonkwo-Brandt", "PERSON")], "crm")
    assert again.token != a.token
    with pytest.raises(TokenError, match="erased"):
        vault.resolve(s1, [a.token])


@pytest.mark.req("vault:erase")
def test_find_phone_in_another_format(vault):
    scope = new_scope()
    [e] = vault.assign(scope, [("+1 (303) 555-0188", "PHONE_NUMBER")], "crm")
    assert [f.token for f in vault.find_entries("303.555.0188") if f.scope == scope] == [e.token]


@pytest.mark.req("vault:ttl")
def test_expired_token_is_an_error(session_engine, keyring):
    v = Vault(session_engine, keyring, ttl_seconds=3600)
    scope = new_scope()
    [e] = v.assign(scope, [("Expiring Person", "PERSON")], "crm")
    r = row(session_engine, scope, e.token)
    assert r.expires_at is not None
    with session_engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE vault_entries SET expires_at = now() - interval '1 second' WHERE id = :i"), {"i": r.id}
        )
    with pytest.raises(TokenError, match="expired"):
        v.resolve(scope, [e.token])
    assert v.purge_expired() >= 1
    with pytest.raises(TokenError, match="erased"):
        v.resolve(scope, [e.token])


def test_unknown_token_names_the_token(vault):
    with pytest.raises(TokenError, match=r"\[PERSON_999\] is not known"):
        vault.resolve(new_scope(), ["[PERSON_999]"])


@pytest.mark.req("vault:rotation")
def test_rotation_old_entries_still_decrypt(session_engine):
    old_key, new_key = os.urandom(32), os.urandom(32)
    scope = new_scope()
    [e] = Vault(session_engine, Keyring.from_keys(old_key)).assign(scope, [("Rotated Person", "PERSON")], "crm")
    rotated = Vault(session_engine, Keyring.from_keys(new_key, old_key))
    assert rotated.resolve(scope, [e.token])[e.token].value == "Rotated Person"
    # same HMAC family: the value is still found, and still gets its old token
    assert rotated.assign(scope, [("Rotated Person", "PERSON")], "crm")[0].token == e.token
    [n] = rotated.assign(scope, [("Newer Person", "PERSON")], "crm")
    assert row(session_engine, scope, n.token).key_id == key_id_of(new_key)
    with pytest.raises(TokenError, match="not loaded"):
        Vault(session_engine, Keyring.from_keys(new_key)).resolve(scope, [e.token])


VALUES = [f"person{i:03d}@example.com" for i in range(120)]


@pytest.mark.req("vault:concurrency")
def test_threads_agree(session_engine, keyring):
    scope = new_scope()
    vaults = [Vault(session_engine, keyring) for _ in range(4)]  # separate caches, like processes

    def work(k: int) -> dict[str, str]:
        order = VALUES[k::2] + VALUES[::-1]
        entries = vaults[k].assign(scope, [(v, "EMAIL_ADDRESS") for v in order], "x")
        return {v: e.token for v, e in zip(order, entries, strict=True)}

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))
    assert all(r == results[0] for r in results)
    assert_no_duplicates(session_engine, scope, len(VALUES))


WORKER = textwrap.dedent(
    """
    import json, random, sys
    from veil import db
    from veil.tokenizer import Keyring, Vault
    url, scope, key, seed = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]), int(sys.argv[4])
    vault = Vault(db.create_engine(url), Keyring.from_keys(key), refresh_seconds=0)
    values = json.loads(sys.stdin.read())
    rng = random.Random(seed)
    seen = {}
    for _ in range(25):
        batch = rng.sample(values, 20)
        kinds = ["EMAIL_ADDRESS" if "@" in v else "PERSON" for v in batch]
        for v, e in zip(batch, vault.assign(scope, list(zip(batch, kinds)), f"p{seed}")):
            assert seen.setdefault(v, e.token) == e.token, "token changed within a process"
    print(json.dumps(seen))
    """
)


@pytest.mark.req("vault:concurrency")
def test_two_processes_agree(database_url, session_engine):
    scope = new_scope()
    values = VALUES[:60] + [f"Person Number{i}" for i in range(60)]
    key = os.urandom(32).hex()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, database_url, scope, key, str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(json.dumps(values), timeout=120)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out))
    a, b = outs
    common = set(a) & set(b)
    assert len(common) > 20
    assert all(a[v] == b[v] for v in common)
    with session_engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT token, sources FROM vault_entries WHERE scope = :s"), {"s": scope}).all()
    assert len(rows) == len(set(a) | set(b))
    assert any(set(r.sources) == {"p1", "p2"} for r in rows)
    assert_no_duplicates(session_engine, scope, len(rows))


@pytest.mark.req("vault:concurrency")
def test_other_processes_values_and_erasures_reach_the_guard(database_url, session_engine, keyring):
    """Another process's new value joins this process's guard, and its erasure leaves it, at the
    next refresh (here: every call); a scope nobody wrote to is not read again at all."""
    from veil import db

    here_engine = db.create_engine(database_url)  # this "process": its statements are counted
    statements: list[str] = []
    sa.event.listen(here_engine, "before_cursor_execute", lambda c, cur, stmt, *a: statements.append(stmt))
    try:
        here = Vault(here_engine, keyring, refresh_seconds=0)
        there = Vault(session_engine, keyring)  # the other replica
        busy, quiet = new_scope(), new_scope()
        there.assign(busy, [("Odalys Featherstonehaugh", "PERSON")], "crm")
        there.assign(quiet, [("Quiet Person Example", "PERSON")], "crm")
        assert [h.value for h in here.guard(busy).find("met Odalys Featherstonehaugh")]
        assert here.guard(quiet).find("Quiet Person Example")

        [new] = there.assign(busy, [("Benedikt Vasquez-Oyelaran", "PERSON")], "crm")
        statements.clear()
        assert here.guard(quiet).find("Quiet Person Example")
        assert len(statements) == 1 and "max(id)" in statements[0]  # only the process-wide check
        assert new.token in {h.token for h in here.guard(busy).find("call Benedikt Vasquez-Oyelaran today")}

        there.erase_entries("Benedikt Vasquez-Oyelaran")
        assert here.guard(busy).find("call Benedikt Vasquez-Oyelaran today") == []
        assert here.guard(busy).find("met Odalys Featherstonehaugh")
    finally:
        here_engine.dispose()


def test_cached_guard_only_when_no_round_trip_is_needed(session_engine, keyring):
    """``cached_guard`` (the event loop's way in) answers only from a loaded, fresh cache."""
    scope = new_scope()
    vault = Vault(session_engine, keyring, refresh_seconds=3600)
    vault.assign(scope, [("Perpetua Hollingsworth", "PERSON")], "crm")
    assert vault.cached_guard(new_scope()) is None  # never loaded here
    guard = vault.guard(scope)
    assert vault.cached_guard(scope) is guard
    vault.assign(scope, [("Another Name Entirely", "PERSON")], "crm")
    assert vault.cached_guard(scope) is None  # the automaton must be rebuilt (in a thread)
    assert vault.guard(scope).find("Another Name Entirely")
    due = Vault(session_engine, keyring, refresh_seconds=0)
    due.guard(scope)
    assert due.cached_guard(scope) is None  # the process-wide check is due: a round trip


def assert_no_duplicates(engine, scope: str, expected: int) -> None:
    with engine.connect() as conn:
        n, tokens, hmacs = conn.execute(
            sa.text(
                "SELECT count(*), count(DISTINCT token), count(DISTINCT value_hmac) FROM vault_entries WHERE scope = :s"
            ),
            {"s": scope},
        ).one()
    assert n == tokens == hmacs == expected


def test_database_failure_is_a_database_error(database_url, keyring):
    from sqlalchemy.engine import make_url

    from veil import db
    from veil.errors import DatabaseError

    url = make_url(db.normalise_url(database_url)).set(database="veil_no_such_database")
    broken = Vault(sa.create_engine(url), keyring)
    with pytest.raises(DatabaseError, match="database_url"):
        broken.assign(new_scope(), [("Someone Unreachable", "PERSON")], "crm")
    with pytest.raises(DatabaseError):
        broken.resolve(new_scope(), ["[PERSON_1]"])
