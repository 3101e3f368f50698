"""API keys for HTTP principals: stored hashed, revocable.

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
