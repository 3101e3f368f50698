"""``veil db harden``: what a superuser installs so the schema owner cannot cut the audit trail.

It is sent from here, as the superuser, and never runs a function of the schema: the schema
owner can replace those before the DBA arrives (``veil_audit_harden()`` as migration 0004 left
it, rewritten to ``ALTER ROLE owner SUPERUSER``, made the owner a superuser the moment a DBA
hardened the database). Every function the guard protects is (re)written here from Veil's own
text, whatever the owner left in its place, and then handed to the superuser:

* ``veil_audit_append_only()``: the row and statement triggers' refusal;
* ``veil_audit_ensure_partition(date)`` and ``veil_audit_drop_month(date)``: SECURITY DEFINER, so
  they run as the superuser. Their ``search_path`` is ``pg_catalog, pg_temp`` and every name of
  the schema in them is qualified: with the schema on the path, a ``to_char(date, text)`` the
  owner created there would match better than the built-in and run as the superuser;
* ``veil_audit_append(...)``: the writer's one-statement append, kept parsed per backend
  (veil/audit/chain.py, ``TRUSTED_APPEND_CALL``: the writer calls it only when it is the
  superuser's and the guard is on);
* ``veil_audit_is_guarded(oid)`` and the two event-trigger functions, and the event triggers that
  refuse ALTER, DROP and CREATE TRIGGER/RULE/POLICY on the audit tables, any other relation by
  their names (in any schema: a copy where a role's search_path looks first would receive its
  appends) and any DDL on a ``veil_audit_*`` function to everyone but superusers.

Re-run after every upgrade of Veil: it is idempotent, and a later version may change what it ships.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from veil.audit.chain import APPEND_IF_HEAD

APPEND_PARAMETERS = ("new_seq", "new_hash", "new_ts", "old_seq", "old_hash", "batch")
APPEND_SIGNATURE = "veil_audit_append(bigint, bytea, timestamptz, bigint, bytea, jsonb)"
TABLE = "audit_events"  # found by its schema, not the superuser's search_path
AUDIT_TABLES = ("audit_events", "audit_chain_head", "audit_checkpoints")


class HardeningError(Exception):
    """The database is not one ``veil db harden`` can guard; the message says why."""


def append_body() -> str:
    """The writer's statement with its parameters named: the body of ``veil_audit_append``."""
    statement = APPEND_IF_HEAD.decode()
    for name in APPEND_PARAMETERS:
        statement = statement.replace("%s", name, 1)
    return statement


def schema_of_audit_tables(conn: psycopg.Connection[Any]) -> str:
    rows = conn.execute(
        "SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relname = %s AND c.relkind = 'p'",
        (TABLE,),
    ).fetchall()
    if not rows:
        raise HardeningError("no audit_events table: run `veil db upgrade` first")
    if len(rows) > 1:
        raise HardeningError(
            f"audit_events exists in several schemas ({', '.join(r[0] for r in rows)}), so which one is Veil's "
            "cannot be told; drop the stray copy, or give each deployment a database of its own"
        )
    return str(rows[0][0])


def install(conn: psycopg.Connection[Any]) -> str:
    """Install the guard in the schema of the audit tables, in ``conn``'s transaction (a
    superuser's). Returns the schema."""
    superuser = conn.execute("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user").fetchone()
    if not superuser or not superuser[0]:
        raise HardeningError("installing the audit DDL guard needs a superuser (event triggers do)")
    schema = schema_of_audit_tables(conn)
    conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")  # nothing of the schema unless named
    tables = {
        t: int(conn.execute("SELECT %s::regclass::oid", (f"{_quoted(schema)}.{t}",)).fetchone()[0])  # type: ignore[index]
        for t in AUDIT_TABLES
    }
    for statement in _statements(schema, tables):
        conn.execute(statement)
    return schema


