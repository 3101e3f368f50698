"""Flow and access decisions: first match wins, conditions, defaults, fail-closed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from veil.policies import load_policy
from veil.principal import Principal
from veil.tokenizer.tokens import TokenRef

POLICY = """
metadata: {name: t}
flows:
  - id: deny-cards
    entities: [CREDIT_CARD]
    to: ["*"]
    effect: deny
  - id: email-to-mailer
    entities: [EMAIL_ADDRESS]
    from: [crm]
    to: ["mailer__send_*"]
    args: [to, "recipients[*]"]
    roles: [support]
    effect: allow
  - id: tenant-acme-names
    entities: [PERSON]
    to: [reports__publish]
    when: principal.tenant == "acme" && "crm" in token.sources
    effect: allow
  - id: office-hours
    entities: [PHONE_NUMBER]
    to: [dialer__call]
    when: now.getHours() >= 8 && now.getHours() < 18
    effect: allow
  - id: broken-at-runtime
    entities: [IBAN_CODE]
    to: [bank__pay]
    when: principal.tenant.startsWith("a")
    effect: allow
  - id: alice-anything-to-archive
    to: [archive__store]
    principals: ["alice", "svc-*"]
    effect: allow
access:
  - id: no-code-for-contractors
    tools: [veil__execute_code]
    roles: [contractor]
    effect: deny
  - id: support
    tools: ["crm__*", "mailer__*", "veil__*"]
    roles: [support]
    effect: allow
  - id: tenant-only
    tools: [reports__*]
    when: principal.tenant == "acme"
    effect: allow
