"""Audit trail: append-only, hash-chained, partitioned by month, with signed checkpoints.

Revision ID: 0002_audit
Revises: 0001_vault

``audit_events`` is range-partitioned on ``ts`` (the time the row was appended, monotonic with
``seq``), one partition per calendar month (UTC) created on demand by the writer; the DEFAULT
partition only catches rows written while a month's partition was missing and is emptied into
the right partition when that partition is created. Row triggers on the parent are cloned to
every partition by PostgreSQL; the TRUNCATE trigger is not, so ``veil.audit.partitions`` adds
it to each partition it creates (and it is added to the DEFAULT partition here).
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
            occurred_at    timestamptz NOT NULL,
            id             uuid        NOT NULL,
            kind           text        NOT NULL,
            outcome        text        NOT NULL,
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
            duration_ms    double precision,
            policy_version text,
            detail         jsonb       NOT NULL DEFAULT '{}',
            prev_hash      bytea       NOT NULL,
            hash           bytea       NOT NULL,
            PRIMARY KEY (seq, ts)
        ) PARTITION BY RANGE (ts);
        CREATE INDEX audit_events_ts ON audit_events (ts);
        CREATE INDEX audit_events_tokens ON audit_events USING gin (tokens);
        CREATE INDEX audit_events_untokenised ON audit_events USING gin (untokenised jsonb_path_ops);
        CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;

        -- The chain head: one row, locked FOR UPDATE by every append so that all writers in all
        -- processes produce one chain. ts keeps audit_events.ts monotonic with seq.
        CREATE TABLE audit_chain_head (
            id    boolean     PRIMARY KEY DEFAULT true CHECK (id),
            seq   bigint      NOT NULL,
            hash  bytea       NOT NULL,
            ts    timestamptz NOT NULL
        );
        INSERT INTO audit_chain_head (seq, hash, ts)
            VALUES (0, decode(repeat('00', 32), 'hex'), '1970-01-01T00:00:00Z');

        -- Signed checkpoints: Ed25519 over (seq, hash, ts) so a verifier holding the public key
        -- can trust the chain up to seq without trusting the database.
        CREATE TABLE audit_checkpoints (
            id          bigserial   PRIMARY KEY,
            seq         bigint      NOT NULL,
            hash        bytea       NOT NULL,
            ts          timestamptz NOT NULL,
            key_id      text        NOT NULL,
            public_key  bytea       NOT NULL,
            signature   bytea       NOT NULL
        );
        CREATE INDEX audit_checkpoints_seq ON audit_checkpoints (seq);

        CREATE FUNCTION veil_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$;
        CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
            FOR EACH ROW EXECUTE FUNCTION veil_audit_append_only();
        CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
            FOR EACH STATEMENT EXECUTE FUNCTION veil_audit_append_only();
        CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events_default
            FOR EACH STATEMENT EXECUTE FUNCTION veil_audit_append_only();
        CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
            FOR EACH ROW EXECUTE FUNCTION veil_audit_append_only();
        CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
            FOR EACH STATEMENT EXECUTE FUNCTION veil_audit_append_only();
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP TABLE audit_events; DROP TABLE audit_chain_head; DROP TABLE audit_checkpoints; "
        "DROP FUNCTION veil_audit_append_only()"
    )
