"""``veil audit``: verify the trail, sign checkpoints, export the public key, apply retention."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import click
import sqlalchemy as sa

from veil import db
from veil.audit.checkpoints import checkpoint_file, load_public_key, load_signing_key, make_checkpoint, public_pem
from veil.audit.moments import parse_moment
from veil.config import load_config
from veil.dbcli import _url
from veil.errors import ConfigError


def data_dir_of(config: str | None, data_dir: str | None) -> Path:
    """``--data-dir``, else the config's ``data_dir``, else ``./.veil`` (as ``veil db`` does)."""
    if data_dir:
        return Path(data_dir).resolve()
    if config:
        return load_config(config).data_dir
    return Path(".veil").resolve()


def checkpoint_file_of(config: str | None, data_dir: str | None, explicit: str | None) -> Path:
    """``--checkpoint-file``, else the config's ``audit.checkpoint_file``, else DATA_DIR's default."""
    if explicit:
        return Path(explicit).resolve()
    configured = load_config(config).audit.checkpoint_file if config else None
    return checkpoint_file(data_dir_of(config, data_dir), configured)


def checkpoint_file_option(f):  # type: ignore[no-untyped-def]
    return click.option(
        "--checkpoint-file",
        type=click.Path(dir_okay=False),
        help="Signed checkpoints written outside the database [default: audit.checkpoint_file, "
        "else DATA_DIR/audit-checkpoints.jsonl].",
    )(f)


def parse_when(value: str | None, *, end: bool = False) -> datetime | None:
    """``--from``/``--to``: see :func:`veil.audit.moments.parse_moment`."""
    if value is None:
        return None
    try:
        return parse_moment(value, end=end)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def db_options(f):  # type: ignore[no-untyped-def]
    f = click.option("--database-url", envvar="VEIL_DATABASE_URL", help="PostgreSQL URL (overrides the config).")(f)
    return click.option(
        "--config", "config", type=click.Path(dir_okay=False), help="veil.yaml to take database_url from."
    )(f)


def data_dir_option(f):  # type: ignore[no-untyped-def]
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        help="Where audit_signing.key lives (default: the config's data_dir, else ./.veil).",
    )(f)


@click.group("audit")
def audit_group() -> None:
    """Verify the audit trail, sign checkpoints, apply retention."""


@audit_group.command("verify")
@db_options
@data_dir_option
@checkpoint_file_option
@click.option("--from", "start", help="First day (YYYY-MM-DD) or timestamp to verify.")
@click.option("--to", "end", help="Last day (inclusive) or timestamp to verify.")
@click.option(
    "--public-key",
    type=click.Path(dir_okay=False, exists=True),
    help="PEM public key to trust for checkpoint signatures (from `veil audit export-public-key`).",
)
def verify_cmd(
    config: str | None,
    database_url: str | None,
    data_dir: str | None,
    start: str | None,
    end: str | None,
    public_key: str | None,
    checkpoint_file: str | None,
) -> None:
    """Walk the hash chain; exit 1 and name the first broken link if anything was tampered with."""
    from veil.audit.verify import verify

    outside = checkpoint_file_of(config, data_dir, checkpoint_file)

    key = load_public_key(Path(public_key)) if public_key else _local_public_key(config, data_dir)
    engine = db.create_engine(_url(config, database_url))
    try:
        # One snapshot for the whole walk: on a live gateway the head moves while verify reads,
        # and rows appended after the walk's last event would otherwise look like a cut tail.
        snapshot = engine.connect().execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with snapshot as conn:
            result = verify(
                conn,
                start=parse_when(start),
                end=parse_when(end, end=True),
                public_key=key,
                progress=lambda n: click.echo(f"  ... {n} events verified", err=True),
                checkpoint_file=outside,
            )
    finally:
        engine.dispose()
    if result.first_seq is not None:
        click.echo(f"chain: seq {result.first_seq}..{result.last_seq}, {result.events} events verified")
        click.echo(f"anchor: {result.anchor}")
    for cp in result.checkpoints:
        mark = "ok" if cp.ok else "FAIL"
        where = f"#{cp.checkpoint.id}" if cp.source == "database" else f"{cp.source}:{cp.checkpoint.id}"
        click.echo(
            f"checkpoint {where} at seq {cp.checkpoint.seq} ({cp.checkpoint.ts:%Y-%m-%d %H:%M:%S}Z, "
            f"key {cp.checkpoint.key_id}): {mark}: {cp.note}"
        )
    for note in result.notes:
        click.echo(f"note: {note}")
    if result.problem is not None:
        click.echo(f"BROKEN: {result.problem}", err=True)
    if not result.ok:
        click.echo("audit trail verification FAILED", err=True)
        sys.exit(1)
    click.echo("audit trail verified: OK")


