"""Token vault: encrypted real values, looked up by keyed HMAC.

One row per (scope, value). ``value_hmac`` is HMAC-SHA256 of the normalised value under a key
derived from the master key; it does not include the scope, so one person's entries can be found
across all scopes. The value is AES-GCM encrypted under a per-row data key (``wrapped_key``,
itself wrapped by the master key named by ``key_id``); erasing a row sets ``wrapped_key``,
``nonce`` and ``ciphertext`` to NULL (crypto-shredding) and keeps the row, so its token stays
"erased" rather than "unknown". At most one live (not erased) row per (scope, value): a value
seen again after erasure gets a new token.

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
            id           bigserial   PRIMARY KEY,
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
            CONSTRAINT vault_entries_token_unique UNIQUE (scope, token),
            CONSTRAINT vault_entries_erased_or_whole CHECK (
                (erased_at IS NULL AND wrapped_key IS NOT NULL AND nonce IS NOT NULL AND ciphertext IS NOT NULL)
                OR (erased_at IS NOT NULL AND wrapped_key IS NULL AND nonce IS NULL AND ciphertext IS NULL)
            )
        );
        CREATE UNIQUE INDEX vault_entries_live_value ON vault_entries (scope, value_hmac) WHERE erased_at IS NULL;
        CREATE INDEX vault_entries_hmac ON vault_entries (value_hmac);
        CREATE INDEX vault_entries_numbering ON vault_entries (scope, entity_type, n);
        CREATE INDEX vault_entries_expiry ON vault_entries (expires_at)
            WHERE expires_at IS NOT NULL AND erased_at IS NULL;
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE vault_entries")
