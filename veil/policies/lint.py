"""Checks the JSON Schema cannot express, each reported as ``file:line:col: message``.

* entity types that neither Presidio nor the policy's own recognizers define;
* custom regexes that do not compile or that can match the empty string;
* ``when:`` conditions that do not compile, or that fail on a representative request (a misspelt
  variable or field: CEL only notices those at run time, where they would deny);
* rules that can never match because an earlier rule with equal-or-broader entity types, sources,
  destinations, arguments, principals and roles and no condition always decides first;
* duplicate rule ids;
* optionally, destinations that name no known tool (``--tools``) or upstream (``--config``).

``load_policy`` runs the same checks (without the optional one) and refuses a policy with errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from veil.errors import PolicyError
from veil.policies.cel import ACCESS_VARIABLES, FLOW_VARIABLES, Condition, ConditionError, activation
from veil.policies.entities import KNOWN_ENTITIES
from veil.policies.loader import Problem, problem, read_document, schema_problems
from veil.policies.matching import ArgSet, GlobSet
from veil.policies.model import EXECUTE_TOOL, EXECUTE_UPSTREAM
from veil.policies.yamlmarks import Located

VEIL_TOOLS = (f"{EXECUTE_UPSTREAM}__{EXECUTE_TOOL}", f"{EXECUTE_UPSTREAM}__search_tools")
_SAMPLE_TEXT = "Jane Doe, jane@example.com, +1 555 0100, 4111 1111 1111 1111, id A-123."


def known_entities(doc: dict[str, Any]) -> frozenset[str]:
    custom = {r.get("entity") for r in doc.get("detection", {}).get("recognizers", []) if isinstance(r, dict)}
    return KNOWN_ENTITIES | {c for c in custom if isinstance(c, str)}


def _entity_checks(doc: dict[str, Any], located: Located, file: str) -> Iterable[Problem]:
    known = known_entities(doc)
    det = doc.get("detection", {})

    def unknown(name: str, path: tuple[Any, ...], key: bool = False) -> Problem:
        return problem(
            located,
            file,
            path,
            f"unknown entity type '{name}': not a Presidio type and no recognizer in detection.recognizers defines it",
            key=key,
        )

    for i, name in enumerate(det.get("entities", [])):
        if name not in known:
            yield unknown(name, ("detection", "entities", i))
    listed = set(det.get("entities", []))
    for name in det.get("thresholds", {}):
        if name not in known:
            yield unknown(name, ("detection", "thresholds", name), key=True)
        elif listed and name not in listed:
            yield problem(
                located,
                file,
                ("detection", "thresholds", name),
                f"threshold for {name} has no effect: {name} is not in detection.entities",
                key=True,
            )
    for key, name in det.get("fields", {}).items():
        if name not in known:
            yield unknown(name, ("detection", "fields", key))
    for i, rule in enumerate(doc.get("flows", [])):
        ents = rule.get("entities", "*")
        if isinstance(ents, list):
            for j, name in enumerate(ents):
                if name != "*" and name not in known:
                    yield unknown(name, ("flows", i, "entities", j))


def _regex_checks(doc: dict[str, Any], located: Located, file: str) -> Iterable[Problem]:
    for i, rec in enumerate(doc.get("detection", {}).get("recognizers", [])):
        for j, pat in enumerate(rec.get("patterns", [])):
            path = ("detection", "recognizers", i, "patterns", j, "regex")
            try:
                rx = re.compile(pat["regex"])
            except re.error as exc:
                yield problem(located, file, path, f"regex does not compile: {exc}")
                continue
            if rx.fullmatch("") is not None or any(m.start() == m.end() for m in rx.finditer(_SAMPLE_TEXT)):
                yield problem(
                    located,
                    file,
                    path,
                    "regex can match the empty string, so it would tag empty spans everywhere: "
                    "require at least one character",
                )


def _sample(section: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "principal_name": "lint",
        "roles": ["lint"],
        "tenant": "lint",
        "upstream": "lint",
        "tool": "lint",
        "now": datetime(2025, 1, 1, tzinfo=UTC),
    }
    if section == "flows":
        kwargs.update(arg="lint", token_type="LINT", sources=["lint"])
    return activation(**kwargs)


def _compile_conditions(doc: dict[str, Any], located: Located, file: str) -> tuple[list[Problem], set[tuple[str, int]]]:
    """Compile and trial-run every condition; returns problems and the rules whose condition is broken."""
    out: list[Problem] = []
    broken: set[tuple[str, int]] = set()
    for section in ("flows", "access"):
        for i, rule in enumerate(doc.get(section) or []):
            if "when" not in rule:
                continue
            path = (section, i, "when")
            try:
                cond = Condition(rule["when"])
                allowed = FLOW_VARIABLES if section == "flows" else ACCESS_VARIABLES
                unknown = sorted(cond.variables - allowed)
                if unknown:
                    raise ConditionError(f"unknown variable '{unknown[0]}' (known: {', '.join(sorted(allowed))})")
                cond.evaluate(_sample(section))
            except ConditionError as exc:
                hint = " (token.* exists only in flow rules)" if section == "access" and "'token'" in str(exc) else ""
                out.append(problem(located, file, path, f"{section}[{i}].when: {exc}{hint}"))
                broken.add((section, i))
    return out, broken


def _duplicate_ids(doc: dict[str, Any], located: Located, file: str) -> Iterable[Problem]:
    for section in ("flows", "access", "substitution"):
        seen: dict[str, int] = {}
        for i, rule in enumerate(doc.get(section) or []):
            rid = rule["id"]
            if rid in seen:
                yield problem(
                    located, file, (section, i, "id"), f"rule id '{rid}' is already used by {section}[{seen[rid]}]"
                )
            seen.setdefault(rid, i)


def _covers(earlier: dict[str, Any], later: dict[str, Any], section: str) -> bool:
    """True when ``earlier`` (unconditional) matches everything ``later`` can match."""
    if "when" in earlier:
        return False
    keys = {"flows": ("to",), "substitution": ("to",), "access": ("tools", "resources", "prompts")}[section]
    for key in keys:
        if key in later and (key not in earlier or not GlobSet(earlier[key]).covers(GlobSet(later[key]))):
            return False
    if "actions" in earlier and ("actions" not in later or not set(later["actions"]) <= set(earlier["actions"])):
        return False
    if section == "substitution":
        return ArgSet(earlier["args"]).covers(ArgSet(later["args"]))
    for key in ("principals", "from"):
        if key in earlier and (key not in later or not GlobSet(earlier[key]).covers(GlobSet(later[key]))):
            return False
    if "roles" in earlier and ("roles" not in later or not set(later["roles"]) <= set(earlier["roles"])):
        return False
    if section == "flows":
        e_ents, l_ents = earlier.get("entities", "*"), later.get("entities", "*")
        e_all = e_ents == "*" or "*" in e_ents
        l_all = l_ents == "*" or "*" in l_ents
        if not e_all and (l_all or not set(l_ents) <= set(e_ents)):
            return False
        if "args" in earlier and ("args" not in later or not ArgSet(earlier["args"]).covers(ArgSet(later["args"]))):
            return False
    return True


def _shadowing(doc: dict[str, Any], located: Located, file: str) -> Iterable[Problem]:
    for section in ("flows", "access", "substitution"):
        rules = doc.get(section) or []
        for j, later in enumerate(rules):
            for i in range(j):
                if _covers(rules[i], later, section):
                    yield problem(
                        located,
                        file,
                        (section, j),
                        f"rule {section}[{j}]:{later['id']} can never match: the earlier rule "
                        f"{section}[{i}]:{rules[i]['id']} (line {located.at((section, i))[0]}) matches everything it "
                        "does and has no condition; remove it or move it up",
                    )
                    break


def _destination_checks(
    doc: dict[str, Any], located: Located, file: str, tools: list[str] | None, upstreams: list[str] | None
) -> Iterable[Problem]:
    for section, key in (("flows", "to"), ("access", "tools"), ("substitution", "to")):
        for i, rule in enumerate(doc.get(section) or []):
            for j, glob in enumerate(rule.get(key, [])):
                path = (section, i, key, j)
                if tools is not None:
                    known = list(tools) + list(VEIL_TOOLS)
                    if not GlobSet([glob]).matches_any(known):
                        yield problem(located, file, path, f"destination '{glob}' matches no tool in the tool list")
                elif upstreams is not None and "__" in glob:
                    up = glob.split("__", 1)[0]
                    if not GlobSet([up]).matches_any([*upstreams, EXECUTE_UPSTREAM]):
                        names = ", ".join(sorted(upstreams)) or "none"
                        yield problem(
                            located,
                            file,
                            path,
                            f"destination '{glob}' names no configured upstream (configured: {names})",
                        )


def _source_checks(doc: dict[str, Any], located: Located, file: str, upstreams: list[str] | None) -> Iterable[Problem]:
    if upstreams is None:
        return
    for i, rule in enumerate(doc.get("flows") or []):
        for j, glob in enumerate(rule.get("from", [])):
            if not GlobSet([glob]).matches_any(upstreams):
                names = ", ".join(sorted(upstreams)) or "none"
                yield problem(
                    located,
                    file,
                    ("flows", i, "from", j),
                    f"source '{glob}' names no configured upstream (configured: {names})",
                )


def semantic_problems(
    doc: dict[str, Any],
    located: Located,
    file: str,
    *,
    tools: list[str] | None = None,
    upstreams: list[str] | None = None,
) -> list[Problem]:
    """Every semantic problem of a schema-valid document, sorted by position."""
    out: list[Problem] = []
    out += _duplicate_ids(doc, located, file)
    out += _entity_checks(doc, located, file)
    out += _regex_checks(doc, located, file)
    cel_problems, _broken = _compile_conditions(doc, located, file)
    out += cel_problems
    out += _shadowing(doc, located, file)
    out += _destination_checks(doc, located, file, tools, upstreams)
    out += _source_checks(doc, located, file, upstreams)
    return sorted(set(out))


def lint_file(path: str, *, tools: list[str] | None = None, upstreams: list[str] | None = None) -> list[Problem]:
    """All problems in a policy file (an unreadable or non-YAML file gives exactly one)."""
    try:
        _data, located, file = read_document(path)
    except PolicyError as exc:
        return [Problem(exc.file or path, exc.line or 1, exc.column or 1, exc.detail)]
    problems = schema_problems(located, file)
    if problems:
        return problems
    return semantic_problems(located.data, located, file, tools=tools, upstreams=upstreams)
