"""Owner and runtime roles; partition maintenance through functions; the audit DDL guard.

Revision ID: 0004_roles
Revises: 0003_identities

Migrations run as the schema *owner*. Veil serves as a *runtime* role that may append audit rows
and use the vault, and nothing else: no UPDATE, DELETE or TRUNCATE on the audit tables, no DDL.
What the runtime role needs beyond plain INSERT goes through functions:

* ``veil_audit_ensure_partition(month)`` creates a month partition (SECURITY DEFINER: runs as the
  function's owner), so the writer can roll over months without DDL rights;
* ``veil_audit_drop_month(month)`` is how retention drops a month: only the oldest partition, only
  one that ended before last month began, and only right after a ``retention.drop`` event naming
  it was appended (that event anchors the rest of the chain). Not granted to the runtime role;
* ``veil_grant_runtime(role)`` (re)grants the runtime privileges (``veil db upgrade
  --runtime-role``); called here for the role named by the Alembic attribute ``veil_runtime_role``.

The event trigger that refuses ALTER (DETACH PARTITION, DISABLE TRIGGER, RENAME, ...), DROP and
CREATE TRIGGER/RULE/POLICY on the audit tables for every role but superusers is installed by
``veil db harden`` (veil/audit/hardening.py), which also hands the maintenance functions to the
superuser. This migration once defined ``veil_audit_harden()`` for that and called it when run as
a superuser; a function of the schema the owner could rewrite before a superuser ran it, so it is
gone: harden sends its own SQL and drops the function where an earlier version left it.
"""

from alembic import context, op

revision = "0004_roles"
down_revision = "0003_identities"
branch_labels = None
depends_on = None


FUNCTIONS = r"""
CREATE FUNCTION veil_audit_ensure_partition(month_start date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    lo   timestamptz := date_trunc('month', month_start::timestamp) AT TIME ZONE 'UTC';
    hi   timestamptz := (date_trunc('month', month_start::timestamp) + interval '1 month') AT TIME ZONE 'UTC';
    name text := 'audit_events_y' || to_char(month_start, 'YYYY') || 'm' || to_char(month_start, 'MM');
    stray bigint;
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    SELECT count(*) INTO stray FROM audit_events_default WHERE ts >= lo AND ts < hi;
    IF stray > 0 THEN
        -- Detaching drops the cloned append-only triggers from DEFAULT for this transaction
        -- only, so its rows can move; ATTACH clones them back.
        ALTER TABLE audit_events DETACH PARTITION audit_events_default;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
    EXECUTE format('CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON %I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION veil_audit_append_only()', name);
    IF stray > 0 THEN
        EXECUTE format('INSERT INTO %I SELECT * FROM audit_events_default WHERE ts >= %L AND ts < %L', name, lo, hi);
        DELETE FROM audit_events_default WHERE ts >= lo AND ts < hi;
        ALTER TABLE audit_events ATTACH PARTITION audit_events_default DEFAULT;
    END IF;
    RETURN true;
END $$;

CREATE FUNCTION veil_audit_drop_month(month_start date) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
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
        WHERE i.inhparent = 'audit_events'::regclass AND c.relname ~ '^audit_events_y[0-9]{4}m[0-9]{2}$'
        ORDER BY c.relname LIMIT 1;
    IF oldest IS DISTINCT FROM name THEN
        RAISE EXCEPTION 'retention may drop only the oldest month partition (%), not %', oldest, name
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT e.kind, e.detail INTO head FROM audit_events e JOIN audit_chain_head h ON e.seq = h.seq;
    IF head.kind IS DISTINCT FROM 'retention.drop'
       OR NOT (head.detail -> 'months') ? (to_char(month_start, 'YYYY') || '-' || to_char(month_start, 'MM')) THEN
        RAISE EXCEPTION 'retention may drop % only right after a retention.drop event naming it', name
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    EXECUTE format('DROP TABLE %I', name);
END $$;
REVOKE ALL ON FUNCTION veil_audit_drop_month(date) FROM PUBLIC;
REVOKE ALL ON FUNCTION veil_audit_ensure_partition(date) FROM PUBLIC;

CREATE FUNCTION veil_grant_runtime(role name) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role) THEN
        BEGIN
            -- No password: it can log in only once a DBA sets one (or with trust/peer auth).
            EXECUTE format('CREATE ROLE %I LOGIN', role);
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created concurrently by another migration of the same cluster
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'runtime role % does not exist and % may not create it: have a DBA run '
                    'CREATE ROLE % LOGIN PASSWORD ..., then run veil db upgrade again', role, current_user, role
                    USING ERRCODE = 'undefined_object';
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), role);
    EXECUTE format('REVOKE ALL ON audit_events, audit_chain_head, audit_checkpoints, vault_entries, api_keys, '
                   'alembic_version FROM %I', role);
    EXECUTE format('GRANT SELECT, INSERT ON audit_events, audit_checkpoints TO %I', role);
    EXECUTE format('GRANT SELECT, UPDATE ON audit_chain_head TO %I', role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON vault_entries, api_keys TO %I', role);
    EXECUTE format('GRANT USAGE ON SEQUENCE audit_checkpoints_id_seq, vault_entries_id_seq, api_keys_id_seq TO %I',
                   role);
    EXECUTE format('GRANT SELECT ON alembic_version TO %I', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION veil_audit_ensure_partition(date) TO %I', role);
END $$;
REVOKE ALL ON FUNCTION veil_grant_runtime(name) FROM PUBLIC;
"""


def upgrade() -> None:
    op.execute(FUNCTIONS)
    runtime = context.config.attributes.get("veil_runtime_role")
    if runtime:
        op.execute(f"SELECT veil_grant_runtime({_literal(runtime)})")
    # The DDL guard is not installed here: `veil db harden` does (veil/audit/hardening.py), and
    # `veil db upgrade` runs it right after the migrations when it connects as a superuser.


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def downgrade() -> None:
    op.execute(
        """
        DROP EVENT TRIGGER IF EXISTS veil_audit_guard_ddl;
        DROP EVENT TRIGGER IF EXISTS veil_audit_guard_drop;
        DROP FUNCTION IF EXISTS veil_audit_ddl_guard();
        DROP FUNCTION IF EXISTS veil_audit_drop_guard();
        DROP FUNCTION IF EXISTS veil_audit_is_guarded(oid);
        DROP FUNCTION IF EXISTS veil_audit_harden();
        DROP FUNCTION IF EXISTS veil_audit_append(bigint, bytea, timestamptz, bigint, bytea, jsonb);
        DROP FUNCTION veil_grant_runtime(name);
        DROP FUNCTION veil_audit_drop_month(date);
        DROP FUNCTION veil_audit_ensure_partition(date);
        """
    )
