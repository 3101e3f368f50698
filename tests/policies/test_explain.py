"""``policy explain --call`` output is stable and names every rule considered."""

from __future__ import annotations

from click.testing import CliRunner

from veil.policies.cli import policy_group

POLICY = """
metadata: {name: shop}
flows:
  - id: no-cards
    entities: [CREDIT_CARD]
    to: ["*"]
    effect: deny
  - id: email-to-mailer
    description: support may e-mail customers
    entities: [EMAIL_ADDRESS]
    from: [crm]
    to: [mailer__send_email]
    args: [to]
    roles: [support]
    effect: allow
access:
  - id: support
    tools: ["mailer__*"]
    roles: [support]
    effect: allow
"""

EXPECTED = """\
policy: shop (policy.yaml)
call: mailer__send_email by alice (roles: support; tenant: none)

access:
  access[0]:support  MATCH  matches: allows mailer__send_email
  => ALLOW by access[0]:support: rule access[0]:support allows alice to use mailer__send_email

token [EMAIL_ADDRESS_1] (EMAIL_ADDRESS from crm) in argument 'to':
  flows[0]:no-cards         no     entity type EMAIL_ADDRESS is not one of [CREDIT_CARD]
  flows[1]:email-to-mailer  MATCH  matches: allows EMAIL_ADDRESS to mailer__send_email:to
  => ALLOW by flows[1]:email-to-mailer: rule flows[1]:email-to-mailer allows EMAIL_ADDRESS to mailer__send_email:to (support may e-mail customers)

token [PERSON_2] (PERSON from crm) in argument 'body':
  flows[0]:no-cards         no     entity type PERSON is not one of [CREDIT_CARD]
  flows[1]:email-to-mailer  no     entity type PERSON is not one of [EMAIL_ADDRESS]
  default:deny              MATCH  no rule matched and PERSON came from crm, not from mailer: add a flow rule to allow it
  => DENY by default:deny: no rule matched and PERSON came from crm, not from mailer: add a flow rule to allow it
"""  # noqa: E501


def test_explain_call_output_is_stable(write_policy):
    path = write_policy(POLICY)
    call = 'mailer__send_email {"to": "[EMAIL_ADDRESS_1]", "body": "Dear [PERSON_2]"}'
    args = ["explain", str(path), "--call", call, "--principal", "alice", "--role", "support", "--source", "crm"]
    result = CliRunner().invoke(policy_group, args)
    assert result.exit_code == 0, result.output
    assert result.output == EXPECTED


def test_explain_call_for_a_principal_without_roles(write_policy):
    path = write_policy(POLICY)
    result = CliRunner().invoke(
        policy_group,
        ["explain", str(path), "--call", 'mailer__send_email {"to": "[EMAIL_ADDRESS_1]"}', "--source", "crm"],
    )
    assert result.exit_code == 0, result.output
    assert "  access[0]:support  no     principal holds none of the roles [support] (has: none)" in result.output
    assert "=> DENY by default:deny: no access rule allows anonymous to use mailer__send_email" in result.output
    assert "flows[1]:email-to-mailer  no     principal holds none of the roles [support] (has: none)" in result.output


def test_explain_rejects_bad_input(write_policy):
    path = write_policy(POLICY)
    result = CliRunner().invoke(policy_group, ["explain", str(path), "--call", "send_email {}"])
    assert result.exit_code != 0
    assert "must be written UPSTREAM__TOOL" in result.output
    result = CliRunner().invoke(policy_group, ["explain", str(path), "--call", "a__b {not json"])
    assert "not valid JSON" in result.output
    result = CliRunner().invoke(policy_group, ["explain", str(path)])
    assert result.exit_code == 2 and "exactly one of --text, --json or --call" in result.output
