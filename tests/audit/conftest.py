"""Fixtures for audit tests: a fresh migrated database per test where the test tampers with it."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from veil import db
from veil.audit.events import TOOL_CALL, AuditEvent, Untokenised


@pytest.fixture
def fresh_url(make_database: Callable[[], str]) -> str:
    return make_database()


@pytest.fixture
def fresh_engine(fresh_url: str) -> Iterator[sa.Engine]:
    eng = db.create_engine(fresh_url)
    yield eng
    eng.dispose()


def tool_event(i: int = 0, **overrides: object) -> AuditEvent:
    """A realistic tool.call event carrying only tokens and digests."""
    fields: dict[str, object] = {
        "kind": TOOL_CALL,
        "principal": f"user{i % 3}",
        "roles": ["support"],
        "session_id": f"s{i % 5}",
        "scope": f"session:s{i % 5}",
        "upstream": "crm",
        "tool": "find_customers",
        "args_digest": "sha256:" + "ab" * 32,
        "entities": {"EMAIL_ADDRESS": 1 + i % 2, "PERSON": 1},
        "tokens": [f"[EMAIL_ADDRESS_{i}]", f"[PERSON_{i}]"],
        "untokenised": [Untokenised(f"[EMAIL_ADDRESS_{i}]", "EMAIL_ADDRESS", "mailer__send:to", "flows[0]:mail")],
        "decision": "allow",
        "rule": "access[0]",
        "duration_ms": 1.25 + i,
        "policy_version": "v" * 64,
        "detail": {"i": i, "ratio": 0.1, "nested": {"b": [1, 2.5, None], "a": True}},
    }
    fields.update(overrides)
    return AuditEvent(**fields)  # type: ignore[arg-type]


def tamper(engine: sa.Engine, sql: str, **params: object) -> None:
    """Run SQL as someone with direct database access who disabled the append-only trigger."""
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        conn.execute(sa.text(sql), params)


@dataclass
class Deployment:
    owner: str
    runtime: str
    owner_url: str
    runtime_url: str
    super_url: str
    data_dir: Path

    def engine(self, url: str) -> sa.Engine:
        return sa.create_engine(db.normalise_url(url), poolclass=sa.pool.NullPool)


@pytest.fixture
def deploy(server_url: str, tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """Factory: a database owned by a fresh non-superuser owner role, migrated as that owner, with
    a fresh runtime role granted by the migration; ``hardened`` also runs ``veil db harden``."""
    admin = sa.create_engine(db.normalise_url(server_url), isolation_level="AUTOCOMMIT")
    made: list[tuple[str, str, str]] = []
    base = make_url(db.normalise_url(server_url))

    def make(*, hardened: bool, schema: str | None = None) -> Deployment:
        """With ``schema``, the DBA owns the database and the owner role only that schema."""
        tag = uuid.uuid4().hex[:10]
        owner, runtime, name = f"veil_own_{tag}", f"veil_rt_{tag}", f"veil_int_{tag}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE ROLE "{owner}" LOGIN NOSUPERUSER NOCREATEROLE'))
            conn.execute(sa.text(f'CREATE ROLE "{runtime}" LOGIN NOSUPERUSER'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"' + ("" if schema else f' OWNER "{owner}"')))
        made.append((name, owner, runtime))

        def url(user: str | None) -> str:
            u = base.set(database=name) if user is None else base.set(database=name, username=user)
            return u.render_as_string(hide_password=False)

        if schema:
            dba = sa.create_engine(db.normalise_url(url(None)), isolation_level="AUTOCOMMIT")
            with dba.connect() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}" AUTHORIZATION "{owner}"'))
                for role in (owner, runtime):
                    conn.execute(sa.text(f'ALTER ROLE "{role}" IN DATABASE "{name}" SET search_path = "{schema}"'))
            dba.dispose()

        dep = Deployment(owner, runtime, url(owner), url(runtime), url(None), tmp_path / f"data-{tag}")
        db.upgrade(dep.owner_url, runtime_role=runtime)  # as the owner: no superuser, so no event trigger
        if hardened:
            cli(["db", "harden", "--database-url", dep.super_url])
        return dep

    yield make
    with admin.connect() as conn:
        for name, owner, runtime in made:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{runtime}"'))
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{owner}"'))
    admin.dispose()


def cli(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    run = subprocess.run(
        [sys.executable, "-m", "veil", *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    if check:
        assert run.returncode == 0, run.stdout + run.stderr
    return run
