"""Audit trail: append-only, hash-chained, partitioned by month.

Revision ID: 0002_audit
Revises: 0001_vault
"""

from alembic import op

revision = "0002_audit"
down_revision = "0001_vault"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE audit_events (
            seq            bigint      NOT NULL,
            ts             timestamptz NOT NULL,
            id             uuid        NOT NULL,
            kind           text        NOT NULL,
            principal      text,
            roles          text[]      NOT NULL DEFAULT '{}',
            tenant         text,
            session_id     text,
            scope          text,
            upstream       text,
            tool           text,
            args_digest    text,
            entities       jsonb       NOT NULL DEFAULT '{}',
            tokens         text[]      NOT NULL DEFAULT '{}',
            untokenised    jsonb       NOT NULL DEFAULT '[]',
            decision       text,
            rule           text,
            outcome        text        NOT NULL,
            duration_ms    double precision,
            policy_version text,
            detail         jsonb       NOT NULL DEFAULT '{}',
            prev_hash      bytea       NOT NULL,
            hash           bytea       NOT NULL,
            PRIMARY KEY (seq, ts)
        ) PARTITION BY RANGE (ts);
        CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;

        CREATE TABLE audit_chain_head (
            id    boolean PRIMARY KEY DEFAULT true CHECK (id),
            seq   bigint NOT NULL,
            hash  bytea  NOT NULL
        );

        CREATE FUNCTION veil_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$;
        CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
            FOR EACH ROW EXECUTE FUNCTION veil_audit_append_only();
        CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
            FOR EACH STATEMENT EXECUTE FUNCTION veil_audit_append_only();
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE audit_events; DROP TABLE audit_chain_head; DROP FUNCTION veil_audit_append_only()")
