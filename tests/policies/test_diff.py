"""``policy diff`` says what changes in effect."""

from __future__ import annotations

from click.testing import CliRunner

from veil.policies import load_policy
from veil.policies.cli import policy_group
from veil.policies.diff import diff_policies

OLD = """
metadata: {name: shop, owner: a@example.com}
detection:
  entities: [EMAIL_ADDRESS, PERSON]
  thresholds: {PERSON: 0.6}
tokens: {scope: session, ttl: 1d}
flows:
  - {id: a, entities: [EMAIL_ADDRESS], to: [mailer__send_email], effect: allow}
  - {id: b, entities: [PERSON], to: [mailer__send_email], effect: allow}
  - {id: c, entities: [PHONE_NUMBER], to: [dialer__call], effect: allow}
access:
  - {id: all, tools: ["*"], effect: allow}
"""

NEW = """
metadata: {name: shop, owner: b@example.com}
detection:
  entities: [EMAIL_ADDRESS, PHONE_NUMBER]
  thresholds: {PHONE_NUMBER: 0.7}
tokens: {scope: principal, ttl: 1d}
flows:
  - {id: b, entities: [PERSON], to: [mailer__send_email], effect: allow}
  - {id: a, entities: [EMAIL_ADDRESS], to: [mailer__send_email], args: [to], effect: allow}
  - {id: d, entities: [URL], to: [web__fetch], effect: deny}
"""


def test_diff_in_words(write_policy):
    old = load_policy(write_policy(OLD, "old.yaml"))
    new = load_policy(write_policy(NEW, "new.yaml"))
    changes = diff_policies(old, new)
    assert changes == [
        "metadata owner: a@example.com -> b@example.com",
        "detection: entity types added: PHONE_NUMBER",
        "detection: entity types removed (no longer detected): PERSON",
        "detection: threshold for PERSON 0.6 -> 0.5 (more PERSON values detected)",
        "detection: threshold for PHONE_NUMBER 0.5 -> 0.7 (fewer PHONE_NUMBER values detected)",
        "tokens: scope session -> principal",
        "flows: rule 'd' added at position 2: deny URL to [web__fetch]",
        "flows: rule 'c' removed (was: allow PHONE_NUMBER to [dialer__call])",
        "flows: rule 'a' changed (args): now allow EMAIL_ADDRESS to [mailer__send_email] in arguments [to] "
        "(was: allow EMAIL_ADDRESS to [mailer__send_email])",
        "flows: rule order changed (first match wins): a, b -> b, a",
        "access: section removed: every principal may now use every tool",
        "access: rule 'all' removed (was: allow tools [*])",
    ]


def test_comment_only_change(write_policy):
    a = write_policy(OLD, "a.yaml")
    b = write_policy(OLD + "# reviewed\n", "b.yaml")
    result = CliRunner().invoke(policy_group, ["diff", str(a), str(b)])
    assert result.exit_code == 0
    assert result.output == "no change in effect (only formatting or comments differ)\n"


def test_diff_cli_lists_changes(write_policy):
    a = write_policy(OLD, "a.yaml")
    b = write_policy(NEW, "b.yaml")
    result = CliRunner().invoke(policy_group, ["diff", str(a), str(b)])
    assert result.exit_code == 0
    assert result.output.startswith("- metadata owner: a@example.com -> b@example.com\n")
