"""``veil keys`` create / list / revoke against a real database."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from veil.auth.cli import keys_group
from veil.auth.keys import verify_key
from veil.errors import AuthError


@pytest.mark.req("auth:api-keys")
def test_create_list_revoke(database_url, engine):
    runner = CliRunner()
    created = runner.invoke(
        keys_group,
        [
            "create",
            "--principal",
            "alice",
            "--role",
            "support",
            "--tenant",
            "acme",
            "--expires",
            "30d",
            "--database-url",
            database_url,
        ],
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.splitlines()[0]
    assert key.startswith("veil_")
    assert "cannot show it again" in created.stderr
    key_id = key.split("_")[1]
    assert verify_key(engine, key).roles == frozenset({"support"})

    listed = runner.invoke(keys_group, ["list", "--database-url", database_url])
    assert listed.exit_code == 0
    row = next(line for line in listed.output.splitlines() if line.startswith(key_id))
    assert "alice" in row and "support" in row and "acme" in row and "active" in row
    assert key.split("_", 2)[2] not in listed.output

    revoked = runner.invoke(keys_group, ["revoke", key_id, "--database-url", database_url])
    assert revoked.exit_code == 0 and f"key {key_id} revoked" in revoked.output
    with pytest.raises(AuthError):
        verify_key(engine, key)
    listed = runner.invoke(keys_group, ["list", "--database-url", database_url])
    assert "revoked" in next(line for line in listed.output.splitlines() if line.startswith(key_id))

    missing = runner.invoke(keys_group, ["revoke", "nosuchkey123", "--database-url", database_url])
    assert missing.exit_code == 1 and "no API key with id nosuchkey123" in missing.output


def test_bad_expiry_is_refused(database_url):
    result = CliRunner().invoke(
        keys_group, ["create", "--principal", "a", "--expires", "soon", "--database-url", database_url]
    )
    assert result.exit_code == 2 and "--expires" in result.output
