"""``veil policy test``: test cases kept next to a policy, run against it.

Case files live in ``policies/tests/<policy-stem>*.yaml``::

    cases:
      - name: support may e-mail a customer found in the CRM
        flow: {principal: alice, roles: [support], tool: mailer__send_email, arg: to,
               token: EMAIL_ADDRESS, sources: [crm]}
        expect: {decision: allow, rule: crm-email-to-mailer}
      - name: contractors cannot run code
        execute: {principal: carol, roles: [contractor]}
        expect: deny
      - name: e-mail addresses in free text are found
        detect: {text: "Write to jane@example.com"}
        expect: {detected: [{type: EMAIL_ADDRESS, value: jane@example.com}], not_detected: [Acme]}

``expect`` is ``allow``/``deny`` or a mapping with ``decision`` and optionally ``rule`` (a rule id
like ``crm-email-to-mailer``, or the full ``flows[2]:crm-email-to-mailer`` / ``default:deny``).
Detection cases need the real tokenizer (Presidio and spaCy); they are skipped with a message when
``veil.tokenizer`` offers no detection entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema

from veil.errors import PolicyError
from veil.policies.explain import split_tool
from veil.policies.loader import problem, read_document
from veil.policies.model import Decision, Policy
from veil.principal import Principal
from veil.tokenizer.tokens import TokenRef

_WHO = {
    "principal": {"type": "string", "minLength": 1},
    "roles": {"type": "array", "items": {"type": "string"}},
    "tenant": {"type": ["string", "null"]},
    "now": {"type": "string", "format": "date-time"},
}
_EXPECT_DECISION = {
    "oneOf": [
        {"type": "string", "enum": ["allow", "deny"]},
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["decision"],
            "properties": {"decision": {"enum": ["allow", "deny"]}, "rule": {"type": "string"}},
        },
    ]
}
CASES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["cases"],
    "properties": {
        "policy": {"type": "string"},
        "cases": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "expect"],
                "oneOf": [{"required": [k]} for k in ("flow", "access", "execute", "detect")],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "flow": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["principal", "tool", "token"],
                        "properties": {
                            **_WHO,
                            "tool": {"type": "string"},
                            "arg": {"type": "string"},
                            "token": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"},
                            "sources": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "access": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["principal", "tool"],
                        "properties": {**_WHO, "tool": {"type": "string"}},
                    },
                    "execute": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["principal"],
                        "properties": _WHO,
                    },
                    "detect": {
                        "type": "object",
                        "additionalProperties": False,
                        "oneOf": [{"required": ["text"]}, {"required": ["json"]}],
                        "properties": {"text": {"type": "string"}, "json": {}},
                    },
                    "expect": {},
                },
            },
        },
    },
}
_DETECT_EXPECT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "detected": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["type"],
                "properties": {"type": {"type": "string"}, "value": {"type": "string"}},
            },
        },
        "not_detected": {"type": "array", "items": {"type": "string"}},
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(CASES_SCHEMA)
_DECISION_VALIDATOR = jsonschema.Draft202012Validator(_EXPECT_DECISION)
_DETECT_VALIDATOR = jsonschema.Draft202012Validator(_DETECT_EXPECT)


@dataclass
class CaseResult:
    file: str
    name: str
    status: str  # "pass" | "fail" | "skip"
    detail: str = ""


def case_files(policy_path: Path) -> list[Path]:
    """``policies/tests/<stem>.yaml`` and ``<stem>-*.yaml`` next to the policy."""
    folder = policy_path.resolve().parent / "tests"
    stem = policy_path.stem
    return sorted(p for p in folder.glob(f"{stem}*.yaml") if p.stem == stem or p.stem.startswith(f"{stem}-"))


def _principal(spec: dict[str, Any]) -> Principal:
    return Principal(name=spec["principal"], roles=frozenset(spec.get("roles", [])), tenant=spec.get("tenant"))


def _now(spec: dict[str, Any]) -> datetime | None:
    return datetime.fromisoformat(spec["now"].replace("Z", "+00:00")) if "now" in spec else None


def _rule_matches(expected: str, actual: str) -> bool:
    if expected == actual:
        return True
    section, sep, rid = actual.partition(":")
    return bool(sep) and section.startswith(("flows[", "access[")) and rid == expected


def _check_decision(expect: Any, decision: Decision) -> str | None:
    """None when the decision is what the case expects, else what differs."""
    want = expect if isinstance(expect, str) else expect["decision"]
    rule = None if isinstance(expect, str) else expect.get("rule")
    got = "allow" if decision.allowed else "deny"
    if got != want or (rule is not None and not _rule_matches(rule, decision.rule)):
        wanted = want + (f" by {rule}" if rule else "")
        return f"expected {wanted}, got {got} by {decision.rule} ({decision.reason})"
    return None


def _run_case(policy: Policy, case: dict[str, Any], detector: Any) -> tuple[str, str]:
    if "flow" in case:
        spec = case["flow"]
        upstream, tool = split_tool(spec["tool"])
        ref = TokenRef(
            token=f"[{spec['token']}_1]", entity_type=spec["token"], sources=frozenset(spec.get("sources", []))
        )
        decision = policy.decide_flow(_principal(spec), ref, upstream, tool, spec.get("arg", ""), now=_now(spec))
        problem_text = _check_decision(case["expect"], decision)
    elif "access" in case:
        spec = case["access"]
        upstream, tool = split_tool(spec["tool"])
        problem_text = _check_decision(
            case["expect"], policy.decide_access(_principal(spec), upstream, tool, now=_now(spec))
        )
    elif "execute" in case:
        spec = case["execute"]
        problem_text = _check_decision(case["expect"], policy.decide_execute(_principal(spec), now=_now(spec)))
    else:
        if isinstance(detector, str):
            return "skip", detector
        from veil.policies.detection import check_detection

        problem_text = check_detection(detector, case["detect"], case["expect"])
    return ("fail", problem_text) if problem_text else ("pass", "")


def load_cases(path: Path) -> list[dict[str, Any]]:
    """Validated cases of one file; ``PolicyError`` with a position when the file is malformed."""
    _data, located, file = read_document(path)
    errors = sorted(_VALIDATOR.iter_errors(located.data), key=lambda e: located.at(tuple(e.absolute_path)))
    for err in errors:
        raise problem(located, file, tuple(err.absolute_path), f"invalid test case file: {err.message[:200]}").error()
    for i, case in enumerate(located.data["cases"]):
        validator = _DETECT_VALIDATOR if "detect" in case else _DECISION_VALIDATOR
        for err in validator.iter_errors(case["expect"]):
            where = ("cases", i, "expect", *err.absolute_path)
            hint = "{detected: [...], not_detected: [...]}" if "detect" in case else "allow, deny or {decision, rule}"
            raise problem(located, file, where, f"invalid expect (write {hint}): {err.message[:160]}").error()
    return located.data["cases"]


def run_cases(policy: Policy, files: list[Path], *, detector: Any = None) -> list[CaseResult]:
    """Run every case; ``detector`` is a detection callable or a string saying why there is none."""
    results: list[CaseResult] = []
    for path in files:
        for case in load_cases(path):
            try:
                status, detail = _run_case(policy, case, detector)
            except (PolicyError, ValueError) as exc:
                status, detail = "fail", str(exc)
            results.append(CaseResult(str(path), case["name"], status, detail))
    return results


def needs_detection(files: list[Path]) -> bool:
    return any("detect" in case for path in files for case in load_cases(path))


def report(results: list[CaseResult]) -> str:
    lines: list[str] = []
    current = None
    for r in results:
        if r.file != current:
            current = r.file
            lines.append(r.file)
        lines.append(f"  {r.status.upper():4}  {r.name}" + (f": {r.detail}" if r.detail else ""))
    counts = {s: sum(1 for r in results if r.status == s) for s in ("pass", "fail", "skip")}
    lines.append(
        f"policy test result: {counts['pass']} cases passed, {counts['fail']} cases failed, {counts['skip']} skipped"
    )
    return "\n".join(lines) + "\n"
