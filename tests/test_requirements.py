"""Every requirement id in docs/requirements.md is covered by a test, and tests name only listed ids."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_requirement_has_a_test_and_every_test_id_is_documented() -> None:
    documented = set(re.findall(r"^\| `([a-z0-9:_-]+)` \|", (ROOT / "docs/requirements.md").read_text(), re.M))
    used: set[str] = set()
    for path in (ROOT / "tests").rglob("*.py"):
        used |= set(re.findall(r'req\("([a-z0-9:_-]+)"\)', path.read_text()))
    assert documented, "docs/requirements.md lists no ids"
    assert sorted(documented - used) == [], "requirements without a test"
    assert sorted(used - documented) == [], "test ids missing from docs/requirements.md"
