"""Audit integrity against the database owner, attacked for real.

Each test builds the deployment docs/deployment.md describes: a database owned by a non-superuser
*owner* role that runs the migrations, and a *runtime* role Veil serves as. Then it attacks:

* as the runtime role: UPDATE, DELETE, TRUNCATE, DDL on the audit tables -> refused by privileges;
* as the owner, without the event trigger: cut the tail (including the row holding a signed
  checkpoint) and move the head back, detach or drop a partition -> ``veil audit verify`` fails;
* as the owner, with the event trigger a superuser installed (``veil db harden``): the same DDL
  is refused, while retention (through ``veil_audit_drop_month``) still works.
"""

from __future__ import annotations

import subprocess

import pytest
import sqlalchemy as sa

from veil.audit import AuditWriter
from veil.audit.chain import append_events
from veil.audit.checkpoints import checkpoint_file, load_signing_key, make_checkpoint, read_file
from veil.audit.partitions import Month, existing
from veil.audit.retention import apply_retention
from veil.audit.verify import verify

from .conftest import Deployment, cli, tool_event


def audit_verify(dep: Deployment, *extra: str) -> subprocess.CompletedProcess:
    return cli(
        ["audit", "verify", "--database-url", dep.owner_url, "--data-dir", str(dep.data_dir), *extra], check=False
    )


def refused(engine: sa.Engine, sql: str) -> str:
    """Run ``sql`` and return PostgreSQL's refusal (SQLSTATE 42501 insufficient_privilege)."""
    with pytest.raises(sa.exc.ProgrammingError) as caught, engine.begin() as conn:
        conn.execute(sa.text(sql))
    assert getattr(caught.value.orig, "sqlstate", None) == "42501", caught.value
    return str(caught.value.orig)


def write_trail(dep: Deployment, n_before: int, n_after: int) -> int:
    """As the runtime role (the way Veil writes): events, a signed checkpoint (database and file),
    more events. Returns the checkpoint's seq."""
    engine = dep.engine(dep.runtime_url)
    key = load_signing_key(dep.data_dir)
    try:
        with AuditWriter(engine) as writer:
            for i in range(n_before):
                writer.record_sync(tool_event(i))
        with engine.begin() as conn:
            cp = make_checkpoint(conn, key, checkpoint_file(dep.data_dir))
        with AuditWriter(engine) as writer:
            for i in range(n_after):
                writer.record_sync(tool_event(100 + i))
    finally:
        engine.dispose()
    return cp.seq


