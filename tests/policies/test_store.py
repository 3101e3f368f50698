"""Hot reload: a changed file comes into force; an invalid one is rejected and the old one stays."""

from __future__ import annotations

import os
import threading

import pytest

from veil.errors import PolicyError
from veil.policies import Policy, PolicyStore
from veil.principal import Principal

V1 = "metadata: {name: v1}\naccess:\n  - {id: all, tools: ['*'], effect: allow}\n"
V2 = "metadata: {name: v2}\naccess:\n  - {id: none, tools: ['*'], effect: deny}\n"
BROKEN = "metadata: {name: v3}\naccess:\n  - {id: bad, tools: ['*'], effect: maybe}\n"
BOB = Principal("bob")


def _rewrite(path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    st = path.stat()  # make sure the change is visible even on coarse-mtime filesystems
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.mark.req("policy:hot-reload")
def test_change_is_put_in_force(write_policy):
    path = write_policy(V1)
    changes: list[Policy] = []
    store = PolicyStore(path, on_change=changes.append)
    assert store.current.decide_access(BOB, "crm", "x").allowed
    assert store.check() is False  # nothing changed
    _rewrite(path, V2)
    assert store.check() is True
    assert store.current.name == "v2"
    assert not store.current.decide_access(BOB, "crm", "x").allowed
    assert [p.name for p in changes] == ["v2"]


@pytest.mark.req("policy:hot-reload")
def test_invalid_version_is_rejected_and_old_stays(write_policy, caplog):
    path = write_policy(V1)
    rejected: list[PolicyError] = []
    changes: list[Policy] = []
    store = PolicyStore(path, on_change=changes.append, on_rejected=rejected.append)
    old_version = store.current.version
    _rewrite(path, BROKEN)
    assert store.check() is False
    assert store.current.version == old_version and store.current.name == "v1"
    assert len(rejected) == 1 and rejected[0].line == 3
    assert "effect must be one of: allow, deny" in str(rejected[0])
    assert "rejected" in caplog.text and "stays in force" in caplog.text
    assert store.check() is False and len(rejected) == 1  # reported once, not on every poll
    _rewrite(path, V2)
    assert store.check() is True and store.current.name == "v2"
    assert [p.name for p in changes] == ["v2"]


def test_formatting_only_change_still_reloads_with_new_version(write_policy):
    path = write_policy(V1)
    store = PolicyStore(path)
    _rewrite(path, V1 + "# a comment\n")
    assert store.check() is True
    assert store.current.name == "v1"


def test_touch_without_change_does_nothing(write_policy):
    path = write_policy(V1)
    changes: list[Policy] = []
    store = PolicyStore(path, on_change=changes.append)
    _rewrite(path, V1)
    assert store.check() is False and changes == []


def test_broken_policy_at_start_raises(write_policy):
    with pytest.raises(PolicyError):
        PolicyStore(write_policy(BROKEN))


@pytest.mark.req("policy:hot-reload")
def test_background_watcher_reloads(write_policy):
    path = write_policy(V1)
    changed = threading.Event()
    rejected = threading.Event()
    store = PolicyStore(path, on_change=lambda p: changed.set(), on_rejected=lambda e: rejected.set(), interval=0.02)
    with store:
        _rewrite(path, BROKEN)
        assert rejected.wait(10)
        assert store.current.name == "v1"
        _rewrite(path, V2)
        assert changed.wait(10)
        assert store.current.name == "v2"


def test_deleted_file_is_reported_once_and_old_policy_stays(write_policy):
    path = write_policy(V1)
    rejected: list[PolicyError] = []
    store = PolicyStore(path, on_rejected=rejected.append)
    path.unlink()
    assert store.check() is False and store.check() is False
    assert store.current.name == "v1"
    assert len(rejected) == 1 and "cannot read policy file" in str(rejected[0])
    _rewrite(path, V2)
    assert store.check() is True and store.current.name == "v2"
