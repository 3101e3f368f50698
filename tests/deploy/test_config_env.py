"""A container gets its secrets from the environment: ``VEIL_DATABASE_URL`` and
``VEIL_MIGRATION_DATABASE_URL`` replace the config file's fields (docs/configuration.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from veil.config import load_config


@pytest.mark.req("deploy:container")
def test_database_urls_from_the_environment_replace_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "veil.yaml"
    path.write_text("database_url: postgresql://file@db/veil\ndata_dir: data\n")
    monkeypatch.delenv("VEIL_DATABASE_URL", raising=False)
    monkeypatch.delenv("VEIL_MIGRATION_DATABASE_URL", raising=False)
    assert load_config(path).database_url == "postgresql://file@db/veil"

    monkeypatch.setenv("VEIL_DATABASE_URL", "postgresql://veil_runtime:s3cret@pgbouncer:6432/veil")
    monkeypatch.setenv("VEIL_MIGRATION_DATABASE_URL", "postgresql://veil_owner@db/veil")
    config = load_config(path)
    assert config.database_url == "postgresql://veil_runtime:s3cret@pgbouncer:6432/veil"
    assert config.migration_database_url == "postgresql://veil_owner@db/veil"
    assert config.data_dir == tmp_path / "data"  # the rest still comes from the file

    monkeypatch.setenv("VEIL_DATABASE_URL", "")  # empty: unset, the file's value stands
    assert load_config(path).database_url == "postgresql://file@db/veil"
