"""Detection through the tokenizer's real Presidio + spaCy: test cases and explain output."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from veil.config import REPO_ROOT
from veil.policies import load_policy
from veil.policies.cli import policy_group
from veil.policies.detection import PolicyDetector, check_detection
from veil.policies.explain import explain_detection
from veil.policies.testing import case_files, load_cases, run_cases

SHIPPED = ["default", "crm-gateway", "database-gateway", "healthcare-strict"]


@pytest.fixture(scope="session")
def crm_policy():
    return load_policy(REPO_ROOT / "policies" / "crm-gateway.yaml")


@pytest.fixture(scope="session")
def crm_detector(crm_policy) -> PolicyDetector:
    return PolicyDetector(crm_policy.detection)


@pytest.mark.req("policy:test")
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_detection_cases_pass(name):
    path = REPO_ROOT / "policies" / f"{name}.yaml"
    policy = load_policy(path)
    files = case_files(path)
    assert any("detect" in case for f in files for case in load_cases(f)), f"{name} has no detection cases"
    results = run_cases(policy, files, detector=PolicyDetector(policy.detection))
    assert [(r.name, r.detail) for r in results if r.status != "pass"] == []


@pytest.mark.req("policy:test")
def test_detection_case_fails_when_it_should(crm_detector):
    spec = {"text": "Write to jane@example.com about CUST-000001."}
    assert check_detection(crm_detector, spec, {"detected": [{"type": "EMAIL_ADDRESS"}]}) is None
    missing = check_detection(crm_detector, spec, {"detected": [{"type": "US_SSN", "value": "078-05-1120"}]})
    assert missing is not None and missing.startswith("US_SSN '078-05-1120' not detected (found: ")
    wrongly = check_detection(crm_detector, spec, {"not_detected": ["jane@example.com"]})
    assert wrongly == "'jane@example.com' should be left alone but was detected as EMAIL_ADDRESS"


EXPECTED_TEXT = """\
policy: crm-gateway (crm-gateway.yaml)

[9:20] CUSTOMER_ID score=1.00 recognizer=VeilCustomPattern0 -> [CUSTOMER_ID_1]
    why: Detected by `VeilCustomPattern0` using pattern `custom_0`
[32:48] EMAIL_ADDRESS score=1.00 recognizer=OfflineEmailRecognizer -> [EMAIL_ADDRESS_1]
    why: Detected by `OfflineEmailRecognizer` using pattern `Email (Medium)`
[53:68] EMAIL_ADDRESS score=1.00 recognizer=OfflineEmailRecognizer -> [EMAIL_ADDRESS_2]
    why: Detected by `OfflineEmailRecognizer` using pattern `Email (Medium)`
[75:91] EMAIL_ADDRESS score=1.00 recognizer=OfflineEmailRecognizer -> [EMAIL_ADDRESS_1]
    why: Detected by `OfflineEmailRecognizer` using pattern `Email (Medium)`
[112:120] PROJECT_CODE score=1.00 recognizer=VeilDenyList0 -> [PROJECT_CODE_1]
    why: Detected by `VeilDenyList0` using pattern `deny_list`
"""


@pytest.mark.req("policy:explain")
def test_explain_text_is_stable(crm_policy, crm_detector):
    text = (
        "Customer CUST-004211 wrote from jane@example.com and bob@example.org, then jane@example.com "
        "again, asking about Bluebird; support@example.com replied."
    )
    assert explain_detection(crm_policy, crm_detector, text) == EXPECTED_TEXT


@pytest.mark.req("policy:explain")
def test_explain_json_shows_paths_and_field_hints(crm_policy, crm_detector, tmp_path):
    doc = tmp_path / "result.json"
    doc.write_text('{"customer": {"name": "Jane Doe", "customer_email": "jd@example.net", "tier": "gold"}}')
    result = CliRunner().invoke(policy_group, ["explain", str(crm_policy.path), "--json", str(doc)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[2:] == [
        "$.customer.customer_email [0:14] EMAIL_ADDRESS score=1.00 recognizer=field hint -> [EMAIL_ADDRESS_1]",
        "    why: the key 'customer_email' marks its whole value as EMAIL_ADDRESS (field hint)",
        "$.customer.name [0:8] PERSON score=1.00 recognizer=field hint -> [PERSON_1]",
        "    why: the key 'name' marks its whole value as PERSON (field hint)",
    ]
