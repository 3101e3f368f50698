"""docs/auth.md lists every failure reason the authenticator can give."""

from __future__ import annotations

from veil.auth import errors
from veil.config import REPO_ROOT


def test_every_reason_is_documented():
    doc = (REPO_ROOT / "docs" / "auth.md").read_text()
    reasons = [v for k, v in vars(errors).items() if k.isupper() and isinstance(v, str)]
    assert len(reasons) >= 10
    assert [r for r in reasons if f"`{r}`" not in doc] == []
