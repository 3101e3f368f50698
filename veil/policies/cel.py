"""``when:`` conditions in the Common Expression Language, evaluated with the
``common-expression-language`` package (``import cel``: Python bindings of the Rust CEL
interpreter; about 35 times faster here than the pure-Python cel-python, which matters because
conditions run per token per call).

CEL is side-effect free, always terminates and is the language other policy engines (Kubernetes
admission, Envoy RBAC) already taught security staff. Conditions are compiled once when the policy
loads; a condition that fails *at run time* (a missing field, a type error) raises
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

FLOW_VARIABLES = frozenset({"principal", "destination", "token", "now"})
ACCESS_VARIABLES = frozenset({"principal", "destination", "now"})


def _cel() -> Any:
    """The CEL binding, imported on first use: its package also loads a CLI (typer, prompt_toolkit)
    that costs ~0.4 s, which `veil policy lint` of a policy without conditions need not pay."""
    import cel

    return cel


class ConditionError(Exception):
    """A condition that does not compile or could not be evaluated; the message is safe to show."""


def _short(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"unknown field {exc.args[0]!r}" if exc.args else "unknown field"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". Check ")[0][:200]


def _parse_error(text: str) -> str:
    """``... ERROR: <input>:1:18: Syntax error: mismatched input '<EOF>' expecting {...}`` ->
    ``column 18: Syntax error: mismatched input '<EOF>'``."""
    m = re.search(r"ERROR: <input>:(\d+):(\d+): (.*?)(?: expecting \{.*)?$", text, re.MULTILINE)
    if m is None:
        return text.strip().splitlines()[0][:200] if text.strip() else "syntax error"
    where = f"column {m.group(2)}" if m.group(1) == "1" else f"line {m.group(1)} column {m.group(2)}"
    return f"{where}: {m.group(3)[:160]}"


class Condition:
    """One compiled CEL expression that must evaluate to a bool."""

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            self._program = _cel().compile(source)
        except Exception as exc:  # the binding raises ValueError with the parser's report
            raise ConditionError(f"CEL does not compile: {_parse_error(str(exc))}") from None
        self.variables = frozenset(self._program.variables())

    def evaluate(self, activation: dict[str, Any]) -> bool:
        try:
            result = self._program.execute(activation)
        except Exception as exc:
            raise ConditionError(f"condition failed: {_short(exc)}") from None
        if not isinstance(result, bool):
            raise ConditionError(f"condition must be true or false, got {type(result).__name__}")
        return result


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
        "principal": {"name": principal_name, "roles": sorted(roles), "tenant": tenant},
        "destination": {"upstream": upstream, "tool": tool, "arg": arg or ""},
        "now": now or datetime.now(UTC),
    }
    if token_type is not None:
        act["token"] = {"type": token_type, "sources": sorted(sources or ())}
    return act
