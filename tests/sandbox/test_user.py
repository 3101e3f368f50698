"""ensure_sandbox_user is idempotent and leaves a user firejail accepts."""

from __future__ import annotations

import os
import pwd

import pytest

from veil.sandbox.setup import main
from veil.sandbox.user import FIREJAIL_USERS, ensure_sandbox_user, sandbox_user_ready


@pytest.mark.skipif(os.geteuid() != 0, reason="creating users needs root")
def test_ensure_sandbox_user_is_idempotent():
    first = ensure_sandbox_user("veil-sandbox")
    second = ensure_sandbox_user("veil-sandbox")
    assert first == second and first.pw_uid != 0
    assert pwd.getpwnam("veil-sandbox").pw_shell == "/usr/sbin/nologin"
    assert FIREJAIL_USERS.read_text().splitlines().count("veil-sandbox") == 1
    assert sandbox_user_ready("veil-sandbox")
    assert main(["--user", "veil-sandbox"]) == 0


def test_missing_user_without_root_names_the_fix(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(Exception, match=r"python -m veil.sandbox.setup --user veil-no-such-user"):
        ensure_sandbox_user("veil-no-such-user")