"""

ALICE = Principal("alice", frozenset({"support"}), "acme")
BOB = Principal("bob", frozenset({"contractor"}), None)


def ref(entity: str, *sources: str) -> TokenRef:
    return TokenRef(f"[{entity}_1]", entity, frozenset(sources))


@pytest.fixture
def policy(write_policy):
    return load_policy(write_policy(POLICY))


@pytest.mark.req("policy:flows")
def test_first_match_wins_and_deny_rule_is_reported(policy):
    d = policy.decide_flow(ALICE, ref("CREDIT_CARD", "crm"), "mailer", "send_email", "to")
    assert (d.allowed, d.rule) == (False, "flows[0]:deny-cards")


@pytest.mark.req("policy:flows")
@pytest.mark.parametrize(
    ("principal", "entity", "tool", "arg", "sources", "allowed", "rule"),
    [
        (ALICE, "EMAIL_ADDRESS", "send_email", "to", ("crm",), True, "flows[1]:email-to-mailer"),
        (ALICE, "EMAIL_ADDRESS", "send_bulk", "recipients[3]", ("crm",), True, "flows[1]:email-to-mailer"),
        (ALICE, "EMAIL_ADDRESS", "send_email", "to.address", ("crm",), True, "flows[1]:email-to-mailer"),
        (ALICE, "EMAIL_ADDRESS", "send_email", "$.to", ("crm",), True, "flows[1]:email-to-mailer"),
        (ALICE, "EMAIL_ADDRESS", "send_bulk", "$.recipients[12]", ("crm",), True, "flows[1]:email-to-mailer"),
        (ALICE, "EMAIL_ADDRESS", "send_email", "$.too", ("crm",), False, "default:deny"),
        (ALICE, "EMAIL_ADDRESS", "send_email", "body", ("crm",), False, "default:deny"),
        (ALICE, "EMAIL_ADDRESS", "send_email", "to", ("billing",), False, "default:deny"),
        (BOB, "EMAIL_ADDRESS", "send_email", "to", ("crm",), False, "default:deny"),
        (ALICE, "EMAIL_ADDRESS", "list_outbox", "to", ("crm",), False, "default:deny"),
        (BOB, "EMAIL_ADDRESS", "send_email", "to", ("mailer",), True, "default:same-upstream"),
    ],
)
def test_flow_rule_fields(policy, principal, entity, tool, arg, sources, allowed, rule):
    d = policy.decide_flow(principal, ref(entity, *sources), "mailer", tool, arg)
    assert (d.allowed, d.rule) == (allowed, rule), d.reason


@pytest.mark.req("policy:flows")
def test_cel_condition_over_principal_and_token(policy):
    ok = policy.decide_flow(ALICE, ref("PERSON", "crm"), "reports", "publish", "rows")
    assert (ok.allowed, ok.rule) == (True, "flows[2]:tenant-acme-names")
    other_tenant = Principal("carol", frozenset(), "globex")
    assert policy.decide_flow(other_tenant, ref("PERSON", "crm"), "reports", "publish", "rows").rule == "default:deny"
    wrong_source = policy.decide_flow(ALICE, ref("PERSON", "hr"), "reports", "publish", "rows")
    assert wrong_source.rule == "default:deny"


@pytest.mark.req("policy:flows")
def test_cel_condition_over_now(policy):
    day = datetime(2025, 3, 4, 10, tzinfo=UTC)
    night = datetime(2025, 3, 4, 22, tzinfo=UTC)
    assert policy.decide_flow(ALICE, ref("PHONE_NUMBER", "crm"), "dialer", "call", "n", now=day).allowed
    assert not policy.decide_flow(ALICE, ref("PHONE_NUMBER", "crm"), "dialer", "call", "n", now=night).allowed


@pytest.mark.req("policy:fail-closed")
def test_condition_that_fails_at_run_time_denies(policy):
    # principal.tenant is null for bob, so the condition cannot be evaluated. The value came from
    # 'bank', so without the rule default:same-upstream would allow: the broken condition must deny.
    assert (
        policy.decide_flow(ALICE, ref("IBAN_CODE", "bank"), "bank", "pay", "iban").rule == "flows[4]:broken-at-runtime"
    )
    d = policy.decide_flow(BOB, ref("IBAN_CODE", "bank"), "bank", "pay", "iban")
    assert (d.allowed, d.rule) == (False, "flows[4]:broken-at-runtime")
    assert "could not evaluate" in d.reason


@pytest.mark.req("policy:flows")
def test_principal_globs(policy):
    svc = Principal("svc-backup", frozenset(), None)
    assert policy.decide_flow(svc, ref("URL"), "archive", "store", "x").rule == "flows[5]:alice-anything-to-archive"
    eve = Principal("eve", frozenset(), None)
    assert policy.decide_flow(eve, ref("URL"), "archive", "store", "x").rule == "default:deny"


@pytest.mark.req("policy:access")
@pytest.mark.parametrize(
    ("principal", "upstream", "tool", "allowed", "rule"),
    [
        (ALICE, "crm", "find_customers", True, "access[1]:support"),
        (BOB, "crm", "find_customers", False, "default:deny"),
        (ALICE, "reports", "publish", True, "access[2]:tenant-only"),
        (BOB, "reports", "publish", False, "default:deny"),
        (ALICE, "tickets", "create_ticket", False, "default:deny"),
    ],
)
def test_access(policy, principal, upstream, tool, allowed, rule):
    d = policy.decide_access(principal, upstream, tool)
    assert (d.allowed, d.rule) == (allowed, rule), d.reason


@pytest.mark.req("policy:access")
def test_execute_code(policy):
    assert policy.decide_execute(ALICE).rule == "access[1]:support"
    d = policy.decide_execute(BOB)
    assert (d.allowed, d.rule) == (False, "access[0]:no-code-for-contractors")


@pytest.mark.req("policy:access")
def test_no_access_section_allows_everything(write_policy):
    policy = load_policy(write_policy("metadata: {name: open}\n"))
    d = policy.decide_access(BOB, "crm", "export_customers")
    assert (d.allowed, d.rule) == (True, "default:allow-all")
    assert policy.decide_execute(BOB).allowed


@pytest.mark.req("policy:access")
def test_empty_access_section_denies_everything(write_policy):
    policy = load_policy(write_policy("metadata: {name: closed}\naccess: []\n"))
    d = policy.decide_access(ALICE, "crm", "find_customers")
    assert (d.allowed, d.rule) == (False, "default:deny")


def test_trace_lists_every_rule_considered(policy):
    decision, steps = policy.explain_flow(ALICE, ref("PERSON", "crm"), "reports", "publish", "rows")
    assert [s.rule for s in steps] == ["flows[0]:deny-cards", "flows[1]:email-to-mailer", "flows[2]:tenant-acme-names"]
    assert [s.matched for s in steps] == [False, False, True]
    assert "entity type PERSON is not one of [CREDIT_CARD]" in steps[0].reason
    assert decision.rule == steps[-1].rule


def test_fast_path_agrees_with_traced_evaluation(policy):
    """decide_* skip building reasons for rules that cannot match; the decision must not change."""
    import itertools

    people = [ALICE, BOB, Principal("svc-x", frozenset({"support"}), None)]
    entities = ["CREDIT_CARD", "EMAIL_ADDRESS", "PERSON", "PHONE_NUMBER", "IBAN_CODE", "URL"]
    tools = [("mailer", "send_email"), ("reports", "publish"), ("bank", "pay"), ("archive", "store"), ("crm", "x")]
    for who, etype, (up, tool), arg, src in itertools.product(
        people, entities, tools, ["to", "$.recipients[1]", "body"], [("crm",), ("bank",), ()]
    ):
        fast = policy.decide_flow(who, ref(etype, *src), up, tool, arg)
        assert fast == policy.explain_flow(who, ref(etype, *src), up, tool, arg)[0]
    for who, (up, tool) in itertools.product(people, [*tools, ("veil", "execute_code")]):
        assert policy.decide_access(who, up, tool) == policy.explain_access(who, up, tool)[0]
