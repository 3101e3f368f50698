"""Label values are names Veil or its config chose, from bounded sets (veil/ops/labels.py)."""

from __future__ import annotations

import re

import pytest

from veil.ops import labels

pytestmark = pytest.mark.req("ops:no-pii")


def test_a_tool_named_with_a_value_or_a_token_is_other() -> None:
    names = labels.BoundedNames(re.compile(r"^[A-Za-z0-9_.-]{1,64}$"), 3)
    assert names("find_customers") == "find_customers"
    assert names("jane.doe@example.com") == "other"  # '@' is not in a tool name
    assert names("note_for_[PERSON_1]") == "other"  # a tokenised name
    assert names("") == "other" and names(None) == "other"


def test_label_values_stop_growing_at_the_cap() -> None:
    names = labels.BoundedNames(re.compile(r"^[a-z_]+$"), 2)
    assert [names(n) for n in ("a", "b", "c", "a", "d")] == ["a", "b", "other", "a", "other"]


def test_methods_and_upstreams_come_from_fixed_sets() -> None:
    assert labels.method("tools/call") == "tools/call"
    assert labels.method("notifications/jane.doe@example.com") == "other"
    assert labels.upstream("crm", {"crm", "mailer"}) == "crm"
    assert labels.upstream("jane", {"crm"}) == "" and labels.upstream(None, {"crm"}) == ""
