"""A scratch database for a benchmark: created on the server ``DATABASE_URL`` names, migrated,
and dropped afterwards whatever happens, so benchmarks never touch a real Veil database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from veil import db


@contextmanager
def scratch_database(server: str, *, migrate: bool = True) -> Iterator[str]:
    """Yield the URL of a new database on ``server``, migrated by this checkout's Veil unless
    ``migrate`` is false (a baseline checkout's ``veil serve`` migrates it with its own
    migrations at start); drop it on exit."""
    name = f"veil_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(db.normalise_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(db.normalise_url(server)).set(database=name).render_as_string(hide_password=False)
        if migrate:
            db.upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
