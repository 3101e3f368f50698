"""The config file: both accepted shapes, and errors that name the file and field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from veil.config import HttpUpstream, StdioUpstream, load_config
from veil.errors import ConfigError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_config_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "veil.yaml",
        "upstreams:\n  crm: {command: python3, args: [crm.py], cwd: servers}\n"
        "  db: {url: 'http://127.0.0.1:9/mcp', headers: {Authorization: Bearer x}}\n"
        "policy: p.yaml\ndata_dir: data\n",
    )
    config = load_config(path)
    crm, db = config.upstreams["crm"], config.upstreams["db"]
    assert isinstance(crm, StdioUpstream) and crm.cwd == tmp_path / "servers"
    assert crm.command == sys.executable  # a bare python3 runs with Veil's interpreter
    assert isinstance(db, HttpUpstream) and db.headers == {"Authorization": "Bearer x"}
    assert config.policy == tmp_path / "p.yaml" and config.data_dir == tmp_path / "data"


def test_mcp_servers_json_is_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "mcp.json",
        json.dumps({"mcpServers": {"crm": {"command": "/bin/crm", "args": ["-v"], "type": "stdio"}}}),
    )
    config = load_config(path)
    assert config.upstreams["crm"] == StdioUpstream(command="/bin/crm", args=["-v"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("upstreams:\n  crm: {url: 'ftp://x'}\n", "upstreams.crm"),
        ("upstreams:\n  CRM-1: {command: x}\n", "upstream name 'CRM-1'"),
        ("upstreams: {}\nexpose: everything\n", "expose"),
        ("upstreams: {}\nsandbox: {memory_mb: lots}\n", "sandbox.memory_mb"),
        ("upstreams: {}\nunknown_setting: 1\n", "unknown_setting"),
        ("upstreams: [\n", "veil.yaml:2"),
    ],
)
def test_bad_config_names_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "veil.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_serve_with_bad_config_exits_with_the_message_not_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "veil.yaml", "upstreams:\n  crm: {url: 'ftp://x'}\n")
    run = subprocess.run(
        [sys.executable, "-m", "veil", "serve", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1
    assert "upstreams.crm" in run.stderr and "Traceback" not in run.stderr


def test_serve_with_unparseable_policy_names_the_policy_file(tmp_path: Path, database_url: str) -> None:
    policy = write(tmp_path, "policy.yaml", "flows: [\n")
    path = write(
        tmp_path,
        "veil.yaml",
        f"upstreams: {{}}\npolicy: {policy}\ndatabase_url: '{database_url}'\ndata_dir: {tmp_path / 'd'}\n",
    )
    run = subprocess.run(
        [sys.executable, "-m", "veil", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 1
    assert str(policy) in run.stderr and "Traceback" not in run.stderr
