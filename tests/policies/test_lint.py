"""Lint finds each class of error, at the right line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from veil.config import REPO_ROOT
from veil.errors import PolicyError
from veil.policies import load_policy
from veil.policies.cli import policy_group
from veil.policies.lint import lint_file


def _lint(write_policy, body: str, **kwargs) -> list[str]:
    return [f"{p.line}:{p.column}: {p.message}" for p in lint_file(str(write_policy(body)), **kwargs)]


@pytest.mark.req("policy:lint")
def test_unknown_entity_types(write_policy):
    found = _lint(
        write_policy,
        """
        metadata: {name: x}
        detection:
          entities: [EMAIL_ADDRESS, EMAIL_ADRESS]
          thresholds: {PERSN: 0.5}
          fields: {email: E_MAIL}
        flows:
          - id: a
            entities: [CREDITCARD]
            to: ["*"]
            effect: deny
        """,
    )
    assert len(found) == 4
    assert found[0].startswith("3:29: unknown entity type 'EMAIL_ADRESS'")
    assert found[1].startswith("4:16: unknown entity type 'PERSN'")
    assert found[2].startswith("5:19: unknown entity type 'E_MAIL'")
    assert found[3].startswith("8:16: unknown entity type 'CREDITCARD'")


def test_custom_recognizer_defines_its_type(write_policy):
    body = """
    metadata: {name: x}
    detection:
      entities: [EMPLOYEE_ID]
      recognizers:
        - entity: EMPLOYEE_ID
          patterns: [{regex: "EMP-[0-9]{5}"}]
    """
    assert _lint(write_policy, body) == []


@pytest.mark.req("policy:lint")
def test_regex_does_not_compile_or_matches_empty(write_policy):
    found = _lint(
        write_policy,
        """
        metadata: {name: x}
        detection:
          recognizers:
            - entity: A_ID
              patterns:
                - regex: "A-[0-9"
            - entity: B_ID
              patterns:
                - regex: "[0-9]*"
                - regex: "x|"
        """,
    )
    assert found[0].startswith("6:18: regex does not compile")
    assert found[1].startswith("9:18: regex can match the empty string")
    assert found[2].startswith("10:18: regex can match the empty string")
    assert len(found) == 3


@pytest.mark.req("policy:lint")
def test_cel_that_does_not_compile_or_names_unknown_fields(write_policy):
    found = _lint(
        write_policy,
        """
        metadata: {name: x}
        flows:
          - id: a
            to: ["*"]
            when: principal.name ==
            effect: allow
          - id: b
            to: ["*"]
            when: principal.nmae == "x"
            effect: allow
        access:
          - id: c
            tools: ["*"]
            when: token.type == "PERSON"
            effect: allow
        """,
    )
    assert found[0].startswith("5:11: flows[0].when: CEL does not compile")
    assert found[1] == "9:11: flows[1].when: condition failed: unknown field 'nmae'"
    assert found[2].startswith("14:11: access[0].when: unknown variable 'token' (known: destination, now, principal)")
    assert "only in flow rules" in found[2]


@pytest.mark.req("policy:lint")
def test_shadowed_rules(write_policy):
    found = _lint(
        write_policy,
        """
        metadata: {name: x}
        flows:
          - id: broad
            entities: [EMAIL_ADDRESS, PERSON]
            to: ["mailer__*"]
            effect: allow
          - id: narrow
            entities: [EMAIL_ADDRESS]
            to: [mailer__send_email]
            args: [to]
            roles: [support]
            effect: deny
          - id: conditional
            to: ["*"]
            when: principal.name == "x"
            effect: deny
          - id: not-shadowed-by-conditional
            to: [crm__x]
            effect: deny
          - id: other-type
            entities: [PHONE_NUMBER]
            to: [mailer__send_email]
            effect: deny
        access:
          - id: support
            tools: ["crm__*"]
            roles: [support, admin]
            effect: allow
          - id: support-find
            tools: [crm__find]
            roles: [support]
            effect: deny
          - id: others-find
            tools: [crm__find]
            roles: [guest]
            effect: deny
        """,
    )
    assert len(found) == 2, found
    assert found[0].startswith("7:5: rule flows[1]:narrow can never match: the earlier rule flows[0]:broad (line 3)")
    assert found[1].startswith("29:5: rule access[1]:support-find can never match")


@pytest.mark.req("policy:lint")
def test_duplicate_rule_ids(write_policy):
    found = _lint(
        write_policy,
        """
        metadata: {name: x}
        flows:
          - {id: a, entities: [PERSON], to: [x__y], effect: allow}
          - {id: a, entities: [EMAIL_ADDRESS], to: [x__y], effect: allow}
        """,
    )
    assert found == ["4:10: rule id 'a' is already used by flows[0]"]


@pytest.mark.req("policy:lint")
def test_destinations_checked_against_tools_and_upstreams(write_policy):
    body = """
    metadata: {name: x}
    flows:
      - {id: a, to: ["mailer__send_*"], effect: allow}
      - {id: b, to: [mailr__send_email], effect: allow}
    access:
      - {id: c, tools: [veil__execute_code, "crm__*"], effect: allow}
    """
    tools = ["mailer__send_email", "crm__find"]
    assert _lint(write_policy, body, tools=tools) == [
        "4:18: destination 'mailr__send_email' matches no tool in the tool list"
    ]
    found = _lint(write_policy, body, upstreams=["mailer", "tickets"])
    assert found == [
        "4:18: destination 'mailr__send_email' names no configured upstream (configured: mailer, tickets)",
        "6:41: destination 'crm__*' names no configured upstream (configured: mailer, tickets)",
    ]
    assert _lint(write_policy, body) == []  # without a tool list or config the check is skipped


def test_sources_checked_against_configured_upstreams(write_policy):
    body = "metadata: {name: x}\nflows:\n  - {id: a, from: [crm, crn], to: [mailer__x], effect: allow}\n"
    assert _lint(write_policy, body, upstreams=["crm", "mailer"]) == [
        "3:25: source 'crn' names no configured upstream (configured: crm, mailer)"
    ]


def test_through_the_veil_command(write_policy):
    from veil.cli import main

    bad = write_policy("metadata: {name: x}\nflows:\n  - {id: a, to: [x__y], effect: perhaps}\n")
    result = CliRunner().invoke(main, ["policy", "lint", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:3:33: flows[0].effect must be one of: allow, deny" in result.output


@pytest.mark.req("policy:lint")
def test_load_refuses_what_lint_rejects(write_policy):
    path = write_policy("metadata: {name: x}\ndetection:\n  entities: [NOPE]\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert (info.value.line, info.value.column) == (3, 14)


@pytest.mark.parametrize("name", ["default", "crm-gateway", "database-gateway", "healthcare-strict"])
def test_shipped_policies_lint_clean(name):
    assert lint_file(str(REPO_ROOT / "policies" / f"{name}.yaml")) == []


def test_cli_exit_codes_and_format(write_policy, tmp_path):
    bad = write_policy("metadata: {name: x}\ndetection:\n  entities: [NOPE]\n", name="bad.yaml")
    result = CliRunner().invoke(policy_group, ["lint", str(bad)])
    assert result.exit_code == 1
    assert result.output.splitlines()[0].startswith(f"{bad}:3:14: unknown entity type 'NOPE'")
    good = write_policy("metadata: {name: x}\nflows:\n  - {id: a, to: [crm__x], effect: allow}\n", name="good.yaml")
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(["crm__x"]))
    result = CliRunner().invoke(policy_group, ["lint", str(good), "--tools", str(tools)])
    assert result.exit_code == 0, result.output
    config = tmp_path / "veil.yaml"
    config.write_text("upstreams:\n  billing: {command: 'true'}\n")
    result = CliRunner().invoke(policy_group, ["lint", str(good), "--config", str(config)])
    assert result.exit_code == 1
    assert "names no configured upstream (configured: billing)" in result.output


def test_schema_command_prints_the_schema():
    result = CliRunner().invoke(policy_group, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["title"] == "Veil policy document"
    assert set(schema["properties"]) == {
        "metadata",
        "detection",
        "tokens",
        "flows",
        "access",
        "substitution",
        "sandbox",
        "audit",
    }
