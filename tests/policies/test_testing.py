"""``policy test``: cases pass and fail as they should; shipped policies ship passing cases."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from veil.config import REPO_ROOT
from veil.policies import load_policy
from veil.policies.cli import policy_group
from veil.policies.testing import case_files, run_cases

POLICY = """
metadata: {name: shop}
flows:
  - id: email-to-mailer
    entities: [EMAIL_ADDRESS]
    from: [crm]
    to: [mailer__send_email]
    roles: [support]
    effect: allow
access:
  - {id: support, tools: ["*"], roles: [support], effect: allow}
"""


def _setup(tmp_path: Path, cases: str) -> Path:
    (tmp_path / "tests").mkdir()
    policy = tmp_path / "shop.yaml"
    policy.write_text(POLICY)
    (tmp_path / "tests" / "shop.yaml").write_text(cases)
    (tmp_path / "tests" / "other.yaml").write_text("cases: []\n")  # another policy's cases: not picked up
    return policy


PASSING = """
cases:
  - name: support e-mails customers
    flow: {principal: alice, roles: [support], tool: mailer__send_email, arg: to, token: EMAIL_ADDRESS, sources: [crm]}
    expect: {decision: allow, rule: email-to-mailer}
  - name: same with the full rule id
    flow: {principal: alice, roles: [support], tool: mailer__send_email, token: EMAIL_ADDRESS, sources: [crm]}
    expect: {decision: allow, rule: "flows[0]:email-to-mailer"}
  - name: guests get nothing
    access: {principal: guest, tool: crm__find}
    expect: {decision: deny, rule: "default:deny"}
  - name: support runs code
    execute: {principal: alice, roles: [support]}
    expect: allow
"""

FAILING = """
cases:
  - name: wrong decision
    flow: {principal: bob, tool: mailer__send_email, token: EMAIL_ADDRESS, sources: [crm]}
    expect: allow
  - name: right decision, wrong rule
    access: {principal: alice, roles: [support], tool: crm__find}
    expect: {decision: allow, rule: someone-else}
  - name: passes
    execute: {principal: bob}
    expect: deny
"""


def test_passing_cases(tmp_path):
    policy = _setup(tmp_path, PASSING)
    assert case_files(policy) == [tmp_path / "tests" / "shop.yaml"]
    result = CliRunner().invoke(policy_group, ["test", str(policy)])
    assert result.exit_code == 0, result.output
    assert result.output.count("  PASS  ") == 4
    assert result.output.splitlines()[-1] == "policy test result: 4 cases passed, 0 cases failed, 0 skipped"


def test_failing_cases_fail_with_a_reason(tmp_path):
    policy = _setup(tmp_path, FAILING)
    result = CliRunner().invoke(policy_group, ["test", str(policy)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[1].startswith("  FAIL  wrong decision: expected allow, got deny by default:deny")
    assert lines[2].startswith(
        "  FAIL  right decision, wrong rule: expected allow by someone-else, got allow by access[0]:support"
    )
    assert lines[3] == "  PASS  passes"
    assert lines[-1] == "policy test result: 1 cases passed, 2 cases failed, 0 skipped"


def test_explicit_case_files(tmp_path):
    policy = _setup(tmp_path, FAILING)
    extra = tmp_path / "extra.yaml"
    extra.write_text(PASSING)
    result = CliRunner().invoke(policy_group, ["test", str(policy), str(extra)])
    assert result.exit_code == 0, result.output


def test_malformed_case_file_names_the_line(tmp_path):
    policy = _setup(
        tmp_path, "cases:\n  - name: x\n    flow: {principal: a, tool: b__c, token: PERSON}\n    expect: perhaps\n"
    )
    result = CliRunner().invoke(policy_group, ["test", str(policy)])
    assert result.exit_code == 1
    assert "shop.yaml:4:13: invalid expect" in result.output


def test_detection_cases_skip_with_a_message_without_a_detector(tmp_path):
    policy = _setup(tmp_path, "cases:\n  - name: d\n    detect: {text: hi}\n    expect: {not_detected: [hi]}\n")
    results = run_cases(load_policy(policy), case_files(policy), detector="no detector here")
    assert [(r.status, r.detail) for r in results] == [("skip", "no detector here")]


@pytest.mark.parametrize("name", ["default", "crm-gateway", "database-gateway", "healthcare-strict"])
def test_shipped_policies_pass_their_decision_cases(name):
    path = REPO_ROOT / "policies" / f"{name}.yaml"
    files = case_files(path)
    assert files, f"{name} ships without test cases"
    results = run_cases(load_policy(path), files, detector="detection is tested in test_detection.py")
    assert [r for r in results if r.status == "fail"] == []
    assert sum(r.status == "pass" for r in results) >= 5