def current_partition(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        now = conn.execute(sa.text("SELECT now()")).scalar_one()
    return Month.of(now).table


@pytest.mark.req("audit:runtime-role")
def test_runtime_role_appends_and_uses_the_vault_but_cannot_change_the_trail(deploy) -> None:
    dep = deploy(hardened=False)
    write_trail(dep, 5, 3)  # INSERTs, partition creation and a checkpoint all work as the runtime role
    runtime = dep.engine(dep.runtime_url)
    with runtime.begin() as conn:  # the vault: insert and update (erasure), no delete
        conn.execute(
            sa.text(
                "INSERT INTO vault_entries (scope, entity_type, n, token, value_hmac, key_id, wrapped_key, nonce, "
                "ciphertext) VALUES ('s', 'EMAIL_ADDRESS', 1, '[EMAIL_ADDRESS_1]', '\\x01', 'k', '\\x01', '\\x01', "
                "'\\x01')"
            )
        )
    part = current_partition(runtime)
    for sql in (
        "UPDATE audit_events SET outcome = 'ok'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        f"TRUNCATE {part}",
        f"DELETE FROM {part}",
        "DELETE FROM audit_checkpoints",
        "UPDATE audit_checkpoints SET seq = 1",
        "DELETE FROM vault_entries",
        "ALTER TABLE audit_events DISABLE TRIGGER ALL",
        f"ALTER TABLE audit_events DETACH PARTITION {part}",
        f"DROP TABLE {part}",
        "CREATE TABLE audit_events_evil (x int)",
        "SELECT veil_audit_drop_month(DATE '2000-01-01')",
        "SELECT veil_grant_runtime('postgres')",
    ):
        refused(runtime, sql)
    runtime.dispose()
    assert audit_verify(dep).returncode == 0


@pytest.mark.req("audit:cut-tail")
def test_owner_cutting_the_tail_and_moving_the_head_back_fails_verification(deploy) -> None:
    dep = deploy(hardened=False)
    cp_seq = write_trail(dep, 6, 4)  # checkpoint at seq 6, its audit.checkpoint event at 7, then 8..11
    assert audit_verify(dep).returncode == 0
    owner = dep.engine(dep.owner_url)
    part = current_partition(owner)
    keep = cp_seq - 2
    with owner.begin() as conn:  # the owner may switch off its own tables' triggers
        conn.execute(sa.text(f"ALTER TABLE {part} DISABLE TRIGGER ALL"))
        conn.execute(sa.text("ALTER TABLE audit_checkpoints DISABLE TRIGGER ALL"))
        conn.execute(sa.text("DELETE FROM audit_events WHERE seq > :k"), {"k": keep})
        conn.execute(
            sa.text("UPDATE audit_chain_head SET seq = :k, hash = (SELECT hash FROM audit_events WHERE seq = :k)"),
            {"k": keep},
        )
    # Forgot the checkpoint row: verify sees a checkpoint beyond the end of the chain.
    run = audit_verify(dep, "--checkpoint-file", str(dep.data_dir / "none.jsonl"))
    assert run.returncode == 1 and "cut from the end" in run.stderr, run.stdout + run.stderr

    with owner.begin() as conn:  # thorough: the checkpoint rows go too
        conn.execute(sa.text("DELETE FROM audit_checkpoints"))
    owner.dispose()
    inside_only = audit_verify(dep, "--checkpoint-file", str(dep.data_dir / "none.jsonl"))
    assert inside_only.returncode == 0  # the database alone cannot tell: this is what the file is for
    run = audit_verify(dep)  # the default checkpoint file in the data directory
    assert run.returncode == 1, run.stdout
    assert f"signed checkpoint at seq {cp_seq}" in run.stderr and "cut from the end" in run.stderr
    assert [cp.seq for cp in read_file(checkpoint_file(dep.data_dir))] == [cp_seq]


@pytest.mark.req("audit:partition-ddl")
def test_owner_detaching_or_dropping_a_partition_fails_verification(deploy) -> None:
    dep = deploy(hardened=False)
    write_trail(dep, 4, 2)
    owner = dep.engine(dep.owner_url)
    part = current_partition(owner)
    with owner.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE audit_events DETACH PARTITION {part}"))
    run = audit_verify(dep)
    assert run.returncode == 1 and f"partition {part} is detached" in run.stderr, run.stdout + run.stderr

    with owner.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {part}"))
    owner.dispose()
    run = audit_verify(dep, "--checkpoint-file", str(dep.data_dir / "none.jsonl"))
    assert run.returncode == 1 and "holds no events, but the chain reached seq" in run.stderr, run.stderr


@pytest.mark.req("audit:partition-ddl")
def test_event_trigger_refuses_the_owner_ddl_on_audit_tables(deploy) -> None:
    dep = deploy(hardened=True)
    owner = dep.engine(dep.owner_url)
    with owner.connect() as conn:
        now = Month.of(conn.execute(sa.text("SELECT now()")).scalar_one())
    with owner.begin() as conn:  # history from a year ago (seq only grows with ts: written first)
        append_events(conn, [tool_event(500)], clock=now.minus(14).start.replace(day=2))
    write_trail(dep, 4, 2)
    part = current_partition(owner)
    detach = refused(owner, f"ALTER TABLE audit_events DETACH PARTITION {part}")
    assert "ALTER TABLE on public.audit_events refused: the audit trail is append-only" in detach, detach
    for sql in (
        f"ALTER TABLE {part} DISABLE TRIGGER ALL",
        "ALTER TABLE audit_checkpoints DISABLE TRIGGER ALL",
        "ALTER TABLE audit_events RENAME TO audit_events_old",
        f"DROP TABLE {part}",
        "DROP TABLE audit_checkpoints",
        "DROP TRIGGER audit_events_append_only ON audit_events",
        "CREATE RULE hide AS ON INSERT TO audit_events DO INSTEAD NOTHING",
        "CREATE TABLE audit_events_y2099m01 PARTITION OF audit_events FOR VALUES FROM ('2099-01-01') TO ('2099-02-01')",
    ):
        message = refused(owner, sql)
        # The event trigger refuses; partitions made after hardening also belong to the superuser.
        assert "refused: the audit trail is append-only" in message or "must be owner" in message, message
    # What guards the trail belongs to the superuser now: the owner cannot swap it out.
    refused(
        owner,
        "CREATE OR REPLACE FUNCTION veil_audit_append_only() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN RETURN OLD; END $$",
    )
    refused(owner, "SELECT veil_audit_drop_month(DATE '2000-01-01')")  # not the oldest month / no retention event
    owner.dispose()
    assert audit_verify(dep).returncode == 0

    # Retention is not the runtime role's to apply; it is the one sanctioned way for the owner.
    as_runtime = cli(["audit", "retention", "--months", "3", "--database-url", dep.runtime_url], check=False)
    assert as_runtime.returncode == 1 and "Run it as the schema owner" in as_runtime.stderr, as_runtime.stderr
    owner = dep.engine(dep.owner_url)
    with owner.begin() as conn:
        result = apply_retention(conn, 3)
    assert now.minus(14) in result.dropped
    with owner.connect() as conn:
        assert now.minus(14) not in existing(conn)
        assert verify(conn).problem is None
    owner.dispose()


@pytest.mark.req("audit:partition-ddl")
def test_a_dedicated_schema_owned_by_the_owner_role_is_guarded_the_same(deploy) -> None:
    """docs/deployment.md: the DBA owns the database (so the owner role cannot drop it), the owner
    role owns schema ``veil``; migrations, the runtime role, the guard and verify work there."""
    dep = deploy(hardened=True, schema="veil")
    cp_seq = write_trail(dep, 3, 2)
    owner = dep.engine(dep.owner_url)
    with owner.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('veil.audit_events') IS NOT NULL")).scalar_one()
        assert conn.execute(sa.text("SELECT to_regclass('public.audit_events')")).scalar_one() is None
    part = current_partition(owner)
    detach = refused(owner, f"ALTER TABLE audit_events DETACH PARTITION {part}")
    assert "ALTER TABLE on veil.audit_events refused" in detach, detach
    message = refused(owner, "DROP TABLE audit_checkpoints")
    assert "refused: the audit trail is append-only" in message, message
    owner.dispose()
    run = audit_verify(dep)
    assert run.returncode == 0 and f"at seq {cp_seq}" in run.stdout, run.stdout + run.stderr


@pytest.mark.req("audit:cut-tail")
def test_a_doctored_copy_on_the_verifiers_search_path_fails_verification(deploy) -> None:
    """The owner puts a copy of the audit tables in a schema named after the role that verifies
    ("$user" comes first on the default search_path): the chain up to its last checkpoint, without
    what came after. Verify must not check the copy. (Hardened, the guard refuses the copy:
    tests/audit/test_privilege_escalation.py.)"""
    dep = deploy(hardened=False)
    cp_seq = write_trail(dep, 4, 3)
    verifier = dep.runtime  # any role with SELECT on the trail
    owner = dep.engine(dep.owner_url)
    with owner.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{verifier}"'))
        # A partitioned copy with a DEFAULT partition, so the partition checks find it in order.
        conn.execute(
            sa.text(f'CREATE TABLE "{verifier}".audit_events (LIKE public.audit_events) PARTITION BY RANGE (ts)')
        )
        conn.execute(
            sa.text(f'CREATE TABLE "{verifier}".audit_events_default PARTITION OF "{verifier}".audit_events DEFAULT')
        )
        conn.execute(
            sa.text(f'INSERT INTO "{verifier}".audit_events SELECT * FROM public.audit_events WHERE seq <= {cp_seq}')
        )
        conn.execute(
            sa.text(
                f'CREATE TABLE "{verifier}".audit_chain_head AS SELECT true AS id, seq, hash, ts '
                f"FROM public.audit_events WHERE seq = {cp_seq}"
            )
        )
        conn.execute(sa.text(f'GRANT USAGE ON SCHEMA "{verifier}" TO "{verifier}"'))
        conn.execute(sa.text(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{verifier}" TO "{verifier}"'))
    owner.dispose()
    run = cli(
        ["audit", "verify", "--database-url", dep.runtime_url, "--data-dir", str(dep.data_dir)],
        check=False,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "audit_events exists in several schemas" in run.stdout + run.stderr, run.stdout + run.stderr
