"""API keys for HTTP principals: stored hashed, revocable.

A key is ``veil_<key_id>_<secret>``; only ``key_id`` is stored in the clear (to find the row),
the secret as HMAC-SHA256 under a per-key random salt (``key_salt``), compared in constant time.
The secret has 256 bits of entropy, so a fast keyed hash is enough and keeps authentication cheap
per request.

Revision ID: 0003_identities
Revises: 0002_audit
"""

from alembic import op

revision = "0003_identities"
down_revision = "0002_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE api_keys (
            id           bigserial PRIMARY KEY,
            key_id       text        NOT NULL UNIQUE,
            key_salt     bytea       NOT NULL,
            key_hash     bytea       NOT NULL,
            principal    text        NOT NULL,
            roles        text[]      NOT NULL DEFAULT '{}',
            tenant       text,
            description  text,
            created_at   timestamptz NOT NULL DEFAULT now(),
            expires_at   timestamptz,
            revoked_at   timestamptz,
            last_used_at timestamptz
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE api_keys")
