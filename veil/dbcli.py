"""``veil db``: schema management and the embedded server's lifecycle.

Alembic migrations are the only way the schema changes. They run as the database *owner*
(``migration_database_url``, or ``--database-url``); Veil serves as a *runtime* role that may only
append audit rows and use the vault (see docs/deployment.md). With one URL (the embedded server,
or a small install) the same role does both.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from veil import db
from veil.config import load_config


def _url(config: str | None, database_url: str | None) -> str:
    if database_url:
        return database_url
    cfg = load_config(config) if config else None
    return db.resolve_url(cfg.database_url if cfg else None, cfg.data_dir if cfg else Path(".veil").resolve())


def _data_dir(config: str | None, data_dir: str | None) -> Path:
    if data_dir:
        return Path(data_dir).resolve()
    if config:
        return load_config(config).data_dir
    return Path(".veil").resolve()


@click.group("db")
def db_group() -> None:
    """Create and migrate Veil's tables; show or stop the embedded PostgreSQL."""


@db_group.command("upgrade")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="veil.yaml to take the URLs from.")
@click.option(
    "--database-url",
    "--url",
    "database_url",
    envvar=["VEIL_MIGRATION_DATABASE_URL", "VEIL_DATABASE_URL"],
    help="PostgreSQL URL of the schema owner (overrides the config's migration_database_url / database_url).",
)
@click.option(
    "--runtime-role",
    envvar="VEIL_RUNTIME_ROLE",
    help="Role `veil serve` connects as, granted INSERT-only audit and vault use "
    "[default: the user of the config's database_url when migration_database_url is set, else none].",
)
@click.option("--revision", default="head", show_default=True)
def upgrade(config: str | None, database_url: str | None, runtime_role: str | None, revision: str) -> None:
    """Apply migrations up to REVISION (Veil also does this at start) and grant the runtime role."""
    cfg = load_config(config) if config else None
    if database_url:
        url = database_url
    elif cfg is not None and cfg.migration_database_url:
        url = cfg.migration_database_url
    else:
        url = _url(config, None)
    if runtime_role is None and cfg is not None:
        runtime_role = db.runtime_role_of(cfg.database_url, cfg.migration_database_url)
    db.upgrade(url, revision, runtime_role=runtime_role)
    click.echo(f"database {db.redacted(url)} at revision {db.current_revision(url)}")
    if runtime_role:
        click.echo(f"runtime role {runtime_role!r} may append audit rows and use the vault (no UPDATE/DELETE/DDL)")


@db_group.command("current")
@click.option("--config", "config", type=click.Path(dir_okay=False))
@click.option("--database-url", envvar="VEIL_DATABASE_URL")
def current(config: str | None, database_url: str | None) -> None:
    """Print the schema revision the database is at."""
    url = _url(config, database_url)
    click.echo(db.current_revision(url) or "(empty: run `veil db upgrade`)")


@db_group.command("status")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="veil.yaml to take data_dir from.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data directory (default: config's, else ./.veil).")
def status(config: str | None, data_dir: str | None) -> None:
    """Show whether the embedded PostgreSQL of a data directory is running (exit 1 when it is not).

    Starts nothing. With a config that names database_url, says that server is not Veil's to manage."""
    if config and load_config(config).database_url:
        click.echo(f"database_url is set ({db.redacted(load_config(config).database_url or '')}): not embedded")
    state = db.embedded_status(_data_dir(config, data_dir))
    click.echo(str(state))
    sys.exit(0 if state.running else 1)


@db_group.command("stop")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="veil.yaml to take data_dir from.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data directory (default: config's, else ./.veil).")
def stop(config: str | None, data_dir: str | None) -> None:
    """Stop the embedded PostgreSQL of a data directory (`veil serve` leaves it running for reuse)."""
    where = _data_dir(config, data_dir)
    if db.stop_embedded(where):
        click.echo(f"stopped the embedded PostgreSQL in {where / 'pg'}")
    else:
        click.echo(f"the embedded PostgreSQL in {where / 'pg'} was not running")


@db_group.command("harden")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="veil.yaml to take the database from.")
@click.option(
    "--database-url",
    "--url",
    "database_url",
    help="A superuser's URL for Veil's database (event triggers need one).",
)
def harden(config: str | None, database_url: str | None) -> None:
    """Install the event trigger that refuses ALTER/DETACH/DROP on the audit tables, and the
    functions it guards (superuser; again after every upgrade of Veil).

    Migrations do it themselves when they run as a superuser (the embedded server)."""
    url = database_url or _url(config, None)
    schema = db.harden(url)
    click.echo(
        f"audit DDL guard installed in {db.redacted(url)} (schema {schema}): only superusers may alter or drop "
        "audit tables or the functions that guard and append to them"
    )
