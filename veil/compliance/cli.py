"""``veil report`` (compliance reports) and ``veil subject`` (data-subject requests)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from veil import db
from veil.audit.checkpoints import load_public_key
from veil.audit.cli import _local_public_key, data_dir_of, data_dir_option, db_options, parse_when
from veil.config import DEFAULT_POLICY, load_config
from veil.dbcli import _url
from veil.errors import VeilError

FORMATS = ("html", "pdf", "csv", "json")


def _format(fmt: str | None, out: Path, kind: str) -> str:
    if fmt is None:
        suffix = out.suffix.lower().lstrip(".")
        if suffix not in FORMATS:
            raise click.BadParameter(f"cannot tell the format from {out.name!r}; pass --format html|pdf|csv|json")
        fmt = suffix
    if kind == "access-log" and fmt not in ("csv", "json"):
        raise click.BadParameter("--kind access-log is written as csv or json (it can hold millions of rows)")
    return fmt


def _policy(config: str | None, policy: str | None):  # type: ignore[no-untyped-def]
    from veil.policies import load_policy

    if policy:
        return load_policy(policy)
    if config:
        return load_policy(load_config(config).policy)
    return load_policy(DEFAULT_POLICY)


@click.command("report")
@db_options
@data_dir_option
@click.option("--from", "start", required=True, help="First day of the period (YYYY-MM-DD, UTC).")
@click.option("--to", "end", required=True, help="Last day of the period, inclusive.")
@click.option("--principal", help="Only events of this principal.")
@click.option("--upstream", help="Only events about this upstream.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Output format (default: from --out's suffix).")
@click.option(
    "--kind",
    type=click.Choice(["full", "ropa", "access-log"]),
    default="full",
    show_default=True,
    help="full report, GDPR Art. 30 records of processing, or the access log for reviews.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File to write.")
@click.option("--policy", type=click.Path(dir_okay=False, exists=True), help="Policy for --kind ropa metadata.")
@click.option("--public-key", type=click.Path(dir_okay=False, exists=True), help="Trusted checkpoint key (PEM).")
@click.option("--no-verify", is_flag=True, help="Skip recomputing the hash chain for the integrity section.")
@click.option(
    "--raw-pii-threshold",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Flag sessions whose agent sent at least this many raw PII values (possible probing).",
)
def report(
    config: str | None,
    database_url: str | None,
    data_dir: str | None,
    start: str,
    end: str,
    principal: str | None,
    upstream: str | None,
    fmt: str | None,
    kind: str,
    out: Path,
    policy: str | None,
    public_key: str | None,
    no_verify: bool,
    raw_pii_threshold: int,
) -> None:
    """Produce a compliance report for a period (progress on stderr, one line per section)."""
    from veil.compliance import render
    from veil.compliance.queries import Period, build_report

    fmt = _format(fmt, out, kind)
    period = Period(parse_when(start), parse_when(end, end=True), principal, upstream)  # type: ignore[arg-type]
    if period.end <= period.start:
        raise click.BadParameter("--to must not be before --from")
    began = time.perf_counter()

    def progress(line: str) -> None:
        click.echo(f"report: {line}", err=True)

    engine = db.create_engine(_url(config, database_url))
    try:
        with engine.connect() as conn:
            if kind == "access-log":
                _access_log(conn, period, fmt, out, progress)
                return
            if kind == "ropa":
                from veil.compliance.ropa import build_ropa, ropa_csv, ropa_html

                data = build_ropa(conn, period, _policy(config, policy))
                progress("records of processing (Art. 30)")
                text = {"json": lambda: json.dumps(data, indent=2) + "\n", "csv": lambda: ropa_csv(data)}
                if fmt in text:
                    out.write_text(text[fmt](), encoding="utf-8")
                else:
                    _write_html(ropa_html(data), fmt, out, progress)
            else:
                key = load_public_key(Path(public_key)) if public_key else _local_public_key(config, data_dir)
                data = build_report(
                    conn,
                    period,
                    public_key=key,
                    verify_chain=not no_verify,
                    progress=progress,
                    raw_pii_threshold=raw_pii_threshold,
                )
                if fmt == "json":
                    out.write_text(render.json_report(data), encoding="utf-8")
                elif fmt == "csv":
                    out.write_text(render.csv_report(data), encoding="utf-8")
                else:
                    _write_html(render.html_report(data), fmt, out, progress)
    finally:
        engine.dispose()
    progress(f"wrote {out} ({fmt}) in {time.perf_counter() - began:.1f}s")


def _write_html(html: str, fmt: str, out: Path, progress) -> None:  # type: ignore[no-untyped-def]
    from veil.compliance.render import pdf_report

    if fmt == "html":
        out.write_text(html, encoding="utf-8")
    elif fmt == "pdf":
        t = time.perf_counter()
        out.write_bytes(pdf_report(html))
        progress(f"pdf rendered ({time.perf_counter() - t:.2f}s)")
    else:
        raise VeilError(f"--format {fmt} is not available for this kind of report")


def _access_log(conn, period, fmt: str, out: Path, progress) -> None:  # type: ignore[no-untyped-def]
    from veil.compliance.ropa import ACCESS_LOG_COLUMNS, access_log, write_access_log_csv

    with out.open("w", encoding="utf-8", newline="") as fh:
        if fmt == "csv":
            n = write_access_log_csv(conn, period, fh)
        else:
            n = 0
            for row in access_log(conn, period):  # JSON Lines: one object per access
                fh.write(json.dumps(dict(zip(ACCESS_LOG_COLUMNS, row, strict=True))) + "\n")
                n += 1
    progress(f"access log: {n} rows")


@click.group("subject")
def subject_group() -> None:
    """Find or erase a data subject's values (GDPR Art. 15 and 17 requests)."""


