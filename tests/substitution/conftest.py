"""Fixtures for substitution tests: a customer database on the test server, and a gateway config
with @bytebase/dbhub (from npm, a real subprocess over stdio) pointed at it."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import npm
import psycopg
import pytest
from sqlalchemy.engine import make_url

from veil import db
from veil.config import VeilConfig, parse_config

#: (id, full_name, email): a name with a quote, stored values that are SQL, and enough plain rows
#: that a query gone wrong matches visibly more than one.
CUSTOMERS: list[tuple[int, str, str]] = [
    (1, "Siobhan O'Connor", "siobhan.oconnor@example.com"),
    (2, "Jane Doe", "x' OR '1'='1"),
    (3, "Mal Lory", "'; DROP TABLE customers; --"),
    (4, "Ada Back", "a\\' OR 1=1 --"),
    *((i, f"Person {i:03d} Smith", f"person{i}@example.com") for i in range(5, 40)),
]

POLICY = textwrap.dedent(
    """
    metadata:
      name: substitution-tests
      purposes: [testing]
    detection:
      entities: [PERSON, EMAIL_ADDRESS]
    tokens:
      scope: session
    access:
      - id: everyone
        tools: ["*"]
        effect: allow
    """
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def customers_dsn(tcp_server_url: str) -> Iterator[str]:
    """A database of its own with a ``customers`` table, by host and port (dbhub takes nothing
    else); dropped at the end."""
    name = f"veil_subst_{uuid.uuid4().hex[:10]}"
    url = make_url(db.normalise_url(tcp_server_url))
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = url.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, full_name text NOT NULL, email text NOT NULL)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO customers VALUES (%s, %s, %s)", CUSTOMERS)
    yield dsn
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def dbhub_config(
    database_url: str, customers_dsn: str, tmp_path: Path, data_dir_for: Callable[..., Path]
) -> Callable[..., VeilConfig]:
    """A gateway config whose only upstream is dbhub over stdio on the customer database."""
    data_dir = data_dir_for("veil-subst-")
    dbhub = npm.bin_path("@bytebase/dbhub", "dbhub")
    sep = "&" if "?" in customers_dsn else "?"

    def make(policy_text: str = POLICY) -> VeilConfig:
        policy = tmp_path / "policy.yaml"
        policy.write_text(policy_text)
        raw: dict[str, Any] = {
            "upstreams": {
                "dbhub": {
                    "command": str(dbhub),
                    "args": ["--transport", "stdio", "--dsn", f"{customers_dsn}{sep}sslmode=disable"],
                }
            },
            "database_url": database_url,
            "policy": str(policy),
            "data_dir": str(data_dir),
            "auth": {"required": False},
            "principal": {"name": "analyst", "roles": ["analyst"]},
            "expose": "direct",
        }
        return parse_config(raw, source=tmp_path / "veil.yaml")

    return make
