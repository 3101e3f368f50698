"""``when:`` conditions in the Common Expression Language, evaluated with cel-python (``celpy``).

CEL is side-effect free, always terminates and is the language other policy engines (Kubernetes
admission, Envoy RBAC) already taught security staff. Conditions are compiled once when the policy
loads; a condition that fails *at run time* (a missing field, a type error) is reported as a
``ConditionError`` and the evaluator treats the rule as deciding *deny*: a broken condition never
opens a flow.

Variables: ``principal.name``, ``principal.roles`` (list), ``principal.tenant`` (string or null),
``destination.upstream``, ``destination.tool``, ``destination.arg`` (flows only; '' when unknown),
``token.type``, ``token.sources`` (flows only), ``now`` (timestamp, UTC).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import celpy
from celpy import celtypes

_ENV = celpy.Environment()
_UNDECLARED = re.compile(r"undeclared reference to '([^']+)'")
_NO_MEMBER = re.compile(r"no such member in mapping: '([^']+)'")


class ConditionError(Exception):
    """A condition that does not compile or could not be evaluated; the message is safe to show."""


def _short(exc: BaseException) -> str:
    """celpy errors carry the whole activation in their repr; keep the first useful line only."""
    text = str(exc.args[0]) if exc.args else str(exc)
    if m := _UNDECLARED.search(text):
        return f"unknown variable '{m.group(1)}'"
    if m := _NO_MEMBER.search(text):
        return f"unknown field '{m.group(1)}'"
    return text.strip().splitlines()[0][:200]


class Condition:
    """One compiled CEL expression that must evaluate to a bool."""

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            self._program = _ENV.program(_ENV.compile(source))
        except Exception as exc:  # celpy raises CELParseError and lark errors
            detail = str(exc).strip().splitlines()
            raise ConditionError(f"CEL does not compile: {' '.join(d.strip() for d in detail[:3])}") from None

    def evaluate(self, activation: dict[str, Any]) -> bool:
        try:
            result = self._program.evaluate(activation)
        except Exception as exc:
            raise ConditionError(f"condition failed: {_short(exc)}") from None
        if isinstance(result, Exception):  # celpy may return an error value instead of raising
            raise ConditionError(f"condition failed: {_short(result)}")
        if not isinstance(result, celtypes.BoolType | bool):
            raise ConditionError(f"condition must be true or false, got {type(result).__name__}")
        return bool(result)


def activation(
    *,
    principal_name: str,
    roles: Iterable[str],
    tenant: str | None,
    upstream: str,
    tool: str,
    now: datetime | None = None,
    arg: str | None = None,
    token_type: str | None = None,
    sources: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The variables a condition sees; ``token`` exists only for flow decisions."""
    act: dict[str, Any] = {
        "principal": celpy.json_to_cel({"name": principal_name, "roles": sorted(roles), "tenant": tenant}),
        "destination": celpy.json_to_cel({"upstream": upstream, "tool": tool, "arg": arg or ""}),
        "now": celtypes.TimestampType(now or datetime.now(UTC)),
    }
    if token_type is not None:
        act["token"] = celpy.json_to_cel({"type": token_type, "sources": sorted(sources or ())})
    return act