def _statements(schema: str, tables: dict[str, int]) -> list[sql.Composed]:
    """``tables``: the oids of the audit tables (by oid, not name: a renamed table stays guarded,
    and its rename was refused anyway)."""
    s = sql.Identifier(schema)
    lit = sql.Literal(schema)
    events, head, checkpoints = (tables[t] for t in AUDIT_TABLES)
    guarded = (
        f"SELECT rel IN ({events}, {head}, {checkpoints}) OR EXISTS (SELECT 1 FROM pg_catalog.pg_inherits"
        f" WHERE inhrelid = rel AND inhparent = {events})"
    )
    pinned = sql.SQL("SET search_path = pg_catalog, pg_temp")
    functions = [
        sql.SQL(
            """CREATE OR REPLACE FUNCTION {s}.veil_audit_append_only() RETURNS trigger LANGUAGE plpgsql {pinned} AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$"""
        ),
        sql.SQL(
            """CREATE OR REPLACE FUNCTION {s}.veil_audit_ensure_partition(month_start date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER {pinned} AS $$
DECLARE
    lo    timestamptz := date_trunc('month', month_start::timestamp) AT TIME ZONE 'UTC';
    hi    timestamptz := (date_trunc('month', month_start::timestamp) + interval '1 month') AT TIME ZONE 'UTC';
    name  text := 'audit_events_y' || to_char(month_start, 'YYYY') || 'm' || to_char(month_start, 'MM');
    stray bigint;
BEGIN
    IF to_regclass(format('%I.%I', {lit}, name)) IS NOT NULL THEN
        RETURN false;
    END IF;
    SELECT count(*) INTO stray FROM {s}.audit_events_default WHERE ts >= lo AND ts < hi;
    IF stray > 0 THEN
        -- Detaching drops the cloned append-only triggers from DEFAULT for this transaction
        -- only, so its rows can move; ATTACH clones them back.
        ALTER TABLE {s}.audit_events DETACH PARTITION {s}.audit_events_default;
    END IF;
    EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.audit_events FOR VALUES FROM (%L) TO (%L)',
                   {lit}, name, {lit}, lo, hi);
    EXECUTE format('CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON %I.%I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION %I.veil_audit_append_only()', {lit}, name, {lit});
    IF stray > 0 THEN
        EXECUTE format('INSERT INTO %I.%I SELECT * FROM %I.audit_events_default WHERE ts >= %L AND ts < %L',
                       {lit}, name, {lit}, lo, hi);
        DELETE FROM {s}.audit_events_default WHERE ts >= lo AND ts < hi;
        ALTER TABLE {s}.audit_events ATTACH PARTITION {s}.audit_events_default DEFAULT;
    END IF;
    RETURN true;
END $$"""
        ),
        sql.SQL(
            """CREATE OR REPLACE FUNCTION {s}.veil_audit_drop_month(month_start date) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER {pinned} AS $$
DECLARE
    name   text := 'audit_events_y' || to_char(month_start, 'YYYY') || 'm' || to_char(month_start, 'MM');
    hi     timestamptz := (date_trunc('month', month_start::timestamp) + interval '1 month') AT TIME ZONE 'UTC';
    oldest text;
    head   record;
BEGIN
    IF hi > (date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month') AT TIME ZONE 'UTC' THEN
        RAISE EXCEPTION 'retention may not drop %: only months that ended before last month began', name
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT c.relname INTO oldest FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = {events}::regclass AND c.relname ~ '^audit_events_y[0-9]{{4}}m[0-9]{{2}}$'
        ORDER BY c.relname LIMIT 1;
    IF oldest IS DISTINCT FROM name THEN
        RAISE EXCEPTION 'retention may drop only the oldest month partition (%), not %', oldest, name
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT e.kind, e.detail INTO head FROM {s}.audit_events e JOIN {s}.audit_chain_head h ON e.seq = h.seq;
    IF head.kind IS DISTINCT FROM 'retention.drop'
       OR NOT (head.detail -> 'months') ? (to_char(month_start, 'YYYY') || '-' || to_char(month_start, 'MM')) THEN
        RAISE EXCEPTION 'retention may drop % only right after a retention.drop event naming it', name
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    EXECUTE format('DROP TABLE %I.%I', {lit}, name);
END $$"""
        ),
        # SECURITY INVOKER: the caller's rights, so the runtime role may do through it exactly what
        # it may do with the statement. The schema is on its path (after pg_catalog, whose exact
        # matches win) only to find the tables: it runs as the caller, so nothing escalates.
        sql.SQL(
            """CREATE OR REPLACE FUNCTION {s}.veil_audit_append(
    new_seq bigint, new_hash bytea, new_ts timestamptz, old_seq bigint, old_hash bytea, batch jsonb
) RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, {s}, pg_temp AS $$
DECLARE
    inserted bigint;
BEGIN
    {body};
    GET DIAGNOSTICS inserted = ROW_COUNT;
    RETURN inserted;
END $$"""
        ),
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {s}.veil_audit_is_guarded(rel oid) RETURNS boolean"
            " LANGUAGE sql STABLE {pinned} AS {guarded}"
        ),
        sql.SQL(
            """CREATE OR REPLACE FUNCTION {s}.veil_audit_ddl_guard() RETURNS event_trigger
LANGUAGE plpgsql {pinned} AS $$
DECLARE
    cmd record;
    rel oid;
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RETURN;  -- superusers can bypass any in-database guard anyway (pgaudit records them)
    END IF;
    FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        rel := CASE cmd.classid
            WHEN 'pg_class'::regclass THEN cmd.objid
            WHEN 'pg_trigger'::regclass THEN (SELECT tgrelid FROM pg_trigger WHERE oid = cmd.objid)
            WHEN 'pg_rewrite'::regclass THEN (SELECT ev_class FROM pg_rewrite WHERE oid = cmd.objid)
            WHEN 'pg_policy'::regclass THEN (SELECT polrelid FROM pg_policy WHERE oid = cmd.objid)
            ELSE NULL END;
        IF (rel IS NOT NULL AND {s}.veil_audit_is_guarded(rel))
           OR (cmd.classid = 'pg_proc'::regclass AND cmd.object_identity ~ '(^|\\.)veil_audit_') THEN
            RAISE EXCEPTION '% on % refused: the audit trail is append-only (event trigger veil_audit_guard)',
                cmd.command_tag, cmd.object_identity USING ERRCODE = 'insufficient_privilege';
        END IF;
        -- Another relation by one of their names, in any schema, would take their place for a
        -- role whose search_path finds it first (a schema named after Veil's runtime role).
        IF cmd.classid = 'pg_class'::regclass AND (SELECT relname FROM pg_class WHERE oid = cmd.objid)
           IN ('audit_events', 'audit_chain_head', 'audit_checkpoints') THEN
            RAISE EXCEPTION '% on % refused: only Veil''s audit tables may have that name (event trigger '
                'veil_audit_guard)', cmd.command_tag, cmd.object_identity USING ERRCODE = 'insufficient_privilege';
        END IF;
    END LOOP;
END $$"""
        ),
        sql.SQL(
            """CREATE OR REPLACE FUNCTION {s}.veil_audit_drop_guard() RETURNS event_trigger
LANGUAGE plpgsql {pinned} AS $$
DECLARE
    obj record;
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RETURN;
    END IF;
    FOR obj IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
        IF obj.object_identity ~ '(^|\\.| on )(audit_events|audit_chain_head|audit_checkpoints)($|_| )'
           OR obj.object_identity ~ '(^|\\.)veil_audit_' THEN
            RAISE EXCEPTION 'DROP % % refused: the audit trail is append-only (event trigger veil_audit_guard)',
                obj.object_type, obj.object_identity USING ERRCODE = 'insufficient_privilege';
        END IF;
    END LOOP;
END $$"""
        ),
    ]
    values = {
        "s": s,
        "lit": lit,
        "pinned": pinned,
        "events": sql.Literal(f"{_quoted(schema)}.audit_events"),
        "guarded": sql.Literal(guarded),
        "body": sql.SQL(append_body()),  # type: ignore[arg-type]  # chain.py's own statement text
    }
    statements: list[sql.Composed] = [
        sql.SQL("DROP EVENT TRIGGER IF EXISTS veil_audit_guard_ddl").format(),
        sql.SQL("DROP EVENT TRIGGER IF EXISTS veil_audit_guard_drop").format(),
        # Left by migration 0004 and writable by the owner: nobody should ever run it as a superuser.
        sql.SQL("DROP FUNCTION IF EXISTS {s}.veil_audit_harden()").format(s=s),
    ]
    statements += [f.format(**values) for f in functions]
    owned = (
        "veil_audit_append_only()",
        "veil_audit_ensure_partition(date)",
        "veil_audit_drop_month(date)",
        APPEND_SIGNATURE,
        "veil_audit_is_guarded(oid)",
        "veil_audit_ddl_guard()",
        "veil_audit_drop_guard()",
    )
    for fn in owned:
        statements.append(sql.SQL("ALTER FUNCTION {s}." + fn + " OWNER TO CURRENT_USER").format(s=s))
    statements += [
        # Whoever the owner granted them to before: only the owner of the audit tables may apply
        # retention; the runtime role keeps creating partitions (veil_grant_runtime granted it).
        sql.SQL(
            "REVOKE ALL ON FUNCTION {s}.veil_audit_drop_month(date), {s}.veil_audit_ensure_partition(date) FROM PUBLIC"
        ).format(s=s),
        sql.SQL(
            "DO $$ DECLARE g record; BEGIN FOR g IN SELECT DISTINCT a.grantee::regrole::text AS who"
            " FROM pg_proc p, aclexplode(p.proacl) a WHERE p.oid = {fn}::regprocedure AND a.grantee <> 0"
            " AND a.grantee <> p.proowner LOOP"
            " EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %s', {fn}::regprocedure, g.who); END LOOP;"
            " EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', {fn}::regprocedure,"
            " (SELECT relowner::regrole::text FROM pg_class WHERE oid = {events}::regclass)); END $$"
        ).format(fn=sql.Literal(f"{_quoted(schema)}.veil_audit_drop_month(date)"), events=values["events"]),
        sql.SQL(
            "DO $$ BEGIN EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', {fn}::regprocedure,"
            " (SELECT relowner::regrole::text FROM pg_class WHERE oid = {events}::regclass)); END $$"
        ).format(fn=sql.Literal(f"{_quoted(schema)}.veil_audit_ensure_partition(date)"), events=values["events"]),
        sql.SQL(
            "CREATE EVENT TRIGGER veil_audit_guard_ddl ON ddl_command_end EXECUTE FUNCTION {s}.veil_audit_ddl_guard()"
        ).format(s=s),
        sql.SQL(
            "CREATE EVENT TRIGGER veil_audit_guard_drop ON sql_drop EXECUTE FUNCTION {s}.veil_audit_drop_guard()"
        ).format(s=s),
    ]
    return statements


def _quoted(schema: str) -> str:
    """The schema as a quoted identifier, for names given as text (``'"veil".audit_events'``)."""
    return '"' + schema.replace('"', '""') + '"'
