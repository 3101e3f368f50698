"""An index on erased vault entries, for the process-wide change check of the vault caches.

Each Veil process asks once per ``cache_refresh_seconds`` which scopes gained or lost entries
since it last looked (veil/tokenizer/vault.py, ``Vault._watch``): new rows by ``id``, erased rows
by ``erased_at``. Without this index the second half would scan the whole table every time. It
is partial (erased rows only), so it stays small and costs live inserts nothing.

Built ``CONCURRENTLY`` (outside the migration's transaction): a plain ``CREATE INDEX`` holds a
lock that blocks every vault insert while it scans the table, which on a production vault with
millions of entries would stall every replica's tokenising for the length of the upgrade. An
earlier concurrent build that failed leaves an invalid index behind; it is dropped and rebuilt.

Revision ID: 0005_vault_erased
Revises: 0004_roles
"""

from alembic import op

revision = "0005_vault_erased"
down_revision = "0004_roles"
branch_labels = None
depends_on = None


INVALID = """
SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = 'vault_entries_erased' AND c.relnamespace = current_schema()::regnamespace AND NOT i.indisvalid
"""


def upgrade() -> None:
    with op.get_context().autocommit_block():
        if op.get_bind().exec_driver_sql(INVALID).first() is not None:
            op.execute("DROP INDEX CONCURRENTLY vault_entries_erased")
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS vault_entries_erased "
            "ON vault_entries (erased_at) WHERE erased_at IS NOT NULL"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS vault_entries_erased")
