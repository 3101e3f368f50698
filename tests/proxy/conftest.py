"""Fixtures for gateway tests: a real gateway (real Postgres, real Presidio, demo upstreams as
real subprocesses) served over Streamable HTTP on loopback, and a real MCP client."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from examples.upstreams import CRM_SERVER, MAILER_SERVER, PYTHON, TICKETS_SERVER

from veil.config import VeilConfig, parse_config

TEST_POLICY = textwrap.dedent(
    """
    metadata:
      name: gateway-tests
      purposes: [testing]
    detection:
      entities: [PERSON, EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, US_SSN, STREET_ADDRESS, LOCATION]
    tokens:
      scope: {scope}
    flows:
      - id: mail-to-customers
        description: customer names and e-mail addresses may be used to write to them
        entities: [EMAIL_ADDRESS, PERSON]
        to: ["mailer__send_email"]
        effect: allow
      - id: no-ssn-outside-crm
        entities: [US_SSN, CREDIT_CARD]
        to: ["mailer__*", "tickets__*"]
        effect: deny
    access:
      - id: everyone
        tools: ["*"]
        resources: ["*"]
        prompts: ["*"]
        effect: allow
    """
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def make_config(database_url: str, tmp_path: Path, data_dir_for: Callable[..., Path]) -> Callable[..., VeilConfig]:
    """Build a gateway config over the demo upstreams; keyword overrides replace sections."""

    data_dir = data_dir_for("veil-test-")  # the sandbox user walks to its workspace under here

    def make(scope: str = "session", policy_text: str | None = None, **overrides: Any) -> VeilConfig:
        policy = tmp_path / f"policy-{scope}.yaml"
        policy.write_text(policy_text or TEST_POLICY.format(scope=scope))
        raw: dict[str, Any] = {
            "upstreams": {
                "crm": {
                    "command": PYTHON,
                    "args": [str(CRM_SERVER)],
                    "env": {"CRM_RECORDS": "40", "CRM_CALL_LOG": str(tmp_path / "crm-calls.jsonl")},
                },
                "mailer": {
                    "command": PYTHON,
                    "args": [str(MAILER_SERVER)],
                    "env": {"MAILER_OUTBOX": str(tmp_path / "outbox.jsonl")},
                },
                "tickets": {
                    "command": PYTHON,
                    "args": [str(TICKETS_SERVER)],
                    "env": {"TICKETS_LOG": str(tmp_path / "tickets.jsonl")},
                },
            },
            "database_url": database_url,
            "policy": str(policy),
            "data_dir": str(data_dir),
            "auth": {"required": False},
            "principal": {"name": "alice", "roles": ["support"]},
            "expose": "direct",
        }
        raw.update(overrides)
        return parse_config(raw, source=tmp_path / "veil.yaml")

    return make
