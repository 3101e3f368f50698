"""``veil_audit_append`` (installed by ``veil db harden``): the writer's one-statement append kept
parsed by the server, called only where the schema owner cannot swap it for one that appends
nothing.

Attacked for real, on the two-role deployment of docs/deployment.md: the owner plants, replaces
or shadows the function, a guard trigger is turned off. In every case the events the writer
reports as appended are in the table and the chain verifies.
"""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from veil import db
from veil.audit import AuditWriter
from veil.audit.chain import APPEND_IF_HEAD
from veil.audit.verify import verify

from .conftest import Deployment, cli, tool_event
from .test_integrity import refused

SIGNATURE = "veil_audit_append(bigint, bytea, timestamptz, bigint, bytea, jsonb)"
# What a schema owner would put in its place: "appended", and nothing written.
SWALLOW = (
    "CREATE OR REPLACE FUNCTION {schema}veil_audit_append(bigint, bytea, timestamptz, bigint, bytea, jsonb)"
    " RETURNS bigint LANGUAGE sql AS 'SELECT jsonb_array_length($6)::bigint'"
)


def write(dep: Deployment, n: int) -> tuple[bytes | None, bytes | None, int]:
    """As the runtime role, ``n`` events on each lane (the event loop's and the thread's).
    Returns the call each lane used (None: the statement) and the rows now in the table."""
    engine = dep.engine(dep.runtime_url)

    async def on_the_loop() -> bytes | None:
        async with AuditWriter(engine) as writer:
            for i in range(n):
                await writer.record(tool_event(i))
            assert writer.fast_appends >= n - 1  # all but the first go through the one-statement path
            return writer._acall

    try:
        async_call = asyncio.run(on_the_loop())
        with AuditWriter(engine) as writer:
            for i in range(n):
                writer.record_sync(tool_event(100 + i))
            assert writer.fast_appends >= n - 1
            sync_call = writer._call
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT count(*) FROM audit_events")).scalar_one()
    finally:
        engine.dispose()
    return async_call, sync_call, rows


def chain_ok(dep: Deployment) -> None:
    engine = dep.engine(dep.owner_url)
    try:
        with engine.connect() as conn:
            report = verify(conn)
    finally:
        engine.dispose()
    assert report.ok, report


@pytest.mark.req("audit:append-function")
def test_the_function_runs_the_statement_the_writer_would_send(make_database) -> None:
    url = make_database()
    engine = db.create_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            body = conn.execute(
                sa.text("SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure(:sig)"), {"sig": SIGNATURE}
            ).scalar_one()
    finally:
        engine.dispose()
    statement = APPEND_IF_HEAD.decode()
    for name in ("new_seq", "new_hash", "new_ts", "old_seq", "old_hash", "batch"):
        statement = statement.replace("%s", name, 1)
    assert statement + ";" in body  # the function runs exactly what the writer would send


@pytest.mark.req("audit:append-function")
def test_hardened_the_writer_calls_the_superusers_function_and_the_owner_cannot_replace_it(deploy) -> None:
    dep = deploy(hardened=True)
    owner = dep.engine(dep.owner_url)
    with owner.connect() as conn:
        assert conn.execute(
            sa.text(
                "SELECT r.rolsuper FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner"
                " WHERE p.oid = to_regprocedure(:s)"
            ),
            {"s": SIGNATURE},
        ).scalar_one(), "veil db harden hands the function the owner migrated to the superuser"
    async_call, sync_call, rows = write(dep, 5)
    assert async_call == sync_call == b"SELECT public.veil_audit_append(%s, %s, %s, %s, %s, %s::jsonb)"
    assert rows == 10
    # The owner's ways to make it answer "appended" without appending, all refused:
    refused(owner, SWALLOW.format(schema=""))  # replace it
    refused(owner, f"ALTER FUNCTION {SIGNATURE} RENAME TO veil_audit_append_old")
    refused(owner, f"DROP FUNCTION {SIGNATURE}")
    with owner.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA shadow"))
    refused(owner, SWALLOW.format(schema="shadow."))  # shadow it earlier on the search_path
    refused(owner, "ALTER EVENT TRIGGER veil_audit_guard_ddl DISABLE")  # turn the guard off
    owner.dispose()
    chain_ok(dep)


@pytest.mark.req("audit:append-function")
def test_where_the_owner_could_replace_it_the_writer_never_calls_it(deploy) -> None:
    """Not hardened, the owner plants a function of that name that swallows events. The writer
    sends the statement; every event it reported is in the table. Hardening replaces the planted
    body with Veil's; a guard trigger turned off sends the writer back to the statement."""
    dep = deploy(hardened=False)
    owner = dep.engine(dep.owner_url)
    with owner.begin() as conn:
        conn.execute(sa.text(SWALLOW.format(schema="")))
    async_call, sync_call, rows = write(dep, 5)
    assert (async_call, sync_call, rows) == (None, None, 10)
    chain_ok(dep)

    cli(["db", "harden", "--database-url", dep.super_url])
    async_call, sync_call, rows = write(dep, 3)
    assert async_call is not None and sync_call is not None
    assert rows == 16  # the planted body is gone: what the writer appended through it is there
    chain_ok(dep)

    admin = dep.engine(dep.super_url)
    with admin.begin() as conn:
        conn.execute(sa.text("ALTER EVENT TRIGGER veil_audit_guard_drop DISABLE"))
    admin.dispose()
    async_call, sync_call, rows = write(dep, 3)
    assert (async_call, sync_call, rows) == (None, None, 22)
    owner.dispose()
    chain_ok(dep)
