"""Migrations that must not stall a running deployment, against the real server."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from alembic import command

from veil import db

INDEX_STATE = sa.text(
    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
    " WHERE c.relname = 'vault_entries_erased'"
)


def index_state(url: str) -> list[bool]:
    engine = db.create_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            return list(conn.execute(INDEX_STATE).scalars())
    finally:
        engine.dispose()


@pytest.mark.req("db:online-migration")
def test_the_erased_entries_index_is_built_concurrently_and_rebuilt_when_a_build_failed(
    make_database: Callable[[], str],
) -> None:
    url = make_database()
    assert index_state(url) == [True]
    config = db.alembic_config(url)
    command.downgrade(config, "0004_roles")
    assert index_state(url) == []
    # What a failed CREATE INDEX CONCURRENTLY leaves behind: the index, marked invalid.
    engine = db.create_engine(url, pool_size=1)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("CREATE INDEX vault_entries_erased ON vault_entries (erased_at) WHERE erased_at IS NOT NULL")
            )
            conn.execute(
                sa.text("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'vault_entries_erased'::regclass")
            )
    finally:
        engine.dispose()
    assert index_state(url) == [False]
    command.upgrade(config, "head")
    assert index_state(url) == [True]
