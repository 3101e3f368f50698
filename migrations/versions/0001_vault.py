"""Token vault: encrypted real values, looked up by keyed HMAC.

Revision ID: 0001_vault
Revises:
"""

from alembic import op

revision = "0001_vault"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE vault_entries (
            id           bigserial PRIMARY KEY,
            scope        text        NOT NULL,
            entity_type  text        NOT NULL,
            n            integer     NOT NULL,
            token        text        NOT NULL,
            value_hmac   bytea       NOT NULL,
            key_id       text        NOT NULL,
            wrapped_key  bytea,
            nonce        bytea,
            ciphertext   bytea,
            sources      text[]      NOT NULL DEFAULT '{}',
            created_at   timestamptz NOT NULL DEFAULT now(),
            expires_at   timestamptz,
            erased_at    timestamptz,
            UNIQUE (scope, value_hmac),
            UNIQUE (scope, token)
        );
        CREATE INDEX vault_entries_hmac ON vault_entries (value_hmac);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE vault_entries")
