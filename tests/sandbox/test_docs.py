"""docs/sandbox.md stays true: every SandboxConfig field and every outcome is documented."""

from __future__ import annotations

import typing
from pathlib import Path

from veil.config import SandboxConfig
from veil.sandbox.spec import Outcome

DOC = (Path(__file__).resolve().parents[2] / "docs" / "sandbox.md").read_text()


def test_every_sandbox_setting_is_documented():
    missing = [name for name in SandboxConfig.model_fields if f"| `{name}` |" not in DOC]
    assert missing == []


def test_every_outcome_is_documented():
    missing = [outcome for outcome in typing.get_args(Outcome) if f"| `{outcome}` |" not in DOC]
    assert missing == []
