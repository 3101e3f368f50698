"""An index on erased vault entries, for the process-wide change check of the vault caches.

Each Veil process asks once per ``cache_refresh_seconds`` which scopes gained or lost entries
since it last looked (veil/tokenizer/vault.py, ``Vault._watch``): new rows by ``id``, erased rows
by ``erased_at``. Without this index the second half would scan the whole table every time. It
is partial (erased rows only), so it stays small and costs live inserts nothing.

Revision ID: 0005_vault_erased
Revises: 0004_roles
"""

from alembic import op

revision = "0005_vault_erased"
down_revision = "0004_roles"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX vault_entries_erased ON vault_entries (erased_at) WHERE erased_at IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX vault_entries_erased")
