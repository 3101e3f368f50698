"""`veil demo` as the README runs it, on the test database instead of the embedded one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from veil.config import REPO_ROOT, load_config


def test_demo_shows_tokens_to_the_agent_real_values_upstream_and_the_audit(
    database_url: str, data_dir_for: Callable[..., Path]
) -> None:
    data_dir = data_dir_for("veil-demo-")  # the sandbox user walks to its workspace under here
    config = load_config(REPO_ROOT / "examples" / "veil.yaml")
    raw = config.model_dump(mode="json", exclude={"source"})
    raw.update(database_url=database_url, data_dir=str(data_dir))
    for upstream in raw["upstreams"].values():  # the demo's call logs go to this run's data dir
        upstream["env"] = {
            k: str(data_dir / Path(v).name) if v.endswith(".jsonl") else v for k, v in upstream["env"].items()
        }
    path = data_dir / "veil.yaml"
    path.write_text(yaml.safe_dump(raw))
    run = subprocess.run(
        [sys.executable, "-m", "veil", "demo", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    assert "[EMAIL_ADDRESS_1]" in out and "mailer upstream received (real values)" in out
    assert "@" in out.split("mailer upstream received (real values):", 1)[1].split("──", 1)[0]
    assert "no-payment-data-outside-crm" in out
    assert "400 customers exported" in out
    assert "tool.call" in out and "code.execute" in out