def _value_options(f):  # type: ignore[no-untyped-def]
    f = click.option("--value", help="Any other value (name, card number, ...).")(f)
    f = click.option("--phone", help="The person's phone number.")(f)
    return click.option("--email", help="The person's e-mail address.")(f)


def _one_value(email: str | None, phone: str | None, value: str | None) -> str:
    given = [v for v in (email, phone, value) if v]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --email, --phone or --value")
    return given[0]


@subject_group.command("find")
@db_options
@data_dir_option
@_value_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def subject_find(
    config: str | None,
    database_url: str | None,
    data_dir: str | None,
    email: str | None,
    phone: str | None,
    value: str | None,
    as_json: bool,
) -> None:
    """List the vault entries for a value and every audit event that tokenised or untokenised it."""
    from veil.compliance.subjects import find_subject, format_findings

    target = _one_value(email, phone, value)
    with _subject_context(config, database_url, data_dir) as (engine, vault):
        findings = find_subject(engine, vault, target, officer=_officer())
    click.echo(json.dumps(findings.to_json(), indent=2) if as_json else format_findings(findings, target))


@subject_group.command("erase")
@db_options
@data_dir_option
@_value_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def subject_erase(
    config: str | None,
    database_url: str | None,
    data_dir: str | None,
    email: str | None,
    phone: str | None,
    value: str | None,
    yes: bool,
) -> None:
    """Crypto-shred a value's vault entries; the audit trail stays intact and records the erasure."""
    from veil.compliance.subjects import erase_subject

    target = _one_value(email, phone, value)
    if not yes:
        click.confirm("Erase every vault entry for this value? This cannot be undone", abort=True)
    with _subject_context(config, database_url, data_dir) as (engine, vault):
        result = erase_subject(engine, vault, target, officer=_officer())
    if not result.erased:
        click.echo("no live vault entry holds this value (nothing erased)")
    for e in result.erased:
        click.echo(f"erased {e.token} in {e.scope} ({e.entity_type})")
    if result.event_seq is not None:
        click.echo(f"subject.erase recorded at audit seq {result.event_seq}")


def _officer() -> str:
    import getpass

    return getpass.getuser()


class _subject_context:
    """Engine and vault for subject commands: the keyring comes from the data dir (or VEIL_MASTER_KEY)."""

    def __init__(self, config: str | None, database_url: str | None, data_dir: str | None) -> None:
        self.config, self.database_url, self.data_dir = config, database_url, data_dir

    def __enter__(self):  # type: ignore[no-untyped-def]
        import os

        from veil.errors import ConfigError
        from veil.tokenizer.keyring import Keyring
        from veil.tokenizer.vault import Vault

        cfg = load_config(self.config) if self.config else None
        directory = data_dir_of(self.config, self.data_dir)
        key_file = cfg.key_file if cfg else None
        if not os.environ.get("VEIL_MASTER_KEY") and not Path(key_file or directory / "master.key").exists():
            # Loading would create a fresh key, whose HMACs match nothing: say so instead.
            raise ConfigError(
                f"no master key in {directory} (and VEIL_MASTER_KEY is not set): pass the gateway's --config "
                "or --data-dir so the vault can be searched"
            )
        keyring = Keyring.load(directory, key_file)
        self.engine = db.create_engine(_url(self.config, self.database_url))
        return self.engine, Vault(self.engine, keyring)

    def __exit__(self, *exc: object) -> None:
        self.engine.dispose()
