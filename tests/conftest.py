"""Shared fixtures: a real PostgreSQL for every test that needs one.

``DATABASE_URL`` names a server to use (CI: 127.0.0.1:5432, database ``test``); without it the
embedded server is started in a temporary directory. Each test session (and each caller of
``make_database``) gets a database of its own, created from scratch and migrated with Alembic,
so parallel runs and helpers never see each other's rows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from tcp_relay import TcpRelay

from veil import db


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    data_dir = tmp_path_factory.mktemp("embedded-pg")
    yield db.start_embedded(data_dir)
    db.stop_embedded(data_dir)  # a test session leaves no server running behind it


@pytest.fixture(scope="session")
def tcp_server_url(server_url: str) -> Iterator[str]:
    """``server_url`` as a host and port, for third-party tools that take nothing else (dbhub):
    the same server, through a loopback relay when it is the embedded one (a Unix socket)."""
    url = make_url(db.normalise_url(server_url))
    socket_dir = url.query.get("host")
    if url.host or not isinstance(socket_dir, str):
        yield server_url
        return
    with TcpRelay(Path(socket_dir) / f".s.PGSQL.{url.port or 5432}") as relay:
        query = {k: v for k, v in url.query.items() if k != "host"}
        yield url.set(host="127.0.0.1", port=relay.port, query=query).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def make_database(server_url: str) -> Iterator[Callable[[], str]]:
    """Factory: a new, migrated database on the test server; dropped at the end of the session."""
    created: list[str] = []
    admin = sa.create_engine(db.normalise_url(server_url), isolation_level="AUTOCOMMIT")

    def make() -> str:
        name = f"veil_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        url = make_url(db.normalise_url(server_url)).set(database=name).render_as_string(hide_password=False)
        db.upgrade(url)
        return url

    yield make
    with admin.connect() as conn:
        for name in created:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def database_url(make_database: Callable[[], str]) -> str:
    """One migrated database shared by the whole test session."""
    return make_database()


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = db.create_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def data_dir_for() -> Iterator[Callable[..., Path]]:
    """Factory: a data directory under /tmp that the sandbox user can walk through (pytest's
    tmp_path base is 0700), removed after the test with its keys, logs and workspaces."""
    made: list[Path] = []

    def make(prefix: str, mode: int = 0o711) -> Path:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        path.chmod(mode)
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
