"""Loading: YAML and schema errors carry file, line and column; typed settings are built."""

from __future__ import annotations

import hashlib

import pytest

from veil.errors import PolicyError
from veil.policies import load_policy
from veil.tokenizer.settings import CustomPattern, DenyList


def _error(path) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return info.value


@pytest.mark.req("policy:lint")
def test_yaml_syntax_error_has_position(write_policy):
    path = write_policy("metadata:\n  name: x\nflows:\n  - id: a\n    to: [x\n")
    err = _error(path)
    assert err.file == str(path)
    assert err.line == 6 and err.column is not None
    assert "not valid YAML" in err.detail


def test_duplicate_key_is_an_error(write_policy):
    err = _error(write_policy("metadata: {name: x}\ntokens: {scope: session}\ntokens: {ttl: 1d}\n"))
    assert (err.line, err.column) == (3, 1)
    assert "duplicate key 'tokens'" in err.detail


@pytest.mark.req("policy:lint")
def test_unknown_field_points_at_the_key(write_policy):
    err = _error(write_policy("metadata: {name: x}\ndetection:\n  language: en\n  treshold: 0.4\n"))
    assert (err.line, err.column) == (4, 3)
    assert "unknown field 'treshold' in detection" in err.detail


@pytest.mark.req("policy:lint")
def test_wrong_type_points_at_the_value(write_policy):
    err = _error(write_policy("metadata: {name: x}\nsandbox:\n  memory_mb: lots\n"))
    assert (err.line, err.column) == (3, 14)
    assert "sandbox.memory_mb must be an integer" in err.detail


def test_missing_required_field(write_policy):
    err = _error(write_policy("metadata: {name: x}\nflows:\n  - id: a\n    to: ['*']\n"))
    assert err.line == 3
    assert "missing the required field 'effect'" in err.detail


def test_bad_enum(write_policy):
    err = _error(write_policy("metadata: {name: x}\ntokens:\n  scope: forever\n"))
    assert (err.line, err.column) == (3, 10)
    assert "session, principal, tenant" in err.detail


def test_missing_file():
    err = _error("/nonexistent/policy.yaml")
    assert "not found" in err.detail


def test_settings_are_built(write_policy):
    path = write_policy(
        """
        metadata:
          name: shop
          purposes: [support]
        detection:
          language: en
          entities: [EMAIL_ADDRESS]
          default_threshold: 0.45
          thresholds: {EMAIL_ADDRESS: 0.7}
          recognizers:
            - entity: ORDER_ID
              patterns:
                - {regex: "ORD-[0-9]{6}", score: 0.9}
                - {regex: "O[0-9]{8}"}
              context: [order]
              validate: none
            - entity: CODENAME
              deny_list: [Bluebird]
          fields: {"*_email": EMAIL_ADDRESS, customer.name: PERSON}
          allow: [support@example.com]
        tokens: {scope: tenant, ttl: 2h}
        sandbox: {timeout_s: 5, memory_mb: 128}
        audit: {retention_months: 6}
        """
    )
    policy = load_policy(path)
    assert policy.version == hashlib.sha256(path.read_bytes()).hexdigest()
    det = policy.detection
    assert det.entities == ("EMAIL_ADDRESS", "ORDER_ID", "CODENAME", "PERSON")
    assert det.default_threshold == 0.45 and det.thresholds == {"EMAIL_ADDRESS": 0.7}
    assert det.patterns == (
        CustomPattern("ORDER_ID", "ORD-[0-9]{6}", 0.9, ("order",), "none"),
        CustomPattern("ORDER_ID", "O[0-9]{8}", 0.8, ("order",), "none"),
    )
    assert det.deny_lists == (DenyList("CODENAME", ("Bluebird",)),)
    assert det.field_hints == {"*_email": "EMAIL_ADDRESS", "customer.name": "PERSON"}
    assert det.allow_values == ("support@example.com",)
    assert (policy.tokens.scope, policy.tokens.ttl_seconds) == ("tenant", 7200)
    assert policy.sandbox == {"timeout_s": 5, "memory_mb": 128}
    assert policy.audit["retention_months"] == 6
    assert policy.metadata["purposes"] == ["support"]


def test_metadata_purposes_default_to_empty_list(write_policy):
    assert load_policy(write_policy("metadata: {name: x}\n")).metadata == {"name": "x", "purposes": []}


@pytest.mark.parametrize("name", ["default", "crm-gateway", "database-gateway", "healthcare-strict"])
def test_shipped_policies_load(name):
    from veil.config import REPO_ROOT

    policy = load_policy(REPO_ROOT / "policies" / f"{name}.yaml")
    assert policy.metadata["name"] == name
    assert isinstance(policy.metadata["purposes"], list) and policy.metadata["purposes"]
