"""Alembic environment: run migrations online against the URL db.py passes in.

An advisory lock serialises concurrent upgrades (several Veil processes starting against one
database all run ``upgrade`` at start-up)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

MIGRATION_LOCK = 0x7E11_0001

config = context.config


def run_migrations_online() -> None:
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url"), poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
        connection.commit()
        try:
            context.configure(connection=connection, transactional_ddl=True)
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
            connection.commit()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("Veil migrations run online only: use `veil db upgrade`.")
run_migrations_online()
