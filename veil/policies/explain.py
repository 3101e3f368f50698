"""``veil policy explain``: why a text is tokenised the way it is, and which rule decides a call.

The output is plain, stable text (tests compare it verbatim): no timestamps, no hashes, rules in
document order, each with MATCH or "no" and the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from veil.policies.model import Decision, Policy, Step
from veil.principal import Principal
from veil.tokenizer.tokens import TOKEN_RE, TokenRef


def split_tool(name: str) -> tuple[str, str]:
    """``crm__send_email`` -> ("crm", "send_email"); tools are always written UPSTREAM__TOOL."""
    upstream, sep, tool = name.partition("__")
    if not sep or not upstream or not tool:
        raise ValueError(f"tool '{name}' must be written UPSTREAM__TOOL, e.g. crm__send_email")
    return upstream, tool


def parse_call(call: str) -> tuple[str, Any]:
    """``'crm__send_email {"to": "[EMAIL_ADDRESS_1]"}'`` -> (tool name, arguments)."""
    name, _, rest = call.strip().partition(" ")
    rest = rest.strip()
    try:
        args = json.loads(rest) if rest else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"the call's arguments are not valid JSON ({exc.msg} at column {exc.colno})") from None
    return name, args


def tokens_in(value: Any, path: str = "") -> Iterator[tuple[str, str, str]]:
    """(token, entity type, argument path) for every token inside a JSON-like value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from tokens_in(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from tokens_in(item, f"{path}[{i}]")
    elif isinstance(value, str):
        for m in TOKEN_RE.finditer(value):
            yield m.group(0), m.group(1), path


def _steps(steps: list[Step], indent: str = "  ") -> list[str]:
    width = max((len(s.rule) for s in steps), default=0)
    return [f"{indent}{s.rule.ljust(width)}  {'MATCH' if s.matched else 'no   '}  {s.reason}" for s in steps]


def _verdict(d: Decision) -> str:
    return f"{'ALLOW' if d.allowed else 'DENY'} by {d.rule}: {d.reason}"


def explain_call(
    policy: Policy, call: str, principal: Principal, sources: frozenset[str], *, now: datetime | None = None
) -> str:
    """Every access and flow decision the gateway would make for one tool call."""
    name, args = parse_call(call)
    upstream, tool = split_tool(name)
    roles = ", ".join(sorted(principal.roles)) or "none"
    lines = [
        f"policy: {policy.name} ({policy.path.name})",
        f"call: {name} by {principal.name} (roles: {roles}; tenant: {principal.tenant or 'none'})",
        "",
        "access:",
    ]
    decision, steps = policy.explain_access(principal, upstream, tool, now=now)
    lines += _steps(steps)
    lines.append(f"  => {_verdict(decision)}")
    found = list(tokens_in(args))
    if not found:
        lines += ["", "no tokens in the arguments: nothing to untokenise"]
    src = ", ".join(sorted(sources)) or "unknown upstream"
    for token, etype, path in found:
        ref = TokenRef(token=token, entity_type=etype, sources=sources)
        flow, fsteps = policy.explain_flow(principal, ref, upstream, tool, path, now=now)
        lines += ["", f"token {token} ({etype} from {src}) in argument '{path}':"]
        lines += _steps(fsteps)
        lines.append(f"  => {_verdict(flow)}")
        lines += _substitution(policy, name, upstream, tool, args, token, path)
    return "\n".join(lines) + "\n"


def _substitution(policy: Policy, name: str, upstream: str, tool: str, args: Any, token: str, path: str) -> list[str]:
    """How the value would be written (shown only for sql, json and shell arguments)."""
    from veil.errors import SubstitutionRefused
    from veil.tokenizer.substitute import Where, plan

    context, rule = policy.substitute_context(upstream, tool, path)
    if context == "raw":
        return []
    text: Any = args
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("[") and isinstance(text, list) and int(part[1:-1]) < len(text):
            text = text[int(part[1:-1])]
        else:
            text = text.get(part) if isinstance(text, dict) else None
    out = [f"  written as {context} ({rule})"]
    if isinstance(text, str):
        try:
            plan(text, context, Where(name, f"$.{path}"))
        except SubstitutionRefused as exc:
            out.append(f"  => REFUSED: {exc.message}")
    return out


def explain_target(
    policy: Policy, kind: str, target: str, action: str | None, principal: Principal, *, now: datetime | None = None
) -> str:
    """The access decision for a resource (``UPSTREAM:URI``) or prompt (``UPSTREAM__PROMPT``)."""
    if kind == "resource":
        upstream, sep, name = target.partition(":")
        if not sep or not upstream or not name or name.startswith("//"):  # "crm://x": the upstream is missing
            raise ValueError(f"resource '{target}' must be written UPSTREAM:URI, e.g. crm:crm://customers/C0001")
    else:
        upstream, name = split_tool(target)
    action = action or ("read" if kind == "resource" else "get")
    allowed = {"resource": ("read", "subscribe", "complete"), "prompt": ("get", "complete")}[kind]
    if action not in allowed:
        raise ValueError(f"action '{action}' does not apply to a {kind}: use one of {', '.join(allowed)}")
    roles = ", ".join(sorted(principal.roles)) or "none"
    lines = [
        f"policy: {policy.name} ({policy.path.name})",
        f"{kind}: {target} ({action}) by {principal.name} (roles: {roles}; tenant: {principal.tenant or 'none'})",
        "",
        "access:",
    ]
    decision, steps = policy.explain_target(principal, kind, upstream, name, action, now=now)
    lines += _steps(steps)
    lines.append(f"  => {_verdict(decision)}")
    return "\n".join(lines) + "\n"


def explain_detection(policy: Policy, detector: Any, value: Any) -> str:
    """What is detected in ``value`` (span, type, score, recognizer, why) and the token each gets."""
    from veil.policies.detection import detect

    findings = detect(detector, value)
    lines = [f"policy: {policy.name} ({policy.path.name})", ""]
    if not findings:
        return "\n".join([*lines, "nothing detected"]) + "\n"
    numbers: dict[str, dict[str, int]] = {}
    for f in sorted(findings, key=lambda f: (f.path, f.start, f.end)):
        seen = numbers.setdefault(f.entity_type, {})
        n = seen.setdefault(f.text, len(seen) + 1)
        where = f"{f.path} " if f.path else ""
        lines.append(
            f"{where}[{f.start}:{f.end}] {f.entity_type} score={f.score:.2f} recognizer={f.recognizer or '?'} "
            f"-> [{f.entity_type}_{n}]"
        )
        if f.why:
            lines.append(f"    why: {f.why}")
    return "\n".join(lines) + "\n"
