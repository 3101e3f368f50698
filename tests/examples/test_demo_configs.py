"""The demo configs in examples/ load with Veil's config loader and point at real scripts."""

from __future__ import annotations

import pytest

from examples.upstreams import EXAMPLES_DIR
from veil.config import StdioUpstream, load_config


@pytest.mark.parametrize("name", ["veil.yaml", "mcp.json"])
def test_demo_config_names_the_three_demo_servers(name: str) -> None:
    config = load_config(EXAMPLES_DIR / name)
    assert set(config.upstreams) == {"crm", "mailer", "tickets"}
    for upstream_name, upstream in config.upstreams.items():
        assert isinstance(upstream, StdioUpstream)
        assert upstream.cwd == EXAMPLES_DIR
        assert (upstream.cwd / upstream.args[0]).is_file(), upstream_name
        assert upstream.args[0] == f"{upstream_name}_server.py"


def test_veil_yaml_uses_the_crm_gateway_policy_and_data_dir() -> None:
    config = load_config(EXAMPLES_DIR / "veil.yaml")
    assert config.policy == EXAMPLES_DIR.parent / "policies" / "crm-gateway.yaml"
    assert config.data_dir == EXAMPLES_DIR.parent / ".veil"
    assert config.upstreams["mailer"].env["MAILER_OUTBOX"].startswith("../.veil/")
