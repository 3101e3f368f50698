"""``veil console`` refuses half a TLS configuration before touching the database."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from veil.cli import main

pytestmark = pytest.mark.req("console:web")


def test_certfile_needs_keyfile(tmp_path: Path) -> None:
    config = tmp_path / "veil.yaml"
    config.write_text("database_url: postgresql://nobody@127.0.0.1:1/none\n")
    cert = tmp_path / "cert.pem"
    cert.write_text("not read")
    result = CliRunner().invoke(main, ["console", "--config", str(config), "--certfile", str(cert)])
    assert result.exit_code == 2 and "--certfile and --keyfile go together" in result.output
