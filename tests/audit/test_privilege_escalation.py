"""The schema owner must not become a superuser through what Veil asks a superuser to run.

``veil db harden`` and ``veil db upgrade`` run as a superuser, and the functions they leave behind
run as one (SECURITY DEFINER). Each test is an owner, on the two-role deployment of
docs/deployment.md, trying to get its own code run with the superuser's rights; after each the
owner role must still not be a superuser, and the trail must still be guarded.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from veil import db
from veil.audit import AuditWriter
from veil.errors import DatabaseError

from .conftest import Deployment, cli, tool_event
from .test_integrity import refused


def escalate(dep: Deployment) -> str:
    """PL/pgSQL that makes the owner role a superuser, when a superuser runs it."""
    return f"EXECUTE 'ALTER ROLE \"{dep.owner}\" SUPERUSER'"


def is_superuser(dep: Deployment) -> bool:
    admin = dep.engine(dep.super_url)
    try:
        with admin.connect() as conn:
            return bool(
                conn.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = :r"), {"r": dep.owner}).scalar_one()
            )
    finally:
        admin.dispose()


def as_owner(dep: Deployment, sql: str) -> None:
    owner = dep.engine(dep.owner_url)
    try:
        with owner.begin() as conn:
            conn.execute(sa.text(sql))
    finally:
        owner.dispose()


@pytest.mark.req("audit:no-escalation")
def test_hardening_never_runs_a_function_the_owner_could_rewrite(deploy) -> None:
    """Before the DBA arrives, the owner rewrites what migrations left: the old harden function
    (which ``veil db harden`` used to call as the superuser) and the SECURITY DEFINER partition
    function (which hardening hands to the superuser)."""
    dep = deploy(hardened=False)
    as_owner(
        dep,
        "CREATE OR REPLACE FUNCTION veil_audit_harden() RETURNS void LANGUAGE plpgsql AS "
        f"$$ BEGIN {escalate(dep)}; END $$",
    )
    as_owner(
        dep,
        "CREATE OR REPLACE FUNCTION veil_audit_ensure_partition(month_start date) RETURNS boolean "
        f"LANGUAGE plpgsql SECURITY DEFINER AS $$ BEGIN {escalate(dep)}; RETURN true; END $$",
    )
    cli(["db", "harden", "--database-url", dep.super_url])
    assert not is_superuser(dep)
    as_owner(dep, "SELECT veil_audit_ensure_partition(DATE '2031-01-01')")  # now Veil's body, as the superuser
    assert not is_superuser(dep)
    owner = dep.engine(dep.owner_url)
    with owner.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('audit_events_y2031m01') IS NOT NULL")).scalar_one()
        assert conn.execute(sa.text("SELECT to_regprocedure('veil_audit_harden()')")).scalar_one() is None
    refused(owner, "ALTER TABLE audit_events DETACH PARTITION audit_events_y2031m01")  # still guarded
    owner.dispose()


@pytest.mark.req("audit:no-escalation")
def test_a_planted_overload_is_not_called_by_the_superusers_functions(deploy) -> None:
    """After hardening, the owner creates ``to_char(date, text)`` in its schema: it matches the
    partition functions' calls better than the built-in, which takes a timestamp."""
    dep = deploy(hardened=True)
    as_owner(
        dep,
        "CREATE FUNCTION to_char(date, text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN "
        f"{escalate(dep)}; RETURN pg_catalog.to_char($1::timestamp, $2); END $$",
    )
    as_owner(dep, "SELECT veil_audit_ensure_partition(DATE '2031-02-01')")
    owner = dep.engine(dep.owner_url)
    refused(owner, "SELECT veil_audit_drop_month(DATE '2000-01-01')")  # refused, and through the built-in
    with owner.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('audit_events_y2031m02') IS NOT NULL")).scalar_one()
    owner.dispose()
    assert not is_superuser(dep)


@pytest.mark.req("audit:no-escalation")
def test_a_superuser_upgrade_does_not_grant_through_the_owners_function(deploy) -> None:
    dep = deploy(hardened=False)
    as_owner(
        dep,
        "CREATE OR REPLACE FUNCTION veil_grant_runtime(role name) RETURNS void LANGUAGE plpgsql AS "
        f"$$ BEGIN {escalate(dep)}; END $$",
    )
    with pytest.raises(DatabaseError) as caught:
        db.upgrade(dep.super_url, runtime_role=dep.runtime)
    assert f"belongs to {dep.owner}" in str(caught.value) and "--database-url OWNER_URL" in str(caught.value)
    assert not is_superuser(dep)


@pytest.mark.req("audit:no-escalation")
def test_harden_says_what_it_needs(deploy) -> None:
    dep = deploy(hardened=False)
    as_owner_run = cli(["db", "harden", "--database-url", dep.owner_url], check=False)
    assert as_owner_run.returncode != 0
    assert "needs a superuser" in as_owner_run.stderr and "--database-url" in as_owner_run.stderr, as_owner_run.stderr
    done = cli(["db", "harden", "--database-url", dep.super_url])
    assert "audit DDL guard installed" in done.stdout and "(schema public)" in done.stdout, done.stdout
    again = cli(["db", "harden", "--database-url", dep.super_url])  # idempotent: after every upgrade
    assert again.returncode == 0, again.stderr
    # A second audit_events elsewhere (a restored copy, say): which one to guard is not guessed.
    admin = dep.engine(dep.super_url)
    with admin.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA stray"))
        conn.execute(sa.text("CREATE TABLE stray.audit_events (seq bigint) PARTITION BY RANGE (seq)"))
    admin.dispose()
    two = cli(["db", "harden", "--database-url", dep.super_url], check=False)
    assert two.returncode != 0 and "several schemas (" in two.stderr and "drop the stray copy" in two.stderr, two.stderr


@pytest.mark.req("audit:partition-ddl")
def test_the_owner_cannot_put_a_copy_where_the_runtime_role_looks_first(deploy) -> None:
    """A schema named after the runtime role comes first on its default search_path: audit
    tables there would receive Veil's appends, and the owner could empty them at will."""
    dep = deploy(hardened=True)
    owner = dep.engine(dep.owner_url)
    with owner.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{dep.runtime}"'))
        conn.execute(sa.text(f'CREATE TABLE "{dep.runtime}".scratch (x int)'))
    for sql in (
        f'CREATE TABLE "{dep.runtime}".audit_events (LIKE public.audit_events) PARTITION BY RANGE (ts)',
        f'CREATE TABLE "{dep.runtime}".audit_chain_head (LIKE public.audit_chain_head)',
        f'CREATE VIEW "{dep.runtime}".audit_checkpoints AS SELECT * FROM public.audit_checkpoints',
        f'ALTER TABLE "{dep.runtime}".scratch RENAME TO audit_events',
    ):
        message = refused(owner, sql)
        assert "only Veil's audit tables may have that name" in message, message
    owner.dispose()
    engine = dep.engine(dep.runtime_url)  # Veil, as the runtime role, still appends to the trail
    try:
        with AuditWriter(engine) as writer:
            writer.record_sync(tool_event(1))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM public.audit_events")).scalar_one() == 1
    finally:
        engine.dispose()
