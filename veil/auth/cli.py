"""``veil keys``: create, list and revoke API keys for HTTP principals."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click

from veil import db
from veil.auth.keys import create_key, list_keys, revoke_key
from veil.dbcli import _url

_DURATION = re.compile(r"^([1-9][0-9]*)([hdw])$")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


def _engine(config: str | None, database_url: str | None):
    url = _url(config, database_url)
    db.upgrade(url)
    return db.create_engine(url, pool_size=1)


def _expires(value: str | None) -> datetime | None:
    if value is None:
        return None
    m = _DURATION.match(value)
    if m:
        return datetime.now(UTC) + int(m.group(1)) * _UNITS[m.group(2)]
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("use a duration like 12h, 30d, 2w or an ISO date", param_hint="--expires") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _db_options(f):
    f = click.option("--database-url", envvar="VEIL_DATABASE_URL", help="PostgreSQL URL (overrides the config).")(f)
    return click.option(
        "--config", "config", type=click.Path(dir_okay=False), help="veil.yaml to take database_url from."
    )(f)


@click.group("keys")
def keys_group() -> None:
    """Create, list and revoke API keys for HTTP principals."""


@keys_group.command("create")
@click.option("--principal", required=True, help="The name the key authenticates as.")
@click.option("--role", "roles", multiple=True, help="A role for the principal (repeatable).")
@click.option("--tenant", help="The principal's tenant.")
@click.option("--expires", help="Lifetime (12h, 30d, 2w) or an ISO date; default: never.")
@click.option("--description", help="A note for `veil keys list` (who holds it, what for).")
@_db_options
def create_cmd(
    principal: str,
    roles: tuple[str, ...],
    tenant: str | None,
    expires: str | None,
    description: str | None,
    config: str | None,
    database_url: str | None,
) -> None:
    """Create a key; it is printed once and cannot be shown again."""
    expires_at = _expires(expires)
    engine = _engine(config, database_url)
    try:
        key_id, key = create_key(
            engine, principal, roles, tenant=tenant, expires_at=expires_at, description=description
        )
    finally:
        engine.dispose()
    click.echo(key)
    until = expires_at.isoformat(timespec="seconds") if expires_at else "never"
    click.echo(
        f"key {key_id} for {principal} (roles: {', '.join(sorted(set(roles))) or 'none'}; expires: {until}). "
        "Store it now: Veil keeps only a hash and cannot show it again.",
        err=True,
    )


def _ts(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else "-"


@keys_group.command("list")
@_db_options
def list_cmd(config: str | None, database_url: str | None) -> None:
    """List keys (never their secrets)."""
    engine = _engine(config, database_url)
    try:
        keys = list_keys(engine)
    finally:
        engine.dispose()
    if not keys:
        click.echo("no API keys: create one with `veil keys create --principal NAME`")
        return
    header = ("KEY ID", "PRINCIPAL", "ROLES", "TENANT", "CREATED", "EXPIRES", "STATUS", "LAST USED")
    rows = []
    now = datetime.now(UTC)
    for k in keys:
        status = "revoked" if k.revoked_at else ("expired" if k.expires_at and k.expires_at <= now else "active")
        rows.append(
            (
                k.key_id,
                k.principal,
                ",".join(k.roles) or "-",
                k.tenant or "-",
                _ts(k.created_at),
                _ts(k.expires_at),
                status,
                _ts(k.last_used_at),
            )
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@keys_group.command("revoke")
@click.argument("key_id")
@_db_options
def revoke_cmd(key_id: str, config: str | None, database_url: str | None) -> None:
    """Revoke KEY_ID; requests with it are refused from now on."""
    engine = _engine(config, database_url)
    try:
        found = revoke_key(engine, key_id)
    finally:
        engine.dispose()
    if not found:
        raise click.ClickException(f"no API key with id {key_id}: see `veil keys list`")
    click.echo(f"key {key_id} revoked")
