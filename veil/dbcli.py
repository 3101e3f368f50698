"""``veil db``: schema management. Alembic migrations are the only way the schema changes."""

from __future__ import annotations

from pathlib import Path

import click

from veil import db
from veil.config import load_config


def _url(config: str | None, database_url: str | None) -> str:
    if database_url:
        return database_url
    cfg = load_config(config) if config else None
    return db.resolve_url(cfg.database_url if cfg else None, cfg.data_dir if cfg else Path(".veil").resolve())


@click.group("db")
def db_group() -> None:
    """Create and migrate Veil's tables."""


@db_group.command("upgrade")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="veil.yaml to take database_url from.")
@click.option("--database-url", envvar="VEIL_DATABASE_URL", help="PostgreSQL URL (overrides the config).")
@click.option("--revision", default="head", show_default=True)
def upgrade(config: str | None, database_url: str | None, revision: str) -> None:
    """Apply migrations up to REVISION (Veil also does this at start)."""
    url = _url(config, database_url)
    db.upgrade(url, revision)
    click.echo(f"database {db.redacted(url)} at revision {db.current_revision(url)}")


@db_group.command("current")
@click.option("--config", "config", type=click.Path(dir_okay=False))
@click.option("--database-url", envvar="VEIL_DATABASE_URL")
def current(config: str | None, database_url: str | None) -> None:
    """Print the schema revision the database is at."""
    url = _url(config, database_url)
    click.echo(db.current_revision(url) or "(empty: run `veil db upgrade`)")
