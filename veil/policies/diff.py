"""``veil policy diff OLD NEW``: what changes *in effect*, in words a reviewer can approve.

Rules are compared by id. Because the first matching rule decides, a rule that keeps its id but
moves relative to others is reported as moved. Pure formatting and comment changes give "no
change in effect" even though the version hash differs.
"""

from __future__ import annotations

from typing import Any

from veil.policies.model import Policy


def _list(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def summarise_rule(rule: dict[str, Any], section: str) -> str:
    """One line saying what a rule does."""
    if section == "substitution":
        return f"write values as {rule['substitute']} in arguments {_list(rule['args'])} of {_list(rule['to'])}"
    parts = [rule["effect"]]
    if section == "flows":
        ents = rule.get("entities", "*")
        parts.append("every entity type" if ents == "*" or "*" in ents else ", ".join(ents))
        if "from" in rule:
            parts.append(f"from {_list(rule['from'])}")
        parts.append(f"to {_list(rule['to'])}")
        if "args" in rule:
            parts.append(f"in arguments {_list(rule['args'])}")
    else:
        parts += [f"{key} {_list(rule[key])}" for key in ("tools", "resources", "prompts") if key in rule]
        if "actions" in rule:
            parts.append(f"for actions {_list(rule['actions'])}")
    if "principals" in rule:
        parts.append(f"for principals {_list(rule['principals'])}")
    if "roles" in rule:
        parts.append(f"for roles {_list(rule['roles'])}")
    if "when" in rule:
        parts.append(f"when {rule['when']}")
    return " ".join(parts)


def _mapping_diff(label: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new), key=str):
        if key not in old:
            out.append(f"{label} {key}: added ({_list(new[key])})")
        elif key not in new:
            out.append(f"{label} {key}: removed (was {_list(old[key])})")
        elif old[key] != new[key]:
            out.append(f"{label} {key}: {_list(old[key])} -> {_list(new[key])}")
    return out


def _rules_diff(section: str, old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    out = []
    old_ids = [r["id"] for r in old]
    new_ids = [r["id"] for r in new]
    by_old = {r["id"]: r for r in old}
    by_new = {r["id"]: r for r in new}
    for i, r in enumerate(new):
        if r["id"] not in by_old:
            out.append(f"{section}: rule '{r['id']}' added at position {i}: {summarise_rule(r, section)}")
    for r in old:
        if r["id"] not in by_new:
            out.append(f"{section}: rule '{r['id']}' removed (was: {summarise_rule(r, section)})")
    for rid in new_ids:
        if rid in by_old:
            o, n = by_old[rid], by_new[rid]
            if o != n:
                fields = sorted(k for k in set(o) | set(n) if o.get(k) != n.get(k))
                out.append(
                    f"{section}: rule '{rid}' changed ({', '.join(fields)}): now {summarise_rule(n, section)} "
                    f"(was: {summarise_rule(o, section)})"
                )
    kept_old = [i for i in old_ids if i in by_new]
    kept_new = [i for i in new_ids if i in by_old]
    if kept_old != kept_new:
        out.append(f"{section}: rule order changed (first match wins): {', '.join(kept_old)} -> {', '.join(kept_new)}")
    return out


def diff_policies(old: Policy, new: Policy) -> list[str]:
    """Changes in effect from ``old`` to ``new``, one sentence each; empty when none."""
    a, b = old.raw, new.raw
    out: list[str] = []
    out += _mapping_diff("metadata", a.get("metadata", {}), b.get("metadata", {}))

    da, db = old.detection, new.detection
    ea, eb = set(da.entities), set(db.entities)
    if not ea and eb:
        out.append(f"detection: now limited to [{', '.join(sorted(eb))}] (was every known type)")
    elif ea and not eb:
        out.append("detection: now every known entity type (was a fixed list)")
    else:
        if eb - ea:
            out.append(f"detection: entity types added: {', '.join(sorted(eb - ea))}")
        if ea - eb:
            out.append(f"detection: entity types removed (no longer detected): {', '.join(sorted(ea - eb))}")
    if da.language != db.language:
        out.append(f"detection: language {da.language} -> {db.language}")
    if da.default_threshold != db.default_threshold:
        direction = "fewer" if db.default_threshold > da.default_threshold else "more"
        out.append(
            f"detection: default threshold {da.default_threshold} -> {db.default_threshold} "
            f"({direction} values detected)"
        )
    for etype in sorted(set(da.thresholds) | set(db.thresholds)):
        ta = da.thresholds.get(etype, da.default_threshold)
        tb = db.thresholds.get(etype, db.default_threshold)
        if ta != tb:
            direction = f"fewer {etype} values detected" if tb > ta else f"more {etype} values detected"
            out.append(f"detection: threshold for {etype} {ta} -> {tb} ({direction})")
    pa = {(p.entity_type, p.regex): p for p in da.patterns}
    pb = {(p.entity_type, p.regex): p for p in db.patterns}
    for key in sorted(set(pb) - set(pa)):
        out.append(f"detection: pattern for {key[0]} added: {key[1]}")
    for key in sorted(set(pa) - set(pb)):
        out.append(f"detection: pattern for {key[0]} removed: {key[1]}")
    for key in sorted(set(pa) & set(pb)):
        if pa[key] != pb[key]:
            out.append(f"detection: pattern for {key[0]} ({key[1]}) changed score, context or validation")
    la = {d.entity_type: set(d.values) for d in da.deny_lists}
    lb = {d.entity_type: set(d.values) for d in db.deny_lists}
    for etype in sorted(set(la) | set(lb)):
        added, removed = lb.get(etype, set()) - la.get(etype, set()), la.get(etype, set()) - lb.get(etype, set())
        if added:
            out.append(f"detection: deny-list {etype}: {len(added)} value(s) added")
        if removed:
            out.append(f"detection: deny-list {etype}: {len(removed)} value(s) removed")
    out += _mapping_diff("detection: field hint", da.field_hints, db.field_hints)
    aa, ab = set(da.allow_values), set(db.allow_values)
    if ab - aa:
        out.append(f"detection: allow-list added (never treated as PII): {', '.join(sorted(ab - aa))}")
    if aa - ab:
        out.append(f"detection: allow-list removed (detected again): {', '.join(sorted(aa - ab))}")

    if old.tokens.scope != new.tokens.scope:
        out.append(f"tokens: scope {old.tokens.scope} -> {new.tokens.scope}")
    if old.tokens.ttl_seconds != new.tokens.ttl_seconds:
        out.append(f"tokens: ttl {old.tokens.ttl_seconds or 'none'}s -> {new.tokens.ttl_seconds or 'none'}s")

    out += _rules_diff("flows", a.get("flows") or [], b.get("flows") or [])
    if old.access is None and new.access is not None:
        out.append("access: section added: anything its rules do not allow is now denied")
    elif old.access is not None and new.access is None:
        out.append("access: section removed: every principal may now use every tool")
    out += _rules_diff("access", a.get("access") or [], b.get("access") or [])
    out += _rules_diff("substitution", a.get("substitution") or [], b.get("substitution") or [])
    out += _mapping_diff("sandbox", old.sandbox, new.sandbox)
    out += _mapping_diff("audit", a.get("audit", {}), b.get("audit", {}))
    return out
