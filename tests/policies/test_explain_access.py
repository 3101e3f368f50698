"""``policy explain --resource/--prompt`` and the access decisions for resources, prompts,
completion and subscriptions (pure policy logic; the gateway tests enforce them end to end)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from veil.policies import load_policy
from veil.policies.cli import policy_group
from veil.principal import Principal

POLICY = """
metadata: {name: shop}
access:
  - id: tools-only
    tools: ["*"]
    effect: allow
  - id: no-subscriptions
    resources: ["*"]
    actions: [subscribe]
    effect: deny
  - id: support-reads-customers
    resources: ["crm:crm://customers/*"]
    prompts: ["crm__draft_*"]
    roles: [support]
    effect: allow
"""

EXPECTED = """\
policy: shop (policy.yaml)
resource: crm:crm://customers/C0001 (read) by alice (roles: support; tenant: none)

access:
  access[0]:tools-only               no     the rule names no resources
  access[1]:no-subscriptions         no     action 'read' is not one of [subscribe]
  access[2]:support-reads-customers  MATCH  matches: allows crm:crm://customers/C0001
  => ALLOW by access[2]:support-reads-customers: rule access[2]:support-reads-customers allows alice to read the resource crm:crm://customers/C0001
"""  # noqa: E501


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.mark.req("policy:explain")
def test_explain_a_resource_read(policy_file: Path) -> None:
    args = ["explain", str(policy_file), "--resource", "crm:crm://customers/C0001", "--principal", "alice"]
    result = CliRunner().invoke(policy_group, [*args, "--role", "support"])
    assert result.exit_code == 0, result.output
    assert result.output == EXPECTED


@pytest.mark.req("policy:explain")
def test_explain_refuses_a_badly_written_target(policy_file: Path) -> None:
    result = CliRunner().invoke(policy_group, ["explain", str(policy_file), "--resource", "crm://x"])
    assert result.exit_code != 0 and "UPSTREAM:URI" in result.output
    result = CliRunner().invoke(policy_group, ["explain", str(policy_file), "--prompt", "crm__p", "--action", "read"])
    assert result.exit_code != 0 and "get, complete" in result.output


@pytest.mark.req("access:resources-prompts")
def test_resource_and_prompt_rules_apply_only_to_their_kind_and_actions(policy_file: Path) -> None:
    policy = load_policy(policy_file)
    support = Principal("alice", frozenset({"support"}))
    other = Principal("bob", frozenset())
    assert policy.decide_access(other, "crm", "get_customer").allowed  # tools: ["*"]
    assert not policy.decide_resource(other, "crm", "crm://customers/C0001").allowed  # ... opens no resource
    assert policy.decide_resource(support, "crm", "crm://customers/C0001").allowed
    assert policy.decide_resource(support, "crm", "crm://customers/{customer_id}", "complete").allowed
    sub = policy.decide_resource(support, "crm", "crm://customers/C0001", "subscribe")
    assert not sub.allowed and sub.rule == "access[1]:no-subscriptions"
    assert not policy.decide_resource(support, "crm", "crm://summary").allowed
    assert policy.decide_prompt(support, "crm", "draft_followup").allowed
    assert policy.decide_prompt(support, "crm", "draft_followup", "complete").allowed
    assert not policy.decide_prompt(other, "crm", "draft_followup").allowed
    assert not policy.decide_prompt(support, "tickets", "draft_followup").allowed