def _local_public_key(config: str | None, data_dir: str | None):  # type: ignore[no-untyped-def]
    try:
        return load_signing_key(data_dir_of(config, data_dir), create=False).public_key()
    except ConfigError:
        return None


@audit_group.command("checkpoint")
@db_options
@data_dir_option
@checkpoint_file_option
def checkpoint_cmd(
    config: str | None, database_url: str | None, data_dir: str | None, checkpoint_file: str | None
) -> None:
    """Sign the current chain head with the audit signing key (created 0600 when missing); the
    checkpoint is stored in the database and appended to the checkpoint file."""
    key = load_signing_key(data_dir_of(config, data_dir))
    outside = checkpoint_file_of(config, data_dir, checkpoint_file)
    engine = db.create_engine(_url(config, database_url))
    try:
        with engine.begin() as conn:
            cp = make_checkpoint(conn, key, outside)
    finally:
        engine.dispose()
    click.echo(f"checkpoint #{cp.id}: seq {cp.seq}, hash {cp.hash.hex()}, key {cp.key_id}")


@audit_group.command("export-public-key")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="veil.yaml to take data_dir from.")
@data_dir_option
@click.option("--out", type=click.Path(dir_okay=False), help="Write the PEM here instead of stdout.")
def export_public_key(config: str | None, data_dir: str | None, out: str | None) -> None:
    """Print the PEM public key verifiers use to check checkpoint signatures."""
    pem = public_pem(load_signing_key(data_dir_of(config, data_dir)))
    if out:
        Path(out).write_bytes(pem)
        click.echo(f"public key written to {out}", err=True)
    else:
        click.echo(pem.decode().rstrip())


@audit_group.command("retention")
@db_options
@click.option("--months", type=click.IntRange(min=1), required=True, help="Keep this many months before this one.")
def retention_cmd(config: str | None, database_url: str | None, months: int) -> None:
    """Drop whole months older than --months; a retention.drop event anchors the rest of the chain.

    Runs as the schema owner (the config's migration_database_url when set): the runtime role
    Veil serves as may not drop audit months."""
    from veil.audit.retention import apply_retention

    owner_url = load_config(config).migration_database_url if config and not database_url else None
    engine = db.create_engine(owner_url or _url(config, database_url))
    try:
        with engine.begin() as conn:
            result = apply_retention(conn, months)
    except sa.exc.ProgrammingError as exc:
        if getattr(exc.orig, "sqlstate", None) != "42501":
            raise
        raise click.ClickException(
            f"retention refused by the database: {str(exc.orig).splitlines()[0]}. Run it as the schema owner "
            "(--database-url OWNER_URL, or migration_database_url in the config)."
        ) from None
    finally:
        engine.dispose()
    if not result.dropped:
        click.echo(f"nothing to drop: no month before {result.cutoff}")
        return
    click.echo(
        f"dropped {', '.join(str(m) for m in result.dropped)}: {result.events} events "
        f"(seq {result.from_seq}..{result.to_seq}); retention.drop recorded at seq {result.event_seq}"
    )
