"""docs/policies.md stays true: every schema field and every CLI command is documented."""

from __future__ import annotations

from veil.config import REPO_ROOT
from veil.policies.cli import policy_group
from veil.policies.schema import POLICY_SCHEMA


def _fields(schema: dict, out: set[str]) -> set[str]:
    for name, sub in schema.get("properties", {}).items():
        out.add(name)
        _fields(sub, out)
        if isinstance(sub.get("items"), dict):
            _fields(sub["items"], out)
    return out


def test_every_schema_field_is_documented():
    doc = (REPO_ROOT / "docs" / "policies.md").read_text()
    missing = sorted(f for f in _fields(POLICY_SCHEMA, set()) if f"`{f}`" not in doc and f"{f}:" not in doc)
    assert missing == []


def test_every_policy_command_is_documented():
    doc = (REPO_ROOT / "docs" / "policies.md").read_text()
    assert [c for c in policy_group.commands if f"veil policy {c}" not in doc] == []
